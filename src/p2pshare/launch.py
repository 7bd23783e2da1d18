"""
Start real C{twistd} processes of both roles on loopback and wait for them
by what they log, never by sleeping.  Used by C{p2p demo} and by the
integration tests.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from p2pshare.tls import make_certs

# twistd stopped by SIGTERM shuts down cleanly, then ends by that signal.
CLEAN_EXITS = (0, -signal.SIGTERM)

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class ProcessFailed(Exception):
    pass


class ChildProcess(ProcessProtocol):
    """
    A child process whose output (stdout and stderr) is kept, and copied to
    C{log_path}; L{wait_for} fires when a line containing some text appears.
    """

    def __init__(
        self,
        reactor: Any,
        role: str,
        argv: Sequence[str],
        cwd: Path,
        log_path: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.on_line = on_line
        self.role = role
        self.argv = list(argv)
        self.cwd = cwd
        self.log_path = log_path
        self.lines: list[str] = []
        self._partial = b""
        self._waiters: list[tuple[str, Deferred[str]]] = []
        self._enders: list[Deferred[int]] = []
        self.exit_code: int | None = None
        self._log = open(log_path, "ab") if log_path else None

    def start(self) -> ChildProcess:
        reactor: IReactorProcess = self.reactor
        reactor.spawnProcess(
            self, self.argv[0], self.argv, env=dict(os.environ), path=str(self.cwd)
        )
        return self

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None

    def outReceived(self, data: bytes) -> None:
        if self._log is not None:
            self._log.write(data)
            self._log.flush()
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)
            for waiter in list(self._waiters):
                text, d = waiter
                if text in line:
                    self._waiters.remove(waiter)
                    d.callback(line)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if self._log is not None:
            self._log.close()
        code, sig = reason.value.exitCode, getattr(reason.value, "signal", None)
        self.exit_code = code if code is not None else -(sig or 0)
        waiters, self._waiters = self._waiters, []
        for text, d in waiters:
            d.errback(ProcessFailed(
                f"{self.role} exited ({self.exit_code}) before logging {text!r}{self._last_words()}"
            ))
        enders, self._enders = self._enders, []
        for ended in enders:
            ended.callback(self.exit_code)

    def _last_words(self) -> str:
        """
        The end of what the process said, for the error that it ended: the
        reason it gave is there.
        """
        tail = self.lines[-5:]
        return "; its last lines:\n" + "\n".join(tail) if tail else "; it said nothing"

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def when_ended(self, timeout: float) -> Deferred[int]:
        """
        Fire with the exit code once the process has ended (at most
        C{timeout} seconds from now).
        """
        ended: Deferred[int] = Deferred(lambda d: self._enders.remove(d))
        if self.exit_code is not None:
            ended.callback(self.exit_code)
            return ended
        self._enders.append(ended)
        return ended.addTimeout(timeout, self.reactor)

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float, since: int = 0) -> Deferred[str]:
        """
        Fire with the first line (from line C{since} on) containing C{text};
        fail after C{timeout} seconds or if the process ends first.
        """
        for line in self.lines[since:]:
            if text in line:
                found: Deferred[str] = Deferred()
                found.callback(line)
                return found
        if self.exit_code is not None:
            raise ProcessFailed(f"{self.role} has exited ({self.exit_code}){self._last_words()}")
        d: Deferred[str] = Deferred(lambda d: self._waiters.remove((text, d)))
        self._waiters.append((text, d))
        clock: IReactorTime = self.reactor
        return d.addTimeout(timeout, clock)

    def signal(self, sig: int) -> None:
        if self.transport is None:
            return
        try:
            self.transport.signalProcess(sig)
        except ProcessExitedAlready:
            pass

    async def stop(self, timeout: float = 10.0) -> int:
        """
        SIGTERM, and SIGKILL if it has not ended within C{timeout} seconds.
        """
        if self.exit_code is None:
            self.signal(signal.SIGTERM)
            try:
                return await self.when_ended(timeout)
            except TimeoutError:
                self.signal(signal.SIGKILL)
        return await self.when_ended(timeout)


P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]


async def progress_at(get: ChildProcess, percent: int, timeout: float = 60) -> str:
    """
    The first C{progress:} line of a C{p2p get} (not on a terminal) that
    shows at least C{percent} percent done.
    """
    since = 0
    while True:
        line = await get.wait_for("progress:", timeout, since)
        since = get.lines.index(line, since) + 1
        shown = re.search(r" (\d+)% ", line)
        if shown is not None and int(shown.group(1)) >= percent:
            return line


def twistd(
    reactor: Any, role: str, args: Sequence[str], cwd: Path, log_path: Path | None = None
) -> ChildProcess:
    """
    A C{twistd -n --pidfile= ROLE ...} child (not started yet).
    """
    return ChildProcess(reactor, role, TWISTD + ["-n", "--pidfile=", role, *args], cwd, log_path)


def read_port(path: Path) -> int:
    return int(path.read_text().strip())


class LocalNetwork:
    """
    A metadata server and peers as real processes under C{root}, all on
    127.0.0.1 with ports chosen by the system.
    """

    def __init__(
        self,
        reactor: Any,
        root: Path,
        timeout: float = 30.0,
        secret_file: Path | None = None,
        certs: Path | None = None,
    ) -> None:
        """
        @param secret_file: a private network: every role gets this secret.
        @param certs: an encrypted network: a directory where C{p2p certs}
            made (or this makes) the CA and a certificate per role.
        """
        self.reactor = reactor
        self.root = root
        self.timeout = timeout
        self.secret_file = secret_file
        self.certs = certs
        self.meta: ChildProcess | None = None
        self.meta_port: int | None = None
        self.peers: dict[str, ChildProcess] = {}
        self._count = 0
        self._commands = 0

    @property
    def meta_dir(self) -> Path:
        return self.root / "meta"

    async def start_meta(self, expect: int = 5, *extra: str) -> ChildProcess:
        """
        Start the metadata server; a restart listens on the same port again,
        where the peers look for it.
        """
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        portfile = self.meta_dir / "port"
        portfile.unlink(missing_ok=True)
        proc = twistd(
            self.reactor,
            "p2pmeta",
            [
                "--port", self._listen(self.meta_port or 0, "meta", self.certs),
                *self._secret(),
                "--data-dir", str(self.meta_dir),
                "--portfile", str(portfile),
                "--expect", str(expect),
                *extra,
            ],
            self.root,
            self.root / "meta.log",
        ).start()
        self.meta = proc
        await proc.wait_for("p2pmeta ready", self.timeout)
        self.meta_port = read_port(portfile)
        return proc

    def _secret(self) -> list[str]:
        return ["--secret-file", str(self.secret_file)] if self.secret_file else []

    def _listen(self, port: int, name: str, certs: Path | None) -> str:
        if certs is None:
            return f"tcp:{port}:interface=127.0.0.1"
        if not (certs / f"{name}.pem").exists():
            make_certs(certs, [name])
        return (
            f"mtls:{port}:interface=127.0.0.1:privateKey={certs / name}.pem"
            f":trustRoots={certs / 'trust'}"
        )

    def _meta(self, name: str, certs: Path | None) -> str:
        if certs is None:
            return f"tcp:127.0.0.1:{self.meta_port}"
        own = f"{certs / name}.pem"
        return (
            f"tls:127.0.0.1:{self.meta_port}:trustRoots={certs / 'trust'}"
            f":certificate={own}:privateKey={own}"
        )

    async def start_peer(
        self, *extra: str, wait: bool = True, key: str | None = None
    ) -> tuple[str, ChildProcess]:
        """
        Start a peer in its own directory (C{key} to restart one in its old
        one); with C{wait}, return once it has joined.  The key is the
        directory name (C{p1}, C{p2}, ...).
        """
        certs = self.certs
        if key is None:
            self._count += 1
            key = f"p{self._count}"
        data = self.root / key
        data.mkdir(parents=True, exist_ok=True)
        proc = twistd(
            self.reactor,
            "p2ppeer",
            [
                "--port", self._listen(0, key, certs),
                "--meta", self._meta(key, certs),
                *self._secret(),
                "--data-dir", str(data),
                "--portfile", str(data / "port"),
                *extra,
            ],
            self.root,
            self.root / f"{key}.log",
        ).start()
        self.peers[key] = proc
        if wait:
            await proc.wait_for(" ready on port ", self.timeout)
        return key, proc

    async def start_network(self, n: int, *peer_args: str) -> ChildProcess:
        """
        A metadata server and C{n} peers started one after another, once
        the metadata server has seen them settle into one tree.
        """
        meta = await self.start_meta(n)
        for _ in range(n):
            await self.start_peer(*peer_args)
        await meta.wait_for(f"topology settled: {n} peers", self.timeout)
        return meta

    async def names(self) -> dict[str, str]:
        """
        Each running peer's name, to its key, as the peers say themselves.
        """
        from twisted.internet.threads import deferToThreadPool

        from p2pshare.control_client import control_request

        found = {}
        pool = self.reactor.getThreadPool()
        for key, proc in self.peers.items():
            if proc.running:
                status = await deferToThreadPool(
                    self.reactor, pool, control_request, self.control(key), "STATUS"
                )
                found[status["name"]] = key
        return found

    def p2p(self, *args: str, on_line: Callable[[str], None] | None = None) -> ChildProcess:
        """
        Start the C{p2p} command; its output can be waited for.
        """
        self._commands += 1
        log = self.root / f"p2p-{self._commands}.log"
        return ChildProcess(self.reactor, "p2p", P2P + list(args), self.root, log, on_line).start()

    def control(self, key: str) -> str:
        return "unix:" + str(self.root / key / "control.sock")

    async def stop_all(self) -> None:
        procs = list(self.peers.values()) + ([self.meta] if self.meta else [])
        await gatherResults(
            [Deferred.fromCoroutine(p.stop()) for p in procs], consumeErrors=True
        )
