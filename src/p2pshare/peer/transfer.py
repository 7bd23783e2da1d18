"""
Downloading a file from its holders, verified before it is kept.

The data streams into a hidden temporary file beside the target,
C{.NAME.SHA16.part}: named by the version it is for, and owned by one
download at a time (an exclusive lock, so a second download of the same
file into the same folder, from this peer or another process, waits or is
refused, never writing beside it).  An interrupted transfer keeps its
prefix and goes on from there with a C{Range} request guarded by
C{If-Range: "SHA-256"}, so a holder whose file has changed since sends the
new version whole (and is passed over) rather than the rest of it.  Once
all bytes are in, the file is fsynced and what is I{on disk} is hashed:
size and SHA-256 must match what the search reported; then it is moved
into place without overwriting anything (unless asked to), and the
directory fsynced.  Data that fails the check is thrown away and the next
holder is tried.  A half-written download never appears under the final
name.  A fault of this machine (a full disk, a folder it may not write)
ends the download at once with one sentence: other holders cannot help.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from p2pshare import wire
from p2pshare.admission import Secret
from p2pshare.common import fsync_directory, human_size
from p2pshare.peer.share import is_shareable_name, sha256_of
from p2pshare.wire import Match

Progress = Callable[[int, int], None]
RunBlocking = Callable[..., Deferred[Any]]

HEADER_TIMEOUT = 30.0
IDLE_TIMEOUT = 30.0
ROUNDS = 3  # times through the list of holders before giving up
DISTRUST_FOR = 600.0  # seconds a holder that served corrupt data is passed over


class FetchError(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class LocalFault(FetchError):
    """
    This machine cannot keep the file (no space, no permission): no other
    holder would help, so nothing is retried.
    """

    def __init__(self, text: str) -> None:
        super().__init__(wire.E_FAILED, text)


class HolderFailed(Exception):
    """
    One holder could not (or not fully) deliver; try another.
    """


@dataclass
class Fetched:
    path: Path
    size: int
    sha256: str
    holder: str | None  # None when the file was already there
    already: bool = False


def url_for(
    m: Match, secret: Secret | None = None, now: float = 0.0, scheme: str = "http"
) -> bytes:
    """
    Where C{m} is served; in a private network, a URL signed with the
    network secret (the holder answers 403 to anything else).
    """
    host = f"[{m.host}]" if ":" in m.host else m.host
    path = f"/files/{wire.quote_name(m.name)}"
    if secret is not None:
        path = secret.sign_path(path, now)
    return f"{scheme}://{host}:{m.port}{path}".encode("ascii")


def part_path(directory: Path, name: str, sha256: str) -> Path:
    """
    The hidden file a download of version C{sha256} of C{name} grows in
    (a long name is cut so that the part's name fits in 255 bytes).
    """
    return directory / f".{_part_stem(name)}.{sha256[:16]}.part"


def _part_stem(name: str) -> str:
    room = 255 - len(".") - len(".0123456789abcdef.part")
    return name.encode("utf-8")[:room].decode("utf-8", "ignore")


def local_fault(e: OSError, directory: Path, needed: int) -> LocalFault:
    """
    One sentence for a fault of this machine.
    """
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return LocalFault(f"no space left on {directory}: {human_size(needed)} needed")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return LocalFault(f"cannot write into {directory}: {(e.strerror or str(e)).lower()}")
    return LocalFault(f"cannot write into {directory}: {(e.strerror or str(e)).lower()}")


class PartFile:
    """
    The temporary file of one download, locked for as long as it is open.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # as any new file: the umask decides
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        self.f: BinaryIO = os.fdopen(fd, "r+b")

    def size(self) -> int:
        self.f.flush()  # what was written, not only what reached the file
        return os.fstat(self.f.fileno()).st_size

    def restart_at(self, offset: int) -> None:
        self.f.truncate(offset)
        self.f.seek(offset)

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()  # and the lock goes with it

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.close()


def _forget_other_versions(directory: Path, name: str, keep: Path) -> None:
    """
    Remove the parts of other versions of C{name} that no download holds.
    """
    stem = _part_stem(name)
    mine = re.compile(rf"\.{re.escape(stem)}\.[0-9a-f]{{16}}\.part")
    for other in directory.glob(f".{_glob_escape(stem)}.*.part"):
        if other == keep or not mine.fullmatch(other.name):
            continue  # ours, or another name's (".a.b.SHA.part" is not a part of "a")
        try:
            stale = PartFile(other)
        except (BlockingIOError, OSError):
            continue  # in use, or gone
        stale.discard()


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _keep(part: Path, target: Path, replace: bool) -> None:
    if replace:
        os.replace(part, target)
    else:
        os.link(part, target)  # fails if target exists: nothing is overwritten
        os.unlink(part)
    fsync_directory(target.parent)


class _Receiver(Protocol):
    """
    Writes a response body to the part file and fires C{done} with the
    reason the body ended (an L{OSError} if writing failed).  Cancelling
    C{done} stops the transfer.
    """

    def __init__(self, f: BinaryIO, clock: IReactorTime, on_bytes: Callable[[int], None]) -> None:
        self.f = f
        self.clock = clock
        self.on_bytes = on_bytes
        self.done: Deferred[BaseException] = Deferred(lambda d: self._stop())
        self._idle: IDelayedCall | None = None
        self.failed: OSError | None = None

    def connectionMade(self) -> None:
        self._idle = self.clock.callLater(IDLE_TIMEOUT, self._stalled)

    def _stop(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def _stalled(self) -> None:
        self._idle = None
        self._stop()

    def dataReceived(self, data: bytes) -> None:
        if self.failed is not None:
            return
        try:
            self.f.write(data)
        except OSError as e:
            self.failed = e
            self._stop()
            return
        self.on_bytes(len(data))
        if self._idle is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        # The reason, as a value: not an error here (unless cancelled).
        if not self.done.called:
            self.done.callback(self.failed or reason.value)


class Downloader:
    log = Logger()

    def __init__(
        self,
        agent: IAgent,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        secret: Secret | None = None,
        scheme: str = "http",
    ) -> None:
        self.agent = agent
        self.clock = clock
        self.run_blocking = run_blocking
        self.secret = secret
        self.scheme = scheme
        # Holders that served data failing its SHA-256: name -> until when
        # they are passed over (while any other holder is left).
        self.distrusted: dict[str, float] = {}
        # Downloads running here, by target: a second one waits for these.
        self._running: dict[Path, list[Deferred[None]]] = {}

    async def fetch(
        self,
        matches: list[Match],
        directory: Path,
        force: bool = False,
        progress: Progress | None = None,
    ) -> Fetched:
        """
        Download the file that C{matches} (nearest first) describe into
        C{directory}.  A download of the same target already running here
        is waited for first (then the file is most likely there).
        """
        if not matches:
            raise FetchError(wire.E_NOT_FOUND, "not found")
        name = matches[0].name
        if not is_shareable_name(name):
            raise FetchError(wire.E_BAD_ARGS, f"{name!r} is not a file name this peer keeps")
        target = directory / name
        while target in self._running:
            waiter: Deferred[None] = Deferred(lambda d: self._running[target].remove(d))
            self._running[target].append(waiter)
            await waiter
        self._running[target] = []
        try:
            return await self._fetch(matches, target, force, progress)
        finally:
            for waiter in self._running.pop(target):
                waiter.callback(None)

    async def _fetch(
        self, matches: list[Match], target: Path, force: bool, progress: Progress | None
    ) -> Fetched:
        name, size, sha = matches[0].name, matches[0].size, matches[0].sha256
        directory = target.parent
        # Holders of another version of the same name are not mixed in,
        # and holders caught serving corrupt data are passed over a while.
        holders = [m for m in matches if (m.sha256, m.size) == (sha, size)]
        now = self.clock.seconds()
        trusted = [m for m in holders if self.distrusted.get(m.holder, 0) <= now]
        holders = trusted or holders
        path = part_path(directory, name, sha)
        try:
            part = PartFile(path)
        except BlockingIOError:
            raise FetchError(
                wire.E_BUSY,
                f"{target} is being downloaded by another process; wait for it to finish",
            ) from None
        except OSError as e:
            raise local_fault(e, directory, size) from None
        try:
            already = await self._existing(target, sha, force)
            if already is not None:
                part.discard()
                return already
            await self.run_blocking(_forget_other_versions, directory, name, path)
            fetched = await self._download(holders, part, target, size, sha, force, progress)
        except CancelledError:
            kept = part.size() if not part.f.closed else 0
            part.close()
            self.log.info(
                "download of {name} stopped with {kept} bytes kept for a resume",
                name=name, kept=kept,
            )
            raise
        except LocalFault:
            part.discard()  # free what it took; the fault is ours
            raise
        except FetchError as e:
            kept = part.size()
            part.close()  # kept, for the next try to resume
            if e.code == wire.E_FAILED and kept:
                e.text += f"; the {human_size(kept)} that arrived are kept: the same command resumes"
                e.args = (e.text,)
            raise
        except BaseException:
            part.close()  # kept, for the next try to resume
            raise
        part.close()
        return fetched

    async def _existing(self, target: Path, sha: str, force: bool) -> Fetched | None:
        if not (target.exists() or target.is_symlink()):
            return None
        if not target.is_file():
            raise FetchError(wire.E_EXISTS, f"{target} exists and is not a file")
        existing = await self.run_blocking(sha256_of, target)
        if existing == sha:
            return Fetched(target, target.stat().st_size, sha, None, already=True)
        if not force:
            raise FetchError(
                wire.E_EXISTS,
                f"{target} already exists with other content; use --force to replace it",
            )
        return None

    async def _download(
        self,
        holders: list[Match],
        part: PartFile,
        target: Path,
        size: int,
        sha: str,
        force: bool,
        progress: Progress | None,
    ) -> Fetched:
        name, directory = target.name, target.parent
        offset = part.size()
        if offset > size:
            offset = 0
        part.restart_at(offset)
        free = shutil.disk_usage(directory).free
        if free < size - offset:
            raise LocalFault(
                f"no space left on {directory}: {human_size(size - offset)} needed, "
                f"{human_size(free)} free"
            )
        report = progress or (lambda done, total: None)
        problems: list[str] = []
        for attempt in range(ROUNDS * len(holders)):
            holder = holders[attempt % len(holders)]
            if offset < size or size == 0:
                try:
                    offset = await self._get(holder, part, offset, size, report)
                except HolderFailed as e:
                    problems.append(f"{holder.holder}: {e}")
                    offset = part.size()
                    self.log.info(
                        "download of {name} from {holder} stopped with {offset} bytes in: {why}",
                        name=name, holder=holder.holder, offset=offset, why=e,
                    )
                    continue
            try:
                part.sync()
                on_disk = await self.run_blocking(sha256_of, part.path)
            except OSError as e:
                raise local_fault(e, directory, size) from None
            if offset == size and on_disk == sha:
                try:
                    await self.run_blocking(_keep, part.path, target, force)
                except FileExistsError:
                    raise FetchError(
                        wire.E_EXISTS,
                        f"{target} appeared while downloading; the download is kept hidden "
                        f"beside it, and the same command resumes it",
                    ) from None
                except OSError as e:
                    raise local_fault(e, directory, size) from None
                self.log.info(
                    "downloaded {name} ({size} bytes, sha256 {sha}) from {holder}",
                    name=name, size=size, sha=sha, holder=holder.holder,
                )
                return Fetched(target, size, sha, holder.holder)
            problems.append(f"{holder.holder}: the data did not match its SHA-256")
            self.distrusted[holder.holder] = self.clock.seconds() + DISTRUST_FOR
            self.log.warn(
                "download of {name} from {holder} failed verification; discarded",
                name=name, holder=holder.holder,
            )
            offset = 0
            part.restart_at(0)
            holders = [h for h in holders if h is not holder] or holders
        raise FetchError(
            wire.E_FAILED,
            f"could not download {name}: " + "; ".join(problems[-3:]),
        )

    async def _get(
        self, m: Match, part: PartFile, offset: int, size: int, report: Progress
    ) -> int:
        """
        Fetch the rest of the file from C{m} into C{part}, from C{offset}
        on; return how many bytes the part file then holds.
        """
        headers = Headers()
        etag = f'"{m.sha256}"'.encode()
        if offset:
            headers.addRawHeader(b"range", f"bytes={offset}-".encode())
            headers.addRawHeader(b"if-range", etag)  # the rest of this version only
        try:
            url = url_for(m, self.secret, self.clock.seconds(), self.scheme)
            response = await self.agent.request(b"GET", url, headers).addTimeout(
                HEADER_TIMEOUT, self.clock
            )
        except CancelledError:
            raise
        except Exception as e:
            raise HolderFailed(f"no response ({_why(e)})") from None
        served = (response.headers.getRawHeaders(b"etag") or [b""])[0].strip()
        if response.code in (200, 206) and served and served != etag:
            response.deliverBody(Protocol())
            raise HolderFailed("it now holds another version")
        if response.code == 200 and offset:
            offset = 0  # the holder sends it all
        elif response.code == 206:
            ranges = response.headers.getRawHeaders(b"content-range") or [b""]
            if not ranges[0].startswith(f"bytes {offset}-".encode()):
                response.deliverBody(Protocol())
                raise HolderFailed("it answered another range")
        elif response.code != 200:
            response.deliverBody(Protocol())
            raise HolderFailed(f"HTTP {response.code}")
        part.restart_at(offset)
        received = [offset]
        last = [0.0]

        def on_bytes(n: int) -> None:
            received[0] += n
            now = self.clock.seconds()
            if now - last[0] >= 0.2 or received[0] >= size:
                last[0] = now
                report(received[0], size)

        receiver = _Receiver(part.f, self.clock, on_bytes)
        response.deliverBody(receiver)
        reason = await receiver.done
        if isinstance(reason, OSError):
            raise local_fault(reason, part.path.parent, size - offset)
        if received[0] > size:
            raise HolderFailed("it sent more than the file's size")
        if not isinstance(reason, ResponseDone) or received[0] < size:
            raise HolderFailed(f"the transfer broke off ({_why(reason)})")
        return received[0]


def _why(e: BaseException) -> str:
    if isinstance(e, (ResponseFailed, PotentialDataLoss)):
        return "the holder closed the connection early"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
