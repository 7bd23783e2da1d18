"""
Real hosts: network namespaces made by this test, joined by veth pairs to
a bridge in a namespace of their own, one metadata server and four peers
on distinct addresses.  Joining, searching and a transfer across them; then
one host's link is cut and the rest repair the tree.

Every address lives in 198.18.0.0/24 (set aside for benchmarks, RFC 2544)
inside namespaces this test creates and deletes: no traffic leaves them.
Skipped, with the reason, where namespaces cannot be made (not root, no
iproute2, a sandbox that forbids it).
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import pytest_twisted
from nat import stop_all, why_not
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread

from p2pshare.disk import atomic_write
from p2pshare.launch import P2P, TWISTD, ChildProcess
from p2pshare.simnet import assert_tree
from p2pshare.topo import parse_topo

PREFIX = f"p2pt{os.getpid() % 100000}"
SWITCH = f"{PREFIX}sw"
NET = "198.18.0"
BEAT = "1"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


WHY_NOT = why_not((("ip", "iproute2"),))
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


@pytest.fixture
def hosts():
    """
    Five hosts (h0 ... h4) on one bridge; yields their namespace names.
    """
    names = [f"{PREFIX}h{i}" for i in range(5)]
    made = []
    try:
        ip("netns", "add", SWITCH)
        made.append(SWITCH)
        ip("-n", SWITCH, "link", "add", "br0", "type", "bridge")
        ip("-n", SWITCH, "link", "set", "br0", "up")
        for i, ns in enumerate(names):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"port{i}",
               "netns", SWITCH)
            ip("-n", ns, "addr", "add", f"{NET}.{10 + i}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", SWITCH, "link", "set", f"port{i}", "master", "br0")
            ip("-n", SWITCH, "link", "set", f"port{i}", "up")
        yield names
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def in_ns(reactor, ns, role, argv, cwd, log):
    return ChildProcess(reactor, role, ["ip", "netns", "exec", ns, *argv], cwd, log).start()


def run(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


@pytest_twisted.ensureDeferred
async def test_hosts_join_search_transfer_and_repair_after_losing_one(reactor, tmp_path, hosts):
    procs: list[ChildProcess] = []
    try:
        meta_dir = tmp_path / "meta"
        meta_dir.mkdir()
        meta = in_ns(reactor, hosts[0], "p2pmeta", TWISTD + [
            "-n", "--pidfile=", "p2pmeta", "--port", f"tcp:5000:interface={NET}.10",
            "--data-dir", str(meta_dir), "--expect", "4",
        ], tmp_path, tmp_path / "meta.log")
        procs.append(meta)
        await meta.wait_for("p2pmeta ready", 30)
        peers = {}
        for i in range(1, 5):
            data = tmp_path / f"h{i}"
            data.mkdir()
            peers[i] = in_ns(reactor, hosts[i], "p2ppeer", TWISTD + [
                "-n", "--pidfile=", "p2ppeer", "--port", f"tcp:5001:interface={NET}.{10 + i}",
                "--meta", f"tcp:{NET}.10:5000", "--data-dir", str(data), "--heartbeat", BEAT,
            ], tmp_path, tmp_path / f"h{i}.log")
            procs.append(peers[i])
        await gatherResults([p.wait_for(" ready on port ", 30) for p in peers.values()])
        await meta.wait_for("topology settled: 4 peers", 30)

        # Each peer is known at its own host's address.
        topo = run(*P2P, "topo", "--data-dir", str(meta_dir))
        views = {e.name: e.neighbours for e in parse_topo(topo.stdout)}
        assert_tree(views, {n: 2 for n in views})
        seen = {line.split()[-1] for line in (tmp_path / "meta.log").read_text().splitlines()
                if " registered from " in line}
        assert {s.rsplit(":", 1)[0] for s in seen} == {f"{NET}.{10 + i}" for i in range(1, 5)}

        # A file on host 1 is found and fetched, verified, from host 4.
        data = os.urandom(5_000_000)
        atomic_write(tmp_path / "h1" / "shared" / "across.bin", data)
        await peers[1].wait_for("sharing across.bin", 30)
        control4 = f"unix:{tmp_path / 'h4' / 'control.sock'}"
        found = await deferToThread(run, *P2P, "search", "across.bin", "--peer", control4)
        assert found.returncode == 0, found.stderr
        get = await deferToThread(run, *P2P, "get", "across.bin", "--peer", control4)
        assert get.returncode == 0, get.stderr
        assert (tmp_path / "h4" / "shared" / "across.bin").read_bytes() == data

        # Host 2 loses its link: the others notice by heartbeat and repair.
        since = len(meta.lines)
        ip("-n", SWITCH, "link", "set", "port2", "down")
        await meta.wait_for("topology settled: 3 peers", 3 * float(BEAT) + 10, since)
        topo = run(*P2P, "topo", "--data-dir", str(meta_dir))
        views = {e.name: e.neighbours for e in parse_topo(topo.stdout)}
        assert len(views) == 3
        assert_tree(views, {n: 2 for n in views})
        found = await deferToThread(run, *P2P, "search", "across.bin", "--peer", control4)
        assert found.returncode == 0 and "across.bin" in found.stdout
    finally:
        await stop_all(procs)



@pytest_twisted.ensureDeferred
async def test_peers_find_a_metadata_server_that_announces_itself(reactor, tmp_path, hosts):
    """
    Zero-config: a metadata server started with --announce on host 0; a
    peer with --meta auto on host 1, one started by `p2p share --meta auto`
    on host 2, and `p2p topo --meta auto` on host 3 find it by multicast
    DNS with no address given.  Without --announce, `p2p share --meta auto`
    says in one sentence that none was found.
    """
    procs: list[ChildProcess] = []
    share_control = f"unix:{tmp_path / 'h2' / 'control.sock'}"
    try:
        meta_dir = tmp_path / "meta"
        meta_dir.mkdir()
        meta = in_ns(reactor, hosts[0], "p2pmeta", TWISTD + [
            "-n", "--pidfile=", "p2pmeta", "--port", "tcp:5000", "--announce",
            "--data-dir", str(meta_dir), "--expect", "2",
        ], tmp_path, tmp_path / "meta.log")
        procs.append(meta)
        await meta.wait_for("announced on the LAN by multicast DNS", 30)
        assert f"({NET}.10 port 5000)" in meta.output()  # its LAN address, not loopback

        data = tmp_path / "h1"
        data.mkdir()
        peer = in_ns(reactor, hosts[1], "p2ppeer", TWISTD + [
            "-n", "--pidfile=", "p2ppeer", "--port", f"tcp:5001:interface={NET}.11",
            "--meta", "auto", "--data-dir", str(data),
        ], tmp_path, tmp_path / "h1.log")
        procs.append(peer)
        await peer.wait_for(" ready on port ", 30)
        assert "found the metadata server p2pmeta on " in peer.output()

        (tmp_path / "share2").mkdir()
        atomic_write(tmp_path / "share2" / "hello.txt", b"hello over the LAN\n")
        share = await deferToThread(
            run, "ip", "netns", "exec", hosts[2], *P2P, "share", str(tmp_path / "share2"),
            "--meta", "auto", "--data-dir", str(tmp_path / "h2"), "--port", f"tcp:5002:interface={NET}.12",
        )
        assert share.returncode == 0, share.stdout + share.stderr
        assert f"({NET}.12:5002)" in share.stdout
        await meta.wait_for("topology settled: 2 peers", 30)

        topo = await deferToThread(run, "ip", "netns", "exec", hosts[3], *P2P, "topo", "--meta", "auto")
        assert topo.returncode == 0, topo.stderr
        assert len(parse_topo(topo.stdout)) == 2

        # The announcement ends with the server.
        meta.signal(signal.SIGTERM)
        await meta.when_ended(15)
        missing = await deferToThread(
            run, "ip", "netns", "exec", hosts[4], *P2P, "share", str(tmp_path / "share2"),
            "--meta", "auto", "--data-dir", str(tmp_path / "h4"),
        )
        assert missing.returncode == 1
        assert "no metadata server announced itself on this LAN within" in missing.stderr
        assert missing.stderr.count("\n") == 1
    finally:
        subprocess.run([*P2P, "stop", "--peer", share_control], capture_output=True, timeout=30)
        await stop_all(procs)
