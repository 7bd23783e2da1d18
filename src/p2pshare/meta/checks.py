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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.admission import META_IDENTITY, Secret
from p2pshare.channel import ChannelFactory, LineChannel
from p2pshare.tickets import answer
from p2pshare.wire import Message

CHECK_TIMEOUT = 5.0  # seconds for the whole dial-back (under a peer's 10 s wait for PLACE)
AT_ONCE = 32  # dial-backs in flight at once; more wait their turn
PER_SOURCE = 8  # checks waiting or running for registrations from one address
FAILED_FOR = 30.0  # seconds an address that did not answer is not dialled again
WRONG_PAUSE = 2.0  # seconds before an address that answered wrongly is dialled again

Connect = Callable[[str, int], IStreamClientEndpoint]


@dataclass
class _Check:
    name: str
    target: tuple[str, int]
    nonce: str
    source: str
    done: Deferred[str | None]
    running: Deferred[str | None] | None = None  # the dial, once it has begun
    given_up: bool = False  # its registrant went: whatever the dial found says nothing


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
    Dial-backs, at most L{AT_ONCE} in flight, taken in turn from the
    addresses registrations come from (one address that registers a
    thousand times waits behind itself, not in front of everybody else),
    at most L{PER_SOURCE} from one address, and one at a time to any one
    target: a registrant naming a victim's address gets it dialled once,
    and an address that did not answer is not dialled again for
    L{FAILED_FOR} seconds.  A check whose registrant has gone is
    cancelled (L{MetaServer} cancels it).
    """

    log = Logger()

    def __init__(self, connect: Connect, clock: IReactorTime, secret: Secret | None) -> None:
        self.connect = connect
        self.clock = clock
        self.secret = secret
        self._waiting: dict[str, deque[_Check]] = {}  # by source, in order
        self._turn: deque[str] = deque()  # sources with checks waiting, round robin
        self._busy: set[tuple[str, int]] = set()  # targets being dialled
        self._running: set[Deferred[str | None]] = set()
        self._failed: dict[tuple[str, int], float] = {}  # target -> when it did not answer
        self._counts: dict[str, int] = {}  # source -> checks waiting or running
        self._dialling: dict[str, int] = {}  # source -> checks running

    def check(
        self, name: str, host: str, port: int, nonce: str, source: str = "local"
    ) -> Deferred[str | None]:
        """
        Fires with L{None} if the registrant answered at C{host}:C{port},
        else with why not, in a few words; never fails.  Cancelling it
        gives up the check (its turn, or the dial under way).
        """
        target = (host, port)
        now = self.clock.seconds()
        failed = self._failed.get(target)
        if failed is not None and now - failed < FAILED_FOR:
            return succeed(f"{host}:{port} did not answer a check {now - failed:.0f} s ago")
        if self._counts.get(source, 0) >= PER_SOURCE:
            return succeed(f"{PER_SOURCE} checks are under way for registrations from {source}")
        self._counts[source] = self._counts.get(source, 0) + 1
        item = _Check(name, target, nonce, source, Deferred(lambda d: self._cancel(item)))
        if source not in self._waiting:
            self._waiting[source] = deque()
            self._turn.append(source)
        self._waiting[source].append(item)
        self._next()
        return item.done

    def forget(self, host: str, port: int) -> None:
        """
        Dial C{host}:C{port} again at the next check, though it did not
        answer the last (its owner says its gateway forwards it now).
        """
        self._failed.pop((host, port), None)

    def _cancel(self, item: _Check) -> None:
        """
        A check was cancelled (its registrant has gone): a waiting one
        leaves the queue, a running one's dial is stopped.
        """
        if item.running is not None:
            item.given_up = True
            item.running.cancel()  # its end fires item.done
            return
        queue = self._waiting.get(item.source)
        if queue is not None and item in queue:
            queue.remove(item)
            self._ended(item)
        item.done.callback("cancelled")

    def _ended(self, item: _Check) -> None:
        _less(self._counts, item.source)

    def _next(self) -> None:
        """
        Start waiting checks while there is room: from the source with the
        fewest dials under way (the first in turn among equals), skipping
        targets that are being dialled.
        """
        while len(self._running) < AT_ONCE and self._turn:
            ready = [
                (self._dialling.get(source, 0), position, source)
                for position, source in enumerate(self._turn)
                if any(i.target not in self._busy for i in self._waiting[source])
            ]
            if not ready:
                return  # every waiting check names a target being dialled
            _, _, source = min(ready)
            self._turn.remove(source)
            queue = self._waiting[source]
            item = next(i for i in queue if i.target not in self._busy)
            queue.remove(item)
            if queue:
                self._turn.append(source)
            else:
                del self._waiting[source]
            self._start(item)

    def _start(self, item: _Check) -> None:
        self._busy.add(item.target)
        self._dialling[item.source] = self._dialling.get(item.source, 0) + 1
        running = item.running = Deferred.fromCoroutine(
            self._check(item.name, *item.target, item.nonce)
        )
        running.addTimeout(CHECK_TIMEOUT, self.clock)
        self._running.add(running)
        outer = item.done

        def ended(result: str | None | Failure) -> None:
            self._running.discard(running)
            if isinstance(result, str):
                # A wrong answer: somebody listens there (another peer, or
                # a registrant naming a victim).  Not remembered as failed,
                # but not dialled again for a moment either: registrations
                # naming one live peer cannot have it dialled in a flood.
                self.clock.callLater(WRONG_PAUSE, self._free, item.target)
            else:
                self._busy.discard(item.target)
            _less(self._dialling, item.source)
            self._ended(item)
            why = _why(result.value) if isinstance(result, Failure) else result
            # Only an address where nothing answered is not dialled again
            # for a while: a wrong answer (somebody else listens there, or
            # a registrant naming a victim) says nothing of the next one.
            if (isinstance(result, Failure) and not outer.called and not item.given_up
                    and not _cancelled(result)):
                self._failed[item.target] = self.clock.seconds()
                self._forget_old_failures()
            if not outer.called:
                outer.callback(why)
            self._next()

        running.addBoth(ended)

    def _free(self, target: tuple[str, int]) -> None:
        self._busy.discard(target)
        self._next()

    def _forget_old_failures(self) -> None:
        if len(self._failed) > 10_000:
            now = self.clock.seconds()
            self._failed = {t: at for t, at in self._failed.items() if now - at < FAILED_FOR}

    async def _check(self, name: str, host: str, port: int, nonce: str) -> str | None:
        factory = _DiallerFactory((self.clock, self.secret), expect=("peer", name))
        proto = cast(_Dialler, await self.connect(host, port).connect(factory))
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
        for running in list(self._running):
            running.cancel()
        for queue in list(self._waiting.values()):
            for item in list(queue):
                item.done.cancel()


def _less(counts: dict[str, int], key: str) -> None:
    """
    One fewer for C{key} in C{counts}; none left, and it is forgotten.
    """
    left = counts.get(key, 1) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _cancelled(result: object) -> bool:
    return isinstance(result, Failure) and isinstance(
        result.value, (CancelledError, error.ConnectingCancelledError)
    )


def _why(e: BaseException | None) -> str:
    if e is None:
        return "it failed"
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
