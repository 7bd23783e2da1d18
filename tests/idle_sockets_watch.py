"""
Idle sockets against real processes, watched from a process of its own: a
metadata server and two peers, one sharing a file; 250 silent sockets held
to the holder's port and 250 to the metadata server's.  While they are
held, honest clients from the same host (p2p search, p2p topo, p2p get,
curl) are run; then it waits (60 s at most) for the silent sockets to be
closed at their first-line deadline (30 s).  It writes what it saw to a
JSON report that tests/test_faults_integration.py judges.

It runs beside the rest of the suite (conftest.py starts it when that test
is selected and runs the test last), so the half minute of the deadline
costs the suite no time of its own.

    python tests/idle_sockets_watch.py REPORT.json WORKDIR
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react
from twisted.internet.threads import deferToThread

from p2pshare.disk import atomic_write
from p2pshare.launch import LocalNetwork

IDLE = 250  # silent sockets to each port
CURL = shutil.which("curl") or "curl"


def hold_idle(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def still_open(sockets: list[socket.socket]) -> int:
    """
    How many of C{sockets} the server has not closed yet (it says nothing
    to an idle one before it closes it, or an ERROR line).
    """
    ready, _, _ = select.select(sockets, [], [], 0)
    return len(sockets) - len(ready)


def closed_within(sockets: list[socket.socket], seconds: float) -> int:
    """
    How many of C{sockets} the server closes within C{seconds} from now.
    """
    deadline = time.monotonic() + seconds
    open_ = set(sockets)
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select(list(open_), [], [], max(0.0, deadline - time.monotonic()))
        for s in ready:
            try:
                if s.recv(4096):
                    continue  # an ERROR line, say, before the close
            except ConnectionResetError:
                pass
            open_.discard(s)
    for s in sockets:
        s.close()
    return len(sockets) - len(open_)


async def watch(reactor, report: Path, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    net = LocalNetwork(reactor, workdir)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(net.stop_all()))
    result: dict[str, object] = {}
    try:
        await net.start_network(2)
        holder, requester = "p1", "p2"
        data = os.urandom(1000 * 1000)
        sha = hashlib.sha256(data).hexdigest()
        atomic_write(net.root / holder / "shared" / "f.bin", data)
        await net.peers[holder].wait_for(f"sha256 {sha})", 60)
        peer_port = int((net.root / holder / "port").read_text())
        idle = await deferToThread(hold_idle, peer_port, IDLE)
        idle += await deferToThread(hold_idle, net.meta_port, IDLE)
        got = workdir / "got"
        got.mkdir()
        # While they are held, honest clients from the same host get through.
        clients = {
            "search": net.p2p("search", "f.bin", "--peer", net.control(requester)),
            "topo": net.p2p("topo", "--meta", f"tcp:127.0.0.1:{net.meta_port}"),
            "get": net.p2p("get", "f.bin", "--peer", net.control(requester), "-o", str(got)),
        }
        curled = deferToThread(
            subprocess.run, [CURL, "-s", "--max-time", "30", f"http://127.0.0.1:{peer_port}/files/f.bin"],
            capture_output=True, timeout=60,
        )
        codes = await gatherResults([c.when_ended(60) for c in clients.values()])
        result["clients"] = {
            name: {"code": code, "output": proc.output()[-2000:]}
            for (name, proc), code in zip(clients.items(), codes, strict=True)
        }
        result["curl_matches"] = (await curled).stdout == data
        kept = got / "f.bin"
        result["get_matches"] = kept.exists() and hashlib.sha256(kept.read_bytes()).hexdigest() == sha
        result["idle"] = len(idle)
        result["still_open_after_clients"] = still_open(idle)
        # Every silent socket is closed at the first-line deadline (30 s;
        # the wait is bounded well beyond it).
        result["closed"] = await deferToThread(closed_within, idle, 60)
        result["running"] = net.peers[holder].running and net.meta is not None and net.meta.running
    except Exception as e:
        result["error"] = repr(e)
    finally:
        await net.stop_all()
        # The test sees a whole report or none.
        atomic_write(report, json.dumps(result, indent=1).encode())


def main(reactor, report: str, workdir: str) -> Deferred[None]:
    return Deferred.fromCoroutine(watch(reactor, Path(report), Path(workdir)))


if __name__ == "__main__":
    react(main, sys.argv[1:])
