"""
A whole network in one process, for tests and benchmarks: fake endpoints
joined by L{twisted.test.iosim} transports and pumped with one L{Clock}.

Each role gets endpoints from a L{SimNet} instead of the reactor's, and the
real protocol code runs unchanged.  Nothing here touches a real socket.
"""

from __future__ import annotations

import random
from bisect import insort
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionAborted, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from p2pshare.admission import Secret
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaFactory, MetaServer
from p2pshare.peer.node import PeerNode, PeerSettings
from p2pshare.topo import distances, parse_topo


class _Port:
    def __init__(self, net: SimNet, address: IPv4Address) -> None:
        self.net = net
        self.address = address

    def getHost(self) -> IPv4Address:
        return self.address

    def stopListening(self) -> Deferred[None]:
        self.net.listeners.pop((self.address.host, self.address.port), None)
        return succeed(None)


@implementer(IStreamServerEndpoint)
class ServerEndpoint:
    def __init__(self, net: SimNet, host: str, port: int) -> None:
        self.net, self.host, self.port = net, host, port

    def listen(self, factory: IProtocolFactory) -> Deferred[Any]:  # a _Port: no whole IListeningPort
        port = self.port or self.net.free_port()
        self.net.listeners[(self.host, port)] = factory
        return succeed(_Port(self.net, IPv4Address("TCP", self.host, port)))


@implementer(IStreamClientEndpoint)
class ClientEndpoint:
    def __init__(self, net: SimNet, source: str, host: str, port: int) -> None:
        self.net, self.source, self.host, self.port = net, source, host, port

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        listener = self.net.listeners.get((self.host, self.port))
        if listener is None or {self.host, self.source} & self.net.down:
            return fail(ConnectionRefusedError(f"{self.host}:{self.port}"))
        server_addr = IPv4Address("TCP", self.host, self.port)
        client_addr = IPv4Address("TCP", self.source, self.net.free_port())
        # The factories here always build a protocol (none refuses with None).
        server = cast(IProtocol, listener.buildProtocol(client_addr))
        client = cast(IProtocol, factory.buildProtocol(server_addr))
        server_io = _Transport(self.net, server, True, server_addr, client_addr)
        client_io = _Transport(self.net, client, False, client_addr, server_addr)
        pump = iosim.IOPump(client, server, client_io, server_io, False, self.net.clock)
        server_io.pump = client_io.pump = pump
        self.net.pumps.append(pump)
        server.makeConnection(server_io)
        client.makeConnection(client_io)
        return succeed(client)


def _time(call: DelayedCall) -> float:
    return call.time


