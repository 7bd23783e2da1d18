"""
L{LineChannel}: a L{LineReceiver} that speaks the wire format of
L{p2pshare.wire}, shared by the metadata server, the peers and the control
channel.

It frames and parses and dispatches, and nothing else: C{msg_VERB} methods
of a subclass get each L{Message}; every line that does not parse is
answered with C{ERROR}; an over-long line is answered and the connection
closed (L{LineReceiver} alone would drop it silently).  Replies that a
client waits for are delivered through L{LineChannel.request}, in order.

In a private network (a L{Secret}), every connection starts with the
challenge-response of L{p2pshare.admission}; until both sides have proved
they hold the secret, nothing else is read or said, and a side that fails
is told C{ERROR} and cut off.  C{linkMade} is where a role starts talking.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.admission import Secret, new_nonce
from p2pshare.common import LimitedFactory
from p2pshare.tls import is_tls_hello, tls_failure
from p2pshare.wire import Message, RemoteError, WireError

MAX_BAD_LINES = 10  # bad lines on one connection before it is cut
ADMISSION_TIMEOUT = 10.0  # seconds to prove membership of a private network
FIRST_LINE_TIMEOUT = 30.0  # seconds an accepted connection has to say its first line
IDLE_TIMEOUT = 30.0  # seconds it may then stay silent (unless a heartbeat watches it)


class ChannelFactory(Factory):
    """
    Builds C{self.protocol(owner)} for each connection: the owner is the
    service that decides (L{MetaServer}, L{PeerNode}).  A factory that
    connects says whom it means to reach (C{expect}: role and name), which
    a private network's handshake checks.
    """

    noisy = False
    protocol: Callable[[Any], LineChannel]  # type: ignore[assignment]

    def __init__(self, owner: Any, expect: tuple[str, str] | None = None) -> None:
        self.owner = owner
        self.expect = expect

    def buildProtocol(self, addr: object) -> LineChannel:
        proto = self.protocol(self.owner)
        proto.factory = self
        proto.expect = self.expect
        return proto


class LineChannel(LineReceiver, TimeoutMixin):
    """
    One connection speaking the p2pshare line protocol.

    A connection we accepted must complete its first line within
    L{FIRST_LINE_TIMEOUT} seconds and may then stay silent for
    L{idle_deadline} seconds (restarted by every well-formed line, never
    by bytes alone); then it is aborted.  Roles whose links a heartbeat
    watches turn the idle deadline off.

    @cvar pushed: verbs that arrive unasked and go to C{msg_VERB} even while
        a request waits for its reply.
    @ivar secret: the network secret, or L{None} in an open network.
    @ivar expect: on a side that connected, the role and name it meant to
        reach; L{None} on a side that accepted.
    """

    log = Logger()
    # LF ends a line; a CR before it is stripped, so CRLF and a bare LF from
    # a plain `nc` both work.  MAX_LENGTH counts the CR, not the LF.
    delimiter = b"\n"
    MAX_LENGTH = wire.MAX_LINE - 1
    pushed: frozenset[str] = frozenset()
    secret: Secret | None = None
    expect: tuple[str, str] | None = None
    engaged = False  # has said something well-formed (idle ones are evicted first)
    _heard_bytes = False  # anything at all arrived yet (set on the instance then)

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self._waiting: deque[Deferred[Message]] = deque()
        self._admitted = False
        self._producing = False  # registered as a producer on our transport
        self._admission_waiters: list[Deferred[LineChannel]] = []
        self._admission_timer: IDelayedCall | None = None
        self._initiator: tuple[str, str, str] | None = None  # role, name, nonce
        self._responder: tuple[str, str, str] | None = None
        # When this side last heard and said anything (for heartbeats).
        self.clock = clock
        self.bad_lines = 0
        self.heard_at = self.said_at = clock.seconds() if clock is not None else 0.0

    # Sending.

    def send(self, verb: str, *args: object, text: str | None = None, **options: Any) -> None:
        """
        Send one message; raises L{WireError} before anything is written if
        a field is not allowed on the wire.
        """
        self.sendMessage(wire.message(verb, *args, text=text, **options))

    def close(self) -> None:
        """
        Close after what was written has been sent.
        """
        if self.transport is not None:
            # A paused producer would keep a closing transport open once its
            # buffer drained (it resumes us instead of closing): unregister.
            transport: Any = self.transport
            if self._producing:
                self._producing = False
                transport.unregisterProducer()
            transport.loseConnection()

    def abort(self) -> None:
        """
        Close at once (a peer that does not answer may never read).
        """
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

    def sendMessage(self, msg: Message) -> None:
        data = wire.encode(msg)
        if self.transport is not None:
            self.transport.write(data)
            if self.clock is not None:
                self.said_at = self.clock.seconds()

    def sendError(self, code: str, text: str) -> None:
        self.sendMessage(wire.error(code, text))

    def request(
        self, verb: str, *args: object, text: str | None = None, **options: Any
    ) -> Deferred[Message]:
        """
        Send a message and return a L{Deferred} that fires with the next
        message that is not pushed, or fails with L{RemoteError} if that is
        an C{ERROR}.  The caller bounds the wait (C{addTimeout}).
        """
        d: Deferred[Message] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        try:
            self.send(verb, *args, text=text, **options)
        except BaseException:
            self._waiting.remove(d)  # nothing was sent: nothing will answer
            raise
        return d

    # Admission.

    def identity(self) -> tuple[str, str]:
        """
        This side's role and name, as the handshake states them.
        """
        return ("client", "-")

    @property
    def admitted(self) -> bool:
        return self._admitted or self.secret is None

    def proved(self) -> tuple[str, str] | None:
        """
        In a private network, the role and name the other side proved it
        holds the secret under; L{None} in an open one.
        """
        if self.secret is None or not self._admitted:
            return None
        other = self._responder if self.expect is not None else self._initiator
        return (other[0], other[1]) if other is not None else None

    def linkMade(self) -> None:
        """
        The connection is made and, in a private network, both sides have
        proved they are members: a role starts talking here.
        """

    def whenAdmitted(self) -> Deferred[LineChannel]:
        """
        A L{Deferred} that fires with this channel once admitted, or fails
        with L{RemoteError} (refused) or the reason the connection was lost.
        """
        d: Deferred[LineChannel] = Deferred()
        if self.admitted:
            d.callback(self)
        else:
            self._admission_waiters.append(d)
        return d

    def _watchBackPressure(self) -> None:
        """
        When what we write piles up because the other side does not read
        it, the transport pauses us (L{LineReceiver} is a producer), which
        stops reading from that side until it drains: nobody can make us
        buffer without bound by not listening.  Done once the first line
        has arrived, not at connection: a TLS transport pauses its producer
        while its handshake is unfinished, and a paused reader would never
        finish it.
        """
        transport: Any = self.transport
        if (
            transport is not None
            and not getattr(transport, "disconnecting", False)
            and getattr(transport, "producer", None) is None
        ):
            transport.registerProducer(self, True)
            self._producing = True

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        assert self.clock is not None
        return self.clock.callLater(period, func)

    def idle_deadline(self) -> float | None:
        """
        How long this connection may stay silent now (L{None}: for ever,
        something else watches it).
        """
        return IDLE_TIMEOUT

    def timeoutConnection(self) -> None:
        self.log.info("closing {peer}: silent for too long", peer=self._peerText())
        self.abort()  # loseConnection can hang on a peer that does not read

    def _watched(self) -> bool:
        """
        Do deadlines apply: a connection we accepted, with a clock.
        """
        return self.expect is None and self.clock is not None

    def connectionMade(self) -> None:
        if self._watched():
            self.setTimeout(FIRST_LINE_TIMEOUT)
        if self.secret is None:
            self._admit()
            return
        if self.clock is not None:
            self._admission_timer = self.clock.callLater(ADMISSION_TIMEOUT, self._admissionTimedOut)
        if self.expect is not None:
            self._initiator = (*self.identity(), new_nonce())
            self.send("AUTH", *self._initiator)

    def _admission(self, msg: Message) -> None:
        secret = self.secret
        assert secret is not None
        if msg.verb == "ERROR":
            self._refusedBy(msg.args[0], msg.text or "")
        elif self.expect is None:
            # We accepted: hear the claim, challenge it, check the proof,
            # and only then prove ourselves.
            if msg.verb == "AUTH" and self._initiator is None:
                role, name, nonce = msg.args
                self._initiator = (role, name, nonce)
                self._responder = (*self.identity(), new_nonce())
                self.send("CHALLENGE", self._responder[2])
            elif msg.verb == "PROOF" and self._initiator and self._responder:
                if secret.check_proof(msg.args[0], "initiator", self._initiator, self._responder):
                    self.send("PROOF", secret.proof("responder", self._initiator, self._responder))
                    self._admit()
                else:
                    self._refuse(
                        wire.E_AUTH_FAILED,
                        "that proof does not fit: a wrong network secret, a replayed "
                        "exchange, or meant for another peer",
                    )
            else:
                self._refuse(
                    wire.E_AUTH_REQUIRED, "this network is private: AUTH with its secret first"
                )
        elif msg.verb == "CHALLENGE" and self._initiator and self._responder is None:
            self._responder = (*self.expect, msg.args[0])
            self.send("PROOF", secret.proof("initiator", self._initiator, self._responder))
        elif msg.verb == "PROOF" and self._initiator and self._responder:
            if secret.check_proof(msg.args[0], "responder", self._initiator, self._responder):
                self._admit()
            else:
                self._refuse(
                    wire.E_AUTH_FAILED,
                    f"{self.expect[1]} did not prove it holds this network's secret",
                )
        else:
            self._refuse(wire.E_AUTH_REQUIRED, "expected the private network's CHALLENGE")

    def _admit(self) -> None:
        self._admitted = True
        if self._admission_timer is not None and self._admission_timer.active():
            self._admission_timer.cancel()
        if self.secret is not None:
            self.log.debug("{peer} proved it holds the network secret", peer=self._peerText())
        self.linkMade()
        waiters, self._admission_waiters = self._admission_waiters, []
        for d in waiters:
            d.callback(self)

    def _refuse(self, code: str, text: str) -> None:
        """
        The other side did not prove membership: say so, log it, cut.
        """
        self.log.warn("refused {peer}: {text}", peer=self._peerText(), text=text)
        self.sendError(code, text)
        self._notAdmitted(RemoteError(code, text))

    def _refusedBy(self, code: str, text: str) -> None:
        self.log.warn(
            "{peer} refused us: {code} {text}", peer=self._peerText(), code=code, text=text
        )
        self._notAdmitted(RemoteError(code, text))

    def _admissionTimedOut(self) -> None:
        self.log.warn("{peer} did not finish the handshake in time", peer=self._peerText())
        self._notAdmitted(RemoteError(wire.E_AUTH_REQUIRED, "the handshake took too long"))
        self.abort()

    def _notAdmitted(self, error: Exception) -> None:
        waiters, self._admission_waiters = self._admission_waiters, []
        for d in waiters:
            d.errback(error)
        self.close()

    def msg_AUTH(self, msg: Message) -> None:
        self.sendError(wire.E_UNEXPECTED, "this network is open: it has no secret")

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
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not self._producing:
            self._watchBackPressure()
        if self.clock is not None:
            self.heard_at = self.clock.seconds()
        try:
            msg = wire.decode(line)
        except WireError as e:
            if e.code == wire.E_TOO_LONG:
                self.lineLengthExceeded(line)  # a bare LF ended it just past the limit
            elif not self.admitted:
                self._refuse(wire.E_AUTH_REQUIRED, "this network is private: AUTH with its secret first")
            else:
                self.badLine(e)
            return
        if not self.admitted:
            self._admission(msg)
            return
        self.engaged = True
        self.messageReceived(msg)
        if self._watched() and self.connected:
            self.setTimeout(self.idle_deadline())

    def badLine(self, error: WireError) -> None:
        """
        A line did not parse: say so.  The connection stays open.
        """
        self.log.info(
            "bad line from {peer}: {code} {text}",
            peer=self._peerText(),
            code=error.code,
            text=error.text,
        )
        self.sendError(error.code, error.text)
        self.bad_lines += 1
        if self.bad_lines >= MAX_BAD_LINES:
            self.misbehaved(f"{self.bad_lines} bad lines")

    def misbehaved(self, why: str) -> None:
        """
        The other side keeps breaking the rules: close; and if the port
        counts connections and this host's connections keep misbehaving,
        refuse the host for a cooling-off period.
        """
        limits = getattr(self.transport, "factory", None)
        refused = isinstance(limits, LimitedFactory) and limits.misbehaved(
            self.peerHost() or "local"
        )
        self.log.info("closing {peer}: {why}", peer=self._peerText(), why=why)
        if refused:
            self.sendError(wire.E_COOLING_OFF, f"{why}; your host is refused for a while")
        else:
            self.sendError(wire.E_COOLING_OFF, f"{why}; this connection is closed")
        self.close()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.info("over-long line from {peer}, closing", peer=self._peerText())
        self.sendError(wire.E_TOO_LONG, f"lines are at most {wire.MAX_LINE} bytes")
        self.close()

    def messageReceived(self, msg: Message) -> None:
        if self._waiting and msg.verb not in self.pushed:
            d = self._waiting.popleft()
            if msg.verb == "ERROR":
                d.errback(RemoteError(msg.args[0], msg.text or ""))
            else:
                d.callback(msg)
            return
        handler = getattr(self, "msg_" + msg.verb, None)
        if handler is None:
            self.sendError(wire.E_UNEXPECTED, f"{msg.verb} is not expected here")
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

    def msg_PING(self, msg: Message) -> None:
        self.send("PONG")  # every role answers a liveness probe

    def msg_PONG(self, msg: Message) -> None:
        pass  # hearing it is the point (heard_at)

    def msg_ERROR(self, msg: Message) -> None:
        # An ERROR nobody waits for is logged, never answered (no loops).
        self.log.info(
            "{peer} says ERROR {code} {text}",
            peer=self._peerText(),
            code=msg.args[0],
            text=msg.text,
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        was_connected, self.connected = self.connected, False
        failed = tls_failure(reason)
        if failed is not None and was_connected:
            self.log.warn("TLS with {peer} failed: {why}", peer=self._peerText(), why=failed)
        if self._admission_timer is not None and self._admission_timer.active():
            self._admission_timer.cancel()
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(reason)
        admitting, self._admission_waiters = self._admission_waiters, []
        for d2 in admitting:
            d2.errback(reason)

    def _peerText(self) -> str:
        if self.transport is None:
            return "?"
        peer: Any = self.transport.getPeer()
        host = getattr(peer, "host", None)
        return f"{host}:{peer.port}" if host is not None else str(peer)
