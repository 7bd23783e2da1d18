"""
L{PeerNode}: the state and behaviour of one peer.

A peer listens, registers with the metadata server, and joins the overlay
by following a referral chain: the metadata server names a first peer to
ask; a peer with a free neighbour slot accepts, a full one refers the
newcomer to the neighbour that leads to the nearest free slot.  Every hop
is bounded by a timeout and cancellable, no peer is asked twice, and the
chain has a bounded length; a failed chain is logged and tried again, from
the metadata server, with growing delays.

To refer well, neighbours tell each other (C{FREE hops}) how far the
nearest free slot is behind them, not counting the link they talk over: a
distance vector with split horizon, which is exact on a tree.
"""

from __future__ import annotations

import os
import random
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.application.internet import ClientService, TimerService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from zope.interface import implementer

from p2pshare import wire
from p2pshare.admission import Secret
from p2pshare.channel import RemoteError
from p2pshare.common import LimitedFactory, atomic_write
from p2pshare.peer import membership
from p2pshare.peer.files import PeerFiles
from p2pshare.peer.http import MAX_UPLOADS, SniffingFactory, UploadSlots, make_site
from p2pshare.peer.interfaces import IOverlay, ISearchHost
from p2pshare.peer.membership import Membership
from p2pshare.peer.protocol import (
    MetaClientFactory,
    MetaClientProtocol,
    PeerFactory,
    PeerProtocol,
)
from p2pshare.peer.search import SearchEngine
from p2pshare.peer.share import ShareIndex
from p2pshare.peer.transfer import Downloader, Fetched
from p2pshare.startup import listen_now, listen_problem
from p2pshare.wire import Match, Message

Connect = Callable[[str, int], IStreamClientEndpoint]
RunBlocking = Callable[..., Deferred[Any]]


