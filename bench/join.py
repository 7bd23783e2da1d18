"""
How fast peers join, and how many referral hops a join costs.

Part 1, in one process (the real protocol code on in-memory transports):
N peers (default 500) join one metadata server, first one after another,
then all at once.  Baseline in the same run: N bare connections that each
exchange one request and one reply line over the same transports.

Part 2, real processes: a metadata server and P peers (default 50) as
twistd processes on 127.0.0.1, all started at once.  Baseline in the same
run: P bare Python processes that import Twisted and exit.

Both parts also join a private network (--secret-file: a challenge-response
on every connection) and compare its join rate with the open network's.

    python bench/join.py [--peers 500] [--processes 50]

It prints its figures; docs/performance.rst records them.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, react
from twisted.test import iosim

from p2pshare.admission import Secret, new_secret_text
from p2pshare.channel import LineChannel
from p2pshare.launch import LocalNetwork
from p2pshare.simnet import SimNet, assert_tree


def rss_mib_of(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_process(
    n: int, max_neighbours: int, concurrent: bool, secret: Secret | None = None
) -> dict[str, float]:
    net = SimNet(None, seed=7, secret=secret)
    net.start_meta(expect=n)
    rss_before = rss_mib_of()
    started = time.perf_counter()
    if concurrent:
        for _ in range(n):
            net.make_peer(max_neighbours).startService()
        net.settle(seconds=600)
    else:
        for _ in range(n):
            node = net.make_peer(max_neighbours)
            node.startService()
            net.settle()
    elapsed = time.perf_counter() - started
    assert all(p.joined for p in net.peers), "not every peer joined"
    assert_tree(net.views(), {p.peer_name: max_neighbours for p in net.peers})
    hops = [p.join_hops for p in net.peers if not p.is_root]
    return {
        "joins_per_s": n / elapsed,
        "mean_hops": statistics.mean(hops),
        "max_hops": max(hops),
        "rss_growth_mib": rss_mib_of() - rss_before,
    }


class _Echo(LineChannel):
    def msg_PING(self, msg: object) -> None:
        self.send("PONG")


def bare_exchanges(n: int) -> float:
    """
    Baseline: N in-memory connections, one PING and one PONG each.
    """
    clock = Clock()
    started = time.perf_counter()
    for i in range(n):
        server, client = _Echo(), _Echo()
        a = IPv4Address("TCP", "127.0.0.1", 5000)
        b = IPv4Address("TCP", "127.0.0.2", 10000 + i)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True, a, b),
            client, iosim.FakeTransport(client, False, b, a),
            greet=False, clock=clock,
        )
        d = client.request("PING", answers={"PONG"})
        pump.flush()
        assert d.called
    return n / (time.perf_counter() - started)


async def real_processes(reactor: object, count: int, private: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
        secret_file = None
        if private:
            secret_file = Path(tmp) / "network.secret"
            secret_file.write_text(new_secret_text())
        net = LocalNetwork(reactor, Path(tmp), timeout=120, secret_file=secret_file)
        try:
            meta = await net.start_meta(count)
            started = time.perf_counter()
            await gatherResults([Deferred.fromCoroutine(net.start_peer()) for _ in range(count)])
            await meta.wait_for(f"topology settled: {count} peers", 120)
            elapsed = time.perf_counter() - started
            hops = []
            for proc in net.peers.values():
                for line in proc.lines:
                    if "hop(s)" in line:
                        hops.append(int(line.rsplit(" after ", 1)[1].split()[0]))
            assert meta.pid is not None
            return {
                "joins_per_s": count / elapsed,
                "mean_hops": statistics.mean(hops),
                "max_hops": max(hops),
                "meta_rss_mib": rss_mib_of(meta.pid),
            }
        finally:
            await net.stop_all()


def bare_processes(count: int) -> float:
    """
    Baseline: start P Python processes that import Twisted, all at once.
    """
    started = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", "import twisted.internet.reactor"])
        for _ in range(count)
    ]
    for p in procs:
        p.wait(timeout=120)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=500)
    parser.add_argument("--processes", type=int, default=50)
    args = parser.parse_args()

    print(f"== {args.peers} peers in one process (in-memory transports)")
    baseline = bare_exchanges(args.peers)
    print(f"baseline: {baseline:,.0f} bare request/reply connections per s")
    for max_n in (2, 4):
        for concurrent in (False, True):
            r = in_process(args.peers, max_n, concurrent)
            mode = "all at once   " if concurrent else "one at a time "
            print(
                f"max-neighbours {max_n}, {mode}: {r['joins_per_s']:8,.0f} joins/s "
                f"({r['joins_per_s'] / baseline:.3f} of baseline), "
                f"hops mean {r['mean_hops']:.3f} max {r['max_hops']}, "
                f"RSS growth {r['rss_growth_mib']:.1f} MiB"
            )
    open_net = in_process(args.peers, 2, True)
    private = in_process(args.peers, 2, True, Secret(new_secret_text().encode()))
    print(
        f"max-neighbours 2, all at once, private network: {private['joins_per_s']:8,.0f} joins/s, "
        f"open {open_net['joins_per_s']:,.0f}: ratio {private['joins_per_s'] / open_net['joins_per_s']:.2f} "
        f"(target 0.8)"
    )
    print(f"process RSS after all runs: {rss_mib_of():.1f} MiB, "
          f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")

    print(f"== {args.processes} real twistd peers, started at once")
    base = bare_processes(args.processes)
    print(f"baseline: {base:.1f} bare 'import twisted' processes per s")

    async def run(reactor: object) -> None:
        r = await real_processes(reactor, args.processes)
        print(
            f"{r['joins_per_s']:.1f} joins/s ({r['joins_per_s'] / base:.2f} of baseline), "
            f"hops mean {r['mean_hops']:.3f} max {r['max_hops']}, "
            f"metadata server RSS {r['meta_rss_mib']:.1f} MiB"
        )
        p = await real_processes(reactor, args.processes, private=True)
        print(
            f"private network: {p['joins_per_s']:.1f} joins/s, hops mean {p['mean_hops']:.3f}: "
            f"ratio to open {p['joins_per_s'] / r['joins_per_s']:.2f} (target 0.8)"
        )

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
