"""
Searching the whole overlay: a convergecast over the tree.

A search has a unique id.  The peer that starts it sends C{SEARCH} to every
neighbour; each peer adds its own matches, forwards the search to every
neighbour but the one it came from, and answers upstream once, with every
match of its whole subtree (C{RESULTS}, split over several lines only when
they do not fit in one), as soon as all its branches have answered or its
deadline has passed.  So a search costs 2(N-1) messages on a tree of N
peers, every peer handles it once, and the starter gets every match or a
definitive empty answer.

Matches are other peers' word, and a neighbour may lie: each branch keeps
at most L{MAX_RESULTS} of its own, and when all together have more the
answer takes an equal share from each, so one branch cannot crowd out the
others; and the starter keeps only the matches whose holder the metadata
server knows as a live peer at that address (L{ISearchHost.vouch}), logging
once which branch sent the others.

Deadlines nest: C{SEARCH} carries how long the sender will wait (C{wait},
in ms); a peer answers a margin before that and gives its own branches two
margins less, so a dead or silent branch costs at most the time the starter
chose, and the answer still has everything the living branches found.  The
margin spreads the time left over the hops the search may still travel
(its TTL), within bounds, so deep trees (with two neighbours each, a tree is
two long chains) are searched to the end.  A link that drops counts as an
empty answer at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from zope.interface import implementer

from p2pshare import wire
from p2pshare.common import OncePerMinute
from p2pshare.peer.interfaces import ILink, ISearch, ISearchHost
from p2pshare.wire import Match, Message

DEFAULT_TIMEOUT = 10.0
DEFAULT_TTL = 1000
MAX_WAIT_MS = 60_000
SEARCH_RATE = 20.0  # searches a neighbour may start per second, sustained
SEARCH_BURST = 100.0
# Searches a neighbour passes on from further away: its whole subtree's,
# so more; but a neighbour lying about hops is still bounded.
FORWARD_RATE = 10 * SEARCH_RATE
FORWARD_BURST = 10 * SEARCH_BURST
FLOOD_LIMIT = 200  # searches refused on one link before it is cut
MAX_RESULTS = 10_000  # matches one search keeps; more are dropped
MIN_MARGIN_MS = 2
MAX_MARGIN_MS = 250
SEEN_FOR = 600.0  # how long a search id is remembered


@dataclass
class Search:
    id: str
    pattern: str
    upstream: ILink | None
    exact: bool = False
    waiting: set[str] = field(default_factory=set)
    # What each branch sent (None: this peer's own), at most MAX_RESULTS each.
    branches: dict[str | None, list[Match]] = field(default_factory=dict)
    timer: IDelayedCall | None = None
    done: Deferred[list[Match]] | None = None

    @property
    def matches(self) -> list[Match]:
        """
        Every match, at most L{MAX_RESULTS}: an equal share from each
        branch when they sent more together.
        """
        return fair_share(list(self.branches.values()), MAX_RESULTS)


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
        self._told = OncePerMinute()  # which branches' forged matches were logged

    def start(
        self, pattern: str, timeout: float = DEFAULT_TIMEOUT, search_id: str | None = None,
        exact: bool = False,
    ) -> Deferred[list[Match]]:
        """
        Search the whole network; fires with every match, nearest first.
        C{pattern} is read as L{p2pshare.peer.share.matches} says; C{exact}:
        the whole name, ignoring case.
        """
        search_id = search_id or uuid.uuid4().hex
        done: Deferred[list[Match]] = Deferred()
        self._handle(search_id, DEFAULT_TTL, 0, int(timeout * 1000), pattern, None, done, exact)
        self.log.info(
            "search {id} for {pattern!r} started", id=search_id[:8], pattern=pattern
        )
        return done

    def received(self, proto: ILink, msg: Message) -> None:
        search_id, ttl, hops, wait, pattern = msg.args
        if search_id in self.seen:
            # Cannot happen on a tree; answer at once so nobody waits.
            self.handled[search_id] = self.handled.get(search_id, 0) + 1
            proto.send("RESULTS", search_id)
            return
        # A search comes at least one hop: a neighbour's own arrives with 1,
        # so a claim of 0 cannot pass its own searches off as another's...
        distance = max(int(hops), 1)
        own = distance <= 1
        bucket = proto.search_allowance if own else proto.forward_allowance
        if not bucket.take(self.node.clock.seconds()):
            # Over the neighbour's allowance (for searches it started, or
            # for those it passes on): an empty answer at once, and nobody
            # else is bothered.
            self.throttled += 1
            proto.send("RESULTS", search_id)
            if own:
                # ... and only its own flood gets a link cut: one that passes
                # on its subtree's may be an honest peer relaying a liar.
                proto.searches_refused += 1
                if proto.searches_refused > FLOOD_LIMIT:
                    proto.misbehaved(f"{proto.searches_refused} searches over its allowance")
            return
        self._handle(
            search_id,
            min(int(ttl), DEFAULT_TTL),  # clamped: nobody searches further than we would
            distance,
            min(int(wait), MAX_WAIT_MS),
            wire.unquote_name(pattern),
            proto,
            None,
            msg.options.get("exact") == "1",
        )

    def _handle(
        self,
        search_id: str,
        ttl: int,
        hops: int,
        wait_ms: int,
        pattern: str,
        upstream: ILink | None,
        done: Deferred[list[Match]] | None,
        exact: bool = False,
    ) -> None:
        now = self.node.clock.seconds()
        self._forget_before(now - SEEN_FOR)
        self.seen[search_id] = now
        self.handled[search_id] = self.handled.get(search_id, 0) + 1
        search = Search(search_id, pattern, upstream, exact, done=done)
        search.branches[None] = self.node.local_matches(pattern, hops, exact)[:MAX_RESULTS]
        margin_ms = margin_for(wait_ms, ttl)
        child_wait = wait_ms - 2 * margin_ms
        if ttl > 0 and child_wait > margin_ms:
            came_from = upstream.link if upstream is not None else None
            for n in list(self.node.neighbours.values()):
                if n.name != came_from:
                    n.proto.send(
                        "SEARCH", search_id, ttl - 1, hops + 1, child_wait,
                        wire.quote_name(pattern), exact=1 if exact else None,
                    )
                    search.waiting.add(n.name)
        if not search.waiting:
            self._finish(search)
            return
        self.pending[search_id] = search
        deadline = max(wait_ms - margin_ms, 0) / 1000
        search.timer = self.node.clock.callLater(deadline, self._expired, search)

    def results(self, proto: ILink, msg: Message) -> None:
        search = self.pending.get(msg.args[0])
        if search is None or proto.link not in search.waiting:
            return  # late, after our deadline: already answered without it
        sent = search.branches.setdefault(proto.link, [])
        room = MAX_RESULTS - len(sent)
        if room > 0:
            sent.extend(Match.parse(f) for f in msg.args[1 : 1 + room])
        if "more" not in msg.options:
            search.waiting.discard(proto.link)
            if not search.waiting:
                self._finish(search)

    def link_lost(self, name: str) -> None:
        for search in list(self.pending.values()):
            if name in search.waiting:
                search.waiting.discard(name)
                if not search.waiting:
                    self._finish(search)

    def stop(self) -> None:
        """
        The peer stops: every search still waiting ends now, with what it
        has, and no deadline is left behind.
        """
        for search in list(self.pending.values()):
            self._finish(search)

    def _expired(self, search: Search) -> None:
        search.timer = None
        self.log.info(
            "search {id}: no answer in time from {peers}",
            id=search.id[:8],
            peers=" ".join(sorted(search.waiting)),
        )
        self._finish(search)

    def _finish(self, search: Search) -> None:
        self.pending.pop(search.id, None)
        if search.timer is not None and search.timer.active():
            search.timer.cancel()
        search.timer = None
        if search.done is not None:
            matches = sorted(search.matches, key=lambda m: (m.hops, m.name, m.holder))
            done = search.done
            vouched = self.node.vouch(matches)
            vouched.addCallback(self._dropped, search, matches)
            vouched.chainDeferred(done)
            return
        upstream = search.upstream
        if upstream is None or not upstream.connected:
            return
        for line in results_lines(search.id, search.matches):
            upstream.sendMessage(line)

    def _dropped(self, kept: list[Match], search: Search, matches: list[Match]) -> list[Match]:
        """
        Log, once a minute per branch, the branches whose matches named a
        holder that is not a live peer at that address.
        """
        if len(kept) == len(matches):
            return kept
        good = set(map(id, kept))
        for branch, sent in search.branches.items():
            bad = [m for m in sent if id(m) not in good]
            if bad and branch is not None and self._told.due(branch, self.node.clock.seconds()):
                self.log.warn(
                    "search {id}: dropped {n} matches that came through {branch}: their holders "
                    "are not live peers at those addresses (e.g. {holder} at {host}:{port})",
                    id=search.id[:8], n=len(bad), branch=branch, holder=bad[0].holder,
                    host=bad[0].host, port=bad[0].port,
                )
        return kept

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


def margin_for(wait_ms: int, ttl: int) -> int:
    """
    How long before its upstream's deadline a peer answers: the time left
    shared out over the hops still allowed, within bounds.
    """
    return max(MIN_MARGIN_MS, min(MAX_MARGIN_MS, wait_ms // (2 * (ttl + 1))))


def results_lines(search_id: str, matches: list[Match]) -> list[Message]:
    """
    C{RESULTS} messages carrying C{matches}: as few lines as fit, every one
    but the last marked C{more=1}.
    """
    return wire.split_list("RESULTS", (search_id,), [m.field() for m in matches])
