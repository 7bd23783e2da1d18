"""
The piece scheduler in one process, on a Clock: 1 to 16 in-memory holders
of different speeds, some of which stall, vanish, answer 503, send
corrupt pieces or change version under the download.  Every run ends
with the right bytes or a clear failure naming the holders, no piece is
asked for once it is verified, a holder that sent a corrupt piece is
named and never asked again, and the holders' table
(peer/download/holders.py) keeps its invariants at every step.

The holders are served by an in-memory agent behind the agent fetcher;
tests/test_download.py and tests/test_download_hostile.py run the same
failures against both real fetchers over loopback.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from p2pshare.peer.download.agent import AgentFetcher
from p2pshare.peer.download.book import BAD_ADDRESSES, PieceBook
from p2pshare.peer.download.fetch import Broke
from p2pshare.peer.download.holders import CORRUPT, DROPPED, Source
from p2pshare.peer.download.swarm import Swarm, Target
from p2pshare.pieces import bitfield, piece_count, piece_size, piece_span

TICK = 0.05


@dataclass
class Holder:
    name: str
    rate: int  # bytes per second
    stall_after: int | None = None  # bytes it sends before going silent (connection open)
    dies_after: int | None = None  # bytes it sends before its process dies
    busy: int = 0  # requests answered 503 first
    corrupt: frozenset[int] = frozenset()  # pieces it sends wrong
    has: frozenset[int] | None = None  # a partial holder: the pieces it has
    boasts: bool = False  # a partial holder that says it has every piece
    drip: float | None = None  # sends one byte every this many seconds, however long
    refuses: bool = False  # nothing listens at its address
    changes_after: int | None = None  # requests it serves before its file changes (then 412)
    said_changed: bool = False  # it answered 412
    asked: int = 0  # requests it received (or refused)
    sent: int = 0
    dead: bool = False
    ranges: list[tuple[int, int]] = field(default_factory=list)

    def sound(self, size: int) -> bool:
        """
        Would it deliver every piece, asked for them?
        """
        return (self.stall_after is None and self.dies_after is None and self.has is None
                and not self.corrupt & set(range(piece_count(size)))
                and self.drip is None and not self.refuses and self.changes_after is None)


class Body:
    """
    The transport of one response body, sending at the holder's rate.
    """

    def __init__(self, clock, holder, data, first, last, proto, size):
        self.clock, self.holder, self.data = clock, holder, data
        self.position, self.last, self.proto, self.size = first, last, proto, size
        self.paused = self.stopped = False
        self.call = None
        proto.makeConnection(self)
        self._schedule()

    def _schedule(self):
        if not (self.paused or self.stopped) and self.call is None:
            self.call = self.clock.callLater(self.holder.drip or TICK, self._send)

    def _send(self):
        self.call = None
        h = self.holder
        n = 1 if h.drip else max(1, int(h.rate * TICK))
        if h.stall_after is not None:
            n = min(n, max(0, h.stall_after - h.sent))
            if n == 0:
                return  # silent, and the connection stays open
        if h.dies_after is not None and h.sent + n >= h.dies_after:
            h.dead = True
            self._end(Failure(ConnectionLost("the holder died")))
            return
        chunk = bytearray(self.data[self.position:min(self.last + 1, self.position + n)])
        piece = piece_size(self.size)
        for bad in h.corrupt:
            start = max(bad * piece, self.position) - self.position
            stop = min((bad + 1) * piece, self.position + len(chunk)) - self.position
            if start < stop:
                chunk[start:stop] = bytes(b ^ 0xFF for b in chunk[start:stop])
        h.sent += len(chunk)
        self.position += len(chunk)
        self.proto.dataReceived(bytes(chunk))
        if self.stopped:
            return
        if self.position > self.last:
            self._end(Failure(ResponseDone()))
        else:
            self._schedule()

    def _piece(self, offset):
        return offset // piece_size(self.size)

    def _end(self, reason):
        if not self.stopped:
            self.stopped = True
            self.proto.connectionLost(reason)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._schedule()

    def stopProducing(self):
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        self._end(Failure(ConnectionLost("stopped")))


def Bytes(proto, data):
    proto.makeConnection(None)
    proto.dataReceived(data)
    proto.connectionLost(Failure(ResponseDone()))


class Response:
    def __init__(self, code, headers, start=None):
        self.code, self.headers, self._start = code, headers, start

    def deliverBody(self, proto):
        if self._start is None:
            proto.makeConnection(None)
            proto.connectionLost(Failure(ResponseDone()))
        else:
            self._start(proto)


class Agent:
    """
    An IAgent over the holders; it also checks that no verified piece is
    ever asked for.
    """

    def __init__(self, clock, holders, data, book):
        self.clock, self.holders, self.data, self.book = clock, holders, data, book
        self.violations = []

    def request(self, method, uri, headers=None, body=None):
        holder = self.holders[uri.decode().split("/")[3]]
        holder.asked += 1
        if holder.dead or holder.refuses:
            return fail(ConnectionRefusedError())
        size = len(self.data)
        if "/have/" in uri.decode():
            told = set(range(piece_count(size))) if holder.boasts else set(holder.has or ())
            bits = bitfield(told, piece_count(size))
            return succeed(Response(200, Headers(), lambda proto: Bytes(proto, bits)))
        first, last = 0, size - 1
        wanted = headers.getRawHeaders(b"range") if headers else None
        if wanted:
            first, last = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", wanted[0].decode()).groups())
        pieces = set(range(first // piece_size(size), last // piece_size(size) + 1)) if size else {0}
        if pieces & self.book.verified:
            self.violations.append((holder.name, sorted(pieces & self.book.verified)))
        holder.ranges.append((first, last))
        if holder.busy:
            holder.busy -= 1
            return succeed(Response(503, Headers({b"retry-after": [b"1"]})))
        if holder.changes_after is not None:
            if holder.changes_after <= 0:  # its file is another version now: If-Match fails
                holder.said_changed = True
                return succeed(Response(412, Headers()))
            holder.changes_after -= 1
        if holder.has is not None and not pieces <= holder.has:
            self.violations.append((holder.name, "asked for pieces it has not"))
            return succeed(Response(416, Headers()))
        h = Headers({b"content-range": [f"bytes {first}-{last}/{size}".encode()]})

        def start(proto):
            Body(self.clock, holder, self.data, first, last, proto, size)

        return succeed(Response(206 if size else 200, h, start if size else None))


holder_strategy = st.builds(
    lambda rate, stall, dies, busy, corrupt, has, changes: (
        rate, stall, dies, busy, corrupt, has, False, changes
    ),
    st.sampled_from([32 * 1024, 256 * 1024, 2 * 2**20, 8 * 2**20]),
    st.one_of(st.none(), st.integers(0, 3 * 2**20)),
    st.one_of(st.none(), st.integers(0, 3 * 2**20)),
    st.integers(0, 3),
    st.frozensets(st.integers(0, 5), max_size=3),
    st.one_of(st.none(), st.frozensets(st.integers(0, 6))),  # partial holders
    st.one_of(st.none(), st.integers(0, 3)),  # holders whose file changes
)


def source_of(name, h):
    def url():
        return f"http://x/{name}/files/f.bin".encode()

    def have_url():
        return f"http://x/{name}/have/sha".encode()

    if h.has is None:
        return Source(name, url)
    return Source(name, url, have_url=have_url, has=set())


def run_swarm(tmp_path, size, specs, limit, first=0, setup=None):
    """
    One download of a random file of C{size} bytes from holders made from
    C{specs}, to its end; C{setup(holders, swarm, clock)} may change them
    or plan events before it begins.
    """
    data = os.urandom(size)
    digests = b"".join(
        hashlib.sha256(data[slice(*piece_span(i, size))]).digest() for i in range(piece_count(size))
    )
    clock = Clock()
    holders = {
        f"h{i}": Holder(f"h{i}", *spec[:7], changes_after=spec[7] if len(spec) > 7 else None)
        for i, spec in enumerate(specs)
    }
    book = PieceBook(size, first=first)
    agent = Agent(clock, holders, data, book)
    path = tmp_path / f"part-{os.urandom(4).hex()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, size)
    progress = []
    swarm = Swarm(
        fetcher=AgentFetcher(agent, clock), clock=clock, run_blocking=maybeDeferred,
        target=Target("f.bin", size, hashlib.sha256(data).hexdigest(), digests, fd), book=book,
        sources=[source_of(name, h) for name, h in holders.items()],
        progress=lambda done, total, sending: progress.append(done),
    )
    if setup is not None:
        setup(holders, swarm, clock)
    outcome = []
    d = Deferred.fromCoroutine(swarm.run(limit))
    d.addBoth(outcome.append)
    for _ in range(200_000):  # bounded: at worst 10,000 simulated seconds
        swarm.holders.check(book.fetching, swarm.limit)  # the table, at every step
        if outcome:
            break
        clock.advance(TICK)
    try:
        assert outcome, "the download neither ended nor failed"
        got = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    return outcome[0], data, got, holders, agent, swarm, clock, progress


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(0, 6 * 2**20),
    specs=st.lists(holder_strategy, min_size=1, max_size=16),
    limit=st.integers(1, 16),
    first=st.integers(0, 10),
)
def test_every_run_ends_with_the_right_bytes_or_a_clear_failure(tmp_path, size, specs, limit, first):
    result, data, got, holders, agent, swarm, clock, progress = run_swarm(tmp_path, size, specs, limit, first)
    assert agent.violations == []  # a verified piece is never asked for
    assert progress == sorted(progress) and all(p <= size for p in progress)
    for h in holders.values():
        if any(n.startswith(f"{h.name} sent a corrupt piece") for n in swarm.notes):
            bad = next(s for s in swarm.sources if s.name == h.name)
            assert bad.problem and "corrupt" in bad.problem and bad.state == CORRUPT
        if h.said_changed:
            changed = next(s for s in swarm.sources if s.name == h.name)
            assert changed.state == DROPPED
            assert changed.problem == "it no longer holds this version", changed
    if isinstance(result, Failure):
        result.trap(Broke)
        # Only when no holder could deliver, or when BAD_ADDRESSES of them
        # failed before a sound one was tried (a download tries no more):
        # each was dropped, and named.
        sound = [h for h in holders.values() if h.sound(len(data))]
        if sound:
            assert len(swarm.ledger.failed) == BAD_ADDRESSES, (result.value, holders)
            assert not any(h.ranges for h in sound), holders
            assert "more not tried: 8 addresses failed already" in str(result.value)
        for s in swarm.sources:
            if s.problem is not None:
                assert f"{s.name}: {s.problem}" in str(result.value)
        assert not swarm.book.done
    else:
        assert got == data
        assert swarm.book.done and progress[-1] == size
    # Nothing is left scheduled by the download (timeouts, pauses).
    assert [c for c in clock.getDelayedCalls() if c.active() and "swarm" in repr(c.func)] == []


def test_a_slow_holder_does_not_hold_up_the_end(tmp_path):
    """
    Three fast holders and one at a twentieth of their speed: the endgame
    fetches what the slow one still owes, so the end comes about when the
    three alone would have finished, with few bytes fetched twice.
    """
    size = 48 * 2**20
    fast = 4 * 2**20
    specs = [(fast, None, None, 0, frozenset())] * 3 + [(fast // 20, None, None, 0, frozenset())]
    result, data, got, holders, agent, swarm, clock, _ = run_swarm(tmp_path, size, specs, 4)
    assert not isinstance(result, Failure) and got == data
    three_alone = size / (3 * fast)
    assert clock.seconds() <= 1.15 * three_alone + 1, (clock.seconds(), three_alone)
    twice = sum(h.sent for h in holders.values()) - size
    assert twice <= 0.03 * size, twice


def test_corrupt_pieces_name_their_holder_who_is_not_asked_again(tmp_path):
    size = 8 * 2**20
    specs = [(2**20, None, None, 0, frozenset({0, 1, 2, 3, 4, 5, 6, 7}))] + [(2**20, None, None, 0, frozenset())]
    result, data, got, holders, agent, swarm, clock, _ = run_swarm(tmp_path, size, specs, 2)
    assert got == data
    assert swarm.notes == ["h0 sent a corrupt piece of f.bin; dropped"]
    assert len(holders["h0"].ranges) == 1


@pytest.mark.parametrize("limit", [1, 4])
def test_when_every_holder_fails_the_failure_names_each(tmp_path, limit):
    specs = [(2**20, None, 2**20, 0, frozenset()), (2**20, None, None, 0, frozenset(range(6)))]
    result, data, got, holders, agent, swarm, clock, _ = run_swarm(tmp_path, 5 * 2**20, specs, limit)
    assert isinstance(result, Failure) and result.check(Broke)
    text = str(result.value)
    assert "h1: sent a corrupt piece" in text and "h0: " in text, text


def test_a_partial_holder_is_asked_only_for_the_pieces_it_has(tmp_path):
    """
    A slow seeder and a fast peer that has half the file already: the peer
    serves its half, and only its half; the seeder the rest.
    """
    size = 8 * 2**20
    specs = [(256 * 1024, None, None, 0, frozenset()),
             (8 * 2**20, None, None, 0, frozenset(), frozenset(range(4)))]
    result, data, got, holders, agent, swarm, clock, _ = run_swarm(tmp_path, size, specs, 2)
    assert not isinstance(result, Failure) and got == data
    assert agent.violations == []
    partial = holders["h1"]
    assert partial.ranges and all(last < 4 * 2**20 for _, last in partial.ranges)
    assert partial.sent >= 3 * 2**20  # it did most of its half


def test_a_partial_holder_that_claims_what_it_has_not_is_let_go(tmp_path):
    """
    It says it has every piece but answers 416 outside its few: after a
    few refusals it is dropped, and the honest seeder brings the rest.
    """
    size = 6 * 2**20
    specs = [(2**20, None, None, 0, frozenset()),
             (8 * 2**20, None, None, 0, frozenset(), frozenset({0}), True)]
    result, data, got, holders, agent, swarm, clock, _ = run_swarm(tmp_path, size, specs, 2)
    assert not isinstance(result, Failure) and got == data
    boaster = next(s for s in swarm.sources if s.name == "h1")
    assert boaster.problem == "it refused pieces it said it had"
    assert len([v for v in agent.violations if v[0] == "h1"]) <= 3


def test_a_holder_that_drips_is_left_at_the_piece_deadline(tmp_path):
    """
    One byte every 5 s: never silent long enough for the idle deadline,
    but a piece of 1 MiB must be whole within 64 s (at least 16 KiB/s).
    """
    def drips(holders, swarm_, clock):
        holders["h0"].drip = 5.0

    result, data, got, holders, agent, swarm_, clock, _ = run_swarm(
        tmp_path, 2 * 2**20, [(2**20, None, None, 0, frozenset())], 4, setup=drips
    )
    assert isinstance(result, Failure) and result.check(Broke)
    assert str(result.value) == "h0: piece 0 did not arrive within 64 s"
    assert clock.seconds() < 64 + 1


def test_holders_found_while_it_runs_are_tried_only_while_the_budget_lasts(tmp_path):
    """
    A slow honest holder, and twenty addresses that refuse connections,
    found while the download runs: eight are tried, once each, and the
    file arrives.
    """
    def later(holders, swarm_, clock):
        def found():
            for i in range(20):
                name = f"x{i}"
                holders[name] = Holder(name, 2**20, refuses=True)
                swarm_.add(source_of(name, holders[name]))

        clock.callLater(1.0, found)

    result, data, got, holders, agent, swarm_, clock, _ = run_swarm(
        tmp_path, 4 * 2**20, [(64 * 1024, None, None, 0, frozenset())], 4, setup=later
    )
    assert not isinstance(result, Failure) and got == data
    asked = [h.asked for name, h in holders.items() if name.startswith("x")]
    assert sum(1 for n in asked if n) == BAD_ADDRESSES and max(asked) == 1, asked
