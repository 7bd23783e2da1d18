"""
C{p2p demo}: a real local network, as C{make demo} shows it.

A metadata server and N peers start as real C{twistd} processes on free
loopback ports in a temporary directory; the demo waits for the network
to form, prints C{topo.txt}, and stops everything cleanly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from p2pshare.launch import LocalNetwork
from p2pshare.topo import parse_topo, tree_text


def say(text: str) -> None:
    print(text, flush=True)


async def run_demo(reactor: Any, peers: int = 5) -> int:
    with tempfile.TemporaryDirectory(prefix="p2p-demo-") as tmp:
        net = LocalNetwork(reactor, Path(tmp))
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
        [Deferred.fromCoroutine(net.start_peer()) for _ in range(peers)]
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
    return 0
