"""
Searching large networks in one process (the real protocol code on
in-memory transports), every hop taking a simulated 0.2 ms: N peers
(default 1,000 and 10,000), --max-neighbours 2, 3 and 8.

For a file held by the peer farthest from the searcher it prints the
simulated time to the answer, the same for a name nobody has, whether each
said that every peer answered, and the overlay messages per search
against the 2(N-1) that a convergecast needs.  Baseline in the same run:
the least a convergecast can take, a round trip over the searcher's
longest path (2 x depth x 0.2 ms), plus the two round trips to the
metadata server that every search makes (its size, and the holders it
vouches for); figures are given as a ratio of it.

    python bench/search.py [--peers 1000 10000] [--limits 2 3 8] [--hop-ms 0.2]
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

from p2pshare.simnet import SimNet
from p2pshare.topo import distances, far_apart
from p2pshare.wire import Match


def build(n: int, max_neighbours: int) -> SimNet:
    """
    C{n} peers joined one after another (as tests/test_scale_sim.py does:
    hour-long heartbeats, a short flush interval).
    """
    net = SimNet(None, seed=11)
    net.start_meta(expect=10 * n).flush_interval = 0.01
    for _ in range(n):
        net.make_peer(max_neighbours, shared=False, heartbeat=3600).startService()
        net.settle()
    return net


def search(net: SimNet, origin: Any, pattern: str) -> tuple[float, int, Any]:
    count = lambda: sum(p.messages["SEARCH"] + p.messages["RESULTS"] for p in net.peers)  # noqa: E731
    before = count()
    result: list[Any] = []
    ended: list[float] = []
    started = net.clock.seconds()
    d = origin.search.start(pattern, 60.0).addCallback(result.append)
    d.addCallback(lambda _: ended.append(net.clock.seconds()))
    while not result:
        net.idle(0.001)
    return ended[0] - started, count() - before, result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--limits", type=int, nargs="+", default=[2, 3, 8])
    parser.add_argument("--hop-ms", type=float, default=0.2)
    args = parser.parse_args()
    hop = args.hop_ms / 1000
    print(f"{'peers':>6} {'limit':>5} {'depth':>5} {'found':>9} {'none':>9} "
          f"{'ideal':>9} {'ratio':>5} {'complete':>8} {'messages':>9} {'2(N-1)':>7}")
    for n in args.peers:
        for limit in args.limits:
            started = time.perf_counter()
            net = build(n, limit)
            gc.freeze()  # thousands of simulated peers: not the collector's to walk
            built = time.perf_counter() - started
            views = net.views()
            holder_name, origin_name, _ = far_apart(views)
            by_name = {p.peer_name: p for p in net.peers}
            holder, origin = by_name[holder_name], by_name[origin_name]
            held = Match("far-away.bin", 1000, "f" * 64, holder_name, holder.host, holder.port, 0)
            holder.local_matches = lambda pattern, hops, exact=False, held=held: (  # type: ignore[method-assign]
                [held] if pattern == held.name else []
            )
            depth = max(distances(views, origin_name).values())
            net.latency = hop
            found_s, found_msgs, found = search(net, origin, "far-away.bin")
            assert [m.holder for m in found.matches] == [holder_name], found
            none_s, none_msgs, nothing = search(net, origin, "nobody-has-this")
            assert nothing.matches == []
            ideal = (2 * depth + 4) * hop
            complete = found.coverage.complete and nothing.coverage.complete
            print(f"{n:>6} {limit:>5} {depth:>5} {found_s * 1000:>7.1f}ms {none_s * 1000:>7.1f}ms "
                  f"{ideal * 1000:>7.1f}ms {max(found_s, none_s) / ideal:>5.2f} "
                  f"{'yes' if complete else 'NO':>8} {found_msgs:>9} {2 * (n - 1):>7}  "
                  f"({found.coverage.sentence()}; built in {built:.0f} s)", flush=True)
            del net, views, by_name, holder, origin
            gc.unfreeze()
            gc.collect()


if __name__ == "__main__":
    main()
