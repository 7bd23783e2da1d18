"""
Reversed and relayed transfers in a private network, with real processes
on 127.0.0.1: a relay R (a peer, or the metadata server itself), a reachable getter G, and a holder H and a getter
D that nobody can dial (each ``--advertise``s an address where nothing
listens, so the metadata server's dial-back fails).  G fetches from H by a
reversed connection (H dials G, inside the network's TLS), D fetches from
H through R (TLS to R on each side, and TLS between D and H inside the
splice).  Both copies verify; each end names the path in p2p status.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest
import pytest_twisted
from watching import status_line

from p2pshare.admission import new_secret_text
from p2pshare.disk import atomic_write
from p2pshare.launch import P2P, LocalNetwork


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("relay_at", ["peer", "meta"])
@pytest_twisted.ensureDeferred
async def test_reversed_and_relayed_transfers_in_a_private_network(reactor, tmp_path, relay_at):
    secret = tmp_path / "network.secret"
    secret.write_text(new_secret_text())
    net = LocalNetwork(reactor, tmp_path / "net", secret_file=secret, timeout=60)
    (tmp_path / "net").mkdir()
    try:
        meta = await net.start_meta(4, *(["--relay"] if relay_at == "meta" else []))
        relay, _ = await net.start_peer(*(["--relay"] if relay_at == "peer" else []))
        getter, _ = await net.start_peer()
        holder, holder_proc = await net.start_peer("--advertise", "127.0.0.254", "--upload-rate", "2M")
        behind, behind_proc = await net.start_peer("--advertise", "127.0.0.253")
        await meta.wait_for("topology settled: 4 peers", 60)
        for proc in (holder_proc, behind_proc):
            await proc.wait_for("cannot reach this peer", 60)
        data = os.urandom(6 * 2**20)
        atomic_write(net.root / holder / "shared" / "plans.bin", data)
        await holder_proc.wait_for("sharing plans.bin", 30)
        for key, path in ((getter, "reversed"), (behind, "relayed")):
            get = net.p2p("get", "plans.bin", "--peer", net.control(key), "-o",
                          str(tmp_path / key))
            await status_line(net.control(key), rf"^downloading plans\.bin.*, {path}$")
            await status_line(net.control(holder), rf"^uploading plans\.bin to .*, {path}$")
            assert await get.when_ended(60) == 0, get.output()
            kept = (tmp_path / key / "plans.bin").read_bytes()
            assert hashlib.sha256(kept).digest() == hashlib.sha256(data).digest()
        if relay_at == "peer":
            relayed = run(*P2P, "status", "--peer", net.control(relay)).stdout
            assert re.search(r"^relay: splicing 0 of at most 8 at once \(no rate cap\); "
                             r"[1-9]\d* spliced", relayed, re.M), relayed
        else:
            assert "p2pmeta relays for peers that cannot reach each other" in meta.output()
    finally:
        await net.stop_all()


@pytest_twisted.ensureDeferred
async def test_leaves_make_room_for_a_peer_others_can_reach(reactor, tmp_path):
    """
    The root's two slots are taken by peers nobody can reach (leaves, which
    take no children): a reachable newcomer still joins, one leaf moves
    below it, and the tree can go on growing.
    """
    from p2pshare.simnet import assert_tree
    from p2pshare.topo import parse_topo

    net = LocalNetwork(reactor, tmp_path / "net", timeout=60)
    (tmp_path / "net").mkdir()
    try:
        meta = await net.start_meta(4)
        await net.start_peer()
        for host in ("127.0.0.254", "127.0.0.253"):
            _, leaf = await net.start_peer("--advertise", host)
            await leaf.wait_for("cannot reach this peer", 60)
        await meta.wait_for("topology settled: 3 peers", 60)
        _, newcomer = await net.start_peer()  # waits until it has joined
        assert "ready on port" in newcomer.output()
        await meta.wait_for("topology settled: 4 peers", 60)
        topo = run(*P2P, "topo", "--data-dir", str(net.meta_dir))
        views = {e.name: e.neighbours for e in parse_topo(topo.stdout)}
        assert_tree(views, {n: 2 for n in views})
        name = next(line.split(" ready on port ")[0].rsplit("peer ", 1)[1]
                    for line in newcomer.lines if " ready on port " in line)
        assert len(views[name]) == 2, views  # its parent, and the leaf that moved
    finally:
        await net.stop_all()
