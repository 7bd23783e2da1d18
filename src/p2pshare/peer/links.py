"""
L{Links}: one peer's overlay links.

Who our neighbours are and which of them is our parent; how far the
nearest free slot lies behind each of them, which neighbours tell each
other (C{FREE hops}, not counting the link they talk over: a distance
vector with split horizon, exact on a tree) so that a full peer refers a
newcomer well; where our parent hangs from (C{UP}), so that an orphan
knows its grandparent; and whether each link is still alive (heartbeats).

The node decides what a lost link means for its place in the overlay
(L{PeerNode.link_lost}); this module only keeps the table.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from p2pshare import wire
from p2pshare.peer.interfaces import ILink

# How far a FREE distance is told: a free slot further away is "none"
# ("far").  So a change travels at most this many hops, and a join costs a
# number of FREE messages independent of the network's size (with a limit
# of 2, the whole chain heard of every join).  Referrals only need the
# near ones: the metadata server sends newcomers to a free slot directly;
# a full peer refers onward only when newcomers race for one.  A loop's
# distances also stop growing here.
FREE_HORIZON = 4


@dataclass
class Neighbour:
    name: str
    host: str
    port: int
    proto: Any  # an ILink (the PeerProtocol of the link)
    hops: int | None = None  # what it says: hops to a free slot behind it
    sent: int | None | str = "unsent"  # what we last told it
    reachable: bool = True  # its ticket says the metadata server reached it there
    said_goodbye: bool = False  # it leaves: its link closes next, and that is no failure


class Links:
    """
    The overlay links of one peer.

    @ivar neighbours: by name, in the order the links were made.
    @ivar uplink: the neighbour we joined through (None for the root and
        while we look for a new parent).
    @ivar grandparent: our parent's parent, as (name, host, port), while
        we know it.
    @ivar links_dropped: links given up as silent.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        heartbeat: float,
        max_neighbours: int,
        rng: random.Random,
        me: Callable[[], str | None],
        orphaned: Callable[[], bool],
        on_change: Callable[[], None],
        reachable: Callable[[], bool] = lambda: True,
    ) -> None:
        self.clock = clock
        self.heartbeat = heartbeat
        self.max_neighbours = max_neighbours
        self.rng = rng
        self._me = me
        self._orphaned = orphaned
        self._on_change = on_change  # the neighbour set changed: tell the metadata server
        self._reachable = reachable  # can others reach us (our ticket says so)
        self.neighbours: dict[str, Neighbour] = {}
        self.uplink: str | None = None
        self.grandparent: tuple[str, ...] | None = None
        self.links_dropped = 0
        self._last_beat = clock.seconds()

    # Making and losing links.

    def beat_ms(self) -> int:
        """
        Our heartbeat, as we offer it in C{HELLO} and C{ACCEPT}.
        """
        return max(1, round(self.heartbeat * 1000))

    def add(
        self, name: str, host: str, port: int, proto: Any, beat_ms: str | None = None,
        reachable: bool = True,
    ) -> None:
        """
        A link is made.  Both ends judge it by one heartbeat, the larger of
        their two (C{beat_ms}: the other's, from C{HELLO} or C{ACCEPT},
        clamped), so peers with different C{--heartbeat} never think each
        other dead, and none can claim a beat so slow that it is never
        found silent.  C{host}:C{port} is where its ticket says it listens;
        an unreachable one is never named to newcomers.
        """
        proto.link = name
        theirs = wire.clamp_beat(int(beat_ms) / 1000) if beat_ms else 0.0
        proto.beat = max(self.heartbeat, theirs)
        self.neighbours[name] = Neighbour(name, host, port, proto, reachable=reachable)
        if name != self.uplink:
            self.tell_up(proto)  # a child learns its grandparent
        self._on_change()
        self.advertise()

    def remove(self, name: str, proto: ILink) -> Neighbour | None:
        """
        The link C{proto} to C{name} closed: the neighbour it was (its
        C{said_goodbye} tells a goodbye from a lost link), or L{None} if
        it was not (or no longer) that neighbour's link.
        """
        n = self.neighbours.get(name)
        if n is None or n.proto is not proto:
            return None
        del self.neighbours[name]
        return n

    def goodbye(self, name: str, proto: ILink) -> None:
        """
        C{name} said goodbye on C{proto} (it leaves the network): logged
        as such; its link closes next (L{remove}).
        """
        n = self.neighbours.get(name)
        if n is not None and n.proto is proto and not n.said_goodbye:
            n.said_goodbye = True
            self.log.info("peer {name}: {other} said goodbye", name=self._me(), other=name)

    def say_goodbye(self) -> None:
        for n in list(self.neighbours.values()):
            n.proto.send("BYE")  # a goodbye: no need to wait for a heartbeat
            n.proto.close()

    # Referring newcomers.

    def room(self) -> int:
        """
        How many neighbours we take; a peer looking for a new parent keeps
        a slot for it.
        """
        return self.max_neighbours - (1 if self._orphaned() else 0)

    def has_room(self) -> bool:
        return len(self.neighbours) < self.room()

    def referral(self, exclude: set[str | None]) -> Neighbour | None:
        """
        The neighbour that leads to the nearest free slot; ties are broken
        at random so that no branch is always the first to fill.
        """
        candidates = [
            n for n in self.neighbours.values() if n.name not in exclude and n.reachable
        ]
        if not candidates:
            return None
        best = min(_rank(n.hops) for n in candidates)
        return self.rng.choice([n for n in candidates if _rank(n.hops) == best])

    def free_said(self, name: str, hops: int | None) -> None:
        n = self.neighbours.get(name)
        if n is not None:
            n.hops = hops
            self.advertise()

    def hops_for(self, neighbour: str) -> int | None:
        """
        How far is our nearest free slot, not counting C{neighbour}'s side?
        """
        if self.has_room() and self._reachable():
            return 0
        behind = [
            n.hops + 1
            for n in self.neighbours.values()
            if n.name != neighbour and n.hops is not None and n.reachable
        ]
        best = min(behind, default=None)
        return best if best is not None and best <= FREE_HORIZON else None

    def advertise(self) -> None:
        """
        Tell each neighbour how far our nearest free slot is, if that
        changed since we last told it.
        """
        for n in list(self.neighbours.values()):
            hops = self.hops_for(n.name)
            if hops != n.sent:
                n.sent = hops
                n.proto.send("FREE", "none" if hops is None else hops)

    # Where our parent hangs from.

    def tell_up(self, proto: Any) -> None:
        up = self.neighbours.get(self.uplink) if self.uplink else None
        if up is None:
            proto.send("UP")
        else:
            proto.send("UP", up.name, up.host, up.port)

    def tell_children_up(self) -> None:
        """
        Our own parent changed: our children's grandparent did.
        """
        for n in self.neighbours.values():
            if n.name != self.uplink:
                self.tell_up(n.proto)

    def up_said(self, name: str, fields: tuple[str, ...]) -> None:
        """
        Our parent says where it hangs from.
        """
        if name != self.uplink:
            return
        if len(fields) == 3 and wire.NAME(fields[0]) is None and wire.HOST(fields[1]) is None \
                and wire.PORT(fields[2]) is None:
            self.grandparent = fields
        else:
            self.grandparent = None

    # Liveness.

    def beat(self, meta: Any = None) -> None:
        """
        Every heartbeat: abort links (and C{meta}, the metadata link) silent
        for three of their beats, and say PING where needed.  A link's beat is the one both ends agreed on (the
        larger of theirs).  Only the child side of a link (and every peer
        to the metadata server) pings, where it has not spoken or not heard
        for half a beat; the PONG keeps the other direction alive, so an
        idle link costs a PING and a PONG about once a beat.
        Silence is not judged on a tick that came late (this process was
        busy, or suspended): everyone's clock jumped, not only the other's.
        """
        now = self.clock.seconds()
        late = now - self._last_beat > 2 * self.heartbeat
        self._last_beat = now
        protos: list[Any] = [n.proto for n in self.neighbours.values()]
        if meta is not None:
            protos.append(meta)
        for proto in protos:
            beat = getattr(proto, "beat", None) or self.heartbeat
            pings = proto.link is None or proto.link == self.uplink
            if now - proto.heard_at > 3 * beat and not late:
                self.log.info(
                    "peer {name}: {other} has been silent for {s:.0f} s; dropping the link",
                    name=self._me(), other=proto.link or "the metadata server",
                    s=now - proto.heard_at,
                )
                self.links_dropped += 1
                proto.abort()
            elif pings and now - min(proto.said_at, proto.heard_at) >= beat / 2:
                # Quiet, or talking to one that does not answer (SUMMARY
                # lines to the metadata server get no reply): only a PONG
                # tells us it is there.
                proto.send("PING")

    def restart_beats(self) -> None:
        """
        The heartbeat starts now (the peer starts).
        """
        self._last_beat = self.clock.seconds()


def _rank(hops: int | None) -> float:
    return float("inf") if hops is None else hops
