"""
Fetching one file from many holders at once, piece by piece.

L{PieceBook} is the pure state: which pieces are verified, which are being
fetched and from whom.  L{Swarm} runs one download of one group of holders
(those that agree on the file's piece list) into a part file: one worker
per holder asks the book for a run of consecutive pieces, fetches it with a
C{Range} request guarded by C{If-Match}, and each piece, as soon as its
last byte arrives, is checked against the list's SHA-256 and written in
place (peer/download/storing.py) by a thread: over plain TCP the thread that reads
the run (peer/download/direct.py), otherwise a pool thread given the piece by
Twisted's agent.  A faster holder finishes its runs sooner and
so asks for more of them, and its runs grow with its measured rate; once no
piece is left unclaimed, an idle worker asks for a piece another holder is
still fetching (the endgame), so one slow holder cannot hold up the end.

A piece that does not verify came from exactly one holder: that holder is
named and dropped for the rest of the download.  One that breaks off,
stalls, or answers C{503} gives its pieces back to the others and is tried
again later (a busy one after its C{Retry-After}); one that no longer
holds that version is dropped.  The download fails only when no holder is
left, saying which were tried and why.

A holder is held to overall deadlines, not only to gaps between bytes:
its response head must be whole within L{HEADER_TIMEOUT}, and each piece
within L{piece_deadline} (a floor rate), however slowly the bytes drip.

What one download learns of the addresses it is given is its L{Ledger}:
an address that has not yet sent a verified piece is dropped at its
first failure and never tried again in that download, and at most
L{BAD_ADDRESSES} such addresses are ever tried, so a forged search result
cannot turn a download into a flood of connections to somebody else.
One holder per address: many names at one host and port are one source.

The pieces in memory are bounded per download (L{PIECE_MEMORY}): the
holders fetched from at once, each with L{BUFFERS} piece buffers, fit in
it, whatever size a holder claims (pieces.py bounds the piece size).
"""

from __future__ import annotations

import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from p2pshare.peer.download import storing
from p2pshare.peer.download.direct import (
    BUFFERS,
    Link,
    PieceBuffers,
    RunResult,
    fetch_run,
    in_thread,
)
from p2pshare.peer.download.storing import Parts, WholeHash
from p2pshare.pieces import DIGEST, digest_of, from_bitfield, piece_count, piece_size, piece_span

HEADER_TIMEOUT = 30.0  # seconds for a whole response head, however slowly it comes
IDLE_TIMEOUT = 30.0  # seconds a response may send nothing
PIECE_TIMEOUT = 30.0  # seconds a piece may take in any case (see piece_deadline)
PIECE_FLOOR = 16 * 1024  # bytes a second: a larger piece may take as long as this rate needs
PIECE_MEMORY = 192 << 20  # bytes of pieces one download holds in memory, at most
BAD_ADDRESSES = 8  # addresses one download tries that turn out not to hold the file, at most
FIRST_RUN = 4 << 20  # bytes a holder is first asked for in one request
MAX_RUN = 64 << 20
RUN_SECONDS = 2.0  # later runs: about this long at the holder's rate
PENDING_PIECES = 2  # pieces of one holder waiting to be hashed and written
TRIES = 3  # times a holder may break off in a row before it is dropped
BUSY_TRIES = 20  # times a holder may answer 503 before it is dropped
READ_SIZE = 1 << 19  # bytes read from a holder's socket at a time
ENDGAME_WAIT = 0.5  # seconds a piece is in flight before another holder may fetch it too
HAVE_EVERY = 1.0  # seconds between asking a partial holder which pieces it has
PARTIAL_PATIENCE = 60.0  # seconds a partial holder may have nothing we need
# A whole holder that alone delivers this many bytes a second makes the
# others wait in reserve: beyond it the downloader's own hashing and writing
# are the limit, and more holders only add contention (four unthrottled
# holders on loopback were 0.8 of one; a gigabit link carries 125 MB/s).
FAST_ENOUGH = 250e6
FIRST_ALONE = 0.1  # seconds the nearest holder works alone, unless it is slower
ENDGAME_LOOK = 0.25  # seconds between looks for late pieces, while there is nothing else


Address = tuple[str, int]  # where a holder serves: (host, port)


def piece_deadline(length: int) -> float:
    """
    Seconds a piece of C{length} bytes may take to arrive, from the end of
    the one before it (or of the response head): L{PIECE_TIMEOUT}, or
    longer for a piece that needs it at L{PIECE_FLOOR} bytes a second.
    """
    return max(PIECE_TIMEOUT, length / PIECE_FLOOR)


def seconds(t: float) -> str:
    return f"{t:.0f}" if t >= 10 else f"{t:g}"


def no_answer(result: object, timeout: float) -> NoReturn:
    """
    For C{Deferred.addTimeout}: a request that missed its deadline is a
    holder that did not answer in time (not whatever the cancelled
    request reports).
    """
    raise Broke(f"no answer in {seconds(timeout)} s")


VERSIONS_PER_ADDRESS = 2  # versions one address may say it lacks before it failed


