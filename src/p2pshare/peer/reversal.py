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

import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from p2pshare import wire
from p2pshare.tickets import TicketError

REVERSED = ".reversed.invalid"  # RFC 6761: never resolves
CONNECT_BACK = 15.0  # seconds a downloader waits for the holder to connect
MAX_WAITING = 64  # reversed connections a downloader waits for at once
MAX_GIVING = 16  # connections a holder is opening for pushes at once
SEEN = 4096  # push tokens remembered, so that each is passed on once
GIV = re.compile(rb"GIV ([0-9a-f]{32,128}) ([A-Za-z0-9_.@-]{1,64})\r?")


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


def hand_over(transport: Any, proto: Any, buffered: bytes = b"") -> None:
    """
    Give an open connection to C{proto}, with what was read already.
    """
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = proto  # a LimitedFactory's count, or TLS
    else:
        transport.protocol = proto
    proto.makeConnection(transport)
    if buffered:
        proto.dataReceived(buffered)


@implementer(IStreamClientEndpoint)
class _ReversedEndpoint:
    def __init__(self, reversals: Reversals, holder: str) -> None:
        self.reversals = reversals
        self.holder = holder

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        return self.reversals.ask(self.holder, factory)


class _Giver(Protocol):
    """
    The holder's side: says C{GIV}, then the connection is the site's.
    """

    def __init__(self, line: bytes, site: Site, done: Callable[[], None]) -> None:
        self.line = line
        self.site = site
        self.done = done

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.line)
        self.done()
        channel: Any = self.site.buildProtocol(transport.getPeer())
        channel.transfer_path = "reversed"  # what p2p status says of its uploads
        hand_over(transport, channel)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done()


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
        self._giving = 0

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
            return fail(error.ConnectError(
                string=f"{holder} cannot be reached, and the metadata server cannot reach this "
                "peer either: the two need a relay"))
        if len(self._waiting) >= MAX_WAITING:
            return fail(error.ConnectError(
                string=f"{MAX_WAITING} reversed connections are being waited for already"))
        token = secrets.token_hex(16)

        def cancel(d: Deferred[Any]) -> None:
            self._waiting.pop(token, None)

        waiting: Deferred[Any] = Deferred(cancel)
        self._waiting[token] = (holder, factory, waiting)
        self._remember(token)
        self.node.flood(wire.Message("PUSH", (holder, token, ticket.field())))

        def late(f: Failure) -> Failure:
            if f.check(error.TimeoutError, error.ConnectingCancelledError) or (
                type(f.value).__name__ == "TimeoutError"
            ):
                raise error.ConnectError(
                    string=f"{holder} did not connect back within {CONNECT_BACK:.0f} s")
            return f

        waiting.addTimeout(CONNECT_BACK, self.clock)
        return waiting.addErrback(late)

    def arrived(self, token: str, name: str, transport: Any, buffered: bytes) -> bool:
        """
        A connection opened with C{GIV TOKEN NAME}: the holder we asked,
        if a download waits for that token from that holder.
        """
        waiting = self._waiting.get(token)
        if waiting is None or waiting[0] != name:
            return False
        del self._waiting[token]
        _, factory, fired = waiting
        proto = factory.buildProtocol(transport.getPeer())
        hand_over(transport, proto, buffered)
        fired.callback(proto)
        return True

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
        self._give(token, ticket)

    def _give(self, token: str, field: str) -> None:
        node = self.node
        if node.tickets is None:
            return  # we cannot tell a real ticket yet
        try:
            ticket = node.tickets.check(field, self.clock.seconds())
        except TicketError as e:
            self.log.info("a push with a ticket that does not hold was dropped ({why})", why=e)
            return
        if not ticket.reachable:
            return
        if self._giving >= MAX_GIVING:
            self.log.info("a push from {name} waits: {n} reversed connections are opening",
                          name=ticket.name, n=MAX_GIVING)
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
            Factory.forProtocol(lambda: _Giver(line, self.site, done))
        )
        connecting.addTimeout(CONNECT_BACK, self.clock)

        def failed(f: Failure) -> None:
            done()
            self.log.info("could not connect to {name} at {host}:{port} for it to download "
                          "({why})", name=ticket.name, host=ticket.host, port=ticket.port,
                          why=f.getErrorMessage())

        connecting.addErrback(failed)
