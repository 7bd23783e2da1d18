"""
Scale, on a real metadata server process: 10,000 synthetic registrants
speaking the documented wire protocol (docs/protocol.rst), one
connection each, from 100 loopback addresses, all held open by this
process.  Each registers (P2P, with the nonce the server's dial-back is
answered with, at one port of this process's that answers for all), asks
where to join (PLACE) and reports its link as a real peer would
(NEIGHBOURS at both ends, with up=), one after another.  All are admitted; the server's CPU per join over the
last 500 is at most twice that over the first 500; its peak RSS stays
under 150 MB; topo.txt matches the network once the server says it
settled; and `p2p topo --meta` answers at 10,000 peers.

The server writes topo.txt whole at each flush, at most one per
--flush-interval: a cost per second that grows with the network (tens of
milliseconds a flush at 10,000 peers), not a cost per join.  On a busy
machine the joins take longer, so more flushes fall among them: at
--flush-interval 1 the last 500 joins once cost twice the CPU of the
first 500 for that alone.  So the server runs with --flush-interval 10,
and each block of 500 is read as five of 100: the cheapest of the five
is the block's cost per join (at most one in five holds a flush, and
another process's burst of load inflates some of them, not all), while
a cost per join that grows with the network inflates all five.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections import deque
from pathlib import Path

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineReceiver

from p2pshare.launch import P2P
from p2pshare.tickets import answer
from p2pshare.topo import parse_topo

PEERS = 10_000
ADDRESSES = 100
SAMPLE = 500  # joins in each block compared
PART = 100  # joins in each part of a block


class Registrant(LineReceiver):
    """
    One synthetic peer's registration link: each request's reply line
    fires the Deferred waiting for it.
    """

    def __init__(self) -> None:
        self.replies: deque[Deferred[bytes]] = deque()

    def lineReceived(self, line: bytes) -> None:
        if line.startswith((b"COMPLETE ", b"TICKET ")):
            return
        if self.replies:
            self.replies.popleft().callback(line)

    def ask(self, line: str) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.replies.append(d)
        self.sendLine(line.encode())
        return d

    def tell(self, line: str) -> None:
        self.sendLine(line.encode())


NONCE = "5a" * 16  # every registrant's check= nonce: one port answers all dial-backs


class Answers(LineReceiver):
    """
    Where every synthetic peer says it listens: it answers the metadata
    server's dial-back (VERIFY) for any of them, as each real peer would
    for itself.
    """

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if words[:1] == ["VERIFY"]:
            self.sendLine(f"VERIFIED {answer(NONCE, words[1], words[2])}".encode())
        self.transport.loseConnection()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest_twisted.ensureDeferred
async def test_ten_thousand_registrants_from_a_hundred_addresses(reactor, net):
    meta = await net.start_meta(10 * PEERS, "--web", "tcp:0", "--flush-interval", "10")
    web = (await meta.wait_for("p2pmeta web page on port", 30)).rsplit(" ", 1)[1]
    port, pid = net.meta_port, meta.pid
    rss_at_start = peak_rss_mib(pid)
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Answers)
    )
    answers_at = listening.getHost().port
    links: dict[str, list[str]] = {}
    conns: dict[str, Registrant] = {}
    up: dict[str, str | None] = {}
    cpu = []
    try:
        for i in range(PEERS):
            if (i <= SAMPLE or i >= PEERS - SAMPLE) and i % PART == 0:
                cpu.append(cpu_seconds(pid))
            source = f"127.0.1.{2 + i % ADDRESSES}"
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
            proto = await connectProtocol(endpoint, Registrant())
            # beat=300: watched by a (long) heartbeat, not by the 30 s
            # that an idle connection gets, so that a slow run on a busy
            # machine does not lose its first registrants before the last.
            welcome = (await proto.ask(
                f"P2P port={answers_at} host=127.0.0.1 max=2 beat=300 check={NONCE}"
            )).split()
            assert welcome[0] == b"WELCOME", welcome
            name = welcome[1].decode()
            conns[name] = proto
            links[name] = []
            where = (await proto.ask("PLACE")).split()
            if where[0] == b"ROOT":
                up[name] = None
                proto.tell("NEIGHBOURS root=1")
                continue
            assert where[0] == b"REFER", where
            target = where[1].decode()
            links[name].append(target)
            links[target].append(name)
            up[name] = target
            proto.tell(f"NEIGHBOURS {target} up={target}")
            parent = up[target]
            where_it_hangs = f"up={parent}" if parent else "root=1"
            conns[target].tell(f"NEIGHBOURS {' '.join(links[target])} {where_it_hangs}")
        cpu.append(cpu_seconds(pid))
        assert len(conns) == PEERS  # every one admitted
        await meta.wait_for(f"topology settled: {PEERS} peers", 30)
        topo = {e.name: e.neighbours for e in parse_topo((net.meta_dir / "topo.txt").read_text())}
        assert topo == links
        assert (net.meta_dir / "NumberOfServers.txt").read_text() == f"{PEERS}\n"
        assert max(len(v) for v in links.values()) <= 2

        parts = SAMPLE // PART
        firsts = [b - a for a, b in zip(cpu[:parts], cpu[1:parts + 1], strict=True)]
        lasts = [b - a for a, b in zip(cpu[-parts - 1:-1], cpu[-parts:], strict=True)]
        first, last = min(firsts) * parts, min(lasts) * parts
        rss = peak_rss_mib(pid)
        per_peer_kib = (rss - rss_at_start) * 1024 / PEERS
        print(f"server CPU: first {SAMPLE} joins {first:.2f} s, last {SAMPLE} {last:.2f} s; "
              f"peak RSS {rss:.0f} MiB ({rss_at_start:.0f} at start, {per_peer_kib:.1f} KiB a peer)")
        assert last <= 2 * max(first, 0.05), (first, last)
        assert rss <= 150
        assert per_peer_kib <= 8  # a few kilobytes, its connection included

        # The page's data at 10,000 peers: rendered once, then as kept.
        for attempt in ("first", "again"):
            started = time.perf_counter()
            body = await deferToThread(_get, f"http://127.0.0.1:{web}/topology.json")
            took = time.perf_counter() - started
            print(f"topology.json ({attempt}): {len(body) / 2**20:.1f} MiB in {took * 1000:.0f} ms")
            assert json.loads(body)["count"] == PEERS

        shown = await deferToThread(
            subprocess.run, [*P2P, "topo", "--meta", f"tcp:127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120,
        )
        assert shown.returncode == 0, shown.stderr
        assert {e.name: e.neighbours for e in parse_topo(shown.stdout)} == links
    finally:
        for proto in conns.values():
            proto.transport.abortConnection()
        await listening.stopListening()
