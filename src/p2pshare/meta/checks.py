"""
The metadata server's dial-back: does a registrant really listen where it
says?

A peer registers with C{P2P port=PORT [host=HOST] check=NONCE}, a fresh
random nonce per registration.  The server then connects to HOST:PORT
itself (through the network's TLS and secret, like any peer would) and
says C{VERIFY NAME CHALLENGE}; whoever listens there must answer
C{VERIFIED MAC}, the HMAC of C{NAME} and the fresh C{CHALLENGE} keyed with
the nonce.  Only the registrant knows the nonce, so an answer that fits
proves the registrant listens at that address: a victim address, or
another peer, cannot answer for it, and nobody can learn the nonce by
asking (they get MACs of their own challenges only).  Only peers whose
address passed the check are ever named to others (referrals, tickets
that say C{reachable}).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from p2pshare import wire
from p2pshare.admission import META_IDENTITY, Secret
from p2pshare.channel import ChannelFactory, LineChannel
from p2pshare.tickets import answer
from p2pshare.wire import Message

CHECK_TIMEOUT = 5.0  # seconds for the whole dial-back (under a peer's 10 s wait for PLACE)
AT_ONCE = 32  # dial-backs in flight at once; more wait their turn

Connect = Callable[[str, int], IStreamClientEndpoint]


class _Dialler(LineChannel):
    """
    The server's side of one dial-back connection.
    """

    def __init__(self, owner: tuple[IReactorTime, Secret | None]) -> None:
        super().__init__(owner[0])
        self.secret = owner[1]

    def identity(self) -> tuple[str, str]:
        return META_IDENTITY


class _DiallerFactory(ChannelFactory):
    protocol = _Dialler


class AddressChecks:
    """
    Dial-backs, at most L{AT_ONCE} in flight.
    """

    log = Logger()

    def __init__(self, connect: Connect, clock: IReactorTime, secret: Secret | None) -> None:
        self.connect = connect
        self.clock = clock
        self.secret = secret
        self._turns = DeferredSemaphore(AT_ONCE)
        self._running: set[Deferred[Any]] = set()

    def check(self, name: str, host: str, port: int, nonce: str) -> Deferred[str | None]:
        """
        Fires with L{None} if the registrant answered at C{host}:C{port},
        else with why not, in a few words; never fails.
        """
        d: Deferred[str | None] = self._turns.run(
            lambda: Deferred.fromCoroutine(self._check(name, host, port, nonce))
            .addTimeout(CHECK_TIMEOUT, self.clock)
        )
        self._running.add(d)

        def done(result: Any) -> str | None:
            self._running.discard(d)
            if isinstance(result, str) or result is None:
                return result
            return _why(result.value)

        return d.addBoth(done)

    async def _check(self, name: str, host: str, port: int, nonce: str) -> str | None:
        factory = _DiallerFactory((self.clock, self.secret), expect=("peer", name))
        proto: Any = await self.connect(host, port).connect(factory)
        try:
            await proto.whenAdmitted()
            challenge = secrets.token_hex(16)
            reply: Message = await proto.request("VERIFY", name, challenge)
        finally:
            proto.abort()
        if reply.verb != "VERIFIED":
            return f"{host}:{port} answered {reply.verb}"
        if not hmac.compare_digest(reply.args[0], answer(nonce, name, challenge)):
            return f"{host}:{port} is not where {name} registered from (a wrong answer)"
        return None

    def stop(self) -> None:
        for d in list(self._running):
            d.cancel()


def _why(e: BaseException) -> str:
    from twisted.internet import error
    from twisted.internet.defer import CancelledError, TimeoutError

    if isinstance(e, (TimeoutError, CancelledError, error.TimeoutError)):
        return "no answer in time"
    if isinstance(e, error.ConnectionRefusedError):
        return "nothing listens there"
    if isinstance(e, wire.RemoteError):
        return f"it answered {e.code}: {e.text}"
    if isinstance(e, error.ConnectError) and e.osError is not None:
        return str(e.osError)
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
