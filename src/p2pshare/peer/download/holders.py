"""
Each holder of one download, as one explicit state machine, and the one
policy that decides what a holder's failure means.

A holder's life is one state of one table, and the inputs that move it
between states are listed (as the peer's membership is,
peer/membership.py), so every combination that can happen can be read
here and checked at every step of a simulation; an input that does not
fit the state is a bug, raised at once rather than lived with::

                 admit            fetch
      reserve ─────────► ready ─────────► fetching ── corrupt ──► corrupt
        │  ▲              ▲ │ ◄──── ok, again ──┘ │
 refuse │  └── spare,     │ │                     ├── backoff ──► backoff ─┐
        │      leave      │ └── useless, drop     ├── busy ─────► busy ────┤
        ▼                 │          │            └── drop ──┐             │
     dropped ◄────────────┼──────────┘ ◄─────────────────────┘             │
                          └─────────────────── wake ───────────────────────┘

A holder that is not dropped goes back to C{reserve} (C{leave}) when its
worker ends with the swarm (every piece verified, or the download
stopped).

What a failure means is decided in one place, L{judge}: a holder that has
sent nothing verified is dropped at its first failure (an address a
search named, not yet a holder); one that has, is tried again after a
pause that doubles, L{TRIES} times; a busy one after its C{Retry-After},
L{BUSY_TRIES} times; one that no longer holds the version, or sent a
corrupt piece, never again in this download.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from p2pshare.peer.download.book import Address, Ledger
from p2pshare.peer.download.outcomes import Broke, Busy, Corrupt, Gone, NotYet

TRIES = 3  # times a holder may break off in a row before it is dropped
BUSY_TRIES = 20  # times a holder may answer 503 before it is dropped

RESERVE = "reserve"  # waiting for a place among the holders fetched from at once
READY = "ready"  # has a place: asks for a run, or waits for one
FETCHING = "fetching"  # a run under way
BACKOFF = "backoff"  # broke off: tried again after a pause
BUSY = "busy"  # answered 503: tried again after its Retry-After
DROPPED = "dropped"  # let go for the rest of this swarm
CORRUPT = "corrupt"  # sent a corrupt piece: let go, and never trusted here again

STATES = (RESERVE, READY, FETCHING, BACKOFF, BUSY, DROPPED, CORRUPT)
WORKING = frozenset({READY, FETCHING, BACKOFF, BUSY})  # has a place (a worker)
GONE = frozenset({DROPPED, CORRUPT})

# (state, input) -> next state.  Everything else does not fit.
TRANSITIONS: dict[tuple[str, str], str] = {
    (RESERVE, "admit"): READY,
    (RESERVE, "refuse"): DROPPED,  # its address failed already, in this download
    (READY, "fetch"): FETCHING,
    (READY, "spare"): RESERVE,  # another holder alone is fast enough
    (READY, "useless"): DROPPED,  # a partial holder with nothing we need, for long
    (READY, "drop"): DROPPED,  # asked what it has: gone, or no answer
    (FETCHING, "ok"): READY,
    (FETCHING, "again"): READY,  # a partial holder refused a piece: ask what it has
    (FETCHING, "backoff"): BACKOFF,
    (FETCHING, "busy"): BUSY,
    (FETCHING, "drop"): DROPPED,
    (FETCHING, "corrupt"): CORRUPT,
    (BACKOFF, "wake"): READY,
    (BUSY, "wake"): READY,
    **{(state, "leave"): RESERVE for state in WORKING},
}
INPUTS = tuple(sorted({i for _, i in TRANSITIONS}))


class Misfire(Exception):
    """
    An input that does not fit a holder's state: a bug in the swarm.
    """


@dataclass
class Pace:
    """
    What a holder has sent, and how fast.
    """

    rate: float = 0.0  # bytes per second, over every run so far
    fetched: int = 0  # bytes received in runs
    fetch_time: float = 0.0  # seconds spent in runs
    served: int = 0  # bytes it sent
    verified: int = 0  # bytes of pieces it sent first that verified
    run_began: float | None = None  # when its run under way began
    run_served: int = 0  # what it had served then

    def ran(self, seconds: float, received: int) -> None:
        """
        A run took C{seconds} for C{received} bytes: its rate is over every
        run so far (one short run says little).
        """
        self.fetch_time += seconds
        self.fetched += received
        self.rate = self.fetched / max(self.fetch_time, 1e-3)


@dataclass
class Source:
    """
    One holder, as the swarm sees it.
    """

    name: str
    url: Callable[[], bytes]  # the file's URL (signed afresh in a private network)
    have_url: Callable[[], bytes] | None = None  # a partial holder's /have/SHA
    has: set[int] | None = None  # the pieces a partial holder has (None: all)
    where: Address | None = None  # its host and port, if known
    state: str = RESERVE
    problem: str | None = None  # why it was dropped
    tries: int = 0  # failures in a row
    busy: int = 0  # 503s so far
    sending: bool = False  # counts as sending (shown to the user)
    asked_has: float = float("-inf")  # when we last asked it which pieces it has
    useless_since: float | None = None  # since when it has had nothing for us
    pace: Pace = field(default_factory=Pace)
    queued: int = 0  # its place in the reserve's line

    @property
    def address(self) -> Address:
        """
        What the download's L{Ledger} knows it by: its host and port (a
        holder known only by name, by that).
        """
        return self.where if self.where is not None else (self.name, 0)

    @property
    def corrupt(self) -> bool:
        return self.state == CORRUPT

    @property
    def verified(self) -> int:
        return self.pace.verified

    @property
    def rate(self) -> float:
        return self.pace.rate

    def ran(self, seconds: float, received: int) -> None:
        self.pace.ran(seconds, received)


@dataclass(frozen=True)
class Verdict:
    """
    What one outcome of a run does to its holder: the input to fire, how
    long to wait before it is tried again, and, if it is let go, why and
    whether its address failed whatever it sent before (C{bad}).
    """

    input: str
    wait: float = 0.0
    problem: str | None = None
    bad: bool = False
    why: str = ""  # what happened, in a few words


def judge(holder: Source, outcome: Exception | None, trusted: bool) -> Verdict:
    """
    The one retry policy: what C{outcome} of a run (None: it went well;
    else one of peer/download/outcomes.py) means for
    C{holder}.  C{trusted}: its address has sent a verified piece in this
    download.  Counts its failures on it.
    """
    if outcome is None:
        holder.tries = 0
        return Verdict("ok")
    if isinstance(outcome, Corrupt):
        return Verdict("corrupt", problem=f"sent a corrupt piece ({outcome.index})", bad=True)
    if isinstance(outcome, Gone):
        return Verdict("drop", problem=str(outcome))
    if isinstance(outcome, NotYet):
        # Its pieces only ever grow: refusing what it said it has is a
        # holder that restarted, or lies; it may do so twice.
        holder.tries += 1
        if holder.tries >= TRIES:
            return Verdict("drop", problem="it refused pieces it said it had")
        return Verdict("again")
    if isinstance(outcome, Busy):
        holder.busy += 1
        if holder.busy > BUSY_TRIES:
            return Verdict("drop", problem="stayed busy")
        return Verdict("busy", wait=outcome.retry_after, why=outcome.why)
    if isinstance(outcome, Broke):
        if not trusted:
            # It has sent nothing that verified: one failure and it is
            # done with (an address a search named, not a holder).
            return Verdict("drop", problem=str(outcome))
        holder.tries += 1
        if holder.tries >= TRIES:
            return Verdict("drop", problem=str(outcome))
        return Verdict("backoff", wait=0.5 * 2**holder.tries, why=str(outcome))
    raise TypeError(f"not an outcome of a run: {outcome!r}")


def judge_question(holder: Source, why: str, trusted: bool) -> Verdict | None:
    """
    The same policy for a partial holder that gave no answer about which
    pieces it has: dropped as a run that broke off would be, or (None)
    asked again later.
    """
    holder.tries += 1
    if holder.tries >= TRIES or not trusted:
        return Verdict("drop", problem=f"no answer about its pieces ({why})")
    return None


class Holders:
    """
    The holders of one swarm, each in one state of L{TRANSITIONS}, in
    the order they were given (the nearest first).
    """

    def __init__(self, sources: Iterable[Source]) -> None:
        self.all: list[Source] = []
        self._line = 0  # the last place given in the reserve's line
        for source in sources:
            self.add(source)

    def add(self, source: Source) -> None:
        """
        A holder joins, in reserve, at the end of the line.
        """
        source.state = RESERVE
        self._line += 1
        source.queued = self._line
        self.all.append(source)

    def join(self, source: Source, ledger: Ledger) -> bool:
        """
        A holder found while the swarm runs joins the reserve (True), if
        the ledger lets its address be tried and it is new: one holder per
        address, whatever names it goes by.  One that was partial and was
        let go, and is now whole (it finished while we fetch), comes back;
        one caught sending corrupt data never does.
        """
        if not ledger.usable(source.address):
            return False
        known = next(
            (s for s in self.all if s.name == source.name or s.address == source.address), None
        )
        if known is not None:
            if (known.problem is None or known.corrupt
                    or known.has is None or source.has is not None):
                return False
            self.all.remove(known)
        self.add(source)
        return True

    def failure(self, ledger: Ledger) -> str:
        """
        Why a swarm ended without every piece: each holder let go and why,
        and how many the ledger let no more be tried.
        """
        why = [f"{s.name}: {s.problem}" for s in self.all if s.problem is not None]
        untried = [s for s in self.reserve() if s.problem is None]
        if untried:
            why.append(f"{len(untried)} more not tried: {len(ledger.failed)} addresses failed already")
        return "; ".join(why) or "no holder"

    def let_go(self, source: Source, verdict: Verdict, ledger: Ledger) -> None:
        """
        C{source} is let go for the rest of this swarm, by C{verdict}; if
        it never sent a piece that verified (or sent a corrupt one), its
        address failed, for the rest of the download.
        """
        assert verdict.problem is not None
        self.fire(source, verdict.input)
        source.problem = verdict.problem
        if verdict.bad or source.address not in ledger.good:
            ledger.fail(source.address, verdict.problem)

    def admit(self, ledger: Ledger) -> Source | None:
        """
        The first holder in reserve that C{ledger} lets us try now, given a
        place; those at an address that failed are let go on the way.
        """
        for source in self.reserve():
            if not ledger.usable(source.address):
                self.fire(source, "refuse")
                source.problem = source.problem or (
                    f"its address failed already ({ledger.failed[source.address]})"
                )
            elif ledger.begin(source.address):
                self.fire(source, "admit")
                return source
        return None

    def fire(self, source: Source, input: str) -> None:
        """
        Move C{source} by C{input}; L{Misfire} if it does not fit.
        """
        after = TRANSITIONS.get((source.state, input))
        if after is None:
            raise Misfire(f"{source.name}: {input} does not fit state {source.state}")
        if after == RESERVE:
            self._line += 1
            source.queued = self._line  # the end of the line
        if input not in ("fetch", "ok"):
            source.sending = False  # until it sends again
        source.state = after

    def reserve(self) -> list[Source]:
        """
        Those waiting for a place, in line.
        """
        return sorted((s for s in self.all if s.state == RESERVE), key=lambda s: s.queued)

    def working(self) -> list[Source]:
        return [s for s in self.all if s.state in WORKING]

    def sending(self) -> int:
        return sum(1 for s in self.all if s.sending)

    def active(self) -> int:
        """
        Holders not let go.
        """
        return sum(1 for s in self.all if s.state not in GONE)

    def check(self, fetching: dict[int, set[str]], limit: int) -> None:
        """
        The table's invariants (for tests, at every step): every state is
        one of L{STATES}; no more holders have a place than C{limit}; a
        piece being fetched is claimed only by holders with a run under
        way; a holder let go says why.
        """
        by_name = {s.name: s for s in self.all}
        assert all(s.state in STATES for s in self.all), self.all
        assert len(self.working()) <= limit, (len(self.working()), limit)
        for index, names in fetching.items():
            for name in names:
                assert by_name[name].state == FETCHING, (index, by_name[name])
        for s in self.all:
            if s.state in GONE:
                assert s.problem, s
            if s.sending:
                assert s.state in (READY, FETCHING), s