class SortedClock(Clock):
    """
    A L{Clock} that keeps its calls in order as they are made, brought
    forward or cancelled, instead of sorting them all at every L{advance}:
    the pumps advance the clock once per message, and with thousands of
    peers (each with its timers) that sorting cost more than the protocol.

    The calls are ordered by C{time}; a call pushed later (C{reset} or
    C{delay} to a later time only records C{delayed_time}, as in the real
    reactor) is put in its true place when it reaches the head.  A call
    cancelled stays where it is until it reaches the head, or until the
    cancelled are half the list (removing each at once cost a scan of the
    list: a search of 10,000 peers cancels 20,000 timers).
    """

    _dead = 0  # cancelled calls still in the list

    def callLater(  # type: ignore[override]
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> DelayedCall:
        call = DelayedCall(
            self.seconds() + delay, callable, args, kw, self._cancelled, self._moved,
            seconds=self.seconds,
        )
        insort(self.calls, call, key=_time)
        return call

    def _cancelled(self, call: DelayedCall) -> None:
        self._dead += 1  # (it says it is cancelled once this returns)
        if self._dead > 64 and 2 * self._dead > len(self.calls):
            self._compact(call)

    def _compact(self, going: DelayedCall | None = None) -> None:
        self.calls = [c for c in self.calls if not c.cancelled and c is not going]
        self._dead = 0

    def _moved(self, call: DelayedCall) -> None:
        self.calls.remove(call)
        insort(self.calls, call, key=_time)

    def _head(self) -> None:
        while self.calls:
            first = self.calls[0]
            if first.cancelled:
                self.calls.pop(0)
                self._dead -= 1
            elif first.delayed_time:
                self.calls.pop(0)
                first.activate_delay()
                insort(self.calls, first, key=_time)
            else:
                return

    def next_call(self) -> DelayedCall | None:
        """
        The call due first, if any (what L{SimNet.idle} reads).
        """
        self._head()
        return self.calls[0] if self.calls else None

    def getDelayedCalls(self) -> list[DelayedCall]:  # type: ignore[override]
        if self._dead:
            self._compact()
        self._head()
        return self.calls

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        while True:
            self._head()
            if not self.calls or self.calls[0].getTime() > self.seconds():
                return
            call = self.calls.pop(0)
            call.called = 1
            call.func(*call.args, **call.kw)


class _Transport(iosim.FakeTransport):
    """
    An iosim transport that tells its network when it has something to
    deliver, so that a flush pumps only the busy connections.
    """

    def __init__(self, net: SimNet, *args: object) -> None:
        super().__init__(*args)
        self.net = net
        self.pump: iosim.IOPump | None = None

    def _busy(self) -> None:
        if self.pump is not None:
            self.net.busy(self.pump)

    def write(self, data: bytes) -> None:
        super().write(data)
        self._busy()

    def loseConnection(self) -> None:
        super().loseConnection()
        self._busy()

    def abortConnection(self) -> None:
        super().abortConnection()
        self._busy()


class SimNet:
    """
    Hosts 127.0.1.x talking through in-memory pipes.
    """

    def __init__(self, tmp: Path | None, seed: int = 0, secret: Secret | None = None) -> None:
        self.clock = SortedClock()
        self.secret = secret  # the network's, given to the meta and to peers by default
        self.tmp = tmp
        self.rng = random.Random(seed)
        self.listeners: dict[tuple[str, int], IProtocolFactory] = {}
        # Connections with bytes or a close to deliver, in order.
        self.active: dict[iosim.IOPump, None] = {}
        self.down: set[str] = set()
        # Seconds each hop takes (0: delivered at the next flush).
        self.latency = 0.0
        self._in_flight: set[iosim.IOPump] = set()
        self.frozen: set[str] = set()
        self.parked: dict[iosim.IOPump, None] = {}
        self.pumps: list[iosim.IOPump] = []  # every connection made
        self._closed_here: set[_Transport] = set()  # ends closed while frozen
        self._port = 40000
        self.meta: MetaServer | None = None
        self.peers: list[PeerNode] = []
        self._unjoined: set[PeerNode] = set()  # peers not in the overlay (now)

    def busy(self, pump: iosim.IOPump) -> None:
        """
        C{pump} has bytes or a close to deliver: at the next flush, or
        L{latency} seconds from now.
        """
        if not self.latency:
            self.active[pump] = None
        elif pump not in self._in_flight:
            self._in_flight.add(pump)
            self.clock.callLater(self.latency, self._arrived, pump)

    def _arrived(self, pump: iosim.IOPump) -> None:
        # Delivered by the next flush (L{idle} flushes after every call):
        # flushing here would nest, since a pump advances the clock too.
        self._in_flight.discard(pump)
        self.active[pump] = None

    def free_port(self) -> int:
        self._port += 1
        return self._port

    def start_meta(self, expect: int = 5, host: str = "127.0.0.1", port: int = 5000) -> MetaServer:
        data = None
        if self.tmp is not None:
            data = self.tmp / "meta"
            data.mkdir(exist_ok=True)
        self.meta = MetaServer(
            Registry(":memory:"), self.clock, data_dir=data, expect=expect, secret=self.secret,
            connect=lambda h, p: ClientEndpoint(self, host, h, p),
        )
        self.meta.startService()
        ServerEndpoint(self, host, port).listen(MetaFactory(self.meta))
        self.meta_address = (host, port)
        return self.meta

    def make_peer(
        self,
        max_neighbours: int = 2,
        name: str | None = None,
        shared: bool = True,
        stranger: bool = False,
        own_secret: Secret | None = None,
        heartbeat: float = 5.0,
    ) -> PeerNode:
        """
        A peer holding the network's secret, or (C{stranger}) C{own_secret}.
        """
        i = len(self.peers)  # hosts 127.0.1.1 ... 127.0.1.250, then 127.0.2.1 ...
        host = f"127.0.1.{i + 1}" if i < 250 else f"127.0.{2 + (i - 250) // 250}.{(i - 250) % 250 + 1}"
        node = PeerNode(
            clock=self.clock,
            listen=ServerEndpoint(self, host, 6000),
            meta=ClientEndpoint(self, host, *self.meta_address),
            connect=lambda h, p: ClientEndpoint(self, host, h, p),
            settings=PeerSettings(
                name=name,
                max_neighbours=max_neighbours,
                shared=self.share_dir(len(self.peers)) if shared and self.tmp else None,
                state_dir=self.share_dir(len(self.peers)).parent if self.tmp else None,
                heartbeat=heartbeat,
            ),
            rng=random.Random(self.rng.random()),
            secret=own_secret if stranger else self.secret,
        )
        self.peers.append(node)
        self._unjoined.add(node)
        fire = node.membership.fire

        def fired(input: str) -> bool:
            moved = fire(input)
            (self._unjoined.discard if node.joined else self._unjoined.add)(node)
            return moved

        node.membership.fire = fired  # type: ignore[method-assign]
        return node

    def share_dir(self, index: int) -> Path:
        assert self.tmp is not None
        path = self.tmp / "peers" / str(index) / "shared"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def crash(self, node: PeerNode) -> None:
        """
        The peer's process dies: its connections are reset (both ends learn
        at once, as the kernel tells them), it says no goodbye, and it does
        nothing more.
        """
        port = node._listening  # the network takes it down, below
        node.vanish()  # its jobs and its link end with it, without a goodbye
        host = getattr(port.getHost(), "host", None) if port else None
        if host is None:
            return
        self.down.add(host)
        self.pumps = [p for p in self.pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
        for pump in self.pumps:
            ends = (pump.clientIO.hostAddress, pump.serverIO.hostAddress)
            if any(getattr(a, "host", None) == host for a in ends):
                pump.clientIO.abortConnection()
                self.active[pump] = None

    def freeze(self, host: str) -> None:
        """
        C{host} goes silent: nothing it sends or is sent is delivered, and
        its connections stay open (a hung process, not a crash).
        """
        self.frozen.add(host)

    def thaw(self, host: str) -> None:
        """
        C{host} answers again.  A connection closed at one end meanwhile
        is gone: the other end now learns it (as from a reset).
        """
        self.frozen.discard(host)
        parked, self.parked = self.parked, {}
        for pump in parked:
            if not self._finish_closed(pump):
                self.active[pump] = None

    def _finish_closed(self, pump: iosim.IOPump) -> bool:
        """
        If one end of C{pump} was closed while frozen, the connection is
        gone: tell the other end (as a reset would) and never pump it again.
        """
        ends = (pump.clientIO, pump.serverIO)
        if not any(io in self._closed_here for io in ends):
            return False
        for io in ends:
            io.disconnecting = io.disconnected = True
            if io not in self._closed_here:
                self._closed_here.add(io)
                io.protocol.connectionLost(Failure(ConnectionLost()))
        return True

    def _is_frozen(self, pump: iosim.IOPump) -> bool:
        ends = (pump.clientIO.hostAddress, pump.serverIO.hostAddress)
        return any(getattr(a, "host", None) in self.frozen for a in ends)

    def flush(self, limit: int = 10_000_000) -> None:
        """
        Move bytes until no connection has anything left to say.
        """
        for _ in range(limit):
            if not self.active:
                return
            pump = next(iter(self.active))
            del self.active[pump]
            if self._is_frozen(pump):
                # Nothing crosses, but a side that closes its own end
                # (a heartbeat giving up) learns of it at once, as with
                # a real socket.
                for io in (pump.clientIO, pump.serverIO):
                    if io.disconnecting and io not in self._closed_here:
                        self._closed_here.add(io)
                        io.protocol.connectionLost(Failure(ConnectionAborted()))
                self.parked[pump] = None
            elif self._finish_closed(pump):
                continue
            elif pump.pump() and not self.latency:
                self.active[pump] = None
        raise AssertionError("the network never went quiet")

    def settle(self, seconds: float = 60.0, step: float = 0.5) -> None:
        """
        Pump and advance the clock for up to C{seconds} of simulated time,
        stopping early once everything is quiet, every peer has joined and
        the metadata server has flushed what it learnt.
        """
        elapsed = 0.0
        while True:
            self.flush()
            if not self._unjoined:
                pending = self.meta.pending_flush() if self.meta is not None else None
                if pending is None:
                    return
                self.clock.advance(max(0.0, pending - self.clock.seconds()))
                continue
            if elapsed >= seconds:
                return
            self.clock.advance(step)
            elapsed += step

    def idle(self, seconds: float) -> None:
        """
        Let C{seconds} of simulated time pass, delivering every message as
        soon as it is sent, from one pending call to the next.
        """
        end = self.clock.seconds() + seconds
        while True:
            self.flush()
            first = self.clock.next_call()
            if first is None:
                self.clock.advance(end - self.clock.seconds())
                return
            at = first.getTime()
            if at > end:
                self.clock.advance(end - self.clock.seconds())
                return
            self.clock.advance(at - self.clock.seconds())

    @classmethod
    def grown(
        cls, tmp: Path | None, n: int, max_neighbours: int = 2, seed: int = 0,
        seconds: float = 120.0,
    ) -> SimNet:
        """
        A network of C{n} peers, started at once, that have all joined.
        """
        net = cls(tmp, seed=seed)
        net.start_meta(expect=n)
        for _ in range(n):
            net.make_peer(max_neighbours).startService()
        net.settle(seconds=seconds)
        assert all(p.joined for p in net.peers), "not every peer joined"
        return net

    # What the tests check.

    def views(self) -> dict[str, list[str]]:
        views = {}
        for p in self.peers:
            if p.peer_name is not None:
                views[p.peer_name] = list(p.neighbours)
        return views

    def topo_file(self) -> dict[str, list[str]]:
        assert self.meta is not None and self.meta.data_dir is not None
        text = (self.meta.data_dir / "topo.txt").read_text()
        return {e.name: e.neighbours for e in parse_topo(text)}


def assert_tree(views: dict[str, list[str]], limits: dict[str, int]) -> None:
    """
    C{views} (name -> neighbours) is one tree: symmetric, connected,
    acyclic, and nobody above its limit.
    """
    edges = set()
    for name, neighbours in views.items():
        assert len(neighbours) <= limits[name], f"{name} has {len(neighbours)} neighbours"
        assert len(set(neighbours)) == len(neighbours), f"{name} lists a neighbour twice"
        for n in neighbours:
            assert n in views, f"{name} names unknown neighbour {n}"
            assert name in views[n], f"{name}-{n} is not symmetric"
            edges.add(frozenset((name, n)))
    assert len(edges) == len(views) - 1, f"{len(edges)} links for {len(views)} peers: not a tree"
    seen = set(distances(views, next(iter(views))))
    assert seen == set(views), f"not connected: {sorted(set(views) - seen)[:5]} unreachable"