def _run_here(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    Run blocking work at once, in this thread (tests and simulations); the
    same signature as C{deferToThread}, which a real peer uses.
    """
    try:
        return succeed(f(*args))
    except Exception:
        return fail()


HOPS_CAP = 1000
MAX_HELD = 64  # newcomers that may wait for us to finish joining


class JoinFailed(Exception):
    """
    A referral chain ended without a peer accepting us.
    """


@dataclass
class Neighbour:
    name: str
    host: str
    port: int
    proto: PeerProtocol
    hops: int | None = None  # what it says: hops to a free slot behind it
    sent: int | None | str = "unsent"  # what we last told it


@implementer(IOverlay, ISearchHost)
class PeerNode(MultiService):
    """
    One peer of the overlay.

    @ivar neighbours: by name, in the order the links were made.
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
        name: str | None = None,
        max_neighbours: int = 2,
        advertise: str | None = None,
        portfile: Path | None = None,
        hop_timeout: float = 10.0,
        max_hops: int = 64,
        rng: random.Random | None = None,
        on_fatal: Callable[[str], None] | None = None,
        shared: Path | None = None,
        downloads: Path | None = None,
        agent: IAgent | None = None,
        run_blocking: RunBlocking | None = None,
        rescan_interval: float = 2.0,
        heartbeat: float = 5.0,
        on_stop: Callable[[], None] | None = None,
        state_dir: Path | None = None,
        secret: Secret | None = None,
        url_scheme: str = "http",
        max_uploads: int = MAX_UPLOADS,
        listen_description: str = "its port",
    ) -> None:
        super().__init__()
        self.clock = clock
        self.listen_description = listen_description
        self.secret = secret
        self._listen_endpoint = listen
        self._meta_endpoint = meta
        self._connect = connect
        # Not Service.name: that names a child within its parent service.
        self.peer_name: str | None = name
        self.max_neighbours = max_neighbours
        self.advertise = advertise
        self.portfile = portfile
        self.hop_timeout = hop_timeout
        self.max_hops = max_hops
        self.rng = rng or random.Random()
        self.on_fatal = on_fatal
        self.host: str | None = advertise
        self.port: int | None = None
        self.neighbours: dict[str, Neighbour] = {}
        # Where we are in the overlay: one state machine (membership.py).
        self.membership = Membership(lambda: self.peer_name or "peer")
        # The neighbour we joined through (None for the root); losing it
        # leaves us, with our subtree, to find a new place.
        self.uplink: str | None = None
        # Our parent's parent, as (name, host, port), while we know it.
        self.grandparent: tuple[str, ...] | None = None
        self.heartbeat = heartbeat
        self.on_stop = on_stop
        # The name and the secret that proves it is ours live in the data
        # dir, so a restarted peer takes its name back at once.
        self.state_dir = state_dir
        self.token: str | None = None
        # The periodic jobs are child services, started and stopped with us.
        self._beating = TimerService(heartbeat, self._beat)
        self._beating.clock = clock
        self._beating.setServiceParent(self)
        self.join_hops = 0
        self.network_complete = False
        self.meta: MetaClientProtocol | None = None
        self._meta_waiters: list[Deferred[MetaClientProtocol]] = []
        self._listening: IListeningPort | None = None
        self._meta_service: ClientService | None = None
        self._joining: Deferred[None] | None = None
        self._starting: Deferred[None] | None = None
        self._held: list[tuple[PeerProtocol, Message]] = []
        self.run_blocking: RunBlocking = run_blocking or _run_here
        self.search = SearchEngine(self)
        # What we share and fetch: a child service of its own.
        self.files = PeerFiles(
            clock=clock,
            run_blocking=self.run_blocking,
            find=lambda pattern, timeout: self.search.start(pattern, timeout),
            me=lambda: self.peer_name,
            on_files_changed=self._report,
            shared=shared,
            downloads=downloads,
            downloader=(
                Downloader(agent, clock, self.run_blocking, secret, url_scheme)
                if agent is not None
                else None
            ),
            secret=secret,
            rescan_interval=rescan_interval,
            max_uploads=max_uploads,
        )
        self.files.setServiceParent(self)
        self.site = make_site(self.files, clock)
        self.messages: Counter[str] = Counter()  # overlay messages sent, by verb
        self._stopping = False  # asked to leave (STOP)
        self._last_beat = 0.0  # when _beat last ran
        self.links_dropped = 0  # links given up as silent

    # Where we are, as the rest of the peer reads it.

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

    # Life cycle.

    def startService(self) -> None:
        listening = self._listen()  # first: if it fails, nothing else has started
        self._last_beat = self.clock.seconds()
        self.membership.fire("start")
        super().startService()  # and the timers, our children
        self._starting = Deferred.fromCoroutine(self._start(listening))
        self._starting.addErrback(self._startFailed)

    def _listen(self) -> Deferred[IListeningPort]:
        """
        Listen on our port; a port that cannot be had (in use, a bad path)
        raises L{StartupError} at once, so the peer never starts half-way.
        """
        self._load_identity()
        factory = LimitedFactory(SniffingFactory(self.site, PeerFactory(self)), clock=self.clock)
        return listen_now(self._listen_endpoint, factory, self.listen_description)

    def _load_identity(self) -> None:
        if self.state_dir is None:
            return
        token_file = self.state_dir / "token"
        if not token_file.exists():
            atomic_write(token_file, secrets.token_hex(16).encode() + b"\n")
        os.chmod(token_file, 0o600)
        self.token = token_file.read_text().strip()
        name_file = self.state_dir / "name"
        if self.peer_name is None and name_file.exists():
            self.peer_name = name_file.read_text().strip() or None

    def _save_name(self) -> None:
        if self.state_dir is not None and self.peer_name is not None:
            atomic_write(self.state_dir / "name", f"{self.peer_name}\n".encode())

    async def _start(self, listening: Deferred[IListeningPort]) -> None:
        self._listening = await listening
        address: Any = self._listening.getHost()
        self.port = address.port
        self.log.info("peer listening on port {port}", port=self.port)
        self._meta_service = ClientService(
            self._meta_endpoint,
            MetaClientFactory(self),
            # Back within a heartbeat of the metadata server's return.
            retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=max(0.5, self.heartbeat - 1)),
            clock=self.clock,
        )
        self._meta_service.startService()

    def _startFailed(self, failure: Any) -> None:
        if failure.check(CancelledError):
            return
        self._fatal(f"could not start: {listen_problem(failure.value)}")

    def _fatal(self, why: str) -> None:
        self.log.critical("peer stops: {why}", why=why)
        if self.on_fatal is not None:
            self.on_fatal(why)

    async def _stop(self) -> None:
        self.membership.fire("stop")
        self.search.stop()
        for d in (self._starting, self._joining):
            if d is not None and not d.called:
                d.cancel()
        if self.meta is not None:
            # A goodbye, so that the metadata server frees our name at once
            # and the topology follows without waiting for a heartbeat.
            self.meta.send("BYE")
        if self._meta_service is not None:
            stopping: Any = self._meta_service.stopService()
            if stopping is not None:
                await stopping
        for n in list(self.neighbours.values()):
            n.proto.send("BYE")  # a goodbye: no need to wait for a heartbeat
            n.proto.close()
        if self._listening is not None:
            stopped: Any = self._listening.stopListening()
            if stopped is not None:
                await stopped

    def stopService(self) -> Deferred[None]:
        timers = super().stopService()  # the children: every periodic job
        leaving = Deferred.fromCoroutine(self._stop())
        both = gatherResults([timers, leaving], consumeErrors=True)
        return both.addCallback(lambda _: None)

    # The link to the metadata server.

    def registration(self) -> dict[str, Any]:
        """
        The options of our C{P2P} line.
        """
        return {
            "port": self.port,
            "name": self.peer_name,
            "host": self.advertise,
            "max": self.max_neighbours,
            "beat": max(1, round(self.heartbeat)),
            "token": self.token,
        }

    def meta_welcomed(self, proto: MetaClientProtocol, msg: Message) -> None:
        name, host, _ = msg.args
        if self.peer_name is None:
            self.peer_name = name
            self._save_name()
        if self.advertise is None:
            self.host = host
        self.meta = proto
        self.log.info("peer {name} registered with the metadata server", name=self.peer_name)
        waiters, self._meta_waiters = self._meta_waiters, []
        for d in waiters:
            d.callback(proto)
        if self.joined:
            self._report()
        self.membership.fire("welcomed")
        self._find_place()

    def _find_place(self) -> None:
        """
        Join, or rejoin after losing our parent, unless already at it.
        """
        if self.membership.seeking and self._joining is None and self.running:
            self._joining = Deferred.fromCoroutine(self._join())
            self._joining.addErrback(self._joinAbandoned)

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

    # Joining.

    async def _join(self) -> None:
        delay = 0.5
        attempt = 0
        while self.membership.seeking:
            attempt += 1
            try:
                await self._join_once()
            except CancelledError:
                raise
            except Exception as e:
                self.membership.fire("refused")
                self.log.warn(
                    "peer {name} could not join (attempt {attempt}): {why}; "
                    "trying again in {delay:.1f} s",
                    name=self.peer_name,
                    attempt=attempt,
                    why=_describe(e),
                    delay=delay,
                )
                await deferLater(self.clock, delay)
                delay = min(delay * 2, 30.0) * self.rng.uniform(0.9, 1.1)
        self._joining = None

    def _joinAbandoned(self, failure: Any) -> None:
        self._joining = None
        if not failure.check(CancelledError):
            self.log.failure("joining stopped", failure)

    async def _join_once(self) -> None:
        grandparent, self.grandparent = self.grandparent, None
        if self.orphaned and grandparent is not None:
            # First the nearest live ancestor we know: it has just lost a
            # child, so it likely has room, and this works while the
            # metadata server is away.  Our subtree cannot contain it.
            target: tuple[str, ...] = grandparent
        else:
            meta = await self._welcomed_meta().addTimeout(self.hop_timeout, self.clock)
            rejoin = 1 if self.joined else None
            reply = await meta.request("PLACE", rejoin=rejoin).addTimeout(
                self.hop_timeout, self.clock
            )
            if reply.verb == "ROOT":
                self._joined(None, 0)
                return
            if reply.verb != "REFER":
                raise JoinFailed(f"the metadata server answered {reply.verb}")
            target = reply.args
        visited: set[str] = set()
        via: str | None = None
        while True:
            name, host, port = target[0], target[1], int(target[2])
            if name in visited or name == self.peer_name:
                raise JoinFailed(f"referred back to {name}")
            if len(visited) >= self.max_hops:
                raise JoinFailed(f"no peer accepted us after {len(visited)} referrals")
            visited.add(name)
            reply, proto = await self._hello(name, host, port, via)
            if reply.verb == "ACCEPT" and reply.args[0] in self.neighbours:
                proto.close()  # stale knowledge led us into our own subtree
                raise JoinFailed(f"{reply.args[0]} is already our neighbour")
            if reply.verb == "ACCEPT":
                self.uplink = reply.args[0]
                self._add_neighbour(reply.args[0], host, port, proto, reply.options.get("beat"))
                self._joined(reply.args[0], len(visited))
                return
            proto.close()
            if reply.verb != "REFER":
                raise JoinFailed(f"{name} answered {reply.verb}")
            via, target = name, reply.args

    async def _hello(
        self, name: str, host: str, port: int, via: str | None
    ) -> tuple[Message, PeerProtocol]:
        endpoint = self._connect(host, port)
        proto = cast(
            PeerProtocol,
            await endpoint.connect(PeerFactory(self, ("peer", name))).addTimeout(
                self.hop_timeout, self.clock
            ),
        )
        try:
            await proto.whenAdmitted().addTimeout(self.hop_timeout, self.clock)
            reply = await proto.request(
                "HELLO", self.peer_name, self.port, host=self.advertise, via=via,
                beat=self._beat_ms(),
            ).addTimeout(self.hop_timeout, self.clock)
        except BaseException:
            proto.abort()
            raise
        return reply, proto

    def _joined(self, parent: str | None, hops: int) -> None:
        rejoined = self.joined
        if not self.membership.fire("placed_root" if parent is None else "accepted"):
            return
        self.uplink = parent
        self.join_hops = hops
        for n in self.neighbours.values():
            if n.name != parent:
                self._tell_up(n.proto)  # our children's grandparent changed
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
        if self.portfile is not None:
            atomic_write(self.portfile, f"{self.port}\n".encode())
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
            if self._joining is None or len(self._held) >= MAX_HELD:
                proto.sendError(wire.E_NOT_JOINED, "this peer has not joined the overlay yet")
                proto.close()
            else:
                # The metadata server sent this newcomer ahead of us: answer
                # once we are in (the newcomer's own timeout bounds the wait).
                self._held.append((proto, msg))
            return
        if name == self.peer_name or name in self.neighbours:
            proto.sendError(wire.E_NAME_TAKEN, f"{name} is already here")
            proto.close()
            return
        if len(self.neighbours) < self._room():
            host = msg.options.get("host") or proto.peerHost() or "?"
            proto.send("ACCEPT", self.peer_name, beat=self._beat_ms())
            self._add_neighbour(name, host, port, proto, msg.options.get("beat"))
            self.log.info("peer {name} accepted {newcomer}", name=self.peer_name, newcomer=name)
            return
        target = self._referral({name, msg.options.get("via")})
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

    def _room(self) -> int:
        """
        How many neighbours we take; a peer looking for a new parent keeps
        a slot for it.
        """
        return self.max_neighbours - (1 if self.orphaned else 0)

    def _referral(self, exclude: set[str | None]) -> Neighbour | None:
        """
        The neighbour that leads to the nearest free slot; ties are broken
        at random so that no branch is always the first to fill.
        """
        candidates = [n for n in self.neighbours.values() if n.name not in exclude]
        if not candidates:
            return None
        best = min(_rank(n.hops) for n in candidates)
        return self.rng.choice([n for n in candidates if _rank(n.hops) == best])

    # Links.

    def _beat_ms(self) -> int:
        return max(1, round(self.heartbeat * 1000))

    def _add_neighbour(
        self, name: str, host: str, port: int, proto: PeerProtocol, beat_ms: str | None = None
    ) -> None:
        """
        A link is made.  Both ends judge it by one heartbeat, the larger of
        their two (C{beat_ms}: the other's, from C{HELLO} or C{ACCEPT}),
        so peers with different C{--heartbeat} never think each other dead.
        """
        proto.link = name
        proto.beat = max(self.heartbeat, int(beat_ms) / 1000 if beat_ms else 0.0)
        self.neighbours[name] = Neighbour(name, host, port, proto)
        if name != self.uplink:
            self._tell_up(proto)  # a child learns its grandparent
        self._report()
        self._advertise()

    def _tell_up(self, proto: PeerProtocol) -> None:
        up = self.neighbours.get(self.uplink) if self.uplink else None
        if up is None:
            proto.send("UP")
        else:
            proto.send("UP", up.name, up.host, up.port)

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

    def link_lost(self, name: str, proto: PeerProtocol) -> None:
        n = self.neighbours.get(name)
        if n is None or n.proto is not proto:
            return
        del self.neighbours[name]
        self.search.link_lost(name)
        if not self.running:
            return
        self.log.info("peer {name} lost its link to {other}", name=self.peer_name, other=name)
        lost_parent = name == self.uplink and self.joined
        if lost_parent:
            self.uplink = None
            self.membership.fire("parent_lost")
        self._report()
        self._advertise()
        if lost_parent:
            self.log.info(
                "peer {name} lost its parent {other}; finding a new place for its subtree",
                name=self.peer_name, other=name,
            )
            self._find_place()

    # Liveness.

    def _beat(self) -> None:
        """
        Every heartbeat: abort links (and the metadata link) silent for
        three of their beats, and say PING where we have been quiet for
        half of one.  A link's beat is the one both ends agreed on (the
        larger of theirs).  Only the child side of a link (and every peer
        to the metadata server) pings; the PONG keeps the other direction
        alive, so an idle link costs a PING and a PONG about once a beat.
        Silence is not judged on a tick that came late (this process was
        busy, or suspended): everyone's clock jumped, not only the other's.
        """
        now = self.clock.seconds()
        late = now - self._last_beat > 2 * self.heartbeat
        self._last_beat = now
        protos: list[Any] = [n.proto for n in self.neighbours.values()]
        if self.meta is not None:
            protos.append(self.meta)
        for proto in protos:
            beat = getattr(proto, "beat", None) or self.heartbeat
            pings = proto.link is None or proto.link == self.uplink
            if now - proto.heard_at > 3 * beat and not late:
                self.log.info(
                    "peer {name}: {other} has been silent for {s:.0f} s; dropping the link",
                    name=self.peer_name, other=proto.link or "the metadata server",
                    s=now - proto.heard_at,
                )
                self.links_dropped += 1
                proto.abort()
            elif pings and now - proto.said_at >= beat / 2:
                proto.send("PING")

    def stop_requested(self) -> None:
        if self._stopping:
            return  # asked twice (two `p2p stop` at once): it is leaving already
        self._stopping = True
        self.log.info("peer {name} was asked to leave the network", name=self.peer_name)
        if self.on_stop is not None:
            self.on_stop()

    def free_said(self, name: str, hops: int | None) -> None:
        n = self.neighbours.get(name)
        if n is not None:
            n.hops = hops
            self._advertise()

    def hops_for(self, neighbour: str) -> int | None:
        """
        How far is our nearest free slot, not counting C{neighbour}'s side?
        """
        if len(self.neighbours) < self._room():
            return 0
        behind = [
            n.hops + 1
            for n in self.neighbours.values()
            if n.name != neighbour and n.hops is not None
        ]
        best = min(behind, default=None)
        return best if best is not None and best < HOPS_CAP else None

    def _advertise(self) -> None:
        for n in list(self.neighbours.values()):
            hops = self.hops_for(n.name)
            if hops != n.sent:
                n.sent = hops
                n.proto.send("FREE", "none" if hops is None else hops)

    # The shared files (files.py), as the rest of the peer reads them.

    @property
    def share(self) -> ShareIndex | None:
        return self.files.share

    @property
    def downloads(self) -> Path | None:
        return self.files.downloads

    @property
    def downloader(self) -> Downloader | None:
        return self.files.downloader

    @property
    def upload_slots(self) -> UploadSlots:
        return self.files.upload_slots

    @property
    def transfers(self) -> dict[object, tuple[str, int, int]]:
        return self.files.transfers

    def refresh_share(self) -> Deferred[None]:
        return self.files.refresh()

    async def fetch(self, name: str, *args: Any, **kwargs: Any) -> Fetched:
        return await self.files.fetch(name, *args, **kwargs)

    def local_matches(self, pattern: str, hops: int) -> list[Match]:
        if self.share is None or self.peer_name is None or self.port is None:
            return []
        host = self.host or "127.0.0.1"
        return [
            Match(f.name, f.size, f.sha256, self.peer_name, host, self.port, hops)
            for f in self.share.search(pattern)
        ]

    # What the control channel shows.

    def status(self) -> dict[str, object]:
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
            "neighbours": [
                {"name": n.name, "host": n.host, "port": n.port}
                for n in self.neighbours.values()
            ],
            "shared": [
                {"name": f.name, "size": f.size, "sha256": f.sha256}
                for f in (self.share.files.values() if self.share is not None else [])
            ],
            "transfers": [
                {"name": name, "done": done, "total": total}
                for name, done, total in sorted(self.transfers.values())
            ],
        }



def _rank(hops: int | None) -> float:
    return float("inf") if hops is None else hops


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no answer in time"
    if isinstance(e, RemoteError):
        return f"refused ({e.code}: {e.text})"
    return str(e) or type(e).__name__
