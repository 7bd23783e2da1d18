"""
The hostile-peer harness: a scripted participant that speaks the wire
protocol to real processes, as a stranger on the LAN or a member that lies
would, and a few listeners that count what reaches a victim.

A L{Participant} registers with the metadata server (answering its
dial-back from a port of its own, or not), asks for a place, follows
referrals with its ticket, and, once some peer has accepted it as a
neighbour, answers searches as its test says (forged results, silence).
Everything runs on the test's reactor; every wait is bounded.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from p2pshare import wire
from p2pshare.admission import META_IDENTITY, Secret
from p2pshare.channel import LineChannel
from p2pshare.wire import Match, Message

WAIT = 20.0  # seconds any one step may take


class _Link(LineChannel):
    """
    One connection of the participant's (to the metadata server or a peer).
    """

    def __init__(self, who: Participant, expect: tuple[str, str]) -> None:
        super().__init__()
        self.who = who
        self.expect = expect
        self.secret = who.secret
        self.heard: list[Message] = []

    def identity(self) -> tuple[str, str]:
        return ("peer", self.who.name or "-")

    def messageReceived(self, msg: Message) -> None:
        self.heard.append(msg)
        super().messageReceived(msg)

    def msg_TICKET(self, msg: Message) -> None:
        self.who.ticket = msg.args[0]
        waiters, self.who._ticket_waiters = self.who._ticket_waiters, []
        for d in waiters:
            d.callback(msg.args[0])

    def msg_PING(self, msg: Message) -> None:
        self.send("PONG")

    def msg_SEARCH(self, msg: Message) -> None:
        self.who.searches.append(msg)
        matches = self.who.on_search(msg)
        if matches is None:
            return  # silent
        for line in wire.split_list("RESULTS", (msg.args[0],), [m.field() for m in matches]):
            self.sendMessage(line)

    def msg_FREE(self, msg: Message) -> None:
        pass

    def msg_UP(self, msg: Message) -> None:
        pass

    def msg_COMPLETE(self, msg: Message) -> None:
        pass

    def msg_REJOIN(self, msg: Message) -> None:
        pass


class _Answers(LineChannel):
    """
    The participant's own port: it answers the metadata server's dial-back
    (when it should), and counts every connection.  An HTTP request is
    handed to the participant's C{on_http}, if any.
    """

    def __init__(self, who: Participant) -> None:
        super().__init__()
        self.who = who
        self.secret = who.secret

    def identity(self) -> tuple[str, str]:
        return ("peer", self.who.name or "-")

    def connectionMade(self) -> None:
        self.who.dialled += 1
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self.who.on_http is not None and data[:4] in (b"GET ", b"HEAD"):
            self.who.on_http(self.transport, data)
            return
        super().dataReceived(data)

    def msg_VERIFY(self, msg: Message) -> None:
        from p2pshare.tickets import answer

        if self.who.answers_checks and self.who.nonce:
            self.send("VERIFIED", answer(self.who.nonce, msg.args[0], msg.args[1]))
        self.close()


class Participant:
    """
    A scripted participant of a network whose metadata server listens on
    127.0.0.1:C{meta_port}.

    @ivar on_search: what to answer each SEARCH with (a list of Matches,
        or None to stay silent); nothing by default.
    @ivar dialled: connections that reached our port.
    """

    def __init__(
        self, reactor: Any, meta_port: int, source: str = "127.0.0.1",
        secret: Secret | None = None, tls: Any = None,
    ) -> None:
        self.reactor = reactor
        self.meta_port = meta_port
        self.source = source
        self.secret = secret
        self.tls = tls  # a PeerTLS, in a private network (tls.network_tls)
        self.name: str | None = None
        self.ticket: str | None = None
        self.nonce: str | None = None
        self.port = 0
        self.answers_checks = True
        self.dialled = 0
        self.searches: list[Message] = []
        self.on_search: Callable[[Message], list[Match] | None] = lambda msg: []
        self.on_http: Callable[[Any, bytes], None] | None = None
        self.meta: _Link | None = None
        self.links: list[_Link] = []
        self._ticket_waiters: list[Deferred[str]] = []
        self._listening: Any = None

    def _client(self, host: str, port: int) -> Any:
        endpoint = TCP4ClientEndpoint(self.reactor, host, port, timeout=10,
                                      bindAddress=(self.source, 0))
        return self.tls.client(endpoint) if self.tls is not None else endpoint

    async def listen(self) -> int:
        """
        Open our own port (on our source address), which answers the
        metadata server's dial-back.
        """
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface=self.source)
        if self.tls is not None:
            from p2pshare.tls import TLSServerEndpoint

            endpoint = TLSServerEndpoint(endpoint, self.tls, self.reactor)
        factory = Factory.forProtocol(lambda: _Answers(self))
        self._listening = await endpoint.listen(factory)
        self.port = self._listening.getHost().port
        return self.port

    async def register(self, **options: Any) -> Message:
        """
        Say P2P (with a fresh check nonce unless C{check=None} is given)
        and return the reply.
        """
        self.meta = await connectProtocol(
            self._client("127.0.0.1", self.meta_port), _Link(self, META_IDENTITY)
        ).addTimeout(WAIT, self.reactor)
        await self.meta.whenAdmitted().addTimeout(WAIT, self.reactor)
        if "check" not in options:
            options["check"] = self.nonce = os.urandom(16).hex()
        options.setdefault("port", self.port)
        reply = await self.meta.request("P2P", answers={"WELCOME"}, **options).addTimeout(
            WAIT, self.reactor
        )
        if reply.verb == "WELCOME":
            self.name = reply.args[0]
        return reply

    async def ticketed(self) -> str:
        """
        Our ticket, once the metadata server has checked our address.
        """
        if self.ticket is not None:
            return self.ticket
        d: Deferred[str] = Deferred()
        self._ticket_waiters.append(d)
        return await d.addTimeout(WAIT, self.reactor)

    async def ask(self, verb: str, *args: Any, **options: Any) -> Message:
        assert self.meta is not None
        return await self.meta.request(verb, *args, **options).addTimeout(WAIT, self.reactor)

    async def hello(
        self, host: str, port: int, name: str, as_name: str | None = None, **options: Any
    ) -> tuple[Message, _Link]:
        """
        Connect to a peer and say HELLO (as C{as_name}, by default the name
        we registered and prove a secret under): its answer, and the link.
        """
        link = await connectProtocol(
            self._client(host, port), _Link(self, ("peer", name))
        ).addTimeout(WAIT, self.reactor)
        await link.whenAdmitted().addTimeout(WAIT, self.reactor)
        options.setdefault("beat", 5000)
        reply = await link.request(
            "HELLO", as_name or self.name, self.port, answers={"ACCEPT", "REFER"}, **options
        ).addTimeout(WAIT, self.reactor)
        self.links.append(link)
        return reply, link

    async def join(self) -> tuple[list[tuple[str, str, int]], str]:
        """
        Ask for a place and follow the referrals with our ticket until some
        peer accepts us: every referral on the way, and who accepted.
        """
        ticket = await self.ticketed()
        reply = await self.ask("PLACE")
        if reply.verb != "REFER":
            raise AssertionError(f"PLACE answered {reply}")
        chain = [(reply.args[0], reply.args[1], int(reply.args[2]))]
        for _ in range(64):
            name, host, port = chain[-1]
            answered, link = await self.hello(host, port, name, ticket=ticket)
            if answered.verb == "ACCEPT":
                parent = answered.args[0]
                self.meta.send("NEIGHBOURS", parent, up=parent)  # as a peer reports its link
                return chain, parent
            link.close()
            if answered.verb != "REFER":
                raise AssertionError(f"{name} answered {answered}")
            chain.append((answered.args[0], answered.args[1], int(answered.args[2])))
        raise AssertionError("no peer accepted us")

    def close(self) -> None:
        for link in [self.meta, *self.links]:
            if link is not None:
                link.abort()
        if self._listening is not None:
            self._listening.stopListening()


class Victim(Protocol):
    """
    An address somebody wants to flood: it accepts and counts.
    """


class VictimPort:
    """
    A listener on 127.0.0.1 that counts the connections it gets and
    closes them (an address a forged result points at).
    """

    def __init__(self) -> None:
        self.count = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def take(self) -> int:
        """
        Accept (and close) whatever has arrived; the count so far.
        """
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.count
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def forged(holder: str, host: str, port: int, n: int, name: str = "x.bin",
           sha256: str | None = None, size: int = 1 << 20) -> list[Match]:
    """
    C{n} matches of files nobody has, all at C{host}:C{port}: each with a
    piece root of its own (or all with C{sha256}, another's content).
    """
    return [
        Match(name, size, sha256 or os.urandom(32).hex(), holder, host, port, 0,
              os.urandom(32).hex())
        for _ in range(n)
    ]


async def bounded(d: Deferred[Any], reactor: Any, seconds: float = WAIT) -> Any:
    try:
        return await d.addTimeout(seconds, reactor)
    except TimeoutError:
        raise AssertionError(f"nothing happened within {seconds} s") from None


class Relay:
    """
    A man in the middle on 127.0.0.1: it passes bytes between whoever
    connects to it and C{port}, keeps a copy of everything, and can cut
    the first side off and speak on the second itself.
    """

    def __init__(self, port: int) -> None:
        import threading

        self.target = port
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.seen = bytearray()  # both directions, while it relays
        self.after = bytearray()  # what the far side says once the member is cut off
        self.upstream: socket.socket | None = None
        self.member: socket.socket | None = None
        self.cut = False
        self.closed = threading.Event()  # the far side closed

    def start(self) -> None:
        import threading

        def serve() -> None:
            try:
                self.member, _ = self.server.accept()
            except OSError:
                return
            self.upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(self.member, self.upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(self.upstream, self.member, True),
                             daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, far: bool) -> None:
        while True:
            try:
                data = a.recv(65536)
            except OSError:
                data = b""
            if not data:
                if far:
                    self.closed.set()
                return
            if self.cut:
                if far:
                    self.after += data
                continue
            self.seen += data
            try:
                b.sendall(data)
            except OSError:
                pass

    def speak(self, data: bytes, timeout: float = 10.0) -> bytes:
        """
        Cut the member off, say C{data} on the far connection, and return
        what the far side says until it closes (at most C{timeout} s).
        """
        self.cut = True
        assert self.upstream is not None and self.member is not None
        self.member.close()
        try:
            self.upstream.sendall(data)
        except OSError:
            pass
        self.closed.wait(timeout)
        return bytes(self.after)

    def close(self) -> None:
        self.cut = True
        for sock in (self.server, self.upstream, self.member):
            if sock is not None:
                sock.close()
