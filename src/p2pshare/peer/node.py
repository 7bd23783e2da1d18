"""
L{PeerNode}: one peer, assembled, and its place in the overlay.

A peer listens, registers with the metadata server, and joins the overlay
by following a referral chain: the metadata server names a first peer to
ask; a peer with a free neighbour slot accepts, a full one refers the
newcomer to the neighbour that leads to the nearest free slot.  Every hop
is bounded by a timeout and cancellable, no peer is asked twice, and the
chain has a bounded length; a failed chain is logged and tried again, from
the metadata server, with growing delays.

This module drives the peer's membership (L{membership.Membership}, the
state machine) through the metadata link and the join; the parts it
assembles own the rest: L{Links} the neighbour table, referrals and
heartbeats, L{Identity} the name and its token, L{PeerFiles} the shared
folder and the downloads, L{SearchEngine} the searches.
"""

from __future__ import annotations

import random
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.internet import ClientService, TimerService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    succeed,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorFromThreads,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from zope.interface import implementer

from p2pshare import wire
from p2pshare.admission import Secret, authority
from p2pshare.common import InOrder, LimitedFactory, ListenService, OncePerMinute
from p2pshare.disk import atomic_write
from p2pshare.peer import membership
from p2pshare.peer.download.transfer import Downloader, Fetched
from p2pshare.peer.files import FolderFetched, PeerFiles
from p2pshare.peer.http import SniffingFactory, make_site
from p2pshare.peer.identity import Identity
from p2pshare.peer.interfaces import IOverlay, ISearchHost
from p2pshare.peer.joining import Joining
from p2pshare.peer.links import Links, Neighbour
from p2pshare.peer.mapping import PortMapping
from p2pshare.peer.membership import Membership
from p2pshare.peer.protocol import (
    MetaClientFactory,
    MetaClientProtocol,
    PeerFactory,
    PeerProtocol,
)
from p2pshare.peer.queue import QUEUE_FILE, DownloadQueue
from p2pshare.peer.reach import Reach
from p2pshare.peer.reversal import Reversals
from p2pshare.peer.search import SearchEngine
from p2pshare.peer.serving import MAX_UPLOADS
from p2pshare.peer.share import ShareIndex
from p2pshare.relay import Relay
from p2pshare.startup import listen_problem
from p2pshare.tickets import Ticket, TicketChecker, TicketError, answer
from p2pshare.wire import Match, Message, RemoteError

Connect = Callable[[str, int], IStreamClientEndpoint]
RunBlocking = Callable[..., Deferred[Any]]

MAX_HELD = 64  # newcomers that may wait for us to finish joining
SUMMARY_INTERVAL = 2.0  # seconds between checks of what we tell the page
REPAIR_MARGIN = 5.0  # seconds beyond three heartbeats that a download waits for a repair
MAKE_ROOM_EVERY = 30.0  # seconds between two leaves moved to make room for newcomers
SIZE_TIMEOUT = 2.0  # seconds a search waits for the metadata server to say how many peers it has