class Ledger:
    """
    What one download has learned of the holder addresses it was given,
    across every search, piece list and swarm of it: which failed (they
    never sent a verified piece, and are never tried again), which sent
    verified pieces (good), and which are on trial now.  An address not
    yet tried is tried only while the failed ones and those on trial are
    fewer than C{budget}, so at most C{budget} addresses that do not hold
    the file are ever connected to, however many a search result names.
    Also the piece roots and versions found bad, and what each address
    answered for its piece list.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = BAD_ADDRESSES if budget is None else budget
        self.failed: dict[Address, str] = {}  # address -> why
        # Versions an address said it does not hold (a match may name a
        # real holder with another's content): it stays usable for others,
        # until it has said so VERSIONS_PER_ADDRESS times.  It counts
        # against the budget from the first.
        self.lacks: dict[Address, set[str]] = {}
        self._refusals: Counter[Address] = Counter()
        self.good: set[Address] = set()
        self.bad_roots: set[str] = set()
        self.refused: dict[tuple[str, int], str] = {}  # (sha256, size) -> why it is not fetched
        self.lists: dict[tuple[Address, str], str] = {}  # (address, sha256) -> root of its piece list
        self.progressed: set[str] = set()  # versions (sha256) of which a piece verified
        self._using: Counter[Address] = Counter()  # begun and not done, by how many

    def usable(self, address: Address) -> bool:
        return address not in self.failed

    def _counted(self) -> int:
        """
        Addresses that turned out not to hold the file (or a version of it).
        """
        return len(self.failed.keys() | self.lacks.keys())

    def holds_maybe(self, address: Address, sha256: str) -> bool:
        """
        May C{address} still hold version C{sha256} (as far as this
        download knows)?
        """
        return address not in self.failed and sha256 not in self.lacks.get(address, ())

    def lacked(self, address: Address, sha256: str, why: str) -> None:
        """
        C{address} answered that it does not hold version C{sha256}: it
        may still hold another, unless it has said so of
        L{VERSIONS_PER_ADDRESS} already (then it failed).
        """
        self.lacks.setdefault(address, set()).add(sha256)
        self._refusals[address] += 1
        if self._refusals[address] >= VERSIONS_PER_ADDRESS:
            self.fail(address, why)

    def _on_trial(self) -> int:
        return sum(1 for a in self._using if a not in self.good and a not in self.lacks)

    def may_try(self, address: Address) -> bool:
        """
        May C{address} be connected to now?
        """
        if address in self.failed:
            return False
        return (address in self.good or address in self._using or address in self.lacks
                or self._counted() + self._on_trial() < self.budget)

    def begin(self, address: Address) -> bool:
        """
        If C{address} may be connected to now (L{may_try}), it is in use
        (on trial, unless good) until L{done}.
        """
        if not self.may_try(address):
            return False
        self._using[address] += 1
        return True

    def done(self, address: Address) -> None:
        """
        A use of C{address} begun by L{begin} has ended.
        """
        self._using[address] -= 1
        if self._using[address] <= 0:
            del self._using[address]

    def held(self, address: Address) -> None:
        """
        C{address} sent a piece that verified.
        """
        if address not in self.failed:
            self.good.add(address)

    def fail(self, address: Address, why: str) -> None:
        """
        C{address} turned out not to hold the file (or to send bad data).
        """
        self.good.discard(address)
        self.failed.setdefault(address, why)

    @property
    def spent(self) -> bool:
        return self._counted() >= self.budget

    def exhausted(self, name: str) -> str:
        """
        The sentence for a download left with no holder to try.
        """
        n = self._counted()
        if not n:
            return f"could not download {name}: no holder is left to try"
        most = " (the most one download tries)" if self.spent else ""
        return (
            f"could not download {name}: {n} address{'' if n == 1 else 'es'} said to hold it "
            f"failed{most}, and no other holder is left"
        )


class PieceBook:
    """
    Which pieces of a file are verified, and which are being fetched from
    whom.  Pure state: no I/O.
    """

    def __init__(self, size: int, verified: Iterable[int] = (), first: int = 0) -> None:
        """
        @param first: the piece to begin with; pieces are claimed from
            there on, round to it again.  Peers that fetch one file at once
            begin at different pieces, so that they hold different pieces
            and can trade them.
        """
        self.size = size
        self.count = piece_count(size)
        self.piece = piece_size(size)
        self.verified: set[int] = set(verified)
        self.fetching: dict[int, set[str]] = {}
        self.since: dict[int, float] = {}  # when each piece being fetched was first claimed
        self._verified_bytes = sum(self._length(i) for i in self.verified)
        self.first = first % self.count
        self._next = 0  # no unclaimed missing piece lies before this position

    @property
    def done(self) -> bool:
        return len(self.verified) == self.count

    def verified_bytes(self) -> int:
        return self._verified_bytes

    def _length(self, i: int) -> int:
        start, stop = piece_span(i, self.size)
        return stop - start

    def _at(self, position: int) -> int:
        return (self.first + position) % self.count

    def _open(self, i: int) -> bool:
        return i not in self.verified and i not in self.fetching

    def take(
        self, holder: str, most: int, now: float = 0.0, patience: float = 0.0,
        has: set[int] | None = None,
    ) -> list[int]:
        """
        Claim for C{holder} a run of up to C{most} consecutive pieces nobody
        fetches (among C{has}, the pieces a partial holder has); failing
        that (the endgame), one piece that exactly one other holder has
        been fetching for at least C{patience} seconds.  Empty if there is
        nothing for it now.
        """
        while self._next < self.count and not self._open(self._at(self._next)):
            self._next += 1
        run: list[int] = []
        p = self._next
        if has is not None:
            while p < self.count and not (self._at(p) in has and self._open(self._at(p))):
                p += 1
        while p < self.count and len(run) < most:
            i = self._at(p)
            if not self._open(i) or (has is not None and i not in has):
                break
            if run and i != run[-1] + 1:
                break  # round past the last piece: a run is consecutive bytes
            run.append(i)
            p += 1
        if not run:
            for i, holders in sorted(self.fetching.items()):
                if (len(holders) == 1 and holder not in holders and i not in self.verified
                        and (has is None or i in has) and now - self.since[i] >= patience):
                    run = [i]
                    break
        for i in run:
            self.fetching.setdefault(i, set()).add(holder)
            self.since.setdefault(i, now)
        return run

    def got(self, index: int) -> bool:
        """
        Piece C{index} is verified and written; False if it already was
        (another holder's copy won the endgame).
        """
        self.fetching.pop(index, None)
        self.since.pop(index, None)
        if index in self.verified:
            return False
        self.verified.add(index)
        self._verified_bytes += self._length(index)
        return True

    def give_back(self, indices: Iterable[int], holder: str) -> None:
        """
        C{holder} will not deliver these pieces after all.
        """
        for i in indices:
            holders = self.fetching.get(i)
            if holders is None:
                continue
            holders.discard(holder)
            if not holders:
                del self.fetching[i]
                self.since.pop(i, None)
                self._next = min(self._next, (i - self.first) % self.count)

    def fetched_by_others(self, indices: Iterable[int]) -> bool:
        """
        Is every one of these pieces verified already?
        """
        return all(i in self.verified for i in indices)


class Corrupt(Exception):
    def __init__(self, index: int) -> None:
        super().__init__(f"piece {index}")
        self.index = index


class Busy(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"busy; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class NotYet(Exception):
    """
    A partial holder has not (or no longer) the pieces asked for.
    """


class Gone(Exception):
    """
    The holder no longer holds this version of the file.
    """


class Broke(Exception):
    """
    The holder broke off, stalled or answered nonsense; it may do better
    later.
    """


class LocalWriteError(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class Source:
    """
    One holder, as the swarm sees it.
    """

    name: str
    url: Callable[[], bytes]  # the file's URL (signed afresh in a private network)
    rate: float = 0.0  # bytes per second, over every run so far
    fetched: int = 0  # bytes received in runs
    fetch_time: float = 0.0  # seconds spent in runs
    served: int = 0  # bytes it sent
    verified: int = 0  # bytes of pieces it sent first that verified
    problem: str | None = None  # why it was dropped
    corrupt: bool = False  # dropped for a corrupt piece: never trusted again here
    tries: int = 0
    busy: int = 0
    have_url: Callable[[], bytes] | None = None  # a partial holder's /have/SHA
    has: set[int] | None = None  # the pieces a partial holder has (None: all)
    asked_has: float = float("-inf")  # when we last asked it which
    useless_since: float | None = None  # since when it has had nothing for us
    run_began: float | None = None  # when its run under way began
    run_served: int = 0  # what it had served then
    where: Address | None = None  # its host and port, if known

    @property
    def address(self) -> Address:
        """
        What the download's L{Ledger} knows it by: its host and port (a
        holder known only by name, by that).
        """
        return self.where if self.where is not None else (self.name, 0)

    def ran(self, seconds: float, received: int) -> None:
        """
        A run took C{seconds} for C{received} bytes: its rate is over every
        run so far (one short run says little).
        """
        self.fetch_time += seconds
        self.fetched += received
        self.rate = self.fetched / max(self.fetch_time, 1e-3)


class _Deadline:
    """
    One timer at a time on C{clock}, for what a run waits for now (its
    head, its next piece): if it rings, why is kept in C{missed} and
    C{stop} is called.
    """

    def __init__(self, clock: IReactorTime, stop: Callable[[], None]) -> None:
        self.clock = clock
        self.stop = stop
        self.missed: str | None = None
        self._call: IDelayedCall | None = None

    def expect(self, after: float, why: str) -> None:
        self.cancel()
        if self.missed is None:
            self._call = self.clock.callLater(after, self._ring, why)

    def expect_piece(self, index: int, length: int) -> None:
        """
        Piece C{index} (C{length} bytes) must be whole within its deadline
        (L{piece_deadline}), from now.
        """
        allowed = piece_deadline(length)
        self.expect(allowed, f"piece {index} did not arrive within {seconds(allowed)} s")

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _ring(self, why: str) -> None:
        self._call = None
        self.missed = why
        self.stop()


class _RunReceiver(Protocol):
    """
    The body of one range response: cut into pieces as it arrives, each
    complete piece handed to C{on_piece}; C{done} fires with the reason
    the body ended.  Cancelling C{done} stops the transfer.
    """

    def __init__(
        self, clock: IReactorTime, first_byte: int, spans: list[tuple[int, int, int]],
        on_piece: Callable[[int, Parts], None],
    ) -> None:
        self.clock = clock
        self.spans = spans  # (index, start, stop) of the pieces asked for, in order
        self.on_piece = on_piece
        self.position = first_byte
        self.chunks: Parts = []  # what arrived of the next piece
        self.held = 0
        self.received = 0
        self.done: Deferred[BaseException] = Deferred(lambda d: self.stop())
        self._idle: IDelayedCall | None = None
        # The next piece's deadline; its missed says why it ended the run.
        self.deadline = _Deadline(clock, self.stop)
        self.stalled = False
        self.paused = False
        self.stopped = False  # no more pieces are handed on once stopped

    def connectionMade(self) -> None:
        self._idle = self.clock.callLater(IDLE_TIMEOUT, self._stall)
        self._expect_piece()
        # Read up to 512 KiB at a time rather than Twisted's 64 KiB: an eighth
        # of the system calls and callbacks for a large body.
        tcp: Any = getattr(self.transport, "_producer", None)
        if isinstance(getattr(tcp, "bufferSize", None), int):
            tcp.bufferSize = max(tcp.bufferSize, READ_SIZE)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.deadline.cancel()
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def _stall(self) -> None:
        self._idle = None
        self.stalled = True
        self.stop()

    def _expect_piece(self) -> None:
        """
        The next piece asked for must be whole within its deadline (from
        now: the end of the one before it, or of the response head).
        """
        if self.spans and not (self.stopped or self.paused):
            index, start, stop = self.spans[0]
            self.deadline.expect_piece(index, stop - start)
        else:
            self.deadline.cancel()

    def pause(self) -> None:
        transport: Any = self.transport
        if not self.paused and transport is not None:
            self.paused = True
            transport.pauseProducing()
            if self._idle is not None and self._idle.active():
                self._idle.cancel()  # our own pause is no stall
                self._idle = None
            self.deadline.cancel()  # nor does it count against the holder

    def resume(self) -> None:
        transport: Any = self.transport
        if self.paused and transport is not None and not self.stopped:
            self.paused = False
            self._idle = self.clock.callLater(IDLE_TIMEOUT, self._stall)
            self._expect_piece()  # the piece under way is given its time afresh
            transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self._idle is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)
        if self.stopped or not self.spans:
            return  # more than was asked for is ignored, and the run ends
        self.chunks.append(memoryview(data))
        self.held += len(data)
        while self.spans and not self.stopped:
            index, start, stop = self.spans[0]
            need = stop - self.position
            if self.held < need:
                break
            piece: Parts = []
            while need:
                block = self.chunks[0]
                if len(block) <= need:
                    piece.append(self.chunks.pop(0))
                    need -= len(block)
                else:
                    piece.append(block[:need])  # views: nothing is copied
                    self.chunks[0] = block[need:]
                    need = 0
            self.held -= stop - self.position
            self.position = stop
            self.spans.pop(0)
            self._expect_piece()
            self.on_piece(index, piece)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self.deadline.cancel()
        if not self.done.called:
            self.done.callback(reason.value)


class _Collect(Protocol):
    """
    A response body of at most C{limit} bytes (a holder cannot make us hold
    more: past it, the connection is cut).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred(lambda d: self._cut())

    def _cut(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > self.limit:
            self._cut()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if len(self.data) > self.limit:
            self.done.errback(ValueError(f"it sent more than the {self.limit} bytes expected"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(reason)


def read_at_most(response: Any, limit: int) -> Deferred[bytes]:
    """
    The body of C{response}, if it is at most C{limit} bytes long.
    """
    collect = _Collect(limit)
    response.deliverBody(collect)
    return collect.done


class Swarm:
    """
    One download of one file, from the holders of one piece list, into an
    open part file (C{fd}).

    @ivar notes: what the user should hear (holders dropped and why).
    """

    log = Logger()

    def __init__(
        self,
        *,
        agent: IAgent,
        clock: IReactorTime,
        run_blocking: Callable[..., Deferred[Any]],
        name: str,
        size: int,
        sha256: str,
        digests: bytes,
        fd: int,
        book: PieceBook,
        sources: list[Source],
        progress: Callable[[int, int, int], None],
        direct: IReactorFromThreads | None = None,
        tls: ssl.SSLContext | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        """
        @param ledger: what the download has learned of holder addresses
            (shared with its other swarms and searches); a fresh one if
            not given.
        """
        assert len(digests) == book.count * DIGEST
        self.agent = agent
        self.clock = clock
        self.run_blocking = run_blocking
        self.name = name
        self.size = size
        self.sha256 = sha256
        self.digests = digests
        self.fd = fd
        self.book = book
        self.sources = sources
        self._progress = progress
        self.notes: list[str] = []
        self._waiters: list[Deferred[None]] = []
        self._sleeps: list[tuple[IDelayedCall, Deferred[None]]] = []
        self._receivers: set[_RunReceiver] = set()
        self._sending: set[str] = set()  # holders sending (see _worker)
        self._working: set[str] = set()  # holders with a worker
        self._reserve: list[Source] = []  # holders waiting for a worker
        self._alone_until = 0.0  # the nearest holder works alone until then, at most
        self._requests: set[Deferred[Any]] = set()
        self._local: LocalWriteError | None = None
        self._halted = False
        self._writing = threading.Lock()
        self._whole: WholeHash | None = None  # while running
        self._digest: str | None = None  # the whole file's SHA-256, once run
        # Runs from plain-TCP holders are read in threads (peer/download/direct.py),
        # which report to this reactor; None: through the agent.
        self.direct = direct
        self.tls = tls  # for those runs from https holders (None: they go through the agent)
        self._links: dict[str, Link] = {}  # by holder, for those runs
        self._running: set[Link] = set()  # those with a run under way
        self._buffers = PieceBuffers(book.piece, BUFFERS)  # their pieces (see run)
        self.ledger = ledger if ledger is not None else Ledger()
        self._limit = 1

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
        self._limit = max(1, min(limit, PIECE_MEMORY // (BUFFERS * self.book.piece)))
        self._buffers = PieceBuffers(self.book.piece, self._limit * BUFFERS)
        self._error: Failure | None = None
        self._live = 0
        self._all_ended: Deferred[None] = Deferred()
        # The nearest holder begins alone; the others join once its first
        # run shows it is not fast enough alone (L{FAST_ENOUGH}), or after
        # L{FIRST_ALONE} seconds, whichever comes first.
        self._reserve = list(self.sources)
        self._alone_until = self.clock.seconds() + FIRST_ALONE
        # Look again every FIRST_ALONE seconds (a fast holder may slow down).
        probe = LoopingCall(self._refill)
        probe.clock = self.clock
        probe.start(FIRST_ALONE, now=False)
        whole = self._whole = WholeHash(self.fd, self.size, self.book.verified)
        try:
            self._refill()
            if not self._live and not self._all_ended.called:
                self._all_ended.callback(None)
            try:
                await self._all_ended
            except CancelledError:
                self._halt()
                if self._live:
                    self._all_ended = Deferred()
                    await self._all_ended
                raise
        finally:
            probe.stop()
            # Every run has ended: nothing writes or reads the part file
            # once this returns, so it may be closed.
            for link in self._links.values():
                link.drop()
            self._whole = None
            self._digest = await self.run_blocking(whole.close)
        self._report()  # every worker has ended: nobody is sending any more
        if self._error is not None:
            self._error.raiseException()
        if self._local is not None:
            raise self._local.error
        if not self.book.done:
            tried = [s for s in self.sources if s.problem is not None]
            why = [f"{s.name}: {s.problem}" for s in tried]
            untried = [s for s in self._reserve if s.problem is None]
            if untried:  # the ledger let no more be tried
                why.append(
                    f"{len(untried)} more not tried: {len(self.ledger.failed)} addresses failed already"
                )
            raise Broke("; ".join(why) or "no holder")

    def _start(self, source: Source) -> None:
        self._live += 1
        self._working.add(source.name)
        worker = Deferred.fromCoroutine(self._worker(source))
        worker.addBoth(self._ended, source)

    def _fast_one(self) -> Source | None:
        """
        The fastest working whole holder, if it alone is L{FAST_ENOUGH}.
        """
        fast = [
            s for s in self.sources
            if s.name in self._working and s.problem is None and s.has is None
            and self._rate_now(s) >= FAST_ENOUGH
        ]
        return max(fast, key=self._rate_now, default=None)

    def _rate_now(self, source: Source) -> float:
        """
        How fast C{source} sends now: over its run under way once that has
        lasted a while (a holder whose upload cap lets a first burst through
        at full speed is seen slowing down within a tenth of a second), else
        over its runs so far.
        """
        began = source.run_began
        now = self.clock.seconds()
        if began is None or now - began < FIRST_ALONE / 2:
            return source.rate
        return (source.served - source.run_served) / (now - began)

    def _redundant(self, source: Source) -> bool:
        """
        True if another holder alone is fast enough (see L{FAST_ENOUGH}):
        C{source} then waits in reserve, to be started again if that one
        fails or slows down.
        """
        fast = self._fast_one()
        return fast is not None and fast is not source and source.rate < self._rate_now(fast)

    def _refill(self) -> None:
        """
        Start holders from the reserve while there is room and no working
        holder is fast enough alone; while the first is on its first run,
        only it (see L{run}).
        """
        while (
            self._reserve and self._live < self._limit and self._fast_one() is None
            and not (self._halted or self.book.done)
        ):
            first_run_going = self._live and not any(s.rate for s in self.sources)
            if first_run_going and self.clock.seconds() < self._alone_until:
                return
            source = self._admit()
            if source is None:
                return
            self._start(source)

    def _admit(self) -> Source | None:
        """
        The first holder in reserve that the ledger lets us try now (taken
        out of the reserve); those at an address that failed are let go.
        """
        for source in list(self._reserve):
            if not self.ledger.usable(source.address):
                self._reserve.remove(source)
                if source.problem is None:
                    source.problem = (
                        f"its address failed already ({self.ledger.failed[source.address]})"
                    )
                continue
            if self.ledger.begin(source.address):
                self._reserve.remove(source)
                return source
        return None

    def _ended(self, result: object, source: Source) -> None:
        self._live -= 1
        self._working.discard(source.name)
        self.ledger.done(source.address)
        if isinstance(result, Failure) and self._error is None:
            self._error = result  # a bug: stop everything, and say so
            self._halt()
        self._refill()
        self._wake()
        if self._live == 0 and not self._all_ended.called:
            self._all_ended.callback(None)

    def _halt(self) -> None:
        """
        Stop every transfer and every wait (the download is cancelled, or
        cannot go on); pieces being written are left to finish.
        """
        self._halted = True
        self._stop_transfers()
        for request in list(self._requests):
            request.cancel()
        self._wake()

    def _stop_transfers(self) -> None:
        """
        End every run under way, through the agent or in a thread.
        """
        for receiver in list(self._receivers):
            receiver.stop()
        for link in list(self._running):
            link.stop()

    def _wake(self) -> None:
        """
        Something changed: workers waiting for pieces look again, and once
        the book is done (or halted) sleepers wake and transfers of pieces
        already verified elsewhere stop.
        """
        if self.book.done:
            self._stop_transfers()
        if self.book.done or self._halted:
            sleeps, self._sleeps = self._sleeps, []
            for call, d in sleeps:
                if call.active():
                    call.cancel()
                d.callback(None)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _changed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _sleep(self, seconds: float) -> Deferred[None]:
        """
        A pause that ends early if the download ends.
        """
        d: Deferred[None] = Deferred()

        def ring() -> None:
            self._sleeps.remove((call, d))
            d.callback(None)

        call = self.clock.callLater(seconds, ring)
        self._sleeps.append((call, d))
        return d

    @property
    def _going(self) -> bool:
        return not (self.book.done or self._halted or self._local is not None)

    def _report(self) -> None:
        self._progress(self.book.verified_bytes(), self.size, len(self._sending))

    def active(self) -> int:
        return sum(1 for s in self.sources if s.problem is None)

    def _run_pieces(self, source: Source) -> int:
        want = FIRST_RUN if not source.rate else source.rate * RUN_SECONDS
        want = min(max(want, self.book.piece), MAX_RUN)
        # Near the end, no one takes more than its share of what is left.
        left = self.book.count - len(self.book.verified) - len(self.book.fetching)
        share = max(1, -(-left // max(1, self.active())))
        return max(1, min(int(want // self.book.piece), share))

    def _patience(self, source: Source) -> float:
        """
        How long a piece must have been in flight before C{source} fetches
        it too: twice what it would take C{source} itself.
        """
        if not source.rate:
            return ENDGAME_WAIT
        return max(ENDGAME_WAIT, 2 * self.book.piece / source.rate)

    async def _worker(self, source: Source) -> None:
        """
        Fetch runs from C{source} while there is work for it.  It counts as
        sending from its first bytes until it waits, fails or ends, not only
        while a response is under way: the gap between two runs is not a
        holder lost (what C{p2p get} and the web page show).
        """
        try:
            await self._work(source)
        finally:
            self._sending.discard(source.name)

    async def _work(self, source: Source) -> None:
        while self._going:
            if self._redundant(source):
                self._reserve.append(source)
                return
            if source.have_url is not None:
                await self._ask_has(source)
                if not self._going or source.problem is not None:
                    return
            run = self.book.take(
                source.name, self._run_pieces(source), self.clock.seconds(),
                self._patience(source), source.has,
            )
            if not run:
                if source.has is not None and self._useless(source):
                    return
                # Wait for a change, or for a piece in flight to become
                # late enough to be fetched a second time.
                self._sending.discard(source.name)
                await self._changed().addTimeout(ENDGAME_LOOK, self.clock, lambda r, t: None)
                continue
            source.useless_since = None
            try:
                await self._fetch_run(source, run)
                source.tries = 0
                self._refill()  # this one may have slowed down
            except CancelledError:
                if self._halted:
                    return
                raise
            except Corrupt as e:
                source.corrupt = True
                self._drop(source, f"sent a corrupt piece ({e.index})", bad=True)
                self.notes.append(f"{source.name} sent a corrupt piece of {self.name}; dropped")
                self.log.warn(
                    "{holder} sent a corrupt piece ({index}) of {name}; dropped",
                    holder=source.name, index=e.index, name=self.name,
                )
                return
            except Gone as e:
                self._drop(source, str(e))
                return
            except NotYet:
                # Its pieces only ever grow: refusing what it said it has
                # is a holder that restarted, or lies; it may do so twice.
                source.tries += 1
                if source.tries >= TRIES:
                    self._drop(source, "it refused pieces it said it had")
                    return
                source.asked_has = float("-inf")  # ask it again what it has
            except Busy as e:
                source.busy += 1
                if source.busy > BUSY_TRIES:
                    self._drop(source, "stayed busy")
                    return
                self.book.give_back(run, source.name)
                self._wake()
                await self._sleep(e.retry_after)
            except Broke as e:
                if not self._going:
                    return
                if source.address not in self.ledger.good:
                    # It has sent nothing that verified: one failure and it
                    # is done with (an address a search named, not a holder).
                    self._drop(source, str(e))
                    return
                source.tries += 1
                if source.tries >= TRIES:
                    self._drop(source, str(e))
                    return
                self.log.info(
                    "{holder} broke off sending {name} ({why}); trying it again soon",
                    holder=source.name, name=self.name, why=e,
                )
                self.book.give_back(run, source.name)
                self._wake()
                await self._sleep(0.5 * 2 ** source.tries)
            finally:
                self.book.give_back(run, source.name)
                self._wake()

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
        request = self.agent.request(b"GET", source.have_url())
        self._requests.add(request)
        try:
            response = await request.addTimeout(HEADER_TIMEOUT, self.clock)
            if response.code != 200:
                response.deliverBody(Protocol())
                if response.code in (404, 410):
                    self._drop(source, "it no longer holds the file")
                return
            bits = await read_at_most(response, (self.book.count + 7) // 8).addTimeout(
                HEADER_TIMEOUT, self.clock
            )
        except CancelledError:
            if self._halted:
                return
            raise
        except Exception as e:
            source.tries += 1
            if source.tries >= TRIES or source.address not in self.ledger.good:
                self._drop(source, f"no answer about its pieces ({why_failed(e)})")
            return
        finally:
            self._requests.discard(request)
        source.has = from_bitfield(bits, self.book.count)

    def _useless(self, source: Source) -> bool:
        """
        A partial holder that has had nothing we need for a long while is
        let go (True), so a download never waits on it forever.
        """
        now = self.clock.seconds()
        if source.useless_since is None:
            source.useless_since = now
        if now - source.useless_since < PARTIAL_PATIENCE:
            return False
        self._drop(source, f"it had none of the missing pieces for {PARTIAL_PATIENCE:.0f} s")
        return True

    def add(self, source: Source) -> None:
        """
        A holder found while the download runs (another peer fetching the
        same file, say): it joins at once if there is room, else waits.
        """
        if not self._going or not self.ledger.usable(source.address):
            return
        # One source per address, whatever names it goes by.
        known = next(
            (s for s in self.sources if s.name == source.name or s.address == source.address), None
        )
        if known is not None:
            # One that was partial and is now whole (it finished while we
            # fetch) comes back; one caught sending corrupt data never does.
            if (known.problem is None or known.corrupt
                    or known.has is None or source.has is not None):
                return
            self.sources.remove(known)
        self.sources.append(source)
        self._reserve.append(source)
        self._refill()

    def _drop(self, source: Source, problem: str, bad: bool = False) -> None:
        """
        Let C{source} go for the rest of this swarm; if it never sent a
        piece that verified (or sent a corrupt one: C{bad}), its address
        failed, for the rest of the download.
        """
        source.problem = problem
        if bad or source.address not in self.ledger.good:
            self.ledger.fail(source.address, problem)
        self.log.info(
            "download of {name}: {holder} is dropped ({why})",
            name=self.name, holder=source.name, why=problem,
        )

    async def _fetch_run(self, source: Source, run: list[int]) -> None:
        source.run_began, source.run_served = self.clock.seconds(), source.served
        try:
            await self._get_run(source, run)
        except BaseException:
            self._sending.discard(source.name)  # until it sends again
            raise
        finally:
            source.run_began = None

    async def _get_run(self, source: Source, run: list[int]) -> None:
        spans = [(i, *piece_span(i, self.size)) for i in run]
        first, last = spans[0][1], spans[-1][2] - 1
        url = source.url()
        direct = url.startswith(b"http://") or (url.startswith(b"https://") and self.tls is not None)
        if self.direct is not None and direct and last >= first:
            await self._get_run_direct(source, url, spans)
            return
        headers = Headers()
        headers.addRawHeader(b"if-match", f'"{self.sha256}"'.encode())
        if last >= first:
            headers.addRawHeader(b"range", f"bytes={first}-{last}".encode())
        request = self.agent.request(b"GET", url, headers)
        self._requests.add(request)
        try:
            # The whole head, however slowly it comes (the agent's request
            # is cancelled, its connection aborted, at the deadline).
            response = await request.addTimeout(HEADER_TIMEOUT, self.clock, no_answer)
        except Broke:
            raise
        except CancelledError:
            if self._halted:
                raise
            raise Broke(f"no answer in {seconds(HEADER_TIMEOUT)} s") from None
        except Exception as e:
            raise Broke(f"no response ({why_failed(e)})") from None
        finally:
            self._requests.discard(request)
        problem = self._problem(source, first, last, response.code, lambda name: _header(response, name))
        if problem is not None:
            response.deliverBody(Protocol())
            raise problem
        if self.size == 0:
            response.deliverBody(Protocol())
            await self._write(source, 0, [])
            return
        started = self.clock.seconds()
        writes: list[Deferred[None]] = []
        receiver: _RunReceiver

        def on_piece(index: int, data: Parts) -> None:
            source.served += sum(len(p) for p in data)
            if index in self.book.verified:
                return  # another holder's copy came first (the endgame)
            d = Deferred.fromCoroutine(self._write(source, index, data))
            writes.append(d)  # first: stopping below may end the run at once

            def failed(f: Failure) -> Failure:
                receiver.stop()  # a corrupt piece ends the run
                return f

            def written(result: object) -> object:
                receiver.resume()
                return result

            d.addErrback(failed)
            pending = [w for w in writes if not w.called]
            if len(pending) >= PENDING_PIECES:
                receiver.pause()
                d.addBoth(written)
            if self.book.fetched_by_others(i for i, _, _ in receiver.spans):
                receiver.stop()  # the rest of this run came from elsewhere

        receiver = _RunReceiver(self.clock, first, spans, on_piece)
        self._receivers.add(receiver)
        self._sending.add(source.name)
        try:
            response.deliverBody(receiver)
            if self.book.done or self._halted:
                receiver.stop()
            reason = await receiver.done
        finally:
            self._receivers.discard(receiver)
        # Every piece handed to a thread is written (or refused) before the
        # run ends: nobody closes the part file under a write.
        results = await DeferredList(writes, consumeErrors=True)
        for ok, result in results:
            if not ok:
                cast(Failure, result).raiseException()
        source.ran(self.clock.seconds() - started, receiver.received)
        if receiver.spans and not self.book.fetched_by_others(i for i, _, _ in receiver.spans):
            if receiver.deadline.missed is not None:
                raise Broke(receiver.deadline.missed)
            if receiver.stalled:
                raise Broke(f"it sent nothing for {seconds(IDLE_TIMEOUT)} s")
            if isinstance(reason, ResponseDone):
                raise Broke("it sent less than asked for")
            raise Broke(f"the transfer broke off ({why_failed(reason)})")

    def _problem(
        self, source: Source, first: int, last: int, code: int, header: Callable[[str], str | None]
    ) -> Exception | None:
        """
        What is wrong with a holder's response to a request for bytes
        C{first} to C{last}, if anything (any thread: it reads no state
        that changes).
        """
        if code == 503:
            return Busy(_retry_after(header("retry-after")))
        if code == 416 and source.has is not None:
            return NotYet()
        if code in (404, 410, 412):
            return Gone("it no longer holds this version" if code == 412 else "it no longer holds the file")
        if code == 206:
            if not (header("content-range") or "").startswith(f"bytes {first}-{last}/"):
                return Broke("it answered another range")
        elif not (code == 200 and ((first == 0 and last == self.size - 1) or self.size == 0)):
            return Broke(f"HTTP {code}")
        return None

    async def _get_run_direct(self, source: Source, url: bytes, spans: list[tuple[int, int, int]]) -> None:
        """
        L{_get_run} in a thread, for a holder over plain TCP (see
        peer/download/direct.py): the thread reads, checks and writes the pieces;
        the reactor hears of each and may stop the run, which it does when
        the head or a piece misses its deadline (the socket's own timeout
        counts only the gaps between bytes).
        """
        assert self.direct is not None
        reactor = self.direct
        link = self._links.get(source.name)
        if link is None:
            link = self._links[source.name] = Link(self._buffers, self.tls)
        link.stopping = False
        left = [i for i, _, _ in spans]  # not arrived yet, as the reactor knows
        first, last = spans[0][1], spans[-1][2] - 1
        deadline = _Deadline(self.clock, link.stop)

        def expect_piece() -> None:
            if not left:
                return
            start, stop = piece_span(left[0], self.size)
            deadline.expect_piece(left[0], stop - start)

        def on_piece(index: int, data: memoryview, release: Callable[[], None]) -> bool:
            # In the run's thread; it owns the buffer until release().
            stored = False
            try:
                if index not in self.book.verified:  # else another holder's copy came first
                    if not self._store(index, [data], release):
                        release()
                        return False
                    stored = True
                else:
                    release()
            except BaseException:
                release()
                raise
            reactor.callFromThread(arrived, index, len(data), stored)
            return True

        def arrived(index: int, size: int, stored: bool) -> None:
            source.served += size
            left.remove(index)
            if stored:
                self._verified(source, index, size)
            if left and self.book.fetched_by_others(left):
                link.stop()  # the rest of this run came from elsewhere
            elif left:
                expect_piece()
            else:
                deadline.cancel()

        def check(code: int, header: Callable[[str], str | None]) -> Exception | None:
            # In the run's thread, once the head is in: the pieces' deadlines begin.
            problem = self._problem(source, first, last, code, header)
            if problem is None:
                reactor.callFromThread(expect_piece)
            return problem

        headers = {"If-Match": f'"{self.sha256}"', "Range": f"bytes={first}-{last}"}
        started = self.clock.seconds()
        self._sending.add(source.name)
        self._running.add(link)
        if self.book.done or self._halted:
            link.stop()
        # The connection and the whole head, however slowly it comes.
        deadline.expect(HEADER_TIMEOUT, f"no answer in {seconds(HEADER_TIMEOUT)} s")
        try:
            result: RunResult = await in_thread(
                reactor, fetch_run, link, url, headers, spans, check, on_piece,
                HEADER_TIMEOUT, IDLE_TIMEOUT,
            )
        finally:
            deadline.cancel()
            self._running.discard(link)
        if result.local is not None:
            raise self._cannot_write(result.local)
        if result.corrupt is not None:
            source.ran(self.clock.seconds() - started, result.received)
            raise Corrupt(result.corrupt)
        if deadline.missed is not None and left and not self.book.fetched_by_others(left):
            # Whatever the thread made of a response cut off under it.
            raise Broke(deadline.missed)
        if result.problem is not None:
            raise result.problem
        if not result.answered:
            raise Broke(result.failed or "no response")
        source.ran(self.clock.seconds() - started, result.received)
        if left and not self.book.fetched_by_others(left):
            if result.stalled:
                raise Broke(f"it sent nothing for {seconds(IDLE_TIMEOUT)} s")
            raise Broke(result.failed or "the transfer was stopped")

    def _store(self, index: int, data: Parts, release: Callable[[], None] | None = None) -> bool:
        """
        In a thread: verify and write one piece, then hand it to the
        whole-file hash.  False if the piece is corrupt (nothing is written).
        """
        start, _ = piece_span(index, self.size)
        if not storing.verify_and_write(
            self.fd, start, data, digest_of(self.digests, index), self._writing
        ):
            return False
        assert self._whole is not None
        self._whole.stored(index, data, release)
        return True

    def whole_sha256(self) -> str | None:
        """
        The SHA-256 of the pieces as stored, once every piece was hashed in
        order by this swarm (None otherwise: the caller reads the file).
        """
        return self._digest

    async def _write(self, source: Source, index: int, data: Parts) -> None:
        try:
            ok = await self.run_blocking(self._store, index, data)
        except OSError as e:
            raise self._cannot_write(e) from None
        if not ok:
            raise Corrupt(index)
        self._verified(source, index, sum(len(p) for p in data))

    def _cannot_write(self, error: OSError) -> Broke:
        """
        Writing here failed: the download stops (no holder can help).
        """
        self._local = LocalWriteError(error)
        self._halt()
        return Broke("could not write")

    def _verified(self, source: Source, index: int, size: int) -> None:
        """
        Piece C{index} from C{source} is verified and written.
        """
        self.ledger.held(source.address)
        self.ledger.progressed.add(self.sha256)
        if self.book.got(index):
            source.verified += size
            self._report()
            self._wake()


def _retry_after(value: str | None) -> float:
    try:
        return min(30.0, max(1.0, float(value or "5")))
    except ValueError:
        return 5.0


def _header(response: Any, name: str) -> str | None:
    """
    A header of a Twisted response, as C{http.client} gives it.
    """
    values = response.headers.getRawHeaders(name.encode())
    return values[0].decode("latin-1") if values else None


def why_failed(e: BaseException) -> str:
    """
    Why a request to a holder failed, in a few words.
    """
    if isinstance(e, (ResponseFailed, PotentialDataLoss)):
        return "the holder closed the connection early"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
