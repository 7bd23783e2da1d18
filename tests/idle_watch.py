"""
A real network left idle for a while, watched from a process of its own:
a metadata server and three peers with --heartbeat 1, 5 and 15 s.  It
writes what every process said after the topology settled, and the
topology before and after, to a JSON report that
tests/test_heartbeat_integration.py judges.

It runs beside the rest of the suite (conftest.py starts it when that test
is selected and runs the test last), so five real minutes of idleness cost
the suite no time of its own.

    python tests/idle_watch.py REPORT.json WORKDIR SECONDS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react

from p2pshare.disk import atomic_write
from p2pshare.launch import LocalNetwork

HEARTBEATS = ("1", "5", "15")


async def watch(reactor, report: Path, workdir: Path, seconds: float) -> None:
    net = LocalNetwork(reactor, workdir)
    # Terminated early (the session ended first): stop the network too.
    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(net.stop_all()))
    result: dict[str, object] = {"seconds": seconds, "settled": False}
    try:
        meta = await net.start_meta(len(HEARTBEATS))
        for beat in HEARTBEATS:
            await net.start_peer("--heartbeat", beat)
        await meta.wait_for(f"topology settled: {len(HEARTBEATS)} peers", 60)
        result["settled"] = True
        result["topo_before"] = (net.meta_dir / "topo.txt").read_text()
        marks = {key: len(proc.lines) for key, proc in net.peers.items()}
        meta_mark = len(meta.lines)
        started = reactor.seconds()
        await deferLater(reactor, seconds)
        result["watched"] = reactor.seconds() - started
        result["topo_after"] = (net.meta_dir / "topo.txt").read_text()
        result["peers"] = {
            str(key): {"lines": proc.lines[marks[key]:], "running": proc.running}
            for key, proc in net.peers.items()
        }
        result["meta"] = {"lines": meta.lines[meta_mark:], "running": meta.running}
    except Exception as e:
        result["error"] = repr(e)
    finally:
        await net.stop_all()
        # The test sees a whole report or none.
        atomic_write(report, json.dumps(result, indent=1).encode())


def main(reactor, report: str, workdir: str, seconds: str) -> Deferred[None]:
    return Deferred.fromCoroutine(watch(reactor, Path(report), Path(workdir), float(seconds)))


if __name__ == "__main__":
    react(main, sys.argv[1:])
