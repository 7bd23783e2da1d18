"""
The metadata server's observer session, for C{p2p topo}: on Twisted,
since a private network's handshake comes first.  The peer's control
channel has a plain client of its own (L{p2pshare.control_client}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import clientFromString, connectProtocol

from p2pshare.admission import META_IDENTITY, Secret
from p2pshare.channel import LineChannel
from p2pshare.common import client_endpoint_string
from p2pshare.control_client import NotAMetaServer
from p2pshare.topo import TopoEntry
from p2pshare.wire import Message, WireError

TIMEOUT = 10.0


class _Client(LineChannel):
    """
    An observer: C{P2P} (answered C{OK}), then C{TOPO}, whose C{PEER}
    lines L{msg_PEER} collects until C{END} answers it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[TopoEntry] = []
        self._continued = False  # the last PEER line said more=1

    def badLine(self, error: WireError) -> None:
        # Something that is not our protocol at all (an HTTP server's
        # answer, say): whoever waits for a reply learns so at once.
        self._mismatch(NotAMetaServer("something else (it does not speak p2pshare)"))

    def _mismatch(self, error: Exception) -> None:
        self.replies.fail(error)
        self.abort()

    def msg_PEER(self, msg: Message) -> None:
        name, host, port, *neighbours = msg.args
        if self._continued and self.entries and self.entries[-1].name == name:
            self.entries[-1].neighbours.extend(neighbours)
        else:
            self.entries.append(TopoEntry(name, neighbours, host, int(port)))
        self._continued = "more" in msg.options


async def _connect(
    reactor: Any,
    description: str,
    secret: Secret | None = None,
    expect: tuple[str, str] | None = None,
) -> _Client:
    description = client_endpoint_string(description)
    endpoint = clientFromString(reactor, description)
    if secret is not None and description.split(":", 1)[0] not in ("tls", "ssl"):
        # A private network is mutual TLS, with an identity made from the secret.
        from p2pshare.tls import network_tls

        endpoint = network_tls(secret).client(endpoint)
    proto = _Client()
    proto.secret, proto.expect = secret, expect
    await connectProtocol(endpoint, proto).addTimeout(TIMEOUT, reactor)
    await proto.whenAdmitted().addTimeout(TIMEOUT, reactor)
    return proto


async def meta_topology(
    reactor: Any, description: str, secret: Secret | None = None
) -> list[TopoEntry]:
    """
    Ask a metadata server for every peer and its neighbours (proving
    membership first in a private network).
    """
    proto = await _connect(reactor, description, secret=secret, expect=META_IDENTITY)
    try:
        await proto.request("P2P", answers={"OK"}).addTimeout(TIMEOUT, reactor)
        await proto.request("TOPO", answers={"END"}).addTimeout(TIMEOUT, reactor)
        return proto.entries
    finally:
        proto.close()
