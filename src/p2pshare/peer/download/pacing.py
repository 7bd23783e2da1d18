"""
How much a swarm asks of each holder, and when it asks more holders: pure
decisions from the holders' measured rates and the piece book, at a
given time.
"""

from __future__ import annotations

from collections.abc import Sequence

from p2pshare.peer.download.book import PieceBook
from p2pshare.peer.download.holders import Source

FIRST_RUN = 4 << 20  # bytes a holder is first asked for in one request
MAX_RUN = 64 << 20
RUN_SECONDS = 2.0  # later runs: about this long at the holder's rate
ENDGAME_WAIT = 0.5  # seconds a piece is in flight before another holder may fetch it too
ENDGAME_LOOK = 0.25  # seconds between looks for late pieces, while there is nothing else
# A whole holder that alone delivers this many bytes a second makes the
# others wait in reserve: beyond it the downloader's own hashing and writing
# are the limit, and more holders only add contention.
FAST_ENOUGH = 250e6
FIRST_ALONE = 0.1  # seconds the nearest holder works alone, unless it is slower


def rate_now(source: Source, now: float) -> float:
    """
    How fast C{source} sends now: over its run under way once that has
    lasted a while (a holder whose upload cap lets a first burst through
    at full speed is seen slowing down within a tenth of a second), else
    over its runs so far.
    """
    pace = source.pace
    began = pace.run_began
    if began is None or now - began < FIRST_ALONE / 2:
        return pace.rate
    return (pace.served - pace.run_served) / (now - began)


def fast_one(working: Sequence[Source], now: float) -> Source | None:
    """
    The fastest of the C{working} whole holders, if it alone is
    L{FAST_ENOUGH}.
    """
    fast = [s for s in working if s.has is None and rate_now(s, now) >= FAST_ENOUGH]
    return max(fast, key=lambda s: rate_now(s, now), default=None)


def redundant(source: Source, working: Sequence[Source], now: float) -> bool:
    """
    True if another holder alone is fast enough (see L{FAST_ENOUGH}):
    C{source} then waits in reserve, to be started again if that one
    fails or slows down.
    """
    fast = fast_one(working, now)
    return fast is not None and fast is not source and source.rate < rate_now(fast, now)


def run_pieces(source: Source, book: PieceBook, active: int) -> int:
    """
    How many pieces C{source} is asked for in its next run: about
    L{RUN_SECONDS} at its rate, and near the end no more than its share
    of what is left among the C{active} holders.
    """
    want = FIRST_RUN if not source.rate else source.rate * RUN_SECONDS
    want = min(max(want, book.piece), MAX_RUN)
    left = book.count - len(book.verified) - len(book.fetching)
    share = max(1, -(-left // max(1, active)))
    return max(1, min(int(want // book.piece), share))


def patience(source: Source, piece: int) -> float:
    """
    How long a piece must have been in flight before C{source} fetches
    it too: twice what it would take C{source} itself.
    """
    if not source.rate:
        return ENDGAME_WAIT
    return max(ENDGAME_WAIT, 2 * piece / source.rate)


def useless(source: Source, now: float, patience: float) -> bool:
    """
    True once the partial holder C{source} has had none of the pieces we
    need for C{patience} seconds (counted from the first time it had
    none, until it has some again: see C{useless_since}).
    """
    if source.useless_since is None:
        source.useless_since = now
    return now - source.useless_since >= patience
