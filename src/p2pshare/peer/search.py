"""
Searching the whole overlay: a convergecast over the tree that counts who
answered.

A search has a unique id.  The peer that starts it sends C{SEARCH} to every
neighbour; each peer adds its own matches, forwards the search to every
neighbour but the one it came from, and answers upstream once, with every
match of its whole subtree (C{RESULTS}, split over several lines only when
they do not fit in one), as soon as all its branches have answered.  So a
search costs 2(N-1) messages on a tree of N peers, and every peer handles
it once.

Every answer carries its coverage: the last C{RESULTS} line of a branch
says how many peers of that branch answered (C{peers=N}) and names those
that did not (C{missed=s4:silent,s9:refused}).  A peer gives a branch up
only for a reason it can name: the link dropped (C{lost}), the neighbour
refused the search over its allowance (C{refused}), or it went silent
(C{silent}): no answer and no C{WORKING} line for L{QUIET} seconds.  A
peer still waiting for its own branches says C{WORKING} upstream every
L{TICK} seconds, so a deep branch that is busy is never mistaken for a
dead one, and no fixed hop limit or per-hop margin cuts a deep tree
short: the only deadline is the starter's (C{wait}, which every peer
keeps as the time after which nobody waits for its answer).

The starter compares the count with the network's size at the metadata
server (C{SIZE}, asked at each round: peers registered, placed or not, so
a subtree re-attaching after a crash counts as missing), counting only
peers registered up to the latest registration it was told of (C{upto}),
so that a newcomer cannot stand in for a peer that did not answer.  A
round that missed something is run again, after a pause that grows, until
the search's time is up: what was silent may answer, a repaired subtree is
reachable again, a refusing neighbour's allowance refills.  Only a round
that every peer answered is I{complete}: a definitive answer.

Matches are other peers' word, and a neighbour may lie: each branch keeps
at most L{MAX_RESULTS} of its own, and when all together have more the
answer takes an equal share from each, so one branch cannot crowd out the
others; and the starter keeps only the matches whose holder the metadata
server knows as a live peer at that address (L{ISearchHost.vouch}), logging
once which branch sent the others.  A member can misstate its own
subtree's count as it can hide its subtree's matches; it cannot make a
silent neighbour elsewhere look answered (its parent names it), and a
count above the network's size is never taken as complete.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from p2pshare import wire
from p2pshare.common import OncePerMinute
from p2pshare.peer.coverage import Coverage, Found
from p2pshare.peer.interfaces import ILink, ISearch, ISearchHost
from p2pshare.peer.share import answers
from p2pshare.wire import Match, Message

DEFAULT_TIMEOUT = 10.0
MAX_WAIT_MS = 60_000
QUIET = 5.0  # seconds a branch may say nothing before it is given up as silent
TICK = QUIET / 4  # how often a peer still waiting says WORKING, and checks its branches
FIRST_PAUSE = 0.25  # seconds before a round that missed something runs again; doubles
MAX_PAUSE = 2.0
MAX_RETRY_MS = 2_000  # a refusal's "again after" is taken as at most this
SEARCH_RATE = 20.0  # searches a neighbour may start per second, sustained
SEARCH_BURST = 100.0
# Searches a neighbour passes on from further away: its whole subtree's,
# so more; but a neighbour lying about hops is still bounded.
FORWARD_RATE = 10 * SEARCH_RATE
FORWARD_BURST = 10 * SEARCH_BURST
FLOOD_LIMIT = 200  # searches refused on one link before it is cut
MAX_RESULTS = 10_000  # matches one search keeps; more are dropped
SEEN_FOR = 600.0  # how long a search id is remembered
MAX_HOPS = 1_000_000  # a hop count said is taken as at most this (trees are smaller)


@dataclass
class Search:
    """
    One search as it passes through this peer.

    @ivar waiting: the branches not yet answered, and when each was last
        heard from (a C{WORKING} line, or part of its answer).
    @ivar answered: the peers counted so far, this one included.
    """

    id: str
    pattern: str
    upstream: ILink | None
    exact: int = 0  # see p2pshare.peer.share.matches
    upto: int | None = None
    waiting: dict[str, float] = field(default_factory=dict)
    # What each branch sent (None: this peer's own), at most MAX_RESULTS each.
    branches: dict[str | None, list[Match]] = field(default_factory=dict)
    answered: int = 0
    missed: dict[str, str] = field(default_factory=dict)
    unnamed: int = 0
    retry_ms: int = 0
    timer: IDelayedCall | None = None
    ticker: IDelayedCall | None = None
    done: Deferred[Search] | None = None

    @property
    def matches(self) -> list[Match]:
        """
        Every match, at most L{MAX_RESULTS}: an equal share from each
        branch when they sent more together.
        """
        return fair_share(list(self.branches.values()), MAX_RESULTS)

    def miss(self, name: str, why: str) -> None:
        if len(self.missed) < wire.MISSED_MAX:
            self.missed.setdefault(name, why)
        else:
            self.unnamed += 1

    def coverage_options(self) -> dict[str, object]:
        return {
            "peers": self.answered,
            "missed": ",".join(f"{n}:{why}" for n, why in self.missed.items()) or None,
            "unnamed": self.unnamed or None,
            "retry": self.retry_ms or None,
        }


def fair_share(lists: list[list[Match]], room: int) -> list[Match]:
    """
    At most C{room} items from C{lists}: all of a list that needs less than
    an equal share, and what is left shared equally among the others.
    """
    if sum(len(items) for items in lists) <= room:
        return [m for items in lists for m in items]
    kept: list[Match] = []
    rest = sorted(lists, key=len)
    while rest:
        share = room // len(rest)
        items = rest.pop(0)
        kept.extend(items[:share])
        room -= min(share, len(items))
    return kept


def _better(new: Coverage, best: Coverage) -> bool:
    """
    Does C{new} say more of the network than C{best}?  A complete round is
    best; a count above the network's size is the least believable.
    """
    if new.complete or best.complete:
        return new.complete and not best.complete
    over = lambda c: c.total is not None and c.answered > c.total  # noqa: E731
    if over(new) or over(best):
        return over(best) and not over(new)
    return new.answered > best.answered


def _key(m: Match) -> tuple[object, ...]:
    """
    One holder's copy of one file, whichever round found it.
    """
    return (m.holder, m.host, m.port, m.name, m.sha256)


@implementer(ISearch)
class SearchEngine:
    """
    The searches passing through one peer.

    @ivar handled: how many times each search id was handled here (always
        once, unless something is wrong).
    """

    log = Logger()

    def __init__(self, node: ISearchHost) -> None:
        self.node = node
        self.pending: dict[str, Search] = {}
        self.seen: dict[str, float] = {}
        self.handled: dict[str, int] = {}
        self.throttled = 0  # searches refused over a neighbour's allowance
        self.rounds = 0  # rounds this peer started (a search that missed something runs again)
        self._told = OncePerMinute()  # which branches' forged matches were logged
        self._pauses: set[Deferred[None]] = set()
        self._stopped = False

    def start(
        self, pattern: str, timeout: float = DEFAULT_TIMEOUT, search_id: str | None = None,
        exact: int = 0, enough: Callable[[list[Match]], bool] | None = None,
    ) -> Deferred[Found]:
        """
        Search the whole network; fires with every match (nearest first)
        and what the search covered.  C{pattern} is read as
        L{p2pshare.peer.share.matches} says (C{exact}: 1 the whole name,
        2 its words as they are, ignoring case).  A round that missed part of the network runs again
        until C{timeout} is up, or until C{enough} says the matches found
        so far will do.
        """
        self._stopped = False
        return Deferred.fromCoroutine(
            self._search(pattern, timeout, search_id or uuid.uuid4().hex, exact, enough)
        )

    async def _search(
        self, pattern: str, timeout: float, search_id: str, exact: int,
        enough: Callable[[list[Match]], bool] | None,
    ) -> Found:
        clock = self.node.clock
        end = clock.seconds() + timeout
        self.log.info("search {id} for {pattern!r} started", id=search_id[:8], pattern=pattern)
        found: dict[tuple[object, ...], Match] = {}
        came: dict[tuple[object, ...], str | None] = {}  # the branch each match came through
        best: Coverage | None = None
        pause = FIRST_PAUSE
        while True:
            total, upto = await self.node.network_size()
            wait_ms = max(0, int((end - clock.seconds()) * 1000))
            self.rounds += 1
            done: Deferred[Search] = Deferred()
            self._handle(search_id, 0, min(wait_ms, MAX_WAIT_MS), pattern, None, done, exact, upto)
            search = await done
            for branch, sent in search.branches.items():
                # A match must answer the search: a member may send any name
                # or content, and a get would keep what it was not asked for.
                for m in [m for m in sent if answers(pattern, exact, m.name, m.sha256)][
                        : MAX_RESULTS - len(found)]:  # every round's together, bounded too
                    found.setdefault(_key(m), m)
                    came.setdefault(_key(m), branch)
            coverage = Coverage(
                search.answered, total, tuple(search.missed.items()), search.unnamed
            )
            if best is None or _better(coverage, best):
                best = coverage
            matches = list(found.values())
            if not coverage.missing or self._stopped or (enough is not None and enough(matches)):
                break
            left = end - clock.seconds()
            pause = max(pause, search.retry_ms / 1000)
            if left <= pause:
                break
            self.log.info("search {id}: {covered}; asking again in {pause:.2f} s",
                          id=search_id[:8], covered=coverage.sentence(), pause=pause)
            if not await self._pause(pause):
                break
            pause = min(pause * 2, MAX_PAUSE)
            search_id = uuid.uuid4().hex
        ordered = sorted(found.values(), key=lambda m: (m.hops, m.name, m.holder))
        kept = await self.node.vouch(ordered)
        self._dropped(kept, ordered, came, search_id)
        return Found(kept, best, full=len(found) >= MAX_RESULTS)

    async def _pause(self, seconds: float) -> bool:
        """
        Wait C{seconds}; C{False} if the peer stopped meanwhile.
        """
        d = deferLater(self.node.clock, seconds, lambda: None)
        self._pauses.add(d)
        try:
            await d
        except CancelledError:
            return False
        finally:
            self._pauses.discard(d)
        return not self._stopped

    def received(self, proto: ILink, msg: Message) -> None:
        search_id, hops, wait, pattern = msg.args
        if search_id in self.seen:
            # Cannot happen on a tree; answer at once so nobody waits, and
            # count nobody twice.
            self.handled[search_id] = self.handled.get(search_id, 0) + 1
            proto.send("RESULTS", search_id, peers=0)
            return
        # A search comes at least one hop: a neighbour's own arrives with 1,
        # so a claim of 0 cannot pass its own searches off as another's; and
        # no more than MAX_HOPS, so that counting on never overflows a field.
        distance = min(max(int(hops), 1), MAX_HOPS)
        own = distance <= 1
        bucket = proto.search_allowance if own else proto.forward_allowance
        now = self.node.clock.seconds()
        if not bucket.take(now):
            # Over the neighbour's allowance (for searches it started, or
            # for those it passes on): refused at once, saying when it may
            # come again, and nobody else is bothered.
            self.throttled += 1
            proto.send("RESULTS", search_id, refused=bucket.refill_ms())
            if own:
                # ... and only its own flood gets a link cut: one that passes
                # on its subtree's may be an honest peer relaying a liar.
                proto.searches_refused += 1
                if proto.searches_refused > FLOOD_LIMIT:
                    proto.misbehaved(f"{proto.searches_refused} searches over its allowance")
            return
        upto = msg.options.get("upto")
        self._handle(
            search_id,
            distance,
            min(int(wait), MAX_WAIT_MS),
            wire.unquote_name(pattern),
            proto,
            None,
            _how(msg.options.get("exact")),
            int(upto) if upto is not None else None,
        )

    def _handle(
        self,
        search_id: str,
        hops: int,
        wait_ms: int,
        pattern: str,
        upstream: ILink | None,
        done: Deferred[Search] | None,
        exact: int = 0,
        upto: int | None = None,
    ) -> None:
        now = self.node.clock.seconds()
        self._forget_before(now - SEEN_FOR)
        self.seen[search_id] = now
        self.handled[search_id] = self.handled.get(search_id, 0) + 1
        search = Search(search_id, pattern, upstream, exact, upto, done=done)
        search.branches[None] = self.node.local_matches(pattern, hops, exact)[:MAX_RESULTS]
        search.answered = 1 if self._counted(upto) else 0
        came_from = upstream.link if upstream is not None else None
        for n in list(self.node.neighbours.values()):
            if n.name != came_from:
                n.proto.send(
                    "SEARCH", search_id, hops + 1, wait_ms, wire.quote_name(pattern),
                    exact=exact or None, upto=upto,
                )
                search.waiting[n.name] = now
        if not search.waiting:
            self._finish(search)
            return
        self.pending[search_id] = search
        search.timer = self.node.clock.callLater(wait_ms / 1000, self._expired, search)
        search.ticker = self.node.clock.callLater(TICK, self._tick, search)

    def _counted(self, upto: int | None) -> bool:
        """
        Does this peer count in a search of the peers registered up to
        C{upto}?  A peer registered later (or not at all) answers, but a
        newcomer must not stand in for a peer that did not answer.
        """
        if upto is None:
            return True
        seq = self.node.registration_seq
        return seq is not None and seq <= upto

    def results(self, proto: ILink, msg: Message) -> None:
        search = self.pending.get(msg.args[0])
        if search is None or proto.link not in search.waiting:
            return  # late, after we gave it up: already answered without it
        search.waiting[proto.link] = self.node.clock.seconds()
        opts = msg.options
        if "refused" in opts:
            del search.waiting[proto.link]
            search.miss(proto.link, "refused")
            search.retry_ms = max(search.retry_ms, min(int(opts["refused"]), MAX_RETRY_MS))
            self._maybe_finish(search)
            return
        sent = search.branches.setdefault(proto.link, [])
        room = MAX_RESULTS - len(sent)
        if room > 0:
            sent.extend(Match.parse(f) for f in msg.args[1 : 1 + room])
        if "more" in opts:
            return
        del search.waiting[proto.link]
        search.answered += int(opts.get("peers", "1"))
        for item in opts["missed"].split(",") if "missed" in opts else ():
            name, _, why = item.partition(":")
            search.miss(name, why)
        search.unnamed += int(opts.get("unnamed", "0"))
        search.retry_ms = max(search.retry_ms, min(int(opts.get("retry", "0")), MAX_RETRY_MS))
        self._maybe_finish(search)

    def working(self, proto: ILink, msg: Message) -> None:
        """
        A branch is still collecting answers from further away: it is alive.
        """
        search = self.pending.get(msg.args[0])
        if search is not None and proto.link in search.waiting:
            search.waiting[proto.link] = self.node.clock.seconds()

    def link_lost(self, name: str) -> None:
        for search in list(self.pending.values()):
            if name in search.waiting:
                del search.waiting[name]
                search.miss(name, "lost")
                self._maybe_finish(search)

    def stop(self) -> None:
        """
        The peer stops: every search still waiting ends now, with what it
        has, and no deadline or pause is left behind.
        """
        self._stopped = True
        for search in list(self.pending.values()):
            for name in list(search.waiting):
                search.miss(name, "lost")
            search.waiting.clear()
            self._finish(search)
        for d in list(self._pauses):
            d.cancel()

    def _tick(self, search: Search) -> None:
        """
        Still waiting: say so upstream, and give up the branches silent
        for L{QUIET} seconds.
        """
        search.ticker = None
        now = self.node.clock.seconds()
        for name, heard in list(search.waiting.items()):
            if now - heard >= QUIET:
                del search.waiting[name]
                search.miss(name, "silent")
        if search.waiting:
            self.log.debug("search {id}: waiting for {peers}", id=search.id[:8],
                           peers=" ".join(sorted(search.waiting)))
            if search.upstream is not None and search.upstream.connected:
                search.upstream.send("WORKING", search.id)
            search.ticker = self.node.clock.callLater(TICK, self._tick, search)
        else:
            self._give_up_log(search)
            self._finish(search)

    def _expired(self, search: Search) -> None:
        search.timer = None
        for name in list(search.waiting):
            search.miss(name, "silent")
        search.waiting.clear()
        self._give_up_log(search)
        self._finish(search)

    def _give_up_log(self, search: Search) -> None:
        silent = [n for n, why in search.missed.items() if why == "silent"]
        if silent:
            self.log.info("search {id}: no answer in time from {peers}",
                          id=search.id[:8], peers=" ".join(sorted(silent)))

    def _maybe_finish(self, search: Search) -> None:
        if not search.waiting:
            self._finish(search)

    def _finish(self, search: Search) -> None:
        if self.pending.get(search.id) is search:
            del self.pending[search.id]
        for call in (search.timer, search.ticker):
            if call is not None and call.active():
                call.cancel()
        search.timer = search.ticker = None
        if search.done is not None:
            done, search.done = search.done, None
            if not done.called:  # the starter may have been cancelled
                done.callback(search)
            return
        upstream = search.upstream
        if upstream is None or not upstream.connected:
            return
        for line in results_lines(search.id, search.matches, search.coverage_options()):
            upstream.sendMessage(line)

    def _dropped(
        self, kept: list[Match], matches: list[Match],
        came: dict[tuple[object, ...], str | None], search_id: str,
    ) -> None:
        """
        Log, once a minute per branch, the branches whose matches named a
        holder that is not a live peer at that address.
        """
        if len(kept) == len(matches):
            return
        good = set(map(id, kept))
        bad: dict[str, list[Match]] = {}
        for m in matches:
            branch = came.get(_key(m))
            if id(m) not in good and branch is not None:
                bad.setdefault(branch, []).append(m)
        for branch, sent in bad.items():
            if self._told.due(branch, self.node.clock.seconds()):
                self.log.warn(
                    "search {id}: dropped {n} matches that came through {branch}: their holders "
                    "are not live peers at those addresses (e.g. {holder} at {host}:{port})",
                    id=search_id[:8], n=len(sent), branch=branch, holder=sent[0].holder,
                    host=sent[0].host, port=sent[0].port,
                )

    def _forget_before(self, oldest: float) -> None:
        while self.seen:
            first = next(iter(self.seen))
            if self.seen[first] >= oldest:
                return
            del self.seen[first]
            self.handled.pop(first, None)


class TokenBucket:
    """
    C{rate} tokens a second, at most C{burst} saved up.
    """

    def __init__(self, rate: float = SEARCH_RATE, burst: float = SEARCH_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at: float | None = None

    def take(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def refill_ms(self) -> int:
        """
        How long until a token is there again, in whole milliseconds.
        """
        return max(1, int((1 - self.tokens) / self.rate * 1000) + 1)


def results_lines(
    search_id: str, matches: list[Match], coverage: dict[str, object] | None = None
) -> list[wire.Message]:
    """
    C{RESULTS} messages carrying C{matches}: as few lines as fit, every one
    but the last marked C{more=1}, the last saying what the answer covered.
    """
    lines = wire.split_list("RESULTS", (search_id,), [m.field() for m in matches],
                            **(coverage or {}))
    # The coverage counts once: only the last line keeps it.
    keep = set(coverage or ()) - {"more"}
    return [
        line if "more" not in line.options else wire.Message(
            line.verb, line.args, {k: v for k, v in line.options.items() if k not in keep}
        )
        for line in lines
    ]


def _how(exact: str | None) -> int:
    """
    How a forwarded search reads its pattern (C{exact=}): 1 the whole
    name, 2 its words as they are, anything else as its words or a glob.
    """
    return int(exact) if exact in ("1", "2") else 0
