"""
What a fetcher is: one interface in front of the two transports that fetch
a run of pieces from a holder (Twisted's agent, peer/download/agent.py; a
thread that reads a kept-open connection, peer/download/threads.py).

Both say how a run ended the same way, by one of the outcomes below (or
by returning: every piece asked for arrived, or came from another holder
first), so the swarm's one retry policy (peer/download/holders.py) never
needs to know which transport ran; and both hand pieces to the same
L{IPieceSink}, which verifies and writes them.  Which transport runs is
configuration (the peer's C{fetcher} setting), not a guess from the
clock's type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.client import ResponseFailed
from twisted.web.http import PotentialDataLoss

from p2pshare.peer.download.holders import Source
from p2pshare.peer.download.outcomes import Broke, Busy, Corrupt, Gone, NotYet
from p2pshare.peer.download.storing import Parts
from p2pshare.pieces import piece_span

__all__ = ["Broke", "Busy", "Corrupt", "Gone", "NotYet"]  # the outcomes, from one place

HEADER_TIMEOUT = 30.0  # seconds for a whole response head, however slowly it comes
IDLE_TIMEOUT = 30.0  # seconds a response may send nothing
PIECE_TIMEOUT = 30.0  # seconds a piece may take in any case (see piece_deadline)
PIECE_FLOOR = 16 * 1024  # bytes a second: a larger piece may take as long as this rate needs
PENDING_PIECES = 2  # pieces of one holder waiting to be hashed and written

Header = Callable[[str], "str | None"]  # a response header by name, as http.client gives it


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


def why_failed(e: BaseException) -> str:
    """
    Why a request to a holder failed, in a few words.
    """
    if isinstance(e, (ResponseFailed, PotentialDataLoss)):
        return "the holder closed the connection early"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def retry_after(value: str | None) -> float:
    try:
        return min(30.0, max(1.0, float(value or "5")))
    except ValueError:
        return 5.0


@dataclass
class Run:
    """
    One request of a holder: consecutive pieces C{spans} ((index, start,
    stop) each, in order) of the file C{sha256} of C{size} bytes.
    """

    holder: Source
    url: bytes
    spans: list[tuple[int, int, int]]
    size: int
    sha256: str

    @classmethod
    def of(cls, holder: Source, indices: list[int], size: int, sha256: str) -> Run:
        return cls(holder, holder.url(), [(i, *piece_span(i, size)) for i in indices], size, sha256)

    @property
    def first(self) -> int:
        return self.spans[0][1]

    @property
    def last(self) -> int:
        return self.spans[-1][2] - 1

    @property
    def indices(self) -> list[int]:
        return [i for i, _, _ in self.spans]

    def problem(self, code: int, header: Header) -> Exception | None:
        """
        What is wrong with a holder's response to this run's request, if
        anything (any thread: it reads no state that changes).
        """
        first, last = self.first, self.last
        if code == 503:
            return Busy(retry_after(header("retry-after")))
        if code == 416 and self.holder.has is not None:
            return NotYet()
        if code in (404, 410, 412):
            return Gone("it no longer holds this version" if code == 412 else "it no longer holds the file")
        if code == 206:
            if not (header("content-range") or "").startswith(f"bytes {first}-{last}/"):
                return Broke("it answered another range")
        elif not (code == 200 and ((first == 0 and last == self.size - 1) or self.size == 0)):
            return Broke(f"HTTP {code}")
        return None


class IPieceSink(Protocol):
    """
    Where a fetcher hands what it fetched: the swarm.
    """

    def stopping(self) -> bool:
        """
        True once no run should go on (every piece verified, or halted).
        """

    def verified_already(self, index: int) -> bool:
        """
        (Any thread.)  Piece C{index} came from another holder first.
        """

    def elsewhere(self, indices: list[int]) -> bool:
        """
        The pieces C{indices}, all of them, are verified or being fetched
        by another holder: the rest of a run is not needed from this one.
        """

    def store(self, index: int, data: Parts, release: Callable[[], None] | None = None) -> bool:
        """
        (A thread.)  Verify and write piece C{index}; False if corrupt.
        """

    def write(self, holder: Source, index: int, data: Parts) -> Deferred[None]:
        """
        (The reactor.)  L{store} in a thread, then L{stored}; fails with
        L{Corrupt}, or L{Broke} if this machine could not write it.
        """

    def stored(self, holder: Source, index: int, size: int) -> None:
        """
        (The reactor.)  Piece C{index} from C{holder} is verified and written.
        """

    def cannot_write(self, error: OSError) -> Broke:
        """
        Writing here failed: the download stops (no holder can help).
        """

    def sending(self, holder: Source) -> None:
        """
        C{holder}'s response is under way.
        """


class IFetcher(Protocol):
    """
    Fetches runs of pieces from holders; the same outcomes whatever the
    transport.
    """

    def begin(self, piece: int, holders: int) -> None:
        """
        A swarm of pieces of C{piece} bytes begins, fetching from up to
        C{holders} at once.
        """

    def fetch(self, run: Run, sink: IPieceSink) -> Deferred[None]:
        """
        Fetch C{run}, handing each piece to C{sink}; fails with an outcome.
        """

    def pieces_of(self, holder: Source, count: int) -> Deferred[set[int] | None]:
        """
        Which of the C{count} pieces the partial C{holder} has (None: it
        did not say); fails with L{Gone} if it no longer holds the file,
        else with why it did not answer.
        """

    def stop(self, halt: bool) -> None:
        """
        End every run under way (every piece is verified); if C{halt}
        (the swarm stops), every question and request too.
        """

    def close(self) -> None:
        """
        The swarm has ended: let kept connections go.
        """


class Deadline:
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
