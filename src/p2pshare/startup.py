"""
Starting a role, or failing to, in one sentence.

A role that cannot start (a bad option, a port in use, its data dir in use
by another process or not writable, an unreadable registry, bad TLS files)
says why in one sentence and ends with a non-zero status at once: it never
lingers half-started, and never shows a traceback.

- Options errors: under C{twistd}, L{RoleOptions} turns them into that one
  sentence and exit status 2 (C{twistd} itself would print the whole usage
  text and exit 0).  Parsed on their own (tests), they stay
  L{usage.UsageError}.
- Checks in C{makeService} (data dir, lock, registry, TLS files): they
  raise L{StartupError}, which L{cannot_start} turns into the sentence and
  status 1 (twistd's log is not started yet, so it goes to stderr).
- Listening, when C{twistd} starts the services: L{RoleService} catches
  L{StartupError} from its children, stops what had started, logs the
  sentence and ends the process with status 1.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.failure import Failure

from p2pshare.disk import mark_data_dir

log = Logger()


class StartupError(Exception):
    """
    A role cannot start; the message is the one sentence to show.
    """


class RoleOptions(usage.Options):
    """
    Options of a role.  Under C{twistd} (which sets C{parent} before it
    parses a subcommand's options) a usage error is one sentence on stderr
    and exit status 2.
    """

    role = "p2pshare"

    def __init__(self) -> None:
        super().__init__()
        self["log-level"] = "info"

    def opt_log_level(self, level: str) -> None:
        """
        debug, info (the default) or warn: debug adds Twisted's own
        messages (factories, ports, retries); warn keeps only problems.
        """
        if level not in ("debug", "info", "warn"):
            raise usage.UsageError("--log-level is debug, info or warn")
        self["log-level"] = level

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            print(f"twistd {self.role}: {e} (see twistd {self.role} --help)", file=sys.stderr)
            raise SystemExit(2) from None


def cannot_start(role: str, why: object) -> NoReturn:
    """
    End the process before it has started anything: one sentence, status 1.
    """
    print(f"{role} cannot start: {why}", file=sys.stderr)
    raise SystemExit(1)


class RoleService(MultiService):
    """
    A role's top service: if a child cannot start (L{StartupError}), the
    children already started are stopped, the reason is logged in one
    sentence, and the process ends with status 1.
    """

    def __init__(self, role: str, log: Any = None) -> None:
        super().__init__()
        self.role = role
        self.log = log  # the role's log observer (p2pshare.logs.RoleLog), if any

    def setServiceParent(self, parent: Any) -> None:
        # Under twistd the parent is the application: its ILogObserver
        # component is the observer twistd logs to (unless --logger says).
        if self.log is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            self._cannot_start(e)

    def startService(self) -> None:
        try:
            super().startService()
        except StartupError as e:
            self._cannot_start(e)

    def _cannot_start(self, e: StartupError) -> NoReturn:
        log.critical("{role} cannot start: {why}", role=self.role, why=str(e))
        for child in self:
            if child.running:
                try:
                    child.stopService()
                except Exception:  # stopping what half-started: nothing more to say
                    pass
        sys.stdout.flush()
        raise SystemExit(1)


def listen_now(endpoint: Any, factory: Any, what: str) -> Deferred[Any]:
    """
    C{endpoint.listen(factory)}; a listen that fails at once (a port in
    use, a socket path that cannot be made) raises L{StartupError} naming
    C{what} ("--port tcp:5001").
    """
    listening: Deferred[Any] = endpoint.listen(factory)
    failed: list[Failure] = []

    def record(failure: Failure) -> Failure:
        failed.append(failure)
        return failure

    listening.addErrback(record)
    if failed:
        listening.addErrback(lambda _: None)  # told here, once
        raise StartupError(f"cannot listen on {what}: {listen_problem(failed[0].value)}")
    return listening


def listen_problem(e: BaseException) -> str:
    """
    Why a listen failed, in a few words.
    """
    if isinstance(e, CannotListenError):
        error = e.socketError
        if isinstance(error, OSError) and error.strerror:
            return error.strerror.lower()
        if str(error) == "Cannot acquire lock":  # a unix socket's lock file
            return "another process is listening there"
        return str(error).strip().rstrip(".").lower() or "refused"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e).strip().rstrip(".") or type(e).__name__


class DataDirLock:
    """
    One process per data dir: an exclusive lock on C{DIR/lock}, holding
    the owner's pid, for as long as the process lives.
    """

    def __init__(self, directory: Path, role: str) -> None:
        self.path = directory / "lock"
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StartupError(f"cannot use the data dir {directory}: {(e.strerror or str(e)).lower()}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StartupError(
                f"the data dir {directory} is in use by another {role} (pid {owner}); "
                f"give each one its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd  # kept open: the lock lives as long as the process


FD_CEILING = 1 << 20  # what "unlimited" descriptors means here


def raise_fd_limit() -> int:
    """
    Raise this process's soft limit on open descriptors to its hard limit
    (the soft one is often 1,024 while the hard one is far higher), and
    return the limit now in force: connection caps are sized within it.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FD_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= want:
        return min(soft, FD_CEILING) if soft != resource.RLIM_INFINITY else FD_CEILING
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    except (ValueError, OSError):
        return soft


def fit_caps(fds: int, total: int, per_host: int, reserve: int) -> tuple[int, int]:
    """
    Connection caps that fit in C{fds} descriptors with C{reserve} left for
    everything else (files, the registry, logs, outgoing connections): the
    total at most C{fds - reserve}; and when that is less than was asked,
    one host at most half of it, so that one address cannot take them all.
    """
    room = max(fds - reserve, 16)
    if total <= room:
        return total, min(per_host, total)
    # Too few descriptors for what was asked: the caps shrink to fit, and
    # one host may hold at most half of them.
    return room, max(1, min(per_host, room // 2))


def check_writable(path: Path | None, flag: str) -> None:
    """
    A file the role will write later (C{--portfile}): its folder must be
    there and writable now, not when the role is half-way up.
    """
    if path is None:
        return
    folder = path.absolute().parent
    if not folder.is_dir():
        raise StartupError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise StartupError(f"{flag} {path}: cannot write in {folder}")


def prepare_data_dir(directory: Path, role: str) -> DataDirLock:
    """
    Make C{directory} (owner only), check that it can be written, and lock
    it for this process.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = directory / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        mark_data_dir(directory)  # whatever share holds it, it is not shared
    except OSError as e:
        raise StartupError(
            f"cannot write in the data dir {directory}: {(e.strerror or str(e)).lower()}"
        ) from None
    return DataDirLock(directory, role)
