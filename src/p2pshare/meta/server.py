"""
The metadata server: L{MetaServer}, the service that owns the registry,
the live peers' records, placement and the topology files.  One connection
is a L{MetaProtocol} (L{p2pshare.meta.protocol}), made by L{MetaFactory};
both are importable from here too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from p2pshare import wire
from p2pshare.admission import Secret
from p2pshare.meta.checks import AddressChecks, Connect
from p2pshare.meta.flushing import Flushing
from p2pshare.meta.interfaces import Session
from p2pshare.meta.members import Members
from p2pshare.meta.names import HeldNames
from p2pshare.meta.placement import Placement
from p2pshare.meta.protocol import DEFAULT_MAX_NEIGHBOURS, MAX_QUEUED, MetaFactory, MetaProtocol
from p2pshare.meta.records import GOAL_TIMEOUT
from p2pshare.meta.registry import Activity, PeerRecord, Registry, both_ends
from p2pshare.meta.roster import Roster
from p2pshare.meta.slots import FreeSlots
from p2pshare.meta.tally import Tally
from p2pshare.meta.vouching import Vouching
from p2pshare.tickets import TicketSigner
from p2pshare.topo import TopoEntry
from p2pshare.wire import WireError

__all__ = [
    "DEFAULT_EXPECT", "DEFAULT_MAX_NEIGHBOURS", "FLUSH_INTERVAL", "GOAL_TIMEOUT", "MAX_PEERS",
    "MAX_PER_ADDRESS", "MAX_QUEUED", "OBSERVER_RESERVE", "Event", "MetaFactory", "MetaProtocol",
    "MetaServer",
]

FLUSH_INTERVAL = 0.2  # seconds: the longest topo.txt lags behind the network
MAX_PEERS = 10_000  # registered peers at once (--max-peers)
MAX_PER_ADDRESS = 1_000  # of them from one source address (--max-per-address)
OBSERVER_RESERVE = 64  # connections beyond those, for p2p topo and the operator
DEFAULT_EXPECT = 5  # "network complete" at this many peers when --expect is not given


class MetaServer(MultiService):
    """
    The state of the network as the metadata server sees it.

    A peer is I{live} while its registration connection is open.  The
    registry holds every peer (stored); L{peers} holds one L{Peer} record
    per live peer, everything this server keeps about it besides.  The
    parts act on those records: L{placement} (where newcomers join: the
    shallowest free slot, else the root), L{vouching} (dial-backs and
    tickets), L{files} (the topology files and what the log says of the
    network), L{members} (peers coming, reporting and going; the names
    held for those that vanished) and L{tally} (one tree or not).  This
    class assembles them and answers the L{MetaService} interface that its
    connections use.
    """

    log = Logger()
    web: tuple[str, int] | None = None  # the topology page, once it listens (meta/tap.py)

    def __init__(
        self,
        registry: Registry,
        clock: IReactorTime,
        data_dir: Path | None = None,
        expect: int | None = None,
        grace: float = 15.0,
        secret: Secret | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        max_peers: int = MAX_PEERS,
        max_per_address: int = MAX_PER_ADDRESS,
        connect: Connect | None = None,
        signer: TicketSigner | None = None,
    ) -> None:
        """
        @param connect: how to reach a registrant's advertised address, to
            check it (L{AddressChecks}); without it (unit tests) every
            address is taken as it is said.
        @param signer: the key that signs tickets (a fresh one by default).
        @param expect: the planned network size (C{--expect}): C{network
            complete} is logged when it is reached.  L{None}: nobody set
            one; it is logged at L{DEFAULT_EXPECT} all the same, but no
            plan is shown (C{planned} stays L{None}).
        @param grace: after a restart, how long peers known from before
            have to register again before they are dropped.
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = registry
        self.clock = clock
        self.secret = secret
        self.data_dir = data_dir
        self.planned = expect
        # Each registration's number: increasing, across restarts too.
        self.last_seq = int(clock.seconds() * 1000)
        self.stopped = False  # once stopped, its registry is closed
        # What happened lately, for the web page (L{event}); and a number
        # bumped by every change the page shows (it caches by it).
        self.events: deque[Event] = deque(maxlen=50)
        self.revision = 0
        self.tally = Tally()
        self.peers = Roster(clock, max_peers, max_per_address, grace)
        self.placement = Placement(registry, self.peers, self.tally, clock)
        checks = AddressChecks(connect, clock, secret) if connect is not None else None
        self.vouching = Vouching(
            self.peers, clock, signer or TicketSigner(), checks, self.placement.slots
        )
        self.files = Flushing(
            clock, registry, self.tally, data_dir, flush_interval,
            expect if expect is not None else DEFAULT_EXPECT, self.verified, self._tell_complete,
        )
        self.members = Members(
            registry, self.peers, self.tally, self.placement, self.files, clock, self.event,
            checked=checks is not None,
        )
        # The periodic jobs are child services, started and stopped with us.
        for period, job in ((1.0, self.members.look), (60.0, self.vouching.refresh)):
            timer = TimerService(period, job)  # type: ignore[no-untyped-call]
            timer.clock = clock
            timer.setServiceParent(self)  # type: ignore[no-untyped-call]

    # What others read: the web page, tests, the manhole.

    @property
    def sessions(self) -> Mapping[str, Session]:
        return self.peers.sessions

    @property
    def held(self) -> HeldNames:
        return self.members.held

    @property
    def slots(self) -> FreeSlots:
        return self.placement.slots

    @property
    def signer(self) -> TicketSigner:
        return self.vouching.signer

    @property
    def expect(self) -> int:
        return self.files.expect

    @property
    def complete(self) -> bool:
        return self.files.complete

    @property
    def flush_interval(self) -> float:
        return self.files.interval

    @flush_interval.setter
    def flush_interval(self, seconds: float) -> None:
        self.files.interval = seconds

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        known = self.registry.peers()
        self.tally.seed(known)
        self.peers.expect_back([p.name for p in known], self._drop_unverified)
        if known:
            self.event("restart", "", (
                f"metadata server restarted: {len(known)} peers known from before; "
                f"those that do not come back within {self.peers.grace:.0f} s are dropped"
            ))
        else:
            self.event("start", "", "metadata server started with no peers")
        self.files.flush()
        self.peers.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop every timer and check and close the registry (what it holds
        was written through at each change).
        """
        timers: Deferred[object] = super().stopService()  # type: ignore[no-untyped-call]
        self.vouching.stop()
        self.peers.stop()
        self.files.stop()  # the files and the registry as the network is now
        self.stopped = True
        self.registry.close()
        return timers.addCallback(lambda _: None)

    def topology(self, peers: list[PeerRecord] | None = None) -> list[TopoEntry]:
        """
        The network as C{topo.txt} shows it: the verified peers in join
        order, each with the links that both of its ends report.
        """
        return both_ends(self.verified() if peers is None else peers)

    def size(self) -> int:
        return self.peers.size()

    def verified(self) -> list[PeerRecord]:
        """
        The peers known to be in the network (all, except after a restart
        those that have not registered again yet), in join order.
        """
        unverified = self.peers.unverified
        return [p for p in self.registry.peers() if p.name not in unverified]

    def _drop_unverified(self, names: list[str]) -> None:
        self.members.drop(names)
        self.changed()

    # Registration, and leaving.

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
        Register a peer.  A name is owned by whoever holds its token: the
        owner takes it back at once (a restarted peer whose old connection
        is not yet known to be dead), anyone else is refused (C{name-taken})
        while the name is live, unverified after a restart, or held for a
        peer that vanished without saying goodbye.
        """
        record = self.members.register(session, name, host, port, max_neighbours, token, old_token)
        self.last_seq += 1
        self.log.info("peer {name} registered from {host}:{port}", name=record.name, host=host,
                      port=port)
        self.changed()
        return record

    def disconnected(self, name: str, graceful: bool = False) -> None:
        """
        The registration connection of C{name} closed: it is removed from
        the live peers (its record gives up its dial-back), its referrals
        end, and while this server runs it leaves the registry.  Unless it
        said goodbye, its name stays held for its owner for three beats.
        """
        if graceful:
            self.log.info("peer {name} says goodbye", name=name)
        if self.members.left(name, graceful, bool(self.running)):
            self.changed()

    # What a registered peer asks and reports.

    def check_address(self, name: str, nonce: str | None) -> None:
        peer = self.peers.live(name)
        if peer is not None:
            self.vouching.check_address(peer, nonce)


    def when_checked(self, name: str) -> Deferred[None]:
        return self.vouching.when_checked(self.peers.live(name))

    def place(self, newcomer: str, rejoin: bool = False) -> PeerRecord | None:
        """
        Where should C{newcomer} join?  L{None} means: be the root (see
        L{Placement}).
        """
        peer = self.peers.live(newcomer)
        if peer is None:
            raise WireError(wire.E_UNEXPECTED, "register first: P2P port=PORT")
        target = self.placement.place(peer, rejoin)
        if target is None:
            self.changed()
        return target

    def whois(self, names: list[str]) -> list[tuple[str, str, int]]:
        """
        Those of C{names} that are live peers, with where they listen; for
        one this server could not reach there, the address it registered
        from and port 0 (it is dialled by nobody; its reversed connections
        come from there).
        """
        found = [self.peers.live(name) for name in names]
        return [
            (p.name, p.record.host, p.record.port) if p.reachable else (p.name, p.source, 0)
            for p in found if p is not None and p.reachable is not None
        ]

    def neighbour_limit(self, name: str) -> int:
        record = self.registry.get(name)
        return record.max_neighbours if record is not None else wire.NEIGHBOURS_MAX

    def report(
        self,
        name: str,
        neighbours: list[str],
        uplink: str | None = None,
        is_root: bool = False,
        shared_files: int = 0,
    ) -> None:
        """
        C{name} says its neighbours are now C{neighbours}, in link order,
        and where it hangs from.
        """
        if self.members.report(name, neighbours, uplink, is_root, shared_files):
            self.changed()

    def summary(
        self,
        name: str,
        files: int | None,
        shared_bytes: int,
        transfers: list[dict[str, object]],
        transfer_count: int,
    ) -> None:
        record = self.registry.get(name)
        if record is not None:
            if files is None:
                files = record.activity.shared_files
            record.activity = Activity(files, shared_bytes, transfers, transfer_count)
            self.revision += 1

    # What the network became.

    def event(self, kind: str, name: str, text: str) -> None:
        """
        Remember for the web page that C{kind} happened to peer C{name}
        (empty: to this server), said in one sentence.
        """
        self.events.append(Event(self.clock.seconds(), kind, name, text))
        self.revision += 1

    def changed(self) -> None:
        """
        Something changed: the page shows it now, the files and the log
        within the flush interval (L{Flushing}).
        """
        self.revision += 1
        self.files.changed()

    def pending_flush(self) -> float | None:
        """
        When the next flush is due, if one is.
        """
        return self.files.pending()

    def _tell_complete(self, live: int) -> None:
        for peer in self.peers.values():
            peer.session.send("COMPLETE", live)


class Event(NamedTuple):
    """
    Something the web page lists: C{kind} is C{start}, C{restart} (of this
    server), C{join}, C{back} (a peer registered again), C{leave} or
    C{lost} (did not come back after a restart); C{text} says it to a human.
    """

    time: float
    kind: str
    peer: str
    text: str
