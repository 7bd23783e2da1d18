"""
Churn in one process: 200 peers (the real protocol code on in-memory
transports, heartbeat 5 s).  Every simulated minute for 30 minutes, 10% of
the peers fail at random (half crash, their connections reset; half hang,
noticed only by heartbeat) and as many newcomers join; searches run all
along.  Prints the time to repair after each wave (median, max),
heartbeat messages per peer per minute, and how searches fared:

* a search for every peer's file (``f-*``) every simulated 5 s, from a
  random live peer, is *right* (every live peer's file, and nothing
  else), *honest* (not right, but it says what it missed), or *wrong* (it
  claims that every peer answered, and misses a file a live peer holds);
* a search for one live peer's file as ``p2p get`` runs it (waiting for a
  repair when nothing was found while part of the network did not
  answer) every simulated 5 s: right when it finds the file.

    python bench/churn.py [--peers 200] [--minutes 30] [--seed 42]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from p2pshare.simnet import SimNet, assert_tree

STEP = 0.5
EVERY = 5.0  # simulated seconds between searches


def healed(net: SimNet, dead: set[Any]) -> bool:
    peers = [p for p in net.peers if p.running and p not in dead]
    views = {p.peer_name: list(p.neighbours) for p in peers}
    try:
        assert_tree(views, {p.peer_name: p.max_neighbours for p in peers})
    except AssertionError:
        return False
    return all(p.joined and not p.orphaned for p in peers) and net.topo_file() == views


class Tally:
    """
    How the searches of a run fared.
    """

    def __init__(self) -> None:
        self.right = self.honest = self.wrong = 0
        self.gets = self.gets_right = 0
        self.wrong_examples: list[str] = []

    def search(self, result: Any, expected: list[str]) -> None:
        matches = getattr(result, "matches", result)
        coverage = getattr(result, "coverage", None)  # None: it claims to be complete
        if sorted(m.holder for m in matches) == expected:
            self.right += 1
        elif coverage is not None and not coverage.complete:
            self.honest += 1
        else:
            self.wrong += 1
            missing = sorted(set(expected) - {m.holder for m in matches})
            self.wrong_examples.append(f"missed {missing[:5]} of {len(expected)}")

    def lines(self) -> list[str]:
        searches = self.right + self.honest + self.wrong
        return [
            f"searches for every file: {searches}: right {self.right} "
            f"({self.right / max(searches, 1):.1%}), honest and incomplete {self.honest}, "
            f"wrong {self.wrong}",
            f"searches as p2p get runs them: {self.gets_right}/{self.gets} right "
            f"({self.gets_right / max(self.gets, 1):.1%})",
        ]


def drive(
    net: SimNet, d: Deferred[Any], limit: float, step: Callable[[float], None]
) -> tuple[list[Any], float]:
    """
    Let time pass in steps until C{d} fires (at most C{limit} seconds),
    calling C{step} with the time waited after each: C{d}'s result (an
    empty list if it did not fire) and the time it took.
    """
    box: list[Any] = []
    d.addBoth(box.append)
    net.flush()
    waited = 0.0
    while not box and waited < limit:
        net.clock.advance(STEP)
        net.flush()
        waited += STEP
        step(waited)
    return box, waited


def lookup(origin: Any, name: str) -> Deferred[Any]:
    """
    The holders of C{name} as C{p2p get} finds them (waiting for a repair
    when it must); a list, empty when it failed.
    """
    files = origin.files
    if hasattr(files, "_holders"):
        d = Deferred.fromCoroutine(files._holders(name, 10.0, None))
        return d.addErrback(lambda f: [])
    return origin.search.start(name, 10.0)  # before it waited for repairs: one search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    started = time.perf_counter()
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="p2p-churn-") as tmp:
        net = SimNet.grown(Path(tmp), args.peers, 3, seed=args.seed, seconds=300)
        hung: set[Any] = set()
        repairs: list[float] = []
        pings_before = sum(p.messages["PING"] + p.messages["PONG"] for p in net.peers)

        def alive() -> list[Any]:
            return [p for p in net.peers if p.running and p not in hung]

        for minute in range(args.minutes):
            for p in alive():
                if p.share is not None and not p.share.files:
                    (p.share.directory / f"f-{p.peer_name}").write_bytes(b"x")
                    p.refresh_share()
            victims = net.rng.sample(alive(), max(1, len(alive()) // 10))
            for i, v in enumerate(victims):
                if i % 2:
                    net.crash(v)
                else:
                    net.freeze(v._listening.getHost().host)
                    v._beating.stopService()
                    hung.add(v)
            for _ in victims:
                net.make_peer(3).startService()
            waited, next_search = 0.0, 0.0
            repaired: list[float] = []

            def check(at: float, repaired: list[float] = repaired) -> None:
                if not repaired and healed(net, hung):
                    repaired.append(at)

            while waited < 60.0:
                net.flush()
                check(waited)
                if waited >= next_search:
                    next_search += EVERY
                    live = [p for p in alive() if p.joined]
                    holders = sorted(
                        p.peer_name for p in alive()
                        if p.share is not None and f"f-{p.peer_name}" in p.share.files
                    )
                    origin = net.rng.choice(live)
                    result, took = drive(
                        net, origin.search.start("f-*", 10.0), 11.0, lambda t, w=waited: check(w + t)
                    )
                    if result:
                        tally.search(result[0], holders)
                    else:
                        tally.wrong += 1
                    waited += took
                    target = net.rng.choice(holders)
                    origin = net.rng.choice([p for p in alive() if p.joined])
                    result, took = drive(
                        net, lookup(origin, f"f-{target}"), 60.0, lambda t, w=waited: check(w + t)
                    )
                    found = getattr(result[0], "matches", result[0]) if result else []
                    tally.gets += 1
                    tally.gets_right += any(m.holder == target for m in found)
                    waited += took
                    continue
                net.clock.advance(STEP)
                waited += STEP
            repairs.append(repaired[0] if repaired else float("inf"))
            print(f"minute {minute + 1:2d}: {len(victims)} failed, repaired in "
                  f"{repairs[-1]:.1f} s (simulated)", flush=True)
        live_count = len(alive())
        pings = sum(p.messages["PING"] + p.messages["PONG"] for p in net.peers) - pings_before
    finite = [r for r in repairs if r != float("inf")]
    print(f"== {args.peers} peers, {args.minutes} simulated minutes, "
          f"{time.perf_counter() - started:.0f} s of real time")
    print(f"repair after each wave: median {statistics.median(repairs):.1f} s, "
          f"max {max(repairs):.1f} s ({len(repairs) - len(finite)} waves not repaired within 60 s)")
    for line in tally.lines():
        print(line)
    for example in tally.wrong_examples[:5]:
        print(f"  a wrong answer: {example}")
    print(f"heartbeat messages (PING + PONG): {pings / max(live_count, 1) / args.minutes:.1f} "
          f"per peer per minute")


if __name__ == "__main__":
    main()
