"""
Searching large networks in one process (the real protocol code on
in-memory transports): N peers (default 1000), --max-neighbours 2 and 4.

For a file held by the peer farthest from the searcher it prints the time
to a definitive answer (CPU time of the whole network, since the simulated
links are instantaneous), the same for a name nobody has, and the overlay
messages per search against the 2(N-1) that a convergecast needs.
Baseline in the same run: the same number of bare line round trips over
the same transports.

    python bench/search.py [--peers 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from join import bare_exchanges  # type: ignore[import-not-found]

from p2pshare.simnet import SimNet
from p2pshare.topo import far_apart


def build(n: int, max_neighbours: int, tmp: Path) -> SimNet:
    return SimNet.grown(tmp, n, max_neighbours, seed=11, seconds=600)


def search(net: SimNet, origin: object, pattern: str) -> tuple[float, int, list[object]]:
    count = lambda: sum(p.messages["SEARCH"] + p.messages["RESULTS"] for p in net.peers)  # noqa: E731
    before = count()
    result: list[object] = []
    started = time.perf_counter()
    origin.search.start(pattern, 60.0).addCallback(result.append)  # type: ignore[attr-defined]
    net.flush()
    elapsed = time.perf_counter() - started
    assert result, "no definitive answer"
    return elapsed, count() - before, result[0]  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=1000)
    args = parser.parse_args()
    n = args.peers
    baseline = bare_exchanges(2 * (n - 1))
    print(f"baseline: {baseline:,.0f} bare request/reply exchanges per s, so 2(N-1) = "
          f"{2 * (n - 1)} of them take {2 * (n - 1) / baseline * 1000:.1f} ms")
    for max_neighbours in (2, 4):
        with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
            started = time.perf_counter()
            net = build(n, max_neighbours, Path(tmp))
            built = time.perf_counter() - started
            views = net.views()
            a, b, hops = far_apart(views)
            by_name = {p.peer_name: p for p in net.peers}
            holder, origin = by_name[a], by_name[b]
            assert holder.share is not None
            (holder.share.directory / "far-away.bin").write_bytes(b"x" * 1000)
            holder.refresh_share()
            net.flush()
            found_s, found_msgs, found = search(net, origin, "far-away.bin")
            assert [m.holder for m in found] == [a]  # type: ignore[attr-defined]
            none_s, none_msgs, nothing = search(net, origin, "nobody-has-this")
            assert nothing == []
            print(
                f"N={n} max-neighbours {max_neighbours} (built in {built:.1f} s, "
                f"diameter {hops} hops): found in {found_s * 1000:.1f} ms, "
                f"not found in {none_s * 1000:.1f} ms; messages {found_msgs} and {none_msgs} "
                f"for 2(N-1) = {2 * (n - 1)}; "
                f"{found_s / (2 * (n - 1) / baseline):.1f}x the bare exchanges"
            )


if __name__ == "__main__":
    main()