def _run_here(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    Run blocking work at once, in this thread (tests and simulations); the
    same signature as C{deferToThread}, which a real peer uses.
    """
    try:
        return succeed(f(*args))
    except Exception:
        return fail()


@dataclass(frozen=True)
class PeerSettings:
    """
    What a peer is told at start (the C{twistd p2ppeer} flags).

    @ivar name: the name to take; None to be given one.
    @ivar advertise: the host to tell others; None to use the one the
        metadata server sees.
    @ivar portfile: where to write our port once we have joined.
    @ivar shared: the folder we share; None to share nothing.
    @ivar downloads: where downloads go (the shared folder by default).
    @ivar state_dir: the data dir that keeps our name and token.
    @ivar hop_timeout: how long one step of a join may take.
    @ivar max_hops: how many peers one join may ask.
    @ivar listen_description: how errors name our port (C{--port 7001}).
    """

    name: str | None = None
    max_neighbours: int = 2
    advertise: str | None = None
    portfile: Path | None = None
    shared: Path | None = None
    downloads: Path | None = None
    state_dir: Path | None = None
    heartbeat: float = 5.0
    hop_timeout: float = 10.0
    max_hops: int = 64
    rescan_interval: float = 2.0
    settle_time: float = 0.0  # a real peer: SETTLE_TIME (files still being written wait)
    max_uploads: int = MAX_UPLOADS
    upload_rate: float | None = None  # bytes per second over all uploads
    url_scheme: str = "http"
    listen_description: str = "its port"
    private: tuple[Path, ...] = ()  # never shared: the data dir, files holding secrets
    connections: int = 1000  # connections our port takes at once (in total)
    connections_per_host: int = 200  # ... and from one remote host
    # Downloads read each run in a thread (a real reactor); False: through
    # Twisted's agent, which a simulated network's memory transports serve.
    fetch_in_threads: bool = True


@implementer(IOverlay, ISearchHost)
class PeerNode(InOrder):
    """
    One peer of the overlay.

    @ivar join_hops: how many peers the last successful join asked (1 when
        the first one accepted); 0 for the root.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        listen: IStreamServerEndpoint,
        meta: IStreamClientEndpoint,
        connect: Connect,
        settings: PeerSettings = PeerSettings(),
        agent: IAgent | None = None,
        client_tls: ssl.SSLContext | None = None,
        run_blocking: RunBlocking | None = None,
        rng: random.Random | None = None,
        secret: Secret | None = None,
        on_fatal: Callable[[str], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        mapping: PortMapping | None = None,
        relay: Relay | None = None,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.settings = settings
        self.secret = secret
        self.rng = rng or random.Random()
        self.on_fatal = on_fatal
        self.on_stop = on_stop
        self.run_blocking: RunBlocking = run_blocking or _run_here
        self._listen_endpoint = listen
        self._meta_endpoint = meta
        self._connect = connect
        self.identity = Identity(settings.name, settings.state_dir)
        self.host: str | None = settings.advertise
        self.port: int | None = None
        # Where we are in the overlay: one state machine (membership.py).
        self.membership = Membership(lambda: self.peer_name or "peer")
        self.links = Links(
            clock=clock,
            heartbeat=settings.heartbeat,
            max_neighbours=settings.max_neighbours,
            rng=self.rng,
            me=lambda: self.peer_name,
            orphaned=lambda: self.orphaned,
            on_change=self._report,
            reachable=lambda: self.ticket is None or self.ticket.reachable,
        )
        # What we share and move, for the metadata server's page: sent
        # when it changes, every SUMMARY_INTERVAL while transfers run (for
        # their rates); an idle peer has no timer for it.
        self._summarised: object = None
        self._summarising = LoopingCall(self._report_summary)
        self._summarising.clock = clock
        self.joining = Joining(
            clock=clock,
            rng=self.rng,
            membership=self.membership,
            links=self.links,
            connect=connect,
            factory=lambda name: PeerFactory(self, ("peer", name)),
            meta=self._welcomed_meta,
            me=lambda: (self.peer_name, self.port, settings.advertise),
            ticket=lambda: (self.ticket, self.tickets),
            placed=self._joined,
            hop_timeout=settings.hop_timeout,
            max_hops=settings.max_hops,
        )
        self.search = SearchEngine(self)
        # What we share and fetch: a child service of its own.
        self.files = PeerFiles(
            clock=clock,
            run_blocking=self.run_blocking,
            find=lambda pattern, timeout, exact, enough: self.search.start(
                pattern, timeout, exact=exact, enough=enough
            ),
            me=lambda: self.peer_name,
            on_files_changed=self._files_changed,
            on_transfers_changed=self._activity,
            shared=settings.shared,
            downloads=settings.downloads,
            downloader=(
                Downloader(
                    agent, clock, self.run_blocking, secret, settings.url_scheme,
                    direct=_thread_reactor(clock) if settings.fetch_in_threads else None,
                    tls=client_tls,
                )
                if agent is not None
                else None
            ),
            secret=secret,
            rescan_interval=settings.rescan_interval,
            settle=settings.settle_time,
            max_uploads=settings.max_uploads,
            upload_rate=settings.upload_rate,
            private=(*((settings.state_dir,) if settings.state_dir else ()), *settings.private),
            advertised=lambda: self.host,
            repair_time=3 * settings.heartbeat + REPAIR_MARGIN,
            is_member=lambda name: Deferred.fromCoroutine(self.is_member(name)),
            reachable=lambda: self.ticket is None or self.ticket.reachable,
        )
        state = settings.state_dir
        self.queue = DownloadQueue(
            self.files.fetch, clock, state / QUEUE_FILE if state is not None else None
        )
        self.site = make_site(self.files, clock)
        self.reversals = Reversals(self, self.site)
        self.relay = relay  # --relay: splices for peers that cannot reach each other
        if relay is not None:
            relay.check = self._checked_ticket
        # Our children, in the order they start (and stop, backwards, each
        # once the next has stopped): our port; the heartbeat; what we
        # share and fetch; the download queue; our presence in the network
        # (the metadata server's link, begun once our port listens, and the
        # goodbyes when we leave).
        self._port_service = ListenService(
            listen,
            LimitedFactory(
                SniffingFactory(self.site, PeerFactory(self), self.reversals, relay),
                clock=clock,
                total=settings.connections, per_host=settings.connections_per_host,
            ),
            on_listening=self._listened, what=settings.listen_description,
            on_failed=lambda e: self._fatal(f"could not start: {listen_problem(e)}"),
        )
        self._port_service.setServiceParent(self)
        self._beating = TimerService(settings.heartbeat, lambda: self.links.beat(self.meta))
        self._beating.clock = clock
        self._beating.setServiceParent(self)
        _Stops(self._summarising).setServiceParent(self)
        self.files.setServiceParent(self)
        self.queue.setServiceParent(self)
        self._presence = _Presence(self)
        self._presence.setServiceParent(self)
        self.join_hops = 0
        self.network_complete = False
        self.meta: MetaClientProtocol | None = None
        self.meta_web: str | None = None  # the metadata server's topology page, if it said
        self.messages: Counter[str] = Counter()  # overlay messages sent, by verb
        self._meta_waiters: list[Deferred[MetaClientProtocol]] = []
        self._held: list[tuple[PeerProtocol, Message]] = []
        self._stopping = False  # asked to leave (STOP)
        # The metadata server's word on us (our ticket) and its key, which
        # checks everyone else's; how others reach us (the nonce its
        # dial-back is answered with, our port mapping).
        self.ticket: Ticket | None = None
        self.tickets: TicketChecker | None = None
        self.reach = Reach(self, mapping)
        self._made_room_at = float("-inf")  # when a leaf last made room for a newcomer
        if mapping is not None:
            mapping.on_mapped = self.reach.mapped
        self._told_away = OncePerMinute()  # what was said of the metadata server being away
        # What the metadata server last said of the network's size (peers,
        # latest registration number), and our own registration's number.
        self.network: tuple[int | None, int | None] = (None, None)
        self.registration_seq: int | None = None

    # Who and where we are, as the rest of the peer reads it.

    @property
    def peer_name(self) -> str | None:
        # Not Service.name: that names a child within its parent service.
        return self.identity.name

    @property
    def max_neighbours(self) -> int:
        return self.settings.max_neighbours

    @property
    def heartbeat(self) -> float:
        return self.settings.heartbeat

    @property
    def hop_timeout(self) -> float:
        return self.settings.hop_timeout

    @property
    def joined(self) -> bool:
        """
        In the overlay (an orphan, looking for a new parent, still is).
        """
        return self.membership.joined

    @property
    def is_root(self) -> bool:
        return self.membership.state == membership.ROOT

    @property
    def orphaned(self) -> bool:
        return self.membership.state == membership.ORPHANED

    @property
    def neighbours(self) -> dict[str, Neighbour]:
        return self.links.neighbours

    @property
    def uplink(self) -> str | None:
        """
        The neighbour we joined through (None for the root); losing it
        leaves us, with our subtree, to find a new place.
        """
        return self.links.uplink

    @uplink.setter
    def uplink(self, name: str | None) -> None:
        self.links.uplink = name

    @property
    def grandparent(self) -> tuple[str, ...] | None:
        return self.links.grandparent

    @property
    def links_dropped(self) -> int:
        return self.links.links_dropped

    # Life cycle.

    @property
    def _listening(self) -> IListeningPort | None:
        return self._port_service.port

    @property
    def _meta_service(self) -> ClientService | None:
        return self._presence.client

    def startService(self) -> None:
        # Our name first: the port's first connection may ask for it.  A
        # port that cannot be had raises StartupError from the first
        # child, so the peer never starts half-way.
        self.identity.load()
        self.links.restart_beats()
        try:
            super().startService()
        except BaseException:
            self.running = False
            raise

    def _listened(self, port: IListeningPort) -> None:
        address: Any = port.getHost()
        self.port = address.port
        self.log.info("peer listening on port {port}", port=self.port)
        self._presence.listening()

    def _meta_client(self) -> ClientService:
        return ClientService(
            self._meta_endpoint,
            MetaClientFactory(self),
            # Back within a heartbeat of the metadata server's return.
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=max(0.5, self.heartbeat - 1)),
            clock=self.clock,
        )

    def _fatal(self, why: str) -> None:
        self.log.critical("peer stops: {why}", why=why)
        if self.on_fatal is not None:
            self.on_fatal(why)

    def goodbye(self) -> None:
        """
        We leave: to the neighbours first (the metadata server, told
        first, would have them drop the link before our word came), then
        to the metadata server, so that it frees our name at once and the
        topology follows without waiting for a heartbeat.
        """
        self.membership.fire("stop")
        self.search.stop()
        self.joining.cancel()
        self.links.say_goodbye()
        if self.meta is not None:
            self.meta.send("BYE")

    def vanish(self) -> None:
        """
        Stop as a crashed process would (a simulated network's crash): no
        goodbye; the port is left to the network to take down.
        """
        self._presence.silent = True
        for child in reversed(list(self)):
            if child is not self._port_service and child.running:
                child.stopService()
        self.running = False

    def stop_requested(self) -> None:
        if self._stopping:
            return  # asked twice (two `p2p stop` at once): it is leaving already
        self._stopping = True
        self.log.info("peer {name} was asked to leave the network", name=self.peer_name)
        if self.on_stop is not None:
            self.on_stop()

    # The link to the metadata server.

    def registration(self) -> dict[str, Any]:
        """
        The options of our C{P2P} line: a fresh nonce for each, which the
        metadata server's dial-back must get back from our port.
        """
        return {
            "port": self.port,
            "name": self.peer_name,
            "host": self.settings.advertise,
            "max": self.max_neighbours,
            "beat": max(1, round(self.heartbeat)),
            "token": self.identity.token,
            "old": self.identity.old_token,
            "check": self.reach.fresh_nonce(),
            "relay": 1 if self.relay is not None else None,
        }

    def verify(self, proto: PeerProtocol, msg: Message) -> None:
        """
        The metadata server dials back (C{VERIFY NAME CHALLENGE}): prove we
        are the one that registered from here.
        """
        name, challenge = msg.args
        if self.reach.nonce is None:
            proto.sendError(wire.E_UNEXPECTED, "this peer has not registered")
        else:
            proto.send("VERIFIED", answer(self.reach.nonce, name, challenge))
        proto.close()

    def meta_ticket(self, value: str) -> None:
        """
        The metadata server's word on us: we show it to those we join.
        """
        try:
            ticket = Ticket.parse(value)
        except TicketError:
            return
        if ticket.name != self.peer_name:
            return
        was = self.ticket
        self.ticket = ticket
        if not ticket.reachable and (was is None or was.reachable):
            self.log.warn(
                "peer {name}: the metadata server cannot reach this peer at {host}:{port}; "
                "it joins as a leaf and no newcomer is sent here (--advertise names the "
                "address others should use){relay}", name=self.peer_name, host=ticket.host,
                port=ticket.port,
                relay="; nobody is sent to its relay either" if self.relay is not None else "",
            )
        if ticket.reachable and was is not None and not was.reachable:
            self.log.info("peer {name}: the metadata server reaches this peer at {host}:{port} "
                          "now; it can take children", name=self.peer_name, host=ticket.host,
                          port=ticket.port)
        if ticket.reachable != (was is not None and was.reachable):
            self.links.advertise()  # our free slots count only if others can reach us
        self.reach.consider()

    def _checked_ticket(self, value: str, now: float) -> Ticket:
        """
        The ticket in C{value}, if the metadata server signed it and it
        holds now (what a relay asks of a SPLICE).
        """
        if self.tickets is None:
            raise TicketError("the metadata server's key is not known here yet")
        return self.tickets.check(value, now)

    def meta_welcomed(self, proto: MetaClientProtocol, msg: Message) -> None:
        name, host, _ = msg.args
        self.identity.named(name)
        seq = msg.options.get("seq")
        self.registration_seq = int(seq) if seq is not None else None
        self.identity.moved()  # a replaced token is forgotten once the server took the new one
        key = msg.options.get("key")
        if key is not None and (self.tickets is None or self.tickets.public != key):
            try:
                self.tickets = TicketChecker(key)
            except TicketError:
                self.log.warn("the metadata server sent a key that is not one")
        if self.settings.advertise is None:
            self.host = host
        self.meta_web = _page_of(proto, msg.options.get("web"))
        self.meta = proto
        self.reach.welcomed(proto)
        self._summarised = None  # a new session: say it all again
        self._activity()
        self.log.info("peer {name} registered with the metadata server", name=self.peer_name)
        waiters, self._meta_waiters = self._meta_waiters, []
        for d in waiters:
            d.callback(proto)
        if self.joined:
            self._report()
        self.membership.fire("welcomed")
        self._find_place()
        self.network_size()  # known from the start, should the server go away

    def _find_place(self) -> None:
        """
        Join, or rejoin after losing our parent, unless already at it.
        """
        if self.running:
            self.joining.start()

    def meta_refused(self, error: RemoteError) -> None:
        if error.code == wire.E_NAME_TAKEN:
            self._fatal(error.text)
        else:
            self.log.error("metadata server refused us: {text}", text=error.text)

    def meta_lost(self, proto: MetaClientProtocol) -> None:
        if self.meta is proto:
            self.meta = None

    def meta_says_rejoin(self) -> None:
        """
        We thought we were the root, but the network chose another while
        we were cut off: find a place for our subtree.
        """
        if not self.membership.fire("told_to_rejoin"):
            return  # not the root (any more): nothing to rejoin
        self.log.info("peer {name} is no longer the root; rejoining", name=self.peer_name)
        self._report()
        self._find_place()

    def meta_said_complete(self, peers: int) -> None:
        self.network_complete = True
        self.log.info("network complete: {n} peers", n=peers)

    def _welcomed_meta(self) -> Deferred[MetaClientProtocol]:
        if self.meta is not None:
            return succeed(self.meta)
        d: Deferred[MetaClientProtocol] = Deferred(lambda d: self._meta_waiters.remove(d))
        self._meta_waiters.append(d)
        return d

    def _report(self) -> None:
        if self.meta is not None:
            for line in wire.split_list(
                "NEIGHBOURS", (), list(self.neighbours),
                up=self.uplink, root=1 if self.is_root and not self.uplink else None,
                files=self.files.count(),
            ):
                self.meta.sendMessage(line)

    def _files_changed(self) -> None:
        self._report()
        self._activity()

    def _activity(self) -> None:
        """
        A transfer began or ended, or the share changed: tell the
        metadata server (now, and while transfers run).
        """
        if self.running and not self._summarising.running:
            self._summarising.start(SUMMARY_INTERVAL, now=True)

    def _report_summary(self) -> None:
        summary = self.files.summary()
        files, size, transfers = summary
        if self.meta is not None and summary != self._summarised:
            self._summarised = summary
            for t in transfers:
                self.meta.send(
                    "TRANSFER", t["direction"], t["done"], t["total"], t["rate"],
                    _field(str(t["peer"]) or "-", wire.FILE), _field(str(t["name"]), wire.PATH),
                )
            self.meta.send("SUMMARY", files=files, bytes=size, transfers=len(self.files.transfers))
        if not transfers and self._summarising.running:
            self._summarising.stop()

    # Joining.

    def _joined(self, parent: str | None, hops: int) -> None:
        rejoined = self.joined
        if not self.membership.fire("placed_root" if parent is None else "accepted"):
            return
        self.uplink = parent
        self.join_hops = hops
        self.links.tell_children_up()
        self._report()
        if rejoined:
            self.log.info(
                "peer {name} reattached its subtree at {parent}",
                name=self.peer_name, parent=parent or "(root)",
            )
            return
        if parent is None:
            self.log.info("peer {name} is the root of the overlay", name=self.peer_name)
        else:
            self.log.info(
                "peer {name} joined the overlay at {parent} after {hops} hop(s)",
                name=self.peer_name,
                parent=parent,
                hops=hops,
            )
        if self.settings.portfile is not None:
            atomic_write(self.settings.portfile, f"{self.port}\n".encode())
        self.queue.open()
        self.log.info("peer {name} ready on port {port}", name=self.peer_name, port=self.port)
        held, self._held = self._held, []
        for proto, msg in held:
            if proto.connected:
                self.hello(proto, msg)

    # Newcomers.

    def hello(self, proto: PeerProtocol, msg: Message) -> None:
        """
        A newcomer asks to join through us: accept it, or refer it on.
        """
        name, port = msg.args[0], int(msg.args[1])
        if not self.joined:
            if self.joining.pending is None or len(self._held) >= MAX_HELD:
                proto.sendError(wire.E_NOT_JOINED, "this peer has not joined the overlay yet")
                proto.close()
            else:
                # The metadata server sent this newcomer ahead of us: answer
                # once we are in (the newcomer's own timeout bounds the wait).
                self._held.append((proto, msg))
            return
        ticket = self._admit(proto, name, port, msg.options.get("ticket"))
        if ticket is None:
            return
        if name == self.peer_name or name in self.neighbours:
            proto.sendError(wire.E_NAME_TAKEN, f"{name} is already here")
            proto.close()
            return
        target = None if self.links.has_room() else self.links.referral({name, msg.options.get("via")})
        if target is None and not self.links.has_room() and ticket.reachable:
            self._make_room_for(name)
        if self.links.has_room():
            proto.send(
                "ACCEPT", self.peer_name, beat=self.links.beat_ms(),
                ticket=self.ticket.field() if self.ticket is not None else None,
            )
            self.links.add(name, ticket.host, port, proto, msg.options.get("beat"),
                           reachable=ticket.reachable)
            self.log.info("peer {name} accepted {newcomer}", name=self.peer_name, newcomer=name)
            return
        if target is None:
            proto.sendError(wire.E_FULL, "this peer is full and has nobody to refer you to")
        else:
            self.log.info(
                "peer {name} refers {newcomer} to {target}",
                name=self.peer_name,
                newcomer=name,
                target=target.name,
            )
            proto.send("REFER", target.name, target.host, target.port)
        proto.close()

    def _make_room_for(self, newcomer: str) -> None:
        """
        We are full, nobody behind us has room, and C{newcomer} can be
        reached: a child nobody can reach (a leaf) makes room for it and
        finds a new place (below the newcomer, which has room), so that
        leaves never stop the tree of reachable peers from growing.
        """
        if self.ticket is not None and not self.ticket.reachable:
            return
        now = self.clock.seconds()
        if now - self._made_room_at < MAKE_ROOM_EVERY:
            return  # a newcomer that comes and goes cannot keep the leaves moving
        leaf = next((n for n in self.neighbours.values()
                     if not n.reachable and n.name != self.uplink), None)
        if leaf is None:
            return
        self._made_room_at = now
        self.log.info("peer {name} makes room for {newcomer}, which others can reach: its leaf "
                      "{leaf} finds a new place", name=self.peer_name, newcomer=newcomer,
                      leaf=leaf.name)
        self.links.remove(leaf.name, leaf.proto)
        self.search.link_lost(leaf.name)
        leaf.proto.close()
        self._report()

    def _admit(
        self, proto: PeerProtocol, name: str, port: int, shown: str | None
    ) -> Ticket | None:
        """
        The ticket on which C{name} may become our neighbour: the metadata
        server signed it for that name, port and the address this
        connection comes from, and it has not expired (in a private network
        the name is also the one the newcomer proved the secret under).
        Else it is told why and cut off, and L{None}.
        """
        problem = None
        ticket = None
        proved = proto.proved()
        if proved is not None and proved != ("peer", name):
            problem = f"you proved the network secret as {proved[1]}, not as {name}"
        elif self.tickets is None:
            problem = "this peer has no word from the metadata server yet to check tickets by"
        elif shown is None:
            problem = "HELLO needs the ticket the metadata server gave you (ticket=...)"
        else:
            try:
                ticket = self.tickets.check(shown, self.clock.seconds())
                problem = ticket.lets_in(name, port, proto.peerHost())
            except TicketError as e:
                problem = str(e)
        if problem is not None:
            self.log.info("peer {me} refused {who} as {name}: {why}", me=self.peer_name,
                          who=proto.peerHost() or "?", name=name, why=problem)
            proto.sendError(wire.E_BAD_TICKET, problem)
            proto.close()
            return None
        return ticket

    # What our links tell us.

    def up_said(self, name: str, fields: tuple[str, ...]) -> None:
        self.links.up_said(name, fields)

    def free_said(self, name: str, hops: int | None) -> None:
        self.links.free_said(name, hops)

    def hops_for(self, neighbour: str) -> int | None:
        return self.links.hops_for(neighbour)

    def flood(self, msg: Message, source: str | None = None) -> None:
        """
        Send C{msg} to every neighbour but C{source}.
        """
        for n in list(self.links.neighbours.values()):
            if n.name != source:
                n.proto.sendMessage(msg)

    def connect_out(self, host: str, port: int) -> IStreamClientEndpoint:
        return self._connect(host, port)

    def goodbye_said(self, name: str, proto: PeerProtocol) -> None:
        self.links.goodbye(name, proto)

    def link_lost(self, name: str, proto: PeerProtocol) -> None:
        gone = self.links.remove(name, proto)
        if gone is None:
            return
        self.search.link_lost(name)
        if not self.running:
            return
        if not gone.said_goodbye:  # a goodbye was logged as one
            self.log.info("peer {name} lost its link to {other}", name=self.peer_name, other=name)
        lost_parent = name == self.uplink and self.joined
        if lost_parent:
            self.uplink = None
            self.membership.fire("parent_lost")
        self._report()
        self.links.advertise()
        if lost_parent:
            self.log.info(
                "peer {name} lost its parent {other}; finding a new place for its subtree",
                name=self.peer_name, other=name,
            )
            self._find_place()

    # The shared files (files.py), as the rest of the peer reads them.

    @property
    def share(self) -> ShareIndex | None:
        return self.files.share

    def refresh_share(self) -> Deferred[None]:
        return self.files.refresh()

    async def fetch(self, name: str, *args: Any, **kwargs: Any) -> Fetched | FolderFetched:
        return await self.files.fetch(name, *args, **kwargs)

    def local_matches(self, pattern: str, hops: int, exact: int = 0) -> list[Match]:
        if self.share is None or self.peer_name is None or self.port is None:
            return []
        host = self.host or "127.0.0.1"
        port = self.port
        if self.ticket is not None and not self.ticket.reachable:
            # Nobody can dial us: port 0, and the address we registered
            # from, where our reversed connections come from.
            host, port = self.ticket.source, 0
        whole = [
            Match(f.name, f.size, f.sha256, self.peer_name, host, port, hops, f.root)
            for f in self.share.search(pattern, exact)
        ]
        partial = [
            Match(p.name, p.size, p.sha256, self.peer_name, host, port, hops, p.root,
                  len(p.book.verified))
            for p in self.files.partial_matches(pattern, exact)
        ]
        return whole + partial

    def network_size(self) -> Deferred[tuple[int | None, int | None]]:
        return Deferred.fromCoroutine(self._network_size())

    async def _network_size(self) -> tuple[int | None, int | None]:
        """
        Ask the metadata server how many peers it has, placed or not, and
        its latest registration's number; the last it said when it is away
        or slow (a search goes on without it).
        """
        meta = self.meta
        if meta is not None:
            try:
                reply = await meta.request("SIZE", answers={"NETWORK"}).addTimeout(
                    min(self.hop_timeout, SIZE_TIMEOUT), self.clock
                )
                self.network = (int(reply.args[0]), int(reply.args[1]))
            except CancelledError:
                raise  # whoever asked went away: not the server's fault
            except Exception as e:
                if self._told_away.due("size", self.clock.seconds()):
                    self.log.info("the network's size is not known now: {why}", why=_why_not(e))
        return self.network

    async def _whois(self, names: list[str]) -> dict[str, tuple[str, int]]:
        """
        Where the metadata server knows each of C{names} to be live (those
        it does not know are left out); it must be there to be asked.
        """
        known: dict[str, tuple[str, int]] = {}
        for i in range(0, len(names), wire.WHOIS_MAX):
            meta = self.meta
            if meta is None:
                raise ConnectionError("the metadata server is away")
            reply = await meta.request(
                "WHOIS", *names[i:i + wire.WHOIS_MAX], answers={"KNOWN"}
            ).addTimeout(self.hop_timeout, self.clock)
            for entry in reply.args:
                name, _, rest = entry.partition("/")
                host, _, port = rest.rpartition("/")
                known[name] = (host, int(port))
        return known

    async def is_member(self, name: str) -> bool | None:
        """
        Is C{name} a live peer of the network, as the metadata server says?
        None when it cannot be asked now.
        """
        try:
            return name in await self._whois([name])
        except CancelledError:
            raise
        except Exception:
            return None

    def vouch(self, matches: list[Match]) -> Deferred[list[Match]]:
        return Deferred.fromCoroutine(self._vouch(matches))

    async def _vouch(self, matches: list[Match]) -> list[Match]:
        """
        Those of C{matches} whose holder the metadata server knows as a
        live peer at the address the match gives (our own are ours): a
        match aimed at somebody else's address is dropped here, before
        anyone connects to it.  When the metadata server cannot be asked
        (it is away), every match is kept, and downloads bound what they
        try (transfer.py).
        """
        others = sorted({m.holder for m in matches if m.holder != self.peer_name})
        if not others:
            return matches
        try:
            known = await self._whois(others)
        except RemoteError as e:
            # The metadata server is there and would not vouch: keep only
            # what is ours (a search must not be opened by an odd answer).
            self.log.warn("search results dropped: the metadata server did not check their "
                          "holders ({why})", why=e.text)
            return [m for m in matches if m.holder == self.peer_name]
        except CancelledError:
            raise
        except Exception as e:
            # It is away, or too slow: searching goes on without it, and
            # each download tries a bounded number of addresses.
            if self._told_away.due("meta", self.clock.seconds()):
                self.log.info("search results are not checked for now: {why}", why=_why_not(e))
            self._unreachable_holders([m for m in matches if not self.reversals.knows(m.holder)])
            return matches
        vouched = [
            m for m in matches
            if m.holder == self.peer_name or known.get(m.holder) == (m.host, m.port)
        ]
        self._unreachable_holders(vouched)
        return vouched

    def _unreachable_holders(self, matches: list[Match]) -> None:
        """
        Where the holders among C{matches} that nobody can dial registered
        from: their reversed connections must come from there.
        """
        for m in matches:
            if m.port == 0:
                self.reversals.holder_at(m.holder, m.host)

    # What the control channel shows.

    def status(self, listed: bool = False) -> dict[str, object]:
        """
        What C{p2p status} shows (the shared files themselves only when
        C{listed}: L{PeerFiles.status}).
        """
        return {
            "name": self.peer_name,
            "host": self.host,
            "port": self.port,
            "state": self.membership.state,
            "joined": self.joined,
            "root": self.is_root,
            "parent": self.uplink,
            "max_neighbours": self.max_neighbours,
            "network_complete": self.network_complete,
            "network_peers": self.network[0],
            "neighbours": [
                {"name": n.name, "host": n.host, "port": n.port}
                for n in self.neighbours.values()
            ],
            **self.reach.status(),
            "relay": self.relay.status() if self.relay is not None else None,
            **self.files.status(listed),
        }


def _page_of(proto: MetaClientProtocol, web: str | None) -> str | None:
    """
    The address of the metadata server's topology page (C{WELCOME}'s
    C{web=PORT}, on the host we reached the server at).
    """
    peer = proto.transport.getPeer() if proto.transport is not None else None
    host = getattr(peer, "host", None)
    if web is None or not host:
        return None
    return f"http://{authority(host, int(web))}/"


def _why_not(e: Exception) -> str:
    from twisted.internet.defer import TimeoutError

    if isinstance(e, TimeoutError):
        return "the metadata server did not answer in time"
    return str(e) or type(e).__name__


def _field(text: str, check: wire.Check) -> str:
    """
    C{text} as a percent-encoded field that C{check} accepts, shortened
    (ending in an ellipsis) if it would not fit in one.
    """
    quoted = wire.quote_path(text)
    while check(quoted) is not None and len(text) > 1:
        text = text[: len(text) * 3 // 4]
        quoted = wire.quote_path(text + "\u2026")
    return quoted


def _thread_reactor(clock: IReactorTime) -> IReactorFromThreads:
    """
    The reactor that threads reading downloads report to: the peer's own.
    """
    if not IReactorFromThreads.providedBy(clock):
        raise TypeError(
            "fetch_in_threads needs a reactor that threads can call into; "
            "give PeerSettings(fetch_in_threads=False) with a simulated clock"
        )
    return clock  # type: ignore[return-value]


class _Presence(Service):
    """
    Our presence in the network, the last of a peer's children: the link
    to the metadata server (a L{ClientService}, begun once our port
    listens, since our registration names it) and, when we stop, the
    goodbyes before that link goes.
    """

    def __init__(self, node: PeerNode) -> None:
        self.node = node
        self.client: ClientService | None = None
        self.silent = False  # a crash says no goodbye

    def startService(self) -> None:
        super().startService()
        self.node.membership.fire("start")
        if self.node.port is not None:
            self.listening()

    def listening(self) -> None:
        """
        Our port listens: register.
        """
        if self.running and self.client is None:
            self.client = self.node._meta_client()
            self.client.startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if not self.silent:
            self.node.goodbye()
        client, self.client = self.client, None
        return client.stopService() if client is not None else None


class _Stops(Service):
    """
    Stops a L{LoopingCall} that runs only now and then (started by its
    owner) with the service it belongs to.
    """

    def __init__(self, call: LoopingCall) -> None:
        self.call = call

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.call.running:
            self.call.stop()
        return None
