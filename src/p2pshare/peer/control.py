"""
The peer's local control channel, which the C{p2p} command speaks: the
same line format, one request and one C{OK <json>} or C{ERROR} reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pshare.channel import ChannelFactory, LineChannel
from p2pshare.wire import Message

if TYPE_CHECKING:
    from p2pshare.peer.node import PeerNode


class ControlProtocol(LineChannel):
    def __init__(self, node: PeerNode) -> None:
        super().__init__()
        self.node = node

    def msg_STATUS(self, msg: Message) -> None:
        self.send("OK", text=self.node.status_json())

    def msg_PING(self, msg: Message) -> None:
        self.send("PONG")


class ControlFactory(ChannelFactory):
    protocol = ControlProtocol
