"""
Reversed connections: fetching from a holder that nobody can dial (behind
NAT without a mapping), as Gnutella's PUSH and GIV do.

Such a holder's search matches give port 0.  A downloader that wants one
of its files asks it over the overlay to connect out (C{PUSH HOLDER TOKEN
TICKET}: flooded along the tree, each token passed on once); the ticket is
the downloader's own, signed by the metadata server, so the holder
connects only to an address the server reached, never to one a stranger
names.  The holder dials that address, says C{GIV TOKEN NAME} as its first
line and serves HTTP on the connection; the downloader's port sees the
C{GIV} (L{p2pshare.peer.http.Sniffer}), and the request that waits for
that token gets the connection.  Pieces are verified as from anyone.

In a URL, such a holder is C{HEX.reversed.invalid:0} (its name in hex):
the agent's endpoint factory sends those here (L{holder_of}).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocolFactory,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from p2pshare import wire
from p2pshare.common import OncePerMinute
from p2pshare.peer.download.fetch import why_failed
from p2pshare.peer.mapping import is_private
from p2pshare.relay import hand_over, same_host
from p2pshare.tickets import Ticket, TicketError

REVERSED = ".reversed.invalid"  # RFC 6761: never resolves
CONNECT_BACK = 15.0  # seconds a downloader waits for the holder to connect
MAX_WAITING = 64  # reversed connections a downloader waits for at once
MAX_GIVING = 16  # connections a holder is opening for pushes at once
SEEN = 4096  # push tokens remembered, so that each is passed on once
PUSH_RATE, PUSH_BURST = 10.0, 20.0  # PUSH lines taken from one link: a second, at once


def reversed_host(name: str) -> str:
    """
    The host a URL names an unreachable holder by.
    """
    return name.encode("utf-8").hex() + REVERSED


def holder_of(host: str) -> str | None:
    """
    The holder a L{reversed_host} names, or L{None} for any other host.
    """
    if not host.endswith(REVERSED):
        return None
    try:
        name = bytes.fromhex(host[: -len(REVERSED)]).decode("utf-8")
    except ValueError:
        return None
    return name if wire.is_name(name) else None


class NoWay(error.ConnectError):
    """
    No connection to a holder by this path; the text says why in a
    sentence (what a download shows of the holder).
    """

    def __init__(self, why: str) -> None:
        super().__init__(string=why)
        self.why = why

    def __str__(self) -> str:
        return self.why


class RelayBusy(NoWay):
    """
    Every relay asked splices as many transfers as it may: try later (not
    a fault of the holder).
    """


@implementer(IStreamClientEndpoint)
class _ReversedEndpoint:
    def __init__(self, reversals: Reversals, holder: str) -> None:
        self.reversals = reversals
        self.holder = holder

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        return self.reversals.ask(self.holder, factory)


@implementer(IHandshakeListener)
class _Giver(Protocol):
    """
    The holder's side: says C{GIV}, then the connection is the site's.
    Over TLS the site takes it once the handshake is done: an HTTP channel
    registers itself as the producer of its transport, and TLS pauses that
    producer while it holds back a write (our C{GIV}) for the handshake,
    which then never gets to read.
    """

    def __init__(
        self, line: bytes, site: Site, done: Callable[[], None], path: str, tls: Any = None
    ) -> None:
        self.line = line
        self.site = site
        self.done = done
        self.path = path
        self.tls = tls  # PeerTLS, for a relayed connection: TLS with the downloader itself
        self.early = b""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.line)
        self.done()
        if not ISSLTransport.providedBy(transport):
            self._serve()

    def handshakeCompleted(self) -> None:
        self._serve()

    def dataReceived(self, data: bytes) -> None:
        self.early += data  # before the handshake's end: nothing, in practice

    def _serve(self) -> None:
        transport: Any = self.transport
        tls = self.tls if self.path == "relayed" else None
        given, channel = _inside(self.site, tls, False, transport.getPeer())
        channel.transfer_path = self.path  # what p2p status says of its uploads
        hand_over(transport, given, self.early)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done()


def _inside(factory: Any, tls: Any, client: bool, peer: Any) -> tuple[Any, Any]:
    """
    C{factory}'s protocol for a relayed (or reversed) connection, and what
    to hand the connection to: that protocol, or with C{tls} (a private
    network's) a TLS session around it between the two ends themselves,
    so that a relay copies only what it cannot read.
    """
    if tls is None:
        proto = factory.buildProtocol(peer)
        return proto, proto
    sealed = TLSMemoryBIOFactory(tls.options(), client, factory).buildProtocol(peer)
    return sealed, sealed.wrappedProtocol


class _Splicing(Protocol):
    """
    The downloader's side at a relay: C{SPLICE TOKEN}, then the relay's
    C{SPLICED} (the holder is there: the connection is the download's) or
    C{ERROR} (why not).
    """

    def __init__(
        self, token: str, factory: IProtocolFactory, tls: Any = None, ticket: str = "-",
        from_holder: Callable[[str], bool] = lambda source: True,
        holder: tuple[str, str] = ("-", "-"),
    ) -> None:
        self.holder = holder  # the holder's name and where it registered from
        self.from_holder = from_holder  # is this where the holder is?
        self.token = token
        self.ticket = ticket  # ours: the relay splices for members only
        self.wanted = factory  # not .factory: the one that builds this sets that
        self.tls = tls  # PeerTLS: TLS with the holder itself, inside the spliced stream
        self.buffer = b""
        self.spliced: Deferred[Any] = Deferred(lambda d: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        holder, host = self.holder
        line = f"SPLICE {self.token} {self.ticket} {holder} {host}\r\n".encode("ascii")
        self.transport.write(line)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        line, newline, rest = self.buffer.partition(b"\n")
        if not newline:
            if len(self.buffer) > wire.MAX_LINE:
                self._abort()
            return
        said = line.rstrip(b"\r").split(b" ")
        if said[0] == b"SPLICED" and len(said) <= 2:
            source = said[1].decode("ascii", "replace") if len(said) == 2 else ""
            if not self.from_holder(source):
                self._abort()
                self.spliced.errback(NoWay(
                    f"the relay spliced a holder at {source}, not where the holder is (a member "
                    "answering another's push)"))
                return
            given, proto = _inside(self.wanted, self.tls, True, self.transport.getPeer())  # type: ignore[union-attr]
            hand_over(self.transport, given, rest)
            self.spliced.callback(proto)
            return
        text = line.decode("utf-8", "replace").rstrip("\r")
        words = text.split(" ", 2)
        why = words[2] if len(words) == 3 and words[0] == "ERROR" else f"the relay said {text!r}"
        self._abort()
        if not self.spliced.called:
            busy = words[:2] == ["ERROR", "busy"]
            self.spliced.errback(RelayBusy(why) if busy else NoWay(why))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.spliced.called:
            self.spliced.errback(NoWay("the relay closed the connection"))


class Reversals:
    """
    Both sides of reversed connections for one peer.
    """

    log = Logger()

    def __init__(self, node: Any, site: Site) -> None:
        self.node = node
        self.site = site
        self.clock: IReactorTime = node.clock
        # Downloads waiting for a holder to connect: token -> (holder, factory, fired).
        self._waiting: dict[str, tuple[str, IProtocolFactory, Deferred[Any]]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._hosts: OrderedDict[str, str] = OrderedDict()  # holder -> where it registered from
        self._giving = 0
        self._told = OncePerMinute()  # what was logged of dropped pushes
        # The network's TLS (PeerTLS), when it has one: a relayed connection
        # carries a second TLS session, between its two ends.
        self.tls: Any = None

    # The downloader's side.

    def endpoint(self, holder: str) -> IStreamClientEndpoint:
        return _ReversedEndpoint(self, holder)

    def ask(self, holder: str, factory: IProtocolFactory) -> Deferred[Any]:
        """
        Ask C{holder} to connect to us; fires with C{factory}'s protocol on
        that connection, or fails with a C{ConnectError} that says why.
        """
        ticket = self.node.ticket
        if ticket is None or not ticket.reachable:
            return Deferred.fromCoroutine(self._relayed(holder, factory))
        if len(self._waiting) >= MAX_WAITING:
            return fail(NoWay(f"{MAX_WAITING} reversed connections are being waited for already"))
        token = secrets.token_hex(16)

        def cancel(d: Deferred[Any]) -> None:
            self._waiting.pop(token, None)

        waiting: Deferred[Any] = Deferred(cancel)
        self._waiting[token] = (holder, factory, waiting)
        self._remember(token)
        self.node.flood(wire.Message("PUSH", (holder, token, ticket.field())))

        def late(f: Failure) -> Failure:
            if f.check(TimeoutError, error.TimeoutError, error.ConnectingCancelledError):
                raise NoWay(f"{holder} did not connect back within {CONNECT_BACK:.0f} s")
            return f

        waiting.addTimeout(CONNECT_BACK, self.clock)
        return waiting.addErrback(late)

    async def _relayed(self, holder: str, factory: IProtocolFactory) -> Any:
        """
        Neither we nor C{holder} can be dialled: through a relay the
        metadata server names (relay.py), the next one if one is busy.
        """
        node = self.node
        meta = node.meta
        if meta is None or node.tickets is None:
            raise NoWay(f"{holder} cannot be reached, nor can this peer, and the metadata server "
                "that names relays is away")
        try:
            answer = await meta.request("RELAY").addTimeout(CONNECT_BACK, self.clock)
        except CancelledError:
            raise  # the download stops
        except Exception as e:
            raise NoWay(f"{holder} cannot be reached, nor can this peer, and the metadata server "
                        f"named no relay ({e})") from None
        why = (f"{holder} cannot be reached, nor can this peer, and no relay is in the network "
               "(a reachable peer started with --relay)")
        busy = 0
        for field in answer.args:
            try:
                relay = node.tickets.check(field, self.clock.seconds())
            except TicketError:
                continue
            try:
                return await self._splice(relay, holder, factory)
            except CancelledError:
                raise  # the download stops
            except Exception as e:  # busy, refused, no answer: the next relay
                busy += isinstance(e, RelayBusy)
                why = f"the relay {relay.name} at {relay.host}:{relay.port}: {why_failed(e)}"
        raise RelayBusy(why) if busy and busy == len(answer.args) else NoWay(why)

    async def _splice(self, relay: Ticket, holder: str, factory: IProtocolFactory) -> Any:
        token = secrets.token_hex(16)
        ours = self.node.ticket
        splicing = _Splicing(token, factory, self.tls, ours.field() if ours is not None else "-",
                             lambda source: self.from_holder(holder, source),
                             (holder, self._hosts.get(holder, "-")))
        self._remember(token)
        connecting = self.node.connect_out(relay.host, relay.port).connect(
            Factory.forProtocol(lambda: splicing)
        )
        await connecting.addTimeout(CONNECT_BACK, self.clock)
        self.node.flood(wire.Message("PUSH", (holder, token, relay.field()), {"relay": "1"}))
        waiting = splicing.spliced
        waiting.addTimeout(CONNECT_BACK + 5, self.clock)
        try:
            return await waiting
        except (error.ConnectError, CancelledError):
            raise
        except Exception as e:  # the timeout: its cancel aborted the connection (_Splicing)
            raise NoWay(f"the relay {relay.name} did not splice {holder} in time ({e})") from None

    def arrived(self, token: str, name: str, transport: Any, buffered: bytes) -> bool:
        """
        A connection opened with C{GIV TOKEN NAME}: the holder we asked,
        if a download waits for that token from that holder, and it comes
        from where the holder is (every member sees the token go by).
        """
        waiting = self._waiting.get(token)
        if waiting is None or waiting[0] != name:
            return False
        if not self.from_holder(name, str(getattr(transport.getPeer(), "host", ""))):
            if self._told.due("giv", self.clock.seconds()):
                self.log.warn("a GIV for {name} came from {source}, not from where {name} is: "
                              "refused (a member answering another's push)", name=name,
                              source=transport.getPeer().host)
            return False
        del self._waiting[token]
        _, factory, fired = waiting
        proto = factory.buildProtocol(transport.getPeer())
        hand_over(transport, proto, buffered)
        fired.callback(proto)
        return True

    def holder_at(self, name: str, host: str) -> None:
        """
        The metadata server says C{name} (which nobody can dial) registered
        from C{host}: its reversed connections come from there.
        """
        self._hosts[name] = host
        self._hosts.move_to_end(name)
        if len(self._hosts) > SEEN:
            self._hosts.popitem(last=False)

    def knows(self, name: str) -> bool:
        return name in self._hosts

    def from_holder(self, name: str, source: str) -> bool:
        """
        Is C{source} where C{name}'s connections may come from: the address
        it registered from, or (a holder on our own LAN) a private one?
        """
        return same_host(source, self._hosts.get(name)) or is_private(source)

    # Passing pushes on, and the holder's side.

    def _remember(self, token: str) -> bool:
        if token in self._seen:
            return False
        self._seen[token] = None
        if len(self._seen) > SEEN:
            self._seen.popitem(last=False)
        return True

    def pushed(self, source: str | None, msg: wire.Message) -> None:
        """
        C{PUSH HOLDER TOKEN TICKET} from the neighbour C{source}: ours to
        answer, or passed on to every other neighbour, each token once.
        """
        holder, token, ticket = msg.args
        if not self._remember(token):
            return
        if holder != self.node.peer_name:
            self.node.flood(msg, source)
            return
        self._give(token, ticket, "relayed" if msg.options.get("relay") == "1" else "reversed")

    def _give(self, token: str, field: str, path: str = "reversed") -> None:
        node = self.node
        if node.tickets is None:
            return  # we cannot tell a real ticket yet
        try:
            ticket = node.tickets.check(field, self.clock.seconds())
        except TicketError as e:
            if self._told.due("ticket", self.clock.seconds()):
                self.log.info("a push with a ticket that does not hold was dropped ({why})", why=e)
            return
        if not ticket.reachable:
            return
        if self._giving >= MAX_GIVING:
            if self._told.due(ticket.name, self.clock.seconds()):
                self.log.info("pushes from {name} dropped: {n} reversed connections are opening "
                              "already", name=ticket.name, n=MAX_GIVING)
            return
        self._giving += 1
        ended = False

        def done() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self._giving -= 1

        line = f"GIV {token} {node.peer_name}\r\n".encode("ascii")
        connecting = node.connect_out(ticket.host, ticket.port).connect(
            Factory.forProtocol(lambda: _Giver(line, self.site, done, path, self.tls))
        )
        connecting.addTimeout(CONNECT_BACK, self.clock)

        def failed(f: Failure) -> None:
            done()
            self.log.info("could not connect to {name} at {host}:{port} for it to download "
                          "({why})", name=ticket.name, host=ticket.host, port=ticket.port,
                          why=f.getErrorMessage())

        connecting.addErrback(failed)

