"""
Real processes: p2p share DIR is the one command to join.  It returns
within 10 s with the peer joined and its log file written, the terminal
gets no log lines, p2p stop ends the peer, and a start that cannot work
(a busy port, an unreachable metadata server, a peer already running
there) is one sentence and exit status 1.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from p2pshare.launch import LocalNetwork

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*P2P, *argv], capture_output=True, text=True, timeout=60, cwd=cwd)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def exited(pid: int, timeout: float) -> None:
    """
    Wait for a process that is not our child to end (a pidfd becomes
    readable then), at most C{timeout} seconds.
    """
    fd = os.pidfd_open(pid)
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


@pytest.fixture
def net(reactor, tmp_path):
    network = LocalNetwork(reactor, tmp_path / "net")
    (tmp_path / "net").mkdir()
    yield network
    pytest_twisted.blockon(Deferred.fromCoroutine(network.stop_all()))


@pytest_twisted.ensureDeferred
async def test_share_joins_in_the_background_and_stop_ends_it(net, tmp_path):
    await net.start_meta(expect=1)
    meta = f"tcp:127.0.0.1:{net.meta_port}"
    home = tmp_path / "home"
    (home / "music" / "live").mkdir(parents=True)
    (home / "music" / "live" / "set.ogg").write_bytes(b"ogg")
    out = await deferToThread(run, "share", "music", "--meta", meta, "--port", "tcp:0:interface=127.0.0.1", cwd=home)
    assert out.returncode == 0, out.stderr
    data = Path(os.environ["XDG_STATE_HOME"]) / "p2pshare" / "peer"  # the per-user peer
    lines = out.stdout.splitlines()
    assert re.fullmatch(rf"sharing {re.escape(str(home / 'music'))} as s\d+ \(127\.0\.0\.1:\d+\): "
                        r"1 file, 3 B", lines[0])
    assert lines[1] == f"control: unix:{data / 'control.sock'}"
    assert lines[2] == f"log: {data / 'p2ppeer.log'}"
    assert out.stderr == ""  # no log line on the terminal
    assert not re.search(r"\d{4}-\d\d-\d\dT", out.stdout)
    log = (data / "p2ppeer.log").read_text()
    assert "] peer s1 registered with the metadata server" in log or "registered" in log
    pid = int((data / "p2ppeer.pid").read_text())
    assert alive(pid)
    # It is the user's peer: the other commands find it from anywhere.
    status = await deferToThread(run, "status", "--files", cwd=tmp_path)
    assert status.returncode == 0 and "live/set.ogg" in status.stdout.replace("music/", "")
    again = await deferToThread(run, "share", "music", "--meta", meta, cwd=home)
    assert again.returncode == 1 and "a peer already runs from" in again.stderr
    assert len(again.stderr.splitlines()) == 1
    stop = await deferToThread(run, "stop", cwd=home)
    assert stop.returncode == 0, stop.stderr
    await deferToThread(exited, pid, 10)
    assert not alive(pid)


@pytest_twisted.ensureDeferred
async def test_a_share_that_cannot_start_says_why_in_one_sentence(net, tmp_path):
    await net.start_meta(expect=1)
    meta = f"tcp:127.0.0.1:{net.meta_port}"
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    busy = await deferToThread(run, "share", "docs", "--meta", meta, "--port",
                               f"tcp:{net.meta_port}:interface=127.0.0.1", cwd=home)
    assert busy.returncode == 1
    assert busy.stderr.startswith("p2p share: the peer did not start: ") and "address already in use" in busy.stderr
    assert len(busy.stderr.splitlines()) == 1 and busy.stdout == ""
    nometa = await deferToThread(run, "share", "docs", "--meta", "tcp:127.0.0.1:1", "--data-dir", "d2", cwd=home)
    assert nometa.returncode == 1
    assert nometa.stderr.startswith("p2p share: cannot reach the metadata server at tcp:127.0.0.1:1")
    assert not (home / "d2").exists()
    # A name that is live already: the real reason, not the log's last line.
    await net.start_peer("--name", "taken")
    (home / "docs" / "hi.txt").write_text("hi")
    taken = await deferToThread(run, "share", "docs", "--meta", meta, "--name", "taken",
                                "--port", "tcp:0:interface=127.0.0.1", "--data-dir", "d3",
                                cwd=home)
    assert taken.returncode == 1
    assert taken.stderr.startswith("p2p share: the peer did not start: ") and "taken" in \
        taken.stderr.split("did not start: ")[1], taken.stderr
    assert "sharing" not in taken.stderr and len(taken.stderr.splitlines()) == 1
    missing = await deferToThread(run, "share", "nowhere", "--meta", meta, cwd=home)
    assert (missing.returncode, missing.stderr) == (1, "p2p share: nowhere is not a directory\n")
