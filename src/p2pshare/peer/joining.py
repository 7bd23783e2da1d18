"""
L{Joining}: a peer finding its place in the overlay.

It asks the metadata server for a first peer (C{PLACE}), or, as an orphan,
first tries the grandparent it knows; then follows the referral chain: a
peer with a free slot answers C{ACCEPT}, a full one C{REFER}s us on.  Every
step has a timeout and is cancellable, no peer is asked twice, and the
chain has a bounded length.  A failed attempt is logged and tried again,
from the metadata server, after a growing, jittered pause, for as long as
the membership machine says we are looking for a place.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger

from p2pshare.peer.membership import ORPHANED, Membership
from p2pshare.tickets import Ticket, TicketChecker, TicketError
from p2pshare.wire import Message, RemoteError

FIRST_PAUSE = 0.5
LONGEST_PAUSE = 30.0



class IJoinLinks(Protocol):
    """
    What a join uses of the neighbour table: whom we are linked to, where
    our parent hung from (tried first by an orphan), and where an accepted
    link goes.
    """

    grandparent: tuple[str, ...] | None
    uplink: str | None

    @property
    def neighbours(self) -> Mapping[str, object]: ...

    def beat_ms(self) -> int: ...

    def add(
        self, name: str, host: str, port: int, proto: Any, beat_ms: str | None = None,
        reachable: bool = True,
    ) -> None: ...

class JoinFailed(Exception):
    """
    A referral chain ended without a peer accepting us.
    """


class Joining:
    """
    The join of one peer, retried until it has a place.

    @ivar pending: the running join (a Deferred), or None.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        rng: random.Random,
        membership: Membership,
        links: IJoinLinks,
        connect: Callable[[str, int], IStreamClientEndpoint],
        factory: Callable[[str], Factory],
        meta: Callable[[], Deferred[Any]],
        me: Callable[[], tuple[str | None, int | None, str | None]],
        placed: Callable[[str | None, int], None],
        ticket: Callable[[], tuple[Ticket | None, TicketChecker | None]] = lambda: (None, None),
        hop_timeout: float,
        max_hops: int,
    ) -> None:
        """
        @param factory: makes the factory of a connection to the named peer.
        @param meta: a Deferred for the (welcomed) metadata link.
        @param me: our name, port and advertised host.
        @param placed: told our parent (None: we are the root) and how many
            peers the join asked.
        @param ticket: our ticket, which we show, and the checker of the
            tickets that those who accept us show.
        """
        self.clock = clock
        self.rng = rng
        self.membership = membership
        self.links = links
        self._connect = connect
        self._factory = factory
        self._meta = meta
        self._me = me
        self._placed = placed
        self._ticket = ticket
        self.hop_timeout = hop_timeout
        self.max_hops = max_hops
        self.pending: Deferred[None] | None = None

    def start(self) -> None:
        """
        Look for a place, unless already at it (or not looking).
        """
        if self.membership.seeking and self.pending is None:
            self.pending = Deferred.fromCoroutine(self._join())
            self.pending.addErrback(self._abandoned)

    def cancel(self) -> None:
        if self.pending is not None and not self.pending.called:
            self.pending.cancel()

    async def _join(self) -> None:
        delay = FIRST_PAUSE
        attempt = 0
        while self.membership.seeking:
            attempt += 1
            try:
                await self._once()
            except CancelledError:
                raise
            except Exception as e:
                self.membership.fire("refused")
                self.log.warn(
                    "peer {name} could not join (attempt {attempt}): {why}; "
                    "trying again in {delay:.1f} s",
                    name=self._me()[0],
                    attempt=attempt,
                    why=_describe(e),
                    delay=delay,
                )
                await deferLater(self.clock, delay)
                delay = min(delay * 2, LONGEST_PAUSE) * self.rng.uniform(0.9, 1.1)
        self.pending = None

    def _abandoned(self, failure: Any) -> None:
        self.pending = None
        if not failure.check(CancelledError):
            self.log.failure("joining stopped", failure)

    async def _once(self) -> None:
        grandparent, self.links.grandparent = self.links.grandparent, None
        if self.membership.state == ORPHANED and grandparent is not None:
            # First the nearest live ancestor we know: it has just lost a
            # child, so it likely has room, and this works while the
            # metadata server is away.  Our subtree cannot contain it.
            target: tuple[str, ...] = grandparent
        else:
            meta = await self._meta().addTimeout(self.hop_timeout, self.clock)
            rejoin = 1 if self.membership.joined else None
            reply = await meta.request("PLACE", answers={"ROOT", "REFER"}, rejoin=rejoin).addTimeout(
                self.hop_timeout, self.clock
            )
            if reply.verb == "ROOT":
                self._placed(None, 0)
                return
            target = reply.args
        visited: set[str] = set()
        via: str | None = None
        while True:
            name, host, port = target[0], target[1], int(target[2])
            if name in visited or name == self._me()[0]:
                raise JoinFailed(f"referred back to {name}")
            if len(visited) >= self.max_hops:
                raise JoinFailed(f"no peer accepted us after {len(visited)} referrals")
            visited.add(name)
            reply, proto = await self._hello(name, host, port, via)
            if reply.verb == "ACCEPT" and reply.args[0] in self.links.neighbours:
                proto.close()  # stale knowledge led us into our own subtree
                raise JoinFailed(f"{reply.args[0]} is already our neighbour")
            if reply.verb == "ACCEPT":
                problem = self._check_parent(reply, name, port, proto.peerHost() or host)
                if problem is not None:
                    proto.close()
                    raise JoinFailed(f"{name} at {host}:{port}: {problem}")
                self.links.uplink = reply.args[0]
                self.links.add(reply.args[0], host, port, proto, reply.options.get("beat"))
                self._placed(reply.args[0], len(visited))
                return
            proto.close()
            via, target = name, reply.args

    def _check_parent(self, reply: Message, name: str, port: int, host: str) -> str | None:
        """
        What is wrong with the ticket of the peer that accepted us (it must
        be the one we were sent to, where we were sent), if anything.
        """
        _, checker = self._ticket()
        if checker is None:
            return None  # no word from the metadata server to check by (tests)
        if reply.args[0] != name:
            return f"it answers as {reply.args[0]}"
        shown = reply.options.get("ticket")
        if shown is None:
            return "it shows no ticket"
        try:
            ticket = checker.check(shown, self.clock.seconds())
        except TicketError as e:
            return str(e)
        return ticket.lets_in(name, port, host)

    async def _hello(self, name: str, host: str, port: int, via: str | None) -> tuple[Message, Any]:
        me, my_port, advertise = self._me()
        mine, _ = self._ticket()
        endpoint = self._connect(host, port)
        proto: Any = await endpoint.connect(self._factory(name)).addTimeout(
            self.hop_timeout, self.clock
        )
        try:
            await proto.whenAdmitted().addTimeout(self.hop_timeout, self.clock)
            reply = await proto.request(
                "HELLO", me, my_port, answers={"ACCEPT", "REFER"}, host=advertise, via=via,
                beat=self.links.beat_ms(),
                ticket=mine.field() if mine is not None else None,
            ).addTimeout(self.hop_timeout, self.clock)
        except BaseException:
            proto.abort()
            raise
        return reply, proto


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no answer in time"
    if isinstance(e, RemoteError):
        return f"refused ({e.code}: {e.text})"
    return str(e) or type(e).__name__
