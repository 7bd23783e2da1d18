"""
How the parts of the metadata server meet.  Each part reads another through
one of these declared interfaces, never through another object's private
fields, so that each can be tested against a fake and no module of
C{meta/} imports the one that assembles them:

    server.py (MetaServer) --- provides MetaService; assembles the rest
    protocol.py (MetaProtocol)  provides Session; uses MetaService
    records.py (Peer) -------- one live peer's record; provides SlotHolder
    roster.py (Roster) ------- the live peers; provides LivePeers
    slots.py (FreeSlots) ----- reads LivePeers
    tally.py (Tally) --------- is told each event; seeded from Reported
    placement.py, vouching.py, flushing.py: parts the server hands the
        roster, the registry and the tally to

These are C{typing.Protocol}s rather than zope interfaces: they are checked
by mypy, attribute types included, and a test may pass any object that has
the members.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from p2pshare.admission import Secret
from p2pshare.meta.registry import PeerRecord
from p2pshare.tickets import TicketSigner
from p2pshare.topo import TopoEntry


class Session(Protocol):
    """
    A live peer's registration connection, as the server uses it.
    """

    @property
    def beat(self) -> int:
        """
        The heartbeat it promised, in seconds (0: none; then only a closed
        connection tells it is gone).
        """

    @property
    def heard_at(self) -> float:
        """
        When a line last arrived on it.
        """

    def send(self, verb: str, *args: object, text: str | None = None, **options: object) -> None:
        """
        Send one message (C{TICKET}, C{REJOIN}, C{COMPLETE}).
        """

    def abort(self) -> None:
        """
        Close at once: the peer has been silent for too long.
        """

    def superseded(self) -> None:
        """
        A new connection of the same peer replaced this one: it no longer
        speaks for the peer, and is closed.
        """


class SlotHolder(Protocol):
    """
    A live peer as L{FreeSlots} reads it.
    """

    @property
    def record(self) -> PeerRecord:
        """
        Its registry entry: limit, links, parent, join order.
        """

    @property
    def reachable(self) -> bool | None:
        """
        Whether the dial-back found it where it said it listens.
        """

    @property
    def promised(self) -> Collection[str]:
        """
        The newcomers referred to it that have not arrived yet.
        """

    @property
    def heading_to(self) -> str | None:
        """
        The peer it was referred to, while it is on its way there.
        """


class LivePeers(Protocol):
    """
    The live peers, by name, as L{FreeSlots} reads them.
    """

    def live(self, name: str) -> SlotHolder | None:
        """
        The live peer of that name (registered since this server started).
        """

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[str]: ...


class Reported(Protocol):
    """
    What a peer last reported, as L{Tally} is seeded with it.
    """

    @property
    def name(self) -> str: ...

    @property
    def neighbours(self) -> Sequence[str]: ...

    @property
    def placed(self) -> bool: ...


class Reachability(Protocol):
    """
    What the server says of where peers can be reached, beyond the first
    dial-back (L{p2pshare.meta.vouching.Vouching}).
    """

    def offers_relay(self, name: str, relay: bool) -> None:
        """
        C{name} registered saying it relays for others (or not).
        """

    def relays(self, asker: str | None, here: tuple[str, int] | None = None) -> list[str]:
        """
        Fresh tickets of some live relays this server reached (and its
        own, at C{here}, when it relays).
        """

    def recheck(self, name: str, nonce: str) -> None:
        """
        C{name} asks for its address to be checked again, with a fresh
        nonce; raise L{WireError} if it asked too soon.
        """


class MetaService(Protocol):
    """
    The metadata server as one registration connection (L{MetaProtocol})
    uses it.
    """

    @property
    def vouching(self) -> Reachability: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def secret(self) -> Secret | None: ...

    @property
    def stopped(self) -> bool:
        """
        Once stopped, its registry is closed: nothing more is recorded.
        """

    @property
    def last_seq(self) -> int:
        """
        The latest registration's number.
        """

    @property
    def signer(self) -> TicketSigner: ...

    @property
    def web(self) -> tuple[str, int] | None:
        """
        Where the topology page listens (interface, port), if it does.
        """

    def register(
        self,
        session: Session,
        name: str | None,
        host: str,
        port: int,
        max_neighbours: int,
        token: str | None = None,
        old_token: str | None = None,
    ) -> PeerRecord:
        """
        Register a peer (raises L{WireError} when refused).
        """

    def check_address(self, name: str, nonce: str | None) -> None:
        """
        Check where C{name} listens, then send it its ticket.
        """

    def when_checked(self, name: str) -> Deferred[None]:
        """
        Fires once the check of C{name}'s address has ended.
        """

    def place(self, newcomer: str, rejoin: bool = False) -> PeerRecord | None:
        """
        Where C{newcomer} should join; L{None}: it is the root.
        """

    def whois(self, names: list[str]) -> list[tuple[str, str, int]]:
        """
        Those of C{names} that are live peers whose address was checked:
        name, host and port (0 where the check could not reach them).
        """

    def size(self) -> int:
        """
        How many peers the network has.
        """

    def neighbour_limit(self, name: str) -> int:
        """
        The most neighbours C{name} registered with.
        """

    def report(
        self,
        name: str,
        neighbours: list[str],
        uplink: str | None = None,
        is_root: bool = False,
        shared_files: int = 0,
    ) -> None:
        """
        C{name}'s neighbours, in link order, and where it hangs from.
        """

    def summary(
        self,
        name: str,
        files: int | None,
        shared_bytes: int,
        transfers: list[dict[str, object]],
        transfer_count: int,
    ) -> None:
        """
        What C{name} says it shares (C{files}: L{None} if it did not say)
        and moves now.
        """

    def topology(self) -> list[TopoEntry]:
        """
        The network as C{topo.txt} shows it.
        """

    def disconnected(self, name: str, graceful: bool = False) -> None:
        """
        The registration connection of C{name} closed (after C{BYE}:
        gracefully).
        """
