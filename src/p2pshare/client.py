"""
Clients of the line protocols, for the C{p2p} command: the peer's control
channel and the metadata server's observer session.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.endpoints import clientFromString, connectProtocol

from p2pshare.channel import LineChannel
from p2pshare.common import client_endpoint_string
from p2pshare.topo import TopoEntry
from p2pshare.wire import Message

TIMEOUT = 10.0


class _Client(LineChannel):
    pushed = frozenset({"PEER"})

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[TopoEntry] = []

    def msg_PEER(self, msg: Message) -> None:
        name, host, port, *neighbours = msg.args
        self.entries.append(TopoEntry(name, neighbours, host, int(port)))


async def _connect(reactor: Any, description: str) -> _Client:
    endpoint = clientFromString(reactor, client_endpoint_string(description))
    return await connectProtocol(endpoint, _Client()).addTimeout(TIMEOUT, reactor)


async def control_request(reactor: Any, description: str, verb: str) -> Any:
    """
    Send C{verb} to a peer's control channel; return the decoded JSON of
    its C{OK} reply.
    """
    proto = await _connect(reactor, description)
    try:
        reply = await proto.request(verb).addTimeout(TIMEOUT, reactor)
        return json.loads(reply.text or "null")
    finally:
        proto.close()


async def meta_topology(reactor: Any, description: str) -> list[TopoEntry]:
    """
    Ask a metadata server for every peer and its neighbours.
    """
    proto = await _connect(reactor, description)
    try:
        await proto.request("P2P").addTimeout(TIMEOUT, reactor)
        await proto.request("TOPO").addTimeout(TIMEOUT, reactor)
        return proto.entries
    finally:
        proto.close()
