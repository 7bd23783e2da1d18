"""
Real processes: peers killed with SIGKILL (in the middle of the tree, the
root, two neighbours at once); the rest form one tree again within the
heartbeat bound plus 5 s, and every file they hold can still be found and
fetched.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest_twisted
from twisted.internet.threads import deferToThread

from p2pshare.disk import atomic_write
from p2pshare.launch import LocalNetwork, progress_at
from p2pshare.simnet import assert_tree
from p2pshare.topo import parse_topo

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
BEAT = 1.0
BOUND = 3 * BEAT + 5  # three silent beats, plus the 5 s the issue allows


def run(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def topo(net):
    return {e.name: e.neighbours for e in parse_topo((net.meta_dir / "topo.txt").read_text())}


async def started(net, n):
    """
    A metadata server and C{n} peers (heartbeat BEAT) in one tree.
    """
    meta = await net.start_meta(n)
    for _ in range(n):
        await net.start_peer("--heartbeat", str(BEAT))
    views = await settled(net, meta, n, 0)
    return meta, views, await net.names()


async def settled(net, meta, n, since):
    await meta.wait_for(f"topology settled: {n} peers", BOUND, since)
    views = topo(net)
    assert len(views) == n
    assert_tree(views, {name: 2 for name in views})
    return views


async def check_files(net, keys):
    """
    Every live peer holds a file; each is found from one peer and fetched.
    """
    searcher = sorted(keys)[0]
    out = await deferToThread(run, *P2P, "search", "held-by-*", "--json", "--peer", net.control(keys[searcher]))
    assert out.returncode == 0, out.stderr
    found = {(m["name"], m["holder"]) for m in map(json.loads, out.stdout.splitlines())}
    # Every live peer's own file, from that peer (copies fetched earlier
    # are shared onward too), and nothing from a dead peer.
    assert {(f"held-by-{n}", n) for n in keys} <= found, out.stdout
    assert {holder for _, holder in found} <= set(keys)
    target = sorted(keys)[-1]
    get = await deferToThread(run, *P2P, "get", f"held-by-{searcher}", "--peer", net.control(keys[target]))
    assert get.returncode == 0, get.stderr


@pytest_twisted.ensureDeferred
async def test_sigkill_in_the_middle_of_the_root_and_of_two_neighbours(reactor, tmp_path):
    net = LocalNetwork(reactor, tmp_path)
    try:
        meta, views, keys = await started(net, 10)
        for name, key in keys.items():
            atomic_write(net.root / key / "shared" / f"held-by-{name}", name.encode())
        for key in keys.values():
            await net.peers[key].wait_for("sharing held-by-", 30)

        # A peer in the middle of the tree.
        middle = next(n for n in views if len(views[n]) == 2 and n != "s1")
        since = len(meta.lines)
        net.peers[keys.pop(middle)].signal(signal.SIGKILL)
        views = await settled(net, meta, 9, since)
        await check_files(net, keys)

        # The root.
        root = next(iter(views))
        since = len(meta.lines)
        net.peers[keys.pop(root)].signal(signal.SIGKILL)
        views = await settled(net, meta, 8, since)
        await check_files(net, keys)

        # Two neighbours at once.
        a = next(n for n in views if len(views[n]) == 2)
        b = views[a][0]
        since = len(meta.lines)
        net.peers[keys.pop(a)].signal(signal.SIGKILL)
        net.peers[keys.pop(b)].signal(signal.SIGKILL)
        await settled(net, meta, 6, since)
        await check_files(net, keys)
        assert (net.meta_dir / "NumberOfServers.txt").read_text() == "6\n"
    finally:
        await net.stop_all()


@pytest_twisted.ensureDeferred
async def test_metadata_server_killed_and_restarted_while_a_transfer_runs(reactor, tmp_path):
    net = LocalNetwork(reactor, tmp_path)
    try:
        meta, views, keys = await started(net, 5)
        leaves = sorted(n for n in views if len(views[n]) == 1)
        doomed, holder = leaves[0], leaves[1]
        getter = next(n for n in sorted(views) if n not in (doomed, holder))
        data = b"".join(i.to_bytes(4, "big") * 256 for i in range(150_000))  # 150 MiB-ish
        atomic_write(net.root / keys[holder] / "shared" / "big.bin", data)
        await net.peers[keys[holder]].wait_for("sharing big.bin", 60)

        get = net.p2p("get", "big.bin", "--peer", net.control(keys[getter]))
        await progress_at(get, 5)
        meta.signal(signal.SIGKILL)
        await meta.when_ended(10)
        # While it is down, a peer dies for good, and the overlay still
        # searches.
        net.peers[keys.pop(doomed)].signal(signal.SIGKILL)
        found = await deferToThread(run, *P2P, "search", "big.bin", "--peer", net.control(keys[getter]))
        assert found.returncode == 0 and found.stdout.startswith(f"big.bin\t{len(data)}\t")

        meta = await net.start_meta(5)
        assert "with 5 peer(s) in the registry" in meta.lines[-1]
        # The live peers are back in topo.txt within a heartbeat or so.
        await meta.wait_for("topology settled: 4 peers", BEAT + 3)
        assert doomed not in topo(net)
        assert (net.meta_dir / "NumberOfServers.txt").read_text() == "4\n"
        # A newcomer joins the restarted server's network, and the one that
        # never came back is dropped from the registry.
        since = len(meta.lines)
        await net.start_peer("--heartbeat", str(BEAT))
        await settled(net, meta, 5, since)
        await meta.wait_for(f"peer {doomed} did not come back after the restart", 20)
        assert (net.meta_dir / "NumberOfServers.txt").read_text() == "5\n"
        assert doomed not in topo(net)

        assert await get.when_ended(120) == 0, get.output()
        assert (net.root / keys[getter] / "shared" / "big.bin").read_bytes() == data
    finally:
        await net.stop_all()


@pytest_twisted.ensureDeferred
async def test_a_restarted_peer_takes_its_name_back_and_nobody_else_can(reactor, tmp_path):
    net = LocalNetwork(reactor, tmp_path)
    try:
        meta = await net.start_meta(3)
        for _ in range(3):
            await net.start_peer("--heartbeat", "5")
        await settled(net, meta, 3, 0)
        keys = await net.names()
        name = sorted(keys)[-1]
        key = keys[name]
        net.peers[key].signal(signal.SIGKILL)
        await net.peers[key].when_ended(10)
        # Someone else asking for the vanished peer's name is refused ...
        _, thief = await net.start_peer("--name", name, wait=False)
        await thief.wait_for(f"the name {name} belongs to a peer that vanished recently", 30)
        assert await thief.when_ended(30) == 1
        # ... while the peer itself, restarted with its data dir, gets it back.
        since = len(meta.lines)
        _, again = await net.start_peer("--heartbeat", "5", key=key)
        assert (await net.names())[name] == key
        await settled(net, meta, 3, since)
        # A graceful stop frees the name at once.
        out = await deferToThread(run, *P2P, "stop", "--peer", net.control(key))
        assert (out.returncode, out.stdout) == (0, f"{name} is leaving the network\n")
        await again.when_ended(30)
        await meta.wait_for(f"peer {name} says goodbye", 10, since)
        await net.start_peer("--name", name)
    finally:
        await net.stop_all()


@pytest_twisted.ensureDeferred
async def test_a_download_resumes_when_its_only_holder_comes_back(reactor, tmp_path):
    net = LocalNetwork(reactor, tmp_path)
    try:
        meta, views, keys = await started(net, 3)
        holder, getter = sorted(n for n in views if len(views[n]) == 1)
        data = b"".join(i.to_bytes(4, "big") * 256 for i in range(200_000))
        atomic_write(net.root / keys[holder] / "shared" / "big.bin", data)
        await net.peers[keys[holder]].wait_for("sharing big.bin", 60)

        get = net.p2p("get", "big.bin", "--peer", net.control(keys[getter]))
        await progress_at(get, 5)
        net.peers[keys[holder]].signal(signal.SIGKILL)
        await net.peers[keys[holder]].when_ended(10)
        getter_log = net.peers[keys[getter]]
        await getter_log.wait_for("searching again in", 60)
        # Meanwhile the peer shows the download in progress.
        status = await deferToThread(run, *P2P, "status", "--peer", net.control(keys[getter]))
        assert re.search(r"^downloading big\.bin: .* of 195\.3 MiB", status.stdout, re.M), status.stdout
        # The holder comes back (at another port), under its own name.
        await net.start_peer("--heartbeat", str(BEAT), key=keys[holder])
        assert await get.when_ended(120) == 0, get.output()
        assert (net.root / keys[getter] / "shared" / "big.bin").read_bytes() == data
        kept = [int(line.split("resumes with ")[1].split()[0])
                for line in getter_log.lines if "download of big.bin resumes with" in line]
        assert kept and kept[0] > 0, "the download did not resume from verified pieces"
        assert "verified" in get.output()
    finally:
        await net.stop_all()


@pytest_twisted.ensureDeferred
async def test_sigterm_ends_a_peer_after_its_goodbyes(reactor, tmp_path):
    """
    SIGTERM (what systemd and `kill` send) makes a peer say BYE to the
    metadata server and to its neighbours, and exit cleanly: nobody waits
    for a heartbeat to learn it left (each logs the goodbye as one, and
    the heartbeat is 30 s; the time it takes is bench business).
    """
    net = LocalNetwork(reactor, tmp_path)
    try:
        # A slow heartbeat: a neighbour that learns of the leaving within
        # the test's bounds learned it from the goodbye, not from silence.
        meta = await net.start_meta(3)
        for _ in range(3):
            await net.start_peer("--heartbeat", "30")
        await meta.wait_for("topology settled: 3 peers", 30)
        views, keys = topo(net), await net.names()
        leaver = next(name for name in sorted(views) if len(views[name]) == 1)
        [neighbour] = views[leaver]
        since_meta = len(meta.lines)
        since_neighbour = len(net.peers[keys[neighbour]].lines)
        proc = net.peers[keys[leaver]]
        proc.signal(signal.SIGTERM)
        code = await proc.when_ended(60)
        assert code in (0, -signal.SIGTERM)
        await meta.wait_for(f"peer {leaver} says goodbye", 60, since_meta)
        await net.peers[keys[neighbour]].wait_for(f"peer {neighbour}: {leaver} said goodbye", 60, since_neighbour)
        await meta.wait_for("topology settled: 2 peers", 60, since_meta)
        assert set(topo(net)) == set(views) - {leaver}
    finally:
        await net.stop_all()
