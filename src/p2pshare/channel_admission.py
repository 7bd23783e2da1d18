"""
L{Admission}: may this connection talk yet?

In an open network, at once.  In a private one (a L{Secret}), only once
both sides have proved they hold the secret by the challenge-response of
L{p2pshare.admission}; until then nothing else is read or said, and a side
that fails is told C{ERROR} and cut off.  This is the one phase every
role's connections share, kept apart so that it can be driven line by
line against a fake host and a L{Clock}.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.admission import Secret, new_nonce
from p2pshare.channel_deadlines import Deadline
from p2pshare.wire import Message, RemoteError

ADMISSION_TIMEOUT = 10.0  # seconds to prove membership of a private network

Party = tuple[str, str, str]  # role, name, nonce


class AdmissionHost(Protocol):
    """
    What L{Admission} needs of its connection: who we are, a way to speak,
    and the three ways the phase ends.
    """

    def identity(self) -> tuple[str, str]: ...

    def sendMessage(self, msg: Message) -> None: ...

    def handshakeDone(self) -> None:
        """Admitted: the role may start talking."""

    def handshakeRefused(self, error: RemoteError, ours: bool) -> None:
        """
        Not admitted: we refused the other side (C{ours}; it has been told
        C{error}) or it refused us.  The connection should close.
        """

    def handshakeTimedOut(self, error: RemoteError) -> None:
        """Not admitted in L{ADMISSION_TIMEOUT}: the connection should be aborted."""


class Admission:
    """
    The admission of one connection.  C{meant}, on the side that
    connected, is the role and name it meant to reach, which the other
    side's proof must be bound to; L{None} on the side that accepted.
    """

    def __init__(self, host: AdmissionHost, clock: IReactorTime | None = None) -> None:
        self.host = host
        self.secret: Secret | None = None
        self.meant: tuple[str, str] | None = None
        self.done = False
        self._initiator: Party | None = None
        self._responder: Party | None = None
        self._waiters: list[Deferred[None]] = []
        self._deadline = Deadline(clock, self._timedOut)

    def start(self, secret: Secret | None, meant: tuple[str, str] | None) -> None:
        """
        The connection is made: admit it (an open network) or begin the handshake.
        """
        self.secret, self.meant = secret, meant
        if secret is None:
            self._admit()
            return
        self._deadline.set(ADMISSION_TIMEOUT)
        if meant is not None:
            self._initiator = (*self.host.identity(), new_nonce())
            self.host.sendMessage(wire.message("AUTH", *self._initiator))

    def when(self) -> Deferred[None]:
        """
        Fires once admitted; fails with L{RemoteError} if refused, or with
        the reason the connection was lost.
        """
        if self.done:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        return d

    def proved(self) -> tuple[str, str] | None:
        """
        The role and name the other side proved it holds the secret under;
        L{None} in an open network or before the end.
        """
        if self.secret is None or not self.done:
            return None
        other = self._responder if self.meant is not None else self._initiator
        return (other[0], other[1]) if other is not None else None

    def unreadable(self) -> None:
        """
        A line that does not parse, before the handshake ended.
        """
        self._refuse(wire.E_AUTH_REQUIRED, "this network is private: AUTH with its secret first")

    def received(self, msg: Message) -> None:
        """
        A line of the handshake (or one that should have been).
        """
        secret = self.secret
        assert secret is not None
        initiator, responder = self._initiator, self._responder
        if msg.verb == "ERROR":
            error = RemoteError(msg.args[0], msg.text or "")
            self._fail(error)
            self.host.handshakeRefused(error, ours=False)
        elif self.meant is None:
            # We accepted: hear the claim, challenge it, check the proof,
            # and only then prove ourselves.
            if msg.verb == "AUTH" and initiator is None:
                self._initiator = (msg.args[0], msg.args[1], msg.args[2])
                self._responder = (*self.host.identity(), new_nonce())
                self.host.sendMessage(wire.message("CHALLENGE", self._responder[2]))
            elif msg.verb == "PROOF" and initiator and responder:
                if secret.check_proof(msg.args[0], "initiator", initiator, responder):
                    proof = secret.proof("responder", initiator, responder)
                    self.host.sendMessage(wire.message("PROOF", proof))
                    self._admit()
                else:
                    self._refuse(wire.E_AUTH_FAILED, "that proof does not fit: a wrong network "
                                 "secret, a replayed exchange, or meant for another peer")
            else:
                self.unreadable()
        elif msg.verb == "CHALLENGE" and initiator and responder is None:
            self._responder = (*self.meant, msg.args[0])
            proof = secret.proof("initiator", initiator, self._responder)
            self.host.sendMessage(wire.message("PROOF", proof))
        elif msg.verb == "PROOF" and initiator and responder:
            if secret.check_proof(msg.args[0], "responder", initiator, responder):
                self._admit()
            else:
                self._refuse(wire.E_AUTH_FAILED,
                             f"{self.meant[1]} did not prove it holds this network's secret")
        else:
            self._refuse(wire.E_AUTH_REQUIRED, "expected the private network's CHALLENGE")

    def lost(self, reason: Failure) -> None:
        """
        The connection is gone: whoever waits for admission learns why.
        """
        self._fail(reason)

    def _admit(self) -> None:
        self.done = True
        self._deadline.clear()
        self.host.handshakeDone()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _refuse(self, code: str, text: str) -> None:
        self.host.sendMessage(wire.error(code, text))
        error = RemoteError(code, text)
        self._fail(error)
        self.host.handshakeRefused(error, ours=True)

    def _timedOut(self) -> None:
        error = RemoteError(wire.E_AUTH_REQUIRED, "the handshake took too long")
        self._fail(error)
        self.host.handshakeTimedOut(error)

    def _fail(self, error: BaseException | Failure) -> None:
        self._deadline.clear()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(error)
