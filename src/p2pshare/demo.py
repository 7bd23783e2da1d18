"""
C{p2p demo}: a real local network, as C{make demo} shows it.

A metadata server and N peers start as real C{twistd} processes on free
loopback ports in a temporary directory; the demo waits for the network
to form and prints C{topo.txt}; then it places a file on one end of the tree,
finds it and fetches it, verified, from the other end, searches for a file
nobody has, and stops everything cleanly.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from p2pshare.admission import new_secret_text
from p2pshare.disk import atomic_write, human_size, private_write
from p2pshare.launch import LocalNetwork
from p2pshare.tls import make_certs
from p2pshare.topo import TopoEntry, far_apart, parse_topo, tree_text

DEMO_SIZE = 20_000_000


def say(text: str) -> None:
    print(text, flush=True)


async def run_demo(reactor: Any, peers: int = 5, private: bool = False, tls: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="p2p-demo-") as tmp:
        root = Path(tmp)
        secret_file = certs = None
        if private:
            secret_file = root / "network.secret"
            private_write(secret_file, new_secret_text().encode())
            say(f"a private network: every role holds the secret in {secret_file}, and "
                "every connection is TLS made from it")
        if tls:
            certs = root / "certs"
            make_certs(certs, ["meta", *(f"p{i}" for i in range(1, peers + 1))])
            say(f"an encrypted network: a private CA and a certificate per role in {certs}")
        net = LocalNetwork(reactor, root, secret_file=secret_file, certs=certs)
        try:
            return await _demo(net, peers)
        except Exception as e:
            say(f"demo failed: {e}")
            for name, proc in [("meta", net.meta), *net.peers.items()]:
                if proc is not None:
                    say(f"--- last lines of {name} ---")
                    say("\n".join(proc.lines[-15:]))
            return 1
        finally:
            await net.stop_all()
            say("all processes stopped")


async def _demo(net: LocalNetwork, peers: int) -> int:
    say(f"starting a metadata server and {peers} peers in {net.root}")
    meta = await net.start_meta(expect=peers)
    say(f"metadata server listening on 127.0.0.1:{net.meta_port}")
    started = await gatherResults(
        [Deferred.fromCoroutine(net.start_peer()) for _ in range(peers)], consumeErrors=True
    )
    joins = []
    for _, proc in started:
        for line in proc.lines:
            if "joined the overlay" in line or "is the root" in line:
                joins.append(line.split("] ", 1)[-1])
    for line in sorted(joins, key=lambda j: int(j.split()[1][1:])):
        say("  " + line)
    await meta.wait_for("network complete", net.timeout)
    topo = (net.meta_dir / "topo.txt").read_text()
    say("network complete; topo.txt says:")
    say(topo.rstrip("\n"))
    say(f"NumberOfServers.txt says: {(net.meta_dir / 'NumberOfServers.txt').read_text().strip()}")
    say("as a tree:")
    say(tree_text(parse_topo(topo)).rstrip("\n"))
    return await _share_a_file(net, parse_topo(topo))


async def _share_a_file(net: LocalNetwork, entries: list[TopoEntry]) -> int:
    """
    Put a file on one end of the tree, find it and fetch it, verified, from
    the other end; then look for something nobody has.
    """
    keys = await net.names()
    views = {e.name: e.neighbours for e in entries}
    holder, requester, hops = far_apart(views)
    data = os.urandom(DEMO_SIZE)
    sha = hashlib.sha256(data).hexdigest()
    say(f"\nplacing demo.bin ({human_size(DEMO_SIZE)}, sha256 {sha[:16]}...) on {holder}")
    atomic_write(net.root / keys[holder] / "shared" / "demo.bin", data)
    await net.peers[keys[holder]].wait_for("sharing demo.bin", net.timeout)

    say(f"$ p2p search demo.bin        (on {requester}, {hops} hops from {holder})")
    search = net.p2p("search", "demo.bin", "--peer", net.control(keys[requester]), on_line=_show)
    if await search.when_ended(net.timeout) != 0:
        return 1
    say(f"$ p2p get demo.bin           (on {requester})")
    get = net.p2p("get", "demo.bin", "--peer", net.control(keys[requester]), on_line=_show)
    if await get.when_ended(net.timeout) != 0:
        return 1
    copy = net.root / keys[requester] / "shared" / "demo.bin"
    if copy.read_bytes() != data:
        say("the copy differs from the original!")
        return 1
    say(f"the copy on {requester} is identical to the original on {holder}")
    say("$ p2p search no-such-file.txt")
    missing = net.p2p("search", "no-such-file.txt", "--peer", net.control(keys[requester]), on_line=_show)
    if await missing.when_ended(net.timeout) != 1:
        return 1
    return 0


def _show(line: str) -> None:
    say("  " + line)
