"""
Real processes: three peers with --heartbeat 1, 5 and 15 s, left idle,
never drop a link (before links were agreed per link, the 1 s peer gave up
on the 15 s one every few seconds).  One minute here; the in-process
simulation (tests/test_heartbeat_sim.py) covers hours and days.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from p2pshare.launch import LocalNetwork

IDLE = 60.0  # seconds of idleness watched: four beats of the slowest peer


@pytest_twisted.ensureDeferred
async def test_peers_with_heartbeats_1_5_15_stay_linked_while_idle(reactor, tmp_path):
    net = LocalNetwork(reactor, tmp_path)
    try:
        meta = await net.start_meta(3)
        for beat in ("1", "5", "15"):
            await net.start_peer("--heartbeat", beat)
        await meta.wait_for("topology settled: 3 peers", 30)
        topo = (net.meta_dir / "topo.txt").read_text()
        marks = {key: len(proc.lines) for key, proc in net.peers.items()}
        meta_mark = len(meta.lines)
        # The thing under test is what happens over time: wait it out.
        await Deferred.fromCoroutine(_idle(reactor))
        for key, proc in net.peers.items():
            said = proc.lines[marks[key]:]
            assert not [line for line in said if "dropping the link" in line or "lost its" in line], said
            assert proc.running
        assert not [line for line in meta.lines[meta_mark:] if "silent" in line or " left" in line]
        assert (net.meta_dir / "topo.txt").read_text() == topo
    finally:
        await net.stop_all()


async def _idle(reactor) -> None:
    await deferLater(reactor, IDLE)
