"""
Long watches of real processes, run beside the suite: a script in tests/,
started with the session as C{python tests/SCRIPT REPORT WORKDIR ARGS...},
writes a JSON report; its test, run last, judges the report.  Its wall
time passes while the rest of the suite runs.

A watch lives in a directory of the session that every test process sees
(under pytest-xdist, the workers' common parent): one process starts it
(the only one, or the first worker) and keeps its exit code there once it
ends, and whichever process runs its test waits for that file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent


class Watch:
    """
    One watch, as its test sees it: C{report}, and once it has ended
    (L{wait}) its C{returncode} and C{stderr}.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.report = home / "report.json"
        self._rc = home / "rc"
        self._process: subprocess.Popen[bytes] | None = None
        self._reaper: threading.Thread | None = None

    @classmethod
    def start(cls, home: Path, script: str, args: tuple[object, ...]) -> Watch:
        home.mkdir(parents=True)
        watch = cls(home)
        with open(home / "stderr", "wb") as stderr:
            watch._process = subprocess.Popen(
                [sys.executable, str(HERE / script), str(watch.report), str(home / "net"),
                 *map(str, args)],
                stdout=subprocess.DEVNULL, stderr=stderr,
            )
        watch._reaper = threading.Thread(target=watch._reap, daemon=True)
        watch._reaper.start()
        return watch

    def _reap(self) -> None:
        assert self._process is not None
        code = self._process.wait()
        partial = self.home / "rc.partial"
        partial.write_text(str(code))
        os.replace(partial, self._rc)  # whole, or not there

    def wait(self, timeout: float) -> None:
        """
        Until the watch has ended (it ends by itself); a clear failure
        after C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while not self._rc.exists():
            if self._reaper is not None:  # this process started it: wait on it
                self._reaper.join(min(1.0, max(0.0, deadline - time.monotonic())))
            else:  # another process did: look again in a moment
                time.sleep(0.2)
            if time.monotonic() > deadline and not self._rc.exists():
                raise AssertionError(f"the watch in {self.home} did not end within {timeout} s")

    @property
    def returncode(self) -> int:
        return int(self._rc.read_text())

    @property
    def stderr(self) -> str:
        return (self.home / "stderr").read_text(errors="replace")

    def finish(self, keep_running: bool, timeout: float) -> None:
        """
        At the end of the starting process's session: let the watch end
        (another process's test may still wait for it), or stop it and its
        network now (the session was cut short).
        """
        if self._process is None or self._reaper is None:
            return
        if not keep_running and self._process.poll() is None:
            self._process.terminate()
        self._reaper.join(timeout)
        if self._process.poll() is None:
            self._process.kill()
            self._reaper.join(30)


def home_of(shared: Path, script: str, nodeid: str) -> Path:
    """
    Where the watch of the test C{nodeid} lives under C{shared}: a short
    path, for the control sockets of the processes it starts.
    """
    return shared / f"{Path(script).stem}-{hashlib.sha256(nodeid.encode()).hexdigest()[:8]}"


async def status_line(control: str, pattern: str, timeout: float = 30.0) -> str:
    """
    The first line of C{p2p status} (of the peer at C{control}) that
    C{pattern} matches, once there is one: what a transfer shows only
    while it runs, so it is looked for every 0.1 s, within C{timeout}.
    """
    import re

    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread

    from p2pshare.launch import P2P

    def status() -> str:
        return subprocess.run([*P2P, "status", "--peer", control], capture_output=True,
                              text=True, timeout=120).stdout

    seen = ""
    for _ in range(int(timeout / 0.1)):
        seen = await deferToThread(status)
        found = re.search(pattern, seen, re.M)
        if found:
            return found.group(0)
        await deferLater(reactor, 0.1)
    raise AssertionError(f"{pattern!r} never in p2p status: {seen}")
