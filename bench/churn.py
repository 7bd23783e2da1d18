"""
Churn in one process: 200 peers (the real protocol code on in-memory
transports, heartbeat 5 s).  Every simulated minute for 30 minutes, 10% of
the peers fail at random (half crash, their connections reset; half hang,
noticed only by heartbeat) and as many newcomers join; searches run all
along.  Prints the time to repair after each wave (median, max), the share
of searches answered correctly, and heartbeat messages per peer per minute.

    python bench/churn.py [--peers 200] [--minutes 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from p2pshare.simnet import SimNet, assert_tree

STEP = 0.5


def healed(net: SimNet, dead: set) -> bool:
    peers = [p for p in net.peers if p.running and p not in dead]
    views = {p.peer_name: list(p.neighbours) for p in peers}
    try:
        assert_tree(views, {p.peer_name: p.max_neighbours for p in peers})
    except AssertionError:
        return False
    return all(p.joined and not p.orphaned for p in peers) and net.topo_file() == views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=30)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="p2p-churn-") as tmp:
        net = SimNet.grown(Path(tmp), args.peers, 3, seed=42, seconds=300)
        hung: set = set()
        repairs: list[float] = []
        searches = correct = 0
        pings_before = sum(p.messages["PING"] + p.messages["PONG"] for p in net.peers)
        for minute in range(args.minutes):
            live = [p for p in net.peers if p.running and p not in hung]
            for p in live:
                if p.share is not None and not p.share.files:
                    (p.share.directory / f"f-{p.peer_name}").write_bytes(b"x")
                    p.refresh_share()
            victims = net.rng.sample(live, max(1, len(live) // 10))
            for i, v in enumerate(victims):
                if i % 2:
                    net.crash(v)
                else:
                    net.freeze(v._listening.getHost().host)
                    v._beating.stopService()
                    hung.add(v)
            for _ in victims:
                net.make_peer(3).startService()
            waited, repaired = 0.0, None
            while waited < 60.0:
                net.flush()
                if repaired is None and healed(net, hung):
                    repaired = waited
                # A search every simulated 5 s from a random live peer.
                if waited % 5.0 == 0:
                    alive = [p for p in net.peers if p.running and p not in hung and p.joined]
                    origin = net.rng.choice(alive)
                    expected = sorted(
                        p.peer_name for p in alive
                        if p.share is not None and f"f-{p.peer_name}" in p.share.files
                    )
                    result: list = []
                    origin.search.start("f-*", 10.0).addCallback(result.append)
                    net.flush()
                    for _ in range(int(10.0 / STEP) + 1):
                        if result:
                            break
                        net.clock.advance(STEP)
                        net.flush()
                        waited += STEP
                    searches += 1
                    if result and sorted(m.holder for m in result[0]) == expected:
                        correct += 1
                net.clock.advance(STEP)
                waited += STEP
            repairs.append(repaired if repaired is not None else float("inf"))
            print(f"minute {minute + 1:2d}: {len(victims)} failed, repaired in "
                  f"{repairs[-1]:.1f} s (simulated)", flush=True)
        live_count = len([p for p in net.peers if p.running and p not in hung])
        pings = sum(p.messages["PING"] + p.messages["PONG"] for p in net.peers) - pings_before
    finite = [r for r in repairs if r != float("inf")]
    print(f"== {args.peers} peers, {args.minutes} simulated minutes, "
          f"{time.perf_counter() - started:.0f} s of real time")
    print(f"repair after each wave: median {statistics.median(repairs):.1f} s, "
          f"max {max(repairs):.1f} s ({len(repairs) - len(finite)} waves not repaired within 60 s)")
    print(f"searches answered correctly: {correct}/{searches} ({correct / max(searches, 1):.0%})")
    print(f"heartbeat messages (PING + PONG): {pings / max(live_count, 1) / args.minutes:.1f} "
          f"per peer per minute")


if __name__ == "__main__":
    main()
