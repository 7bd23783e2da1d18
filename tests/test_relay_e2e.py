"""
In a private network a relay copies what it cannot read: a downloader and
a holder that both dialled a relay speak TLS with each other inside the
spliced stream.  One process, real sockets on 127.0.0.1, the network's TLS
made from a secret: the relay's port (a Sniffer behind TLS, as a peer's
port is), the holder's side (L{_Giver}) and the downloader's
(L{_Splicing}) as the peer runs them.  Every byte the relay copies is
kept and searched for the request and the file.
"""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from p2pshare import relay as relay_module
from p2pshare.admission import Secret
from p2pshare.peer.http import SniffingFactory
from p2pshare.peer.reversal import _Giver, _Splicing
from p2pshare.tickets import TicketChecker, TicketSigner
from p2pshare.tls import TLSServerEndpoint, network_tls


class Reader(Protocol):
    """
    The downloader's HTTP client, as simple as can be: one request, the
    whole answer kept.
    """

    def __init__(self) -> None:
        self.got = b""
        self.ended: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /files/secret.txt HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.got += data

    def connectionLost(self, reason: object = None) -> None:
        self.ended.callback(self.got)


@pytest_twisted.ensureDeferred
async def test_a_relay_in_a_private_network_copies_only_what_it_cannot_read(reactor, tmp_path):
    secret = Secret(os.urandom(32))
    tls = network_tls(secret, (), tmp_path / "tls")
    copied: list[bytes] = []

    class Spying(relay_module._Half):
        def dataReceived(self, data: bytes) -> None:
            copied.append(data)
            super().dataReceived(data)

    relay_module_half = relay_module._Half
    relay_module._Half = Spying  # the relay keeps what it copies
    try:
        signer = TicketSigner()
        relay = relay_module.Relay(reactor)
        relay.check = TicketChecker(signer.public).check  # members only
        shown = signer.issue("d1", "127.0.0.1", 1, "127.0.0.1", False, reactor.seconds()).field()
        port = await TLSServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), tls, reactor
        ).listen(SniffingFactory(None, None, None, relay))
        where = port.getHost().port
        content = b"the plans, in plain words " * 100
        root = Resource()
        files = Resource()
        root.putChild(b"files", files)
        files.putChild(b"secret.txt", Data(content, "text/plain"))
        site = Site(root)
        token = "ab" * 16
        # The downloader comes first and waits at the relay.
        reader = Reader()
        splicing = _Splicing(token, Factory.forProtocol(lambda: reader), tls, shown)
        await tls.client(TCP4ClientEndpoint(reactor, "127.0.0.1", where)).connect(
            Factory.forProtocol(lambda: splicing))
        # The holder dials the relay, says GIV, and serves.
        giver = _Giver(f"GIV {token} h1\r\n".encode(), site, lambda: None, "relayed", tls)
        await tls.client(TCP4ClientEndpoint(reactor, "127.0.0.1", where)).connect(
            Factory.forProtocol(lambda: giver))
        await splicing.spliced
        answer = await reader.ended
        await port.stopListening()
    finally:
        relay_module._Half = relay_module_half
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(content)
    seen = b"".join(copied)
    assert len(seen) > len(content)  # the whole exchange went through the relay
    assert b"GET /files" not in seen and b"plans" not in seen and b"HTTP/1.1" not in seen
