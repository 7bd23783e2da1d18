"""
L{LineChannel}: a L{LineReceiver} that speaks the wire format of
L{p2pshare.wire}, shared by the metadata server, the peers and the control
channel.

It frames, parses and dispatches: each well-formed message is a reply to
a request that declared its verb (L{LineChannel.request}) or goes to the
C{msg_VERB} method of a subclass; anything else is answered with
C{ERROR}, and an over-long line is answered and the connection closed
(L{LineReceiver} alone would drop it silently).  What every connection
must also do is in parts of its own, each tested alone
(C{tests/test_channel.py}):

  - L{Admission} (C{channel_admission.py}): in a private network, nothing
    is read or said until both sides have proved they hold the secret;
  - L{SilenceDeadline} (C{channel_deadlines.py}): how long an accepted
    connection may stay silent;
  - L{ReplyMatcher} (C{channel_replies.py}): which request a message answers;
  - L{BackPressure} (C{channel_flow.py}): no reading while our writing piles up;
  - L{Conduct} (C{channel_conduct.py}): a connection that keeps breaking
    the rules is cut, and its host cools off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.admission import Secret
from p2pshare.channel_admission import Admission
from p2pshare.channel_conduct import Conduct
from p2pshare.channel_deadlines import IDLE_TIMEOUT, SilenceDeadline
from p2pshare.channel_flow import BackPressure
from p2pshare.channel_replies import ReplyMatcher
from p2pshare.common import LimitedFactory
from p2pshare.tls import is_tls_hello, tls_failure
from p2pshare.wire import Message, RemoteError, WireError


class ChannelFactory(Factory):
    """
    Builds C{self.protocol(owner)} for each connection: the owner is the
    service that decides (L{MetaServer}, L{PeerNode}).  A factory that
    connects says whom it means to reach (C{expect}: role and name), which
    a private network's handshake checks.
    """

    noisy = False
    protocol: Callable[[Any], LineChannel]

    def __init__(self, owner: Any, expect: tuple[str, str] | None = None) -> None:
        self.owner = owner
        self.expect = expect

    def buildProtocol(self, addr: object) -> LineChannel:
        proto = self.protocol(self.owner)
        proto.factory = self
        proto.expect = self.expect
        return proto


class LineChannel(LineReceiver):
    """
    One connection speaking the p2pshare line protocol.

    @ivar secret: the network secret, or L{None} in an open network.
    @ivar expect: on a side that connected, the role and name it meant to
        reach; L{None} on a side that accepted.
    @ivar replies: the requests waiting for their replies.
    @ivar heard_at: when this side last heard a line (for heartbeats).
    @ivar said_at: when it last said one.
    """

    log = Logger()
    # LF ends a line; a CR before it is stripped, so CRLF and a bare LF from
    # a plain `nc` both work.  MAX_LENGTH counts the CR, not the LF.
    delimiter = b"\n"
    MAX_LENGTH = wire.MAX_LINE - 1
    secret: Secret | None = None
    expect: tuple[str, str] | None = None
    closing = False  # close() or abort() was called: nothing more is sent
    engaged = False  # has said something well-formed (idle ones are evicted first)
    _heard_bytes = False  # anything at all arrived yet (set on the instance then)

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self.clock = clock
        self.heard_at = self.said_at = clock.seconds() if clock is not None else 0.0
        self.replies = ReplyMatcher()
        self.admission = Admission(self, clock)
        self.silence = SilenceDeadline(clock, self.timeoutConnection)
        self.back_pressure = BackPressure(self)
        self.conduct = Conduct(self.sendError, self.close, self._strike, self._peerText)

    # Sending.

    def send(self, verb: str, *args: object, text: str | None = None, **options: Any) -> None:
        """
        Send one message; raises L{WireError} before anything is written if
        a field is not allowed on the wire.
        """
        self.sendMessage(wire.message(verb, *args, text=text, **options))

    def sendMessage(self, msg: Message) -> None:
        data = wire.encode(msg)
        if self.closing:
            # A closing transport still sends what is written to it; an
            # answer that comes after the goodbye (a search forwarded before
            # the cut) would follow the last word.
            return
        if self.transport is not None:
            self.transport.write(data)
            if self.clock is not None:
                self.said_at = self.clock.seconds()

    def sendError(self, code: str, text: str) -> None:
        self.sendMessage(wire.error(code, text))

    def request(
        self,
        verb: str,
        *args: object,
        answers: Iterable[str] | None = None,
        text: str | None = None,
        **options: Any,
    ) -> Deferred[Message]:
        """
        Send a request and return a L{Deferred} that fires with its reply:
        the first message (after those that answer earlier requests) whose
        verb is one of C{answers}, by default those the protocol answers
        C{verb} with (L{p2pshare.channel_replies.REPLIES}); or fails with
        L{RemoteError} if an C{ERROR} answers it.  The caller bounds the
        wait (C{addTimeout}); a reply that comes after is dropped.
        """
        d = self.replies.expect(verb, answers)
        try:
            self.send(verb, *args, text=text, **options)
        except BaseException:
            self.replies.forget(d)  # nothing was sent: nothing will answer
            raise
        return d

    def close(self) -> None:
        """
        Close after what was written has been sent; nothing written after
        this is sent.
        """
        self.closing = True
        if self.transport is not None:
            self.back_pressure.release(self.transport)
            self.transport.loseConnection()

    def abort(self) -> None:
        """
        Close at once (a peer that does not answer may never read).
        """
        self.closing = True
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def peerHost(self) -> str | None:
        """
        The IP address of the other side, or L{None} on a non-IP transport.
        """
        if self.transport is None:
            return None
        host = getattr(self.transport.getPeer(), "host", None)
        return host if isinstance(host, str) else None

    # Admission and deadlines.

    def identity(self) -> tuple[str, str]:
        """
        This side's role and name, as the handshake states them.
        """
        return ("client", "-")

    @property
    def admitted(self) -> bool:
        return self.secret is None or self.admission.done

    def proved(self) -> tuple[str, str] | None:
        """
        In a private network, the role and name the other side proved it
        holds the secret under; L{None} in an open one.
        """
        return self.admission.proved()

    def whenAdmitted(self) -> Deferred[LineChannel]:
        """
        A L{Deferred} that fires with this channel once admitted, or fails
        with L{RemoteError} (refused) or the reason the connection was lost.
        """
        if self.admitted:
            return succeed(self)
        return self.admission.when().addCallback(lambda _: self)

    def linkMade(self) -> None:
        """
        The connection is made and, in a private network, both sides have
        proved they are members: a role starts talking here.
        """

    def idle_deadline(self) -> float | None:
        """
        How long this connection may stay silent now (L{None}: for ever,
        something else watches it).
        """
        return IDLE_TIMEOUT

    def connectionMade(self) -> None:
        self.silence.start(accepted=self.expect is None)
        self.admission.start(self.secret, self.expect)

    def handshakeDone(self) -> None:
        if self.secret is not None:
            self.log.debug("{peer} proved it holds the network secret", peer=self._peerText())
        self.linkMade()

    def handshakeRefused(self, error: RemoteError, ours: bool) -> None:
        if ours:
            self.log.warn("refused {peer}: {text}", peer=self._peerText(), text=error.text)
        else:
            self.log.warn("{peer} refused us: {code} {text}", peer=self._peerText(),
                          code=error.code, text=error.text)
        self.close()

    def handshakeTimedOut(self, error: RemoteError) -> None:
        self.log.warn("{peer} did not finish the handshake in time", peer=self._peerText())
        self.close()
        self.abort()

    def timeoutConnection(self) -> None:
        self.log.info("closing {peer}: silent for too long", peer=self._peerText())
        self.abort()  # loseConnection can hang on a peer that does not read

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        if not self._heard_bytes and data:
            self._heard_bytes = True
            if is_tls_hello(data):
                # A member of a TLS network (or a private one) at this
                # plain port: the two cannot talk; say so where it shows.
                self.log.warn(
                    "refused {peer}: it speaks TLS, and this side does not use TLS (a network "
                    "secret or certificates one side has and the other has not)",
                    peer=self._peerText(),
                )
                self.abort()
                return
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        self.back_pressure.watch(self.transport)
        if self.clock is not None:
            self.heard_at = self.clock.seconds()
        try:
            msg = wire.decode(line)
        except WireError as e:
            if e.code == wire.E_TOO_LONG:
                self.lineLengthExceeded(line)  # a bare LF ended it just past the limit
            elif not self.admitted:
                self.admission.unreadable()
            else:
                self.badLine(e)
            return
        if not self.admitted:
            self.admission.received(msg)
            return
        self.engaged = True
        self.messageReceived(msg)
        if self.connected:
            self.silence.heard(self.idle_deadline())

    def messageReceived(self, msg: Message) -> None:
        """
        A reply goes to its request, any other message to C{msg_VERB}; one
        that is neither is refused as unexpected, a bad line like any other.
        """
        if self.replies.match(msg):
            return
        handler = getattr(self, "msg_" + msg.verb, None)
        if handler is None:
            self.badLine(WireError(wire.E_UNEXPECTED, f"{msg.verb} is not expected here"))
            return
        try:
            handler(msg)
        except WireError as e:
            self.badLine(e)  # well-formed, but a field cannot be used (a name that is not UTF-8)
        except Exception:
            # A fault of ours: this line gets an ERROR, and the connection,
            # and everybody else's, goes on.
            self.log.failure("handling {verb} from {peer} failed", verb=msg.verb,
                             peer=self._peerText())
            self.sendError(wire.E_FAILED, f"{msg.verb} could not be handled here")

    def badLine(self, error: WireError) -> None:
        """
        A line did not parse, or was not expected: say so.  The connection
        stays open, up to L{p2pshare.channel_conduct.MAX_BAD_LINES}.
        """
        self.log.info("bad line from {peer}: {code} {text}", peer=self._peerText(),
                      code=error.code, text=error.text)
        self.conduct.fault(error.code, error.text)

    def misbehaved(self, why: str) -> None:
        """
        The other side keeps breaking the rules: close; and if the port
        counts connections and this host's connections keep misbehaving,
        refuse the host for a cooling-off period.
        """
        self.conduct.misbehaved(why)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.info("over-long line from {peer}, closing", peer=self._peerText())
        self.sendError(wire.E_TOO_LONG, f"lines are at most {wire.MAX_LINE} bytes")
        self.close()

    def msg_AUTH(self, msg: Message) -> None:
        self.sendError(wire.E_UNEXPECTED, "this network is open: it has no secret")

    def msg_PING(self, msg: Message) -> None:
        self.send("PONG")  # every role answers a liveness probe

    def msg_PONG(self, msg: Message) -> None:
        pass  # hearing it is the point (heard_at)

    def msg_ERROR(self, msg: Message) -> None:
        # An ERROR that answers no request is logged, never answered (no loops).
        self.log.info("{peer} says ERROR {code} {text}", peer=self._peerText(),
                      code=msg.args[0], text=msg.text)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.silence.stop()
        was_connected, self.connected = self.connected, False
        failed = tls_failure(reason)
        if failed is not None and was_connected:
            self.log.warn("TLS with {peer} failed: {why}", peer=self._peerText(), why=failed)
        self.replies.fail(reason)
        self.admission.lost(reason)

    def _strike(self) -> bool:
        """
        Count this connection's misbehaviour against its host, if the port
        counts connections: is the host now refused for a while?
        """
        limits = getattr(self.transport, "factory", None)
        return isinstance(limits, LimitedFactory) and limits.misbehaved(self.peerHost() or "local")

    def _peerText(self) -> str:
        if self.transport is None:
            return "?"
        peer: Any = self.transport.getPeer()
        host = getattr(peer, "host", None)
        return f"{host}:{peer.port}" if host is not None else str(peer)
