"""
Downloading one file from many holders, against the same download from
one holder, measured in the same run on the same machine (loopback).
Holders capped with --upload-rate stand in for slower links.

(2) 4 holders capped at RATE against 1 holder capped at RATE
    (target: at most 0.30 of the time; ideal 0.25).
(4) 4 unthrottled holders against 1 (target: at least 0.9 of its speed).
(5) 3 holders at RATE plus one at RATE/20, against the 3 alone
    (target: within 1.10 of the time, at most 3% of bytes fetched twice).
(6) 1 seeder at RATE and 8 peers fetching at once, against one download
    alone from that seeder (target: all 8 within 3 times).
(7) Peak RSS of the downloading peer, 4 holders (target: 80 MiB for 1 GiB).

    python bench/swarm.py [--mib 256] [--rate 16M]

It prints its figures; docs/performance.rst records them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from transfer import peak_rss_mib, write_random  # bench/transfer.py, beside this file
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react

from p2pshare.launch import LocalNetwork
from p2pshare.options import parse_rate

SENT = re.compile(r"sent big\.bin bytes \d+--?\d+ \((\d+) bytes\)")


async def scenario(
    reactor: Any, root: Path, mib: int, holder_args: list[list[str]], getters: int = 1
) -> dict[str, Any]:
    """
    Fresh processes: holders (one per argument list) share big.bin, then
    C{getters} peers fetch it at once.  Times each get, counts bytes sent.
    """
    net = LocalNetwork(reactor, root, timeout=600)
    root.mkdir()
    try:
        meta = await net.start_meta(len(holder_args) + getters)
        holders = [(await net.start_peer(*args))[0] for args in holder_args]
        fetchers = [(await net.start_peer())[0] for _ in range(getters)]
        await meta.wait_for(f"topology settled: {len(holders) + len(fetchers)} peers", 120)
        source = root / "big.bin"
        write_random(source, mib)
        for key in holders:
            os.link(source, root / key / "shared" / "big.bin")
        for key in holders:
            await net.peers[key].wait_for("sharing big.bin", 600)
        started = time.perf_counter()
        gets = [net.p2p("get", "big.bin", "--peer", net.control(key)) for key in fetchers]
        ended: list[float] = []

        async def one(get: Any) -> None:
            code = await get.when_ended(3600)
            ended.append(time.perf_counter() - started)
            if code != 0:
                raise RuntimeError(get.output())

        await gatherResults([Deferred.fromCoroutine(one(g)) for g in gets], consumeErrors=True)
        sent = sum(
            int(m.group(1)) for key in holders for line in net.peers[key].lines
            if (m := SENT.search(line))
        )
        rss = [peak_rss_mib(net.peers[key].pid) for key in fetchers if net.peers[key].pid]
        return {"times": sorted(ended), "sent": sent, "size": mib << 20, "rss": max(rss)}
    finally:
        await net.stop_all()
        # Free its files' memory for the next scenario: this VM hands memory
        # free for a while back to its host, and writing into it afresh
        # made every later scenario slower than the one before.
        shutil.rmtree(root, ignore_errors=True)


async def run(reactor: Any, mib: int, rate: str, only: set[str]) -> None:
    r = parse_rate(rate)
    capped = ["--upload-rate", rate]
    slow = ["--upload-rate", str(int(r / 20))]
    with tempfile.TemporaryDirectory(prefix="p2p-swarm-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)

        def at(name: str) -> Path:
            return root / name

        write_random(at("warm-up.bin"), 2 * mib)  # memory the host backs, for the first scenario too
        at("warm-up.bin").unlink()

        if "2" in only:
            one = await scenario(reactor, at("one-capped"), mib, [capped])
            four = await scenario(reactor, at("four-capped"), mib, [capped] * 4)
            t1, t4 = one["times"][0], four["times"][0]
            print(f"(2) {mib} MiB, holders at {rate}/s: 1 holder {t1:.1f} s, 4 holders {t4:.1f} s: "
                  f"ratio {t4 / t1:.2f} (target 0.30, ideal 0.25)", flush=True)

        if "4" in only:
            # One unthrottled download of this size takes under half a second:
            # three alternating pairs, each from fresh processes, and their median.
            ratios, rss = [], []
            for _ in range(3):
                one_free = await scenario(reactor, at("one-free"), mib, [[]])
                four_free = await scenario(reactor, at("four-free"), mib, [[]] * 4)
                u1, u4 = one_free["times"][0], four_free["times"][0]
                ratios.append(u1 / u4)
                rss.append(four_free["rss"])
                print(f"    1 holder {mib / u1:,.0f} MiB/s, 4 holders "
                      f"{mib / u4:,.0f} MiB/s", flush=True)
            print(f"(4) {mib} MiB unthrottled, 3 alternating pairs: speed of 4 holders / 1 holder "
                  f"min {min(ratios):.2f}, median {statistics.median(ratios):.2f}, max {max(ratios):.2f} "
                  f"(target 0.9)", flush=True)
            print(f"(7) peak RSS of the downloading peer, {mib} MiB from 4 holders: "
                  f"{max(rss):.1f} MiB (target 80 MiB for 1 GiB)", flush=True)

        if "5" in only:
            three = await scenario(reactor, at("three"), mib, [capped] * 3)
            with_slow = await scenario(reactor, at("three-and-slow"), mib, [capped] * 3 + [slow])
            t3, ts = three["times"][0], with_slow["times"][0]
            twice = (with_slow["sent"] - with_slow["size"]) / with_slow["size"]
            print(f"(5) 3 holders at {rate}/s {t3:.1f} s; plus one at a twentieth {ts:.1f} s: ratio "
                  f"{ts / t3:.2f} (target 1.10), fetched twice {twice:.1%} (target 3%)", flush=True)

        if "6" in only:
            small = max(16, mib // 2)
            alone = await scenario(reactor, at("alone"), small, [capped])
            eight = await scenario(reactor, at("eight"), small, [capped], getters=8)
            ta, t8 = alone["times"][0], eight["times"][-1]
            print(f"(6) {small} MiB from 1 seeder at {rate}/s: alone {ta:.1f} s, 8 at once, the last "
                  f"after {t8:.1f} s: ratio {t8 / ta:.2f} (target 3; 8 without swarming)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rate", default="16M")
    parser.add_argument("--only", default="2,4,5,6",
                        help="which figures to measure, e.g. 4 ((7) comes with (4))")
    args = parser.parse_args()
    only = set(args.only.split(","))
    react(lambda reactor: Deferred.fromCoroutine(run(reactor, args.mib, args.rate, only)))


if __name__ == "__main__":
    main()
