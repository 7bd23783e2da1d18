"""
The download scheduler (peer/download/swarm.py and the holders' table of
peer/download/holders.py) driven by a fake fetcher on a Clock: no HTTP at
all, only the outcomes a fetcher reports (peer/download/outcomes.py).  1
to 16 holders that are sound, stall, die, answer 503, send corrupt pieces
or change version; the table's invariants hold at every step, every
transition taken is in the table, and the download ends with the right
bytes or with a failure that names every holder let go.

The same failures against the two real fetchers over loopback are in
tests/test_download.py (its C{downloader} fixture runs each with both).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from p2pshare.peer.download import holders as table
from p2pshare.peer.download.book import PieceBook
from p2pshare.peer.download.fetch import Run
from p2pshare.peer.download.holders import CORRUPT, DROPPED, TRANSITIONS, Holders, Source
from p2pshare.peer.download.outcomes import Broke, Busy, Corrupt, Gone
from p2pshare.peer.download.swarm import Swarm, Target
from p2pshare.pieces import piece_count, piece_span

STEP = 0.25  # simulated seconds between looks at the table
KINDS = ("sound", "stalls", "dies", "busy", "corrupt", "changes")


@dataclass
class Fake:
    """
    One holder as the fake fetcher plays it.
    """

    kind: str
    seconds_per_piece: float
    after: int  # runs it serves well before it misbehaves
    runs: int = 0
    pieces: list[int] = field(default_factory=list)  # pieces it delivered
    caught: int | None = None  # the run in which it sent a corrupt piece, or said it changed


class FakeFetcher:
    """
    An L{IFetcher} without transport: a run takes C{seconds_per_piece}
    per piece on the clock, then ends as the holder's kind says.
    """

    def __init__(self, clock: Clock, fakes: dict[str, Fake], data: bytes) -> None:
        self.clock, self.fakes, self.data = clock, fakes, data
        self.under_way: set[Deferred] = set()

    def begin(self, piece, holders):
        pass

    def stop(self, halt):
        for d in list(self.under_way):
            d.cancel()

    def close(self):
        pass

    def pieces_of(self, holder, count):
        return maybeDeferred(lambda: None)

    def fetch(self, run: Run, sink):
        return Deferred.fromCoroutine(self._fetch(run, sink))

    async def _fetch(self, run, sink):
        fake = self.fakes[run.holder.name]
        fake.runs += 1
        misbehaves = fake.runs > fake.after
        if misbehaves and fake.kind == "busy":
            raise Busy(1.0)
        if misbehaves and fake.kind == "changes":
            fake.caught = fake.runs
            raise Gone("it no longer holds this version")
        sink.sending(run.holder)
        for index, start, stop in run.spans:
            wait = deferLater(self.clock, fake.seconds_per_piece)
            self.under_way.add(wait)
            try:
                await wait
            except CancelledError:
                # Stopped (as a real fetcher is): the rest came from
                # elsewhere, or the swarm stops and the run broke off.
                left = [i for i, _, _ in run.spans if i >= index]
                if sink.elsewhere(left):
                    return
                raise Broke("the transfer was stopped") from None
            finally:
                self.under_way.discard(wait)
            if misbehaves and fake.kind == "stalls":
                raise Broke("it sent nothing for 30 s")
            if misbehaves and fake.kind == "dies":
                raise Broke("the transfer broke off (the holder died)")
            data = self.data[start:stop]
            if misbehaves and fake.kind == "corrupt":
                data = bytes(b ^ 0xFF for b in data) or b"x"
            run.holder.pace.served += stop - start
            if sink.verified_already(index):
                continue
            try:
                await sink.write(run.holder, index, [memoryview(data)])
            except Corrupt:
                fake.caught = fake.runs
                raise
            fake.pieces.append(index)
            if sink.elsewhere([i for i, _, _ in run.spans if i > index]):
                return


class Watched(Holders):
    """
    The holders' table, with every transition it takes recorded.
    """

    def __init__(self, sources):
        self.taken: list[tuple[str, str, str]] = []
        super().__init__(sources)

    def fire(self, source, input):
        before = source.state
        super().fire(source, input)
        self.taken.append((before, input, source.state))


fake_strategy = st.builds(
    Fake,
    kind=st.sampled_from(KINDS),
    seconds_per_piece=st.sampled_from([0.1, 0.5, 2.0]),
    after=st.integers(0, 3),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(0, 5 * 2**20),
    fakes=st.lists(fake_strategy, min_size=1, max_size=16),
    limit=st.integers(1, 16),
)
def test_the_scheduler_keeps_its_table_with_any_holders(tmp_path, size, fakes, limit):
    data = os.urandom(size)
    count = piece_count(size)
    digests = b"".join(
        hashlib.sha256(data[slice(*piece_span(i, size))]).digest() for i in range(count)
    )
    clock = Clock()
    by_name = {f"h{i}": fake for i, fake in enumerate(fakes)}
    path = tmp_path / f"part-{os.urandom(4).hex()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, size)
    book = PieceBook(size)
    sources = [Source(name, lambda: b"http://x/") for name in by_name]
    swarm = Swarm(
        fetcher=FakeFetcher(clock, by_name, data), clock=clock, run_blocking=maybeDeferred,
        target=Target("f.bin", size, hashlib.sha256(data).hexdigest(), digests, fd), book=book,
        sources=sources, progress=lambda *figures: None,
    )
    swarm.holders = watched = Watched(sources)
    outcome = []
    Deferred.fromCoroutine(swarm.run(limit)).addBoth(outcome.append)
    try:
        for _ in range(40_000):  # bounded: 10,000 simulated seconds at most
            watched.check(book.fetching, swarm.limit)
            if outcome:
                break
            clock.advance(STEP)
        assert outcome, "the download neither ended nor failed"
        got = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    # Every transition taken is one of the table's.
    for before, input, after in watched.taken:
        assert TRANSITIONS[(before, input)] == after
    result = outcome[0]
    for name, fake in by_name.items():
        holder = next(s for s in watched.all if s.name == name)
        if fake.caught is not None:
            # Let go at once, and never asked again.
            assert fake.runs == fake.caught, (name, fake)
            if fake.kind == "corrupt":
                assert holder.state == CORRUPT and holder.problem.startswith("sent a corrupt piece")
            else:
                assert holder.state == DROPPED
                assert holder.problem == "it no longer holds this version"
    if isinstance(result, Failure):
        result.trap(Broke)
        # Only when no sound holder was left to finish it.
        assert not book.done
        for s in watched.all:
            if s.problem is not None:
                assert f"{s.name}: {s.problem}" in str(result.value)
        assert all(by_name[s.name].kind != "sound" or s.problem or s.state == table.RESERVE
                   for s in watched.all)
    else:
        assert got == data and book.done
    # Nothing is left scheduled by the download.
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


def test_a_sound_holder_after_a_corrupt_one_brings_the_file(tmp_path):
    """
    The table's simplest story: h0 sends a corrupt piece (let go, never
    again), h1 brings every piece.
    """
    size = 3 * 2**20
    data = os.urandom(size)
    digests = b"".join(
        hashlib.sha256(data[slice(*piece_span(i, size))]).digest() for i in range(piece_count(size))
    )
    clock = Clock()
    fakes = {"h0": Fake("corrupt", 0.1, 0), "h1": Fake("sound", 0.1, 0)}
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, size)
    sources = [Source("h0", lambda: b"http://x/"), Source("h1", lambda: b"http://x/")]
    swarm = Swarm(
        fetcher=FakeFetcher(clock, fakes, data), clock=clock, run_blocking=maybeDeferred,
        target=Target("f.bin", size, hashlib.sha256(data).hexdigest(), digests, fd),
        book=PieceBook(size), sources=sources, progress=lambda *figures: None,
    )
    outcome = []
    Deferred.fromCoroutine(swarm.run(2)).addBoth(outcome.append)
    for _ in range(1000):  # bounded
        if outcome:
            break
        clock.advance(STEP)
    os.close(fd)
    assert outcome == [None]
    assert [s.state for s in sources] == [CORRUPT, table.RESERVE]
    assert sources[0].problem == "sent a corrupt piece (0)"
    assert swarm.notes == ["h0 sent a corrupt piece of f.bin; dropped"]
    assert fakes["h0"].pieces == [] and sorted(fakes["h1"].pieces) == [0, 1, 2]
