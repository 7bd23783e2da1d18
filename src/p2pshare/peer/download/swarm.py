"""
Fetching one file from many holders at once, piece by piece.

L{Swarm} runs one download of one group of holders (those that agree on
the file's piece list) into a part file: one worker per holder asks the
L{PieceBook} (peer/download/book.py) for a run of consecutive pieces, has
its fetcher (peer/download/fetch.py) fetch it, and each piece, as soon as
its last byte arrives, is checked against the list's SHA-256 and written
in place by a thread (peer/download/store.py).  A faster holder finishes
its runs sooner and so asks for more of them, and its runs grow with its
measured rate; once no piece is left unclaimed, an idle worker asks for a
piece another holder is still fetching (the endgame), so one slow holder
cannot hold up the end.

Each holder is in one state of one table (peer/download/holders.py), and
what a failed run means for it is decided there, by one policy: a piece
that does not verify came from exactly one holder, which is named and
dropped for the rest of the download; one that breaks off, stalls, or
answers C{503} gives its pieces back to the others and is tried again
later; one that no longer holds that version is dropped.  The download
fails only when no holder is left, saying which were tried and why.

The pieces in memory are bounded per download (L{PIECE_MEMORY}): the
holders fetched from at once, each with L{BUFFERS} piece buffers, fit in
it, whatever size a holder claims (pieces.py bounds the piece size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pshare.peer.download import pacing
from p2pshare.peer.download.book import Ledger, PieceBook
from p2pshare.peer.download.direct import BUFFERS
from p2pshare.peer.download.fetch import (
    Broke,
    Busy,
    Corrupt,
    Gone,
    IFetcher,
    NotYet,
    Run,
    why_failed,
)
from p2pshare.peer.download.holders import (
    READY,
    WORKING,
    Holders,
    Source,
    Verdict,
    judge,
    judge_question,
)
from p2pshare.peer.download.store import PieceStore
from p2pshare.peer.download.storing import Parts
from p2pshare.pieces import DIGEST

PIECE_MEMORY = 192 << 20  # bytes of pieces one download holds in memory, at most
HAVE_EVERY = 1.0  # seconds between asking a partial holder which pieces it has
PARTIAL_PATIENCE = 60.0  # seconds a partial holder may have nothing we need


class LocalWriteError(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Target:
    """
    The file a swarm fetches, and the open part file it goes into.
    """

    name: str
    size: int
    sha256: str
    digests: bytes
    fd: int


class Swarm:
    """
    One download of one file, from the holders of one piece list, into an
    open part file.

    @ivar notes: what the user should hear (holders dropped and why).
    """

    log = Logger()

    def __init__(
        self, *, fetcher: IFetcher, clock: IReactorTime, run_blocking: Callable[..., Deferred[Any]],
        target: Target, book: PieceBook, sources: list[Source],
        progress: Callable[[int, int, int], None], ledger: Ledger | None = None,
    ) -> None:
        """
        @param ledger: what the download has learned of holder addresses
            (shared with its other swarms and searches); a fresh one if
            not given.
        """
        assert len(target.digests) == book.count * DIGEST
        self.fetcher = fetcher
        self.clock = clock
        self.run_blocking = run_blocking
        self.target = target
        self.book = book
        self.holders = Holders(sources)
        self.ledger = ledger if ledger is not None else Ledger()
        self.notes: list[str] = []
        self._progress = progress
        self._crew = _Crew(clock)
        self._pieces: _Pieces | None = None  # while running
        self._digest: str | None = None  # the whole file's SHA-256, once run
        self._local: LocalWriteError | None = None
        self._alone_until = 0.0  # the nearest holder works alone until then, at most
        self.limit = 1  # holders fetched from at once

    @property
    def sources(self) -> list[Source]:
        return self.holders.all

    # Running.

    async def run(self, limit: int) -> None:
        """
        Fetch every missing piece from up to C{limit} holders at once (the
        next in line takes the place of one that is dropped); returns once
        all are verified and written, or raises L{Broke} naming every
        holder tried and its problem.  Cancelled, it stops every transfer
        and returns (with L{CancelledError}) only once no piece is being
        written any more, so the part file may be closed at once.
        """
        self._report()
        # Each holder fetched from at once holds up to BUFFERS pieces in
        # memory: as many at once as PIECE_MEMORY holds (one at least).
        self.limit = max(1, min(limit, PIECE_MEMORY // (BUFFERS * self.book.piece)))
        self.fetcher.begin(self.book.piece, self.limit)
        # The nearest holder begins alone; the others join once its first
        # run shows it is not fast enough alone, or after FIRST_ALONE
        # seconds, whichever comes first.
        self._alone_until = self.clock.seconds() + pacing.FIRST_ALONE
        probe = LoopingCall(self._refill)  # a fast holder may slow down
        probe.clock = self.clock
        probe.start(pacing.FIRST_ALONE, now=False)
        t = self.target
        store = PieceStore(t.fd, t.size, t.digests, self.book.verified)
        self._pieces = _Pieces(self, store)
        try:
            self._refill()
            try:
                await self._crew.all_ended()
            except CancelledError:
                self._halt()
                await self._crew.all_ended()
                raise
        finally:
            probe.stop()
            # Every run has ended: nothing writes or reads the part file
            # once this returns, so it may be closed.
            self.fetcher.close()
            self._pieces = None
            self._digest = await self.run_blocking(store.close)
        self._report()  # every worker has ended: nobody is sending any more
        self._crew.raise_error()
        if self._local is not None:
            raise self._local.error
        if not self.book.done:
            raise Broke(self.holders.failure(self.ledger))

    @property
    def _going(self) -> bool:
        return not (self.book.done or self._crew.halted or self._local is not None)

    def _refill(self) -> None:
        """
        Start holders from the reserve while there is room and no working
        holder is fast enough alone; while the first is on its first run,
        only it (see L{run}).
        """
        now = self.clock.seconds()
        while self._crew.live < self.limit and self._going:
            if pacing.fast_one(self.holders.working(), now) is not None:
                return
            first_run_going = self._crew.live and not any(s.rate for s in self.sources)
            if first_run_going and now < self._alone_until:
                return
            source = self.holders.admit(self.ledger)
            if source is None:
                return
            self._crew.start(source, self._work(source), self._ended)

    def _ended(self, source: Source) -> None:
        self.ledger.done(source.address)
        if source.state in WORKING:
            self.holders.fire(source, "leave")
        if self._crew.error is not None:
            self._halt()  # a bug: stop everything, and say so
        self._refill()
        self._wake()

    def _halt(self) -> None:
        """
        Stop every transfer and every wait (the download is cancelled, or
        cannot go on); pieces being written are left to finish.
        """
        self._crew.halted = True
        self.fetcher.stop(halt=True)
        self._wake()

    def _wake(self) -> None:
        """
        Something changed: workers waiting for pieces look again, and once
        every piece is verified, transfers of pieces verified elsewhere
        stop (and sleepers wake, as they do once the swarm is halted).
        """
        if self.book.done:
            self.fetcher.stop(halt=False)
        self._crew.wake(finished=self.book.done or self._crew.halted)

    @property
    def halted(self) -> bool:
        return self._crew.halted

    def cannot_write(self, error: OSError) -> None:
        """
        Writing here failed: the download stops (no holder can help).
        """
        self._local = LocalWriteError(error)
        self._halt()

    def progressed(self) -> None:
        """
        A piece more is verified.
        """
        self._report()
        self._wake()

    def _report(self) -> None:
        self._progress(self.book.verified_bytes(), self.target.size, self.holders.sending())

    def whole_sha256(self) -> str | None:
        """
        The SHA-256 of the pieces as stored, once every piece was hashed in
        order by this swarm (None otherwise: the caller reads the file).
        """
        return self._digest

    # One holder's worker.

    async def _work(self, source: Source) -> None:
        while self._going:
            if pacing.redundant(source, self.holders.working(), self.clock.seconds()):
                self.holders.fire(source, "spare")
                return
            if source.have_url is not None:
                await self._ask_has(source)
                if not self._going or source.state != READY:
                    return
            run = self.book.take(
                source.name, pacing.run_pieces(source, self.book, self.holders.active()),
                self.clock.seconds(), pacing.patience(source, self.book.piece), source.has,
            )
            if not run:
                if source.has is not None and self._useless(source):
                    return
                # Wait for a change, or for a piece in flight to become
                # late enough to be fetched a second time.
                source.sending = False
                await self._crew.changed(pacing.ENDGAME_LOOK)
                continue
            source.useless_since = None
            verdict = await self._fetch(source, run)
            if verdict is None:
                return
            if verdict.problem is not None:
                self._let_go(source, verdict)
                return
            self.holders.fire(source, verdict.input)
            if verdict.input == "again":
                source.asked_has = float("-inf")  # ask it again what it has
            elif verdict.input in ("busy", "backoff"):
                _told_busy(self.notes, source, verdict)
                if verdict.input == "backoff":
                    self.log.info(
                        "{holder} broke off sending {name} ({why}); trying it again soon",
                        holder=source.name, name=self.target.name, why=verdict.why,
                    )
                await self._crew.sleep(verdict.wait)
                self.holders.fire(source, "wake")
            else:
                self._refill()  # this one may have slowed down

    async def _fetch(self, source: Source, run: list[int]) -> Verdict | None:
        """
        One run from C{source}, judged (None: the swarm ended under it).
        """
        self.holders.fire(source, "fetch")
        pace = source.pace
        pace.run_began, pace.run_served = self.clock.seconds(), pace.served
        try:
            assert self._pieces is not None
            await self.fetcher.fetch(
                Run.of(source, run, self.target.size, self.target.sha256), self._pieces
            )
            outcome: Exception | None = None
        except CancelledError:
            if self._crew.halted:
                return None
            raise
        except (Corrupt, Gone, Broke, Busy, NotYet) as e:
            if isinstance(e, Broke) and not self._going:
                return None
            outcome = e
        finally:
            pace.run_began = None
            self.book.give_back(run, source.name)
            self._wake()
        return judge(source, outcome, source.address in self.ledger.good)

    async def _ask_has(self, source: Source) -> None:
        """
        Ask a partial holder which pieces it has, at most every
        L{HAVE_EVERY} seconds and only while it may have some we need.
        """
        now = self.clock.seconds()
        if now - source.asked_has < HAVE_EVERY or source.have_url is None:
            return
        if source.has is not None and len(source.has) >= self.book.count:
            return  # it has them all
        source.asked_has = now
        try:
            has = await self.fetcher.pieces_of(source, self.book.count)
        except CancelledError:
            if self._crew.halted:
                return
            raise
        except Gone as e:
            self._let_go(source, Verdict("drop", problem=str(e)))
            return
        except Exception as e:
            verdict = judge_question(source, why_failed(e), source.address in self.ledger.good)
            if verdict is not None:
                self._let_go(source, verdict)
            return
        if has is not None:
            source.has = has

    def _useless(self, source: Source) -> bool:
        """
        A partial holder that has had nothing we need for a long while is
        let go (True), so a download never waits on it forever.
        """
        if not pacing.useless(source, self.clock.seconds(), PARTIAL_PATIENCE):
            return False
        self._let_go(source, Verdict(
            "useless", problem=f"it had none of the missing pieces for {PARTIAL_PATIENCE:.0f} s"
        ))
        return True

    def _let_go(self, source: Source, verdict: Verdict) -> None:
        """
        C{source} is let go for the rest of this swarm (L{Holders.let_go}).
        """
        self.holders.let_go(source, verdict, self.ledger)
        if not source.corrupt:
            self.log.info("download of {name}: {holder} is dropped ({why})",
                          name=self.target.name, holder=source.name, why=verdict.problem)
            return
        self.notes.append(f"{source.name} sent a corrupt piece of {self.target.name}; dropped")
        self.log.warn("{holder} {why} of {name}; dropped",
                      holder=source.name, why=verdict.problem, name=self.target.name)

    def add(self, source: Source) -> None:
        """
        A holder found while the download runs (another peer fetching the
        same file, say): it joins at once if there is room, else waits.
        """
        if self._going and self.holders.join(source, self.ledger):
            self._refill()


class _Pieces:
    """
    Where the fetchers hand what they fetched (L{IPieceSink}): the book,
    the part file's store and the ledger of one swarm.
    """

    def __init__(self, swarm: Swarm, store: PieceStore) -> None:
        self.swarm = swarm
        self.book = swarm.book
        self.ledger = swarm.ledger
        self.target = swarm.target
        self.run_blocking = swarm.run_blocking
        self._store = store

    def stopping(self) -> bool:
        return self.book.done or self.swarm.halted

    def verified_already(self, index: int) -> bool:
        return index in self.book.verified

    def elsewhere(self, indices: list[int]) -> bool:
        return self.book.fetched_by_others(indices)

    def sending(self, holder: Source) -> None:
        holder.sending = True

    def store(self, index: int, data: Parts, release: Callable[[], None] | None = None) -> bool:
        return self._store.store(index, data, release)

    def write(self, holder: Source, index: int, data: Parts) -> Deferred[None]:
        return Deferred.fromCoroutine(self._write(holder, index, data))

    async def _write(self, holder: Source, index: int, data: Parts) -> None:
        try:
            ok = await self.run_blocking(self.store, index, data)
        except OSError as e:
            raise self.cannot_write(e) from None
        if not ok:
            raise Corrupt(index)
        self.stored(holder, index, sum(len(p) for p in data))

    def cannot_write(self, error: OSError) -> Broke:
        self.swarm.cannot_write(error)
        return Broke("could not write")

    def stored(self, holder: Source, index: int, size: int) -> None:
        self.ledger.held(holder.address)
        self.ledger.progressed.add(self.target.sha256)
        if self.book.got(index):
            holder.pace.verified += size
            self.swarm.progressed()


class _Crew:
    """
    The swarm's workers (one per holder with a place) and their waits:
    how many run, whether one failed with a bug, and the pauses and
    waits for a change that end early once the swarm is finished.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.live = 0
        self.halted = False
        self.error: Failure | None = None
        self._ended: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []
        self._sleeps: list[tuple[IDelayedCall, Deferred[None]]] = []

    def start(self, source: Source, work: Any, ended: Callable[[Source], None]) -> None:
        self.live += 1
        worker = Deferred.fromCoroutine(work)

        def done(result: object) -> None:
            self.live -= 1
            if isinstance(result, Failure) and self.error is None:
                self.error = result
            ended(source)
            if self.live == 0 and self._ended is not None and not self._ended.called:
                self._ended.callback(None)

        worker.addBoth(done)

    def all_ended(self) -> Deferred[None]:
        self._ended = Deferred()
        if self.live == 0:
            self._ended.callback(None)
        return self._ended

    def raise_error(self) -> None:
        if self.error is not None:
            self.error.raiseException()

    def changed(self, at_most: float) -> Deferred[None]:
        """
        A wait for the next change, or C{at_most} seconds.
        """
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d.addTimeout(at_most, self.clock, lambda r, t: None)

    def sleep(self, seconds: float) -> Deferred[None]:
        """
        A pause that ends early if the swarm finishes.
        """
        d: Deferred[None] = Deferred()

        def ring() -> None:
            self._sleeps.remove((call, d))
            d.callback(None)

        call = self.clock.callLater(seconds, ring)
        self._sleeps.append((call, d))
        return d

    def wake(self, finished: bool) -> None:
        """
        Something changed: workers waiting for pieces look again; once the
        swarm is C{finished} (or halted), sleepers wake too.
        """
        if finished:
            sleeps, self._sleeps = self._sleeps, []
            for call, d in sleeps:
                if call.active():
                    call.cancel()
                d.callback(None)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)


def _told_busy(notes: list[str], source: Source, verdict: Verdict) -> None:
    """
    A busy holder that said why (a relay at its cap) is told the user
    once, at the end.
    """
    told = f"{source.name}: {verdict.why}; waited and asked again"
    if verdict.input == "busy" and verdict.why and told not in notes:
        notes.append(told)
