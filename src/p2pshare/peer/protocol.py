"""
The peer's line protocols: L{PeerProtocol} on overlay links (both the
accepting and the connecting side) and L{MetaClientProtocol} on the link to
the metadata server.  They parse and dispatch; L{PeerNode} decides.
"""

from __future__ import annotations

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pshare import wire
from p2pshare.admission import META_IDENTITY
from p2pshare.channel import ChannelFactory, LineChannel
from p2pshare.peer.interfaces import ILink, IOverlay
from p2pshare.peer.reversal import PUSH_BURST, PUSH_RATE
from p2pshare.peer.search import FORWARD_BURST, FORWARD_RATE, TokenBucket
from p2pshare.wire import Message, RemoteError


@implementer(ILink)
class PeerProtocol(LineChannel):
    """
    One connection between two peers.  It starts as a newcomer's C{HELLO}
    and becomes an overlay link (L{link} is the other peer's name) once the
    newcomer is accepted.
    """

    def __init__(self, node: IOverlay) -> None:
        super().__init__(node.clock)
        self.node = node
        self.secret = node.secret
        self.link: str | None = None
        self.beat: float | None = None  # the link's agreed heartbeat, once it is a link
        self.search_allowance = TokenBucket()
        self.forward_allowance = TokenBucket(FORWARD_RATE, FORWARD_BURST)
        self.searches_refused = 0
        self.push_allowance = TokenBucket(PUSH_RATE, PUSH_BURST)

    def identity(self) -> tuple[str, str]:
        return ("peer", self.node.peer_name or "-")

    def idle_deadline(self) -> float | None:
        return None if self.link is not None else super().idle_deadline()  # links: heartbeats

    def msg_HELLO(self, msg: Message) -> None:
        if self.link is not None:
            self.sendError(wire.E_UNEXPECTED, "this link is already made")
            return
        self.node.hello(self, msg)

    def msg_VERIFY(self, msg: Message) -> None:
        if self.link is not None:
            self.sendError(wire.E_UNEXPECTED, "VERIFY is for the metadata server's dial-back")
            return
        self.node.verify(self, msg)

    def msg_FREE(self, msg: Message) -> None:
        if self.link is None:
            self.sendError(wire.E_UNEXPECTED, "FREE is for overlay links")
            return
        hops = msg.args[0]
        self.node.free_said(self.link, None if hops == "none" else int(hops))

    def msg_SEARCH(self, msg: Message) -> None:
        if self.link is None:
            self.sendError(wire.E_UNEXPECTED, "SEARCH is for overlay links")
            return
        self.node.search.received(self, msg)

    def msg_RESULTS(self, msg: Message) -> None:
        if self.link is None:
            self.sendError(wire.E_UNEXPECTED, "RESULTS is for overlay links")
            return
        self.node.search.results(self, msg)

    def msg_WORKING(self, msg: Message) -> None:
        if self.link is None:
            self.sendError(wire.E_UNEXPECTED, "WORKING is for overlay links")
            return
        self.node.search.working(self, msg)

    def msg_PUSH(self, msg: Message) -> None:
        if self.link is None:
            self.sendError(wire.E_UNEXPECTED, "PUSH is for overlay links")
            return
        if self.push_allowance.take(self.node.clock.seconds()):
            self.node.reversals.pushed(self.link, msg)  # over the allowance: dropped

    def msg_UP(self, msg: Message) -> None:
        if self.link is not None:
            self.node.up_said(self.link, msg.args)

    def msg_BYE(self, msg: Message) -> None:
        if self.link is not None:
            self.node.goodbye_said(self.link, self)
        self.close()  # the other peer leaves; connectionLost does the rest

    def sendMessage(self, msg: Message) -> None:
        super().sendMessage(msg)
        self.node.messages[msg.verb] += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.link is not None:
            self.node.link_lost(self.link, self)
        super().connectionLost(reason)


class PeerFactory(ChannelFactory):
    protocol = PeerProtocol

class MetaClientProtocol(LineChannel):
    """
    The peer's side of its registration link to the metadata server.
    """

    link = None

    def __init__(self, node: IOverlay) -> None:
        super().__init__(node.clock)
        self.node = node
        self.secret = node.secret

    def identity(self) -> tuple[str, str]:
        return ("peer", self.node.peer_name or "-")

    def linkMade(self) -> None:
        d = self.request("P2P", answers={"WELCOME"}, **self.node.registration())
        d.addCallbacks(self._welcomed, self._refused)
        d.addErrback(lambda f: self.log.failure("registering with the metadata server failed", f))

    def _welcomed(self, msg: Message) -> None:
        self.node.meta_welcomed(self, msg)

    def _refused(self, failure: Failure) -> None:
        if failure.check(RemoteError):
            self.node.meta_refused(failure.value)
            self.close()
        # A lost connection is retried by the ClientService.

    def msg_REJOIN(self, msg: Message) -> None:
        self.node.meta_says_rejoin()

    def msg_TICKET(self, msg: Message) -> None:
        self.node.meta_ticket(msg.args[0])

    def msg_COMPLETE(self, msg: Message) -> None:
        self.node.meta_said_complete(int(msg.args[0]))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.node.meta_lost(self)
        super().connectionLost(reason)


class MetaClientFactory(ChannelFactory):
    protocol = MetaClientProtocol

    def __init__(self, node: IOverlay) -> None:
        super().__init__(node, expect=META_IDENTITY)
