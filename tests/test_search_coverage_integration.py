"""
Real processes, six peers with --max-neighbours 2 and a heartbeat of 5 s:
a search says what it covered.  The peer between the searcher and the
leaf that holds a file hangs (SIGSTOP): ``p2p search`` exits 3 within its
time and names it; once it answers again (SIGCONT) the file is found;
once it is killed (SIGKILL), a search started during the repair is right
or says what it missed, and ``p2p get`` started at once keeps the file
once the subtree is back.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest_twisted
from twisted.internet.threads import deferToThread

from p2pshare.disk import atomic_write
from p2pshare.launch import LocalNetwork
from p2pshare.topo import parse_topo

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
BEAT = 5.0


def run(*argv):
    return subprocess.run([*P2P, *argv], capture_output=True, text=True, timeout=120)


def topo(net):
    return {e.name: e.neighbours for e in parse_topo((net.meta_dir / "topo.txt").read_text())}


@pytest_twisted.ensureDeferred
async def test_a_hung_peer_is_named_then_found_again_and_a_crash_is_repaired(reactor, tmp_path):
    net = LocalNetwork(reactor, tmp_path)
    try:
        meta = await net.start_meta(6)
        for _ in range(6):
            await net.start_peer("--heartbeat", str(BEAT))
        await meta.wait_for("topology settled: 6 peers", 60)
        views, keys = topo(net), await net.names()
        # A leaf, the peer above it, and a searcher on the far side of that one.
        leaf = next(n for n in sorted(views) if len(views[n]) == 1 and len(views[views[n][0]]) == 2)
        middle = views[leaf][0]
        searcher = next(n for n in views[middle] if n != leaf)
        atomic_write(net.root / keys[leaf] / "shared" / "held.bin", b"held by a leaf")
        await net.peers[keys[leaf]].wait_for("sharing held.bin", 30)
        control = net.control(keys[searcher])

        found = await deferToThread(run, "search", "held.bin", "--peer", control)
        assert found.returncode == 0 and found.stdout.startswith("held.bin\t"), found
        assert found.stderr == ""  # everybody answered: nothing to say

        # The middle peer hangs: its whole side is missing, and the search
        # says so (not a definitive "not found").
        net.peers[keys[middle]].signal(signal.SIGSTOP)
        hung = await deferToThread(run, "search", "held.bin", "--peer", control)
        assert hung.returncode == 3, hung
        assert hung.stdout == "not found among the peers that answered\n"
        assert hung.stderr == (
            f"searched 4 of 6 peers; no answer from {middle} (and the peer below it)\n"
        ), hung.stderr

        # It answers again: the file is found.
        net.peers[keys[middle]].signal(signal.SIGCONT)
        back = await deferToThread(run, "search", "held.bin", "--peer", control)
        assert back.returncode == 0 and back.stdout.startswith("held.bin\t"), back

        # It crashes: a search during the repair is right, or says what it
        # missed; a download started at once waits for the repair and keeps
        # the file.
        net.peers[keys[middle]].signal(signal.SIGKILL)
        get = net.p2p("get", "held.bin", "--peer", control)
        during = await deferToThread(run, "search", "held.bin", "--peer", control)
        if during.returncode == 0:
            assert during.stdout.startswith("held.bin\t") and leaf in during.stdout, during
        else:
            assert during.returncode == 3, during
            assert during.stderr.startswith("searched "), during
        assert await get.when_ended(120) == 0, get.output()
        kept = net.root / keys[searcher] / "shared" / "held.bin"
        assert kept.read_bytes() == b"held by a leaf"
    finally:
        for peer in net.peers.values():
            peer.signal(signal.SIGCONT)  # a hung peer could not stop
        await net.stop_all()
