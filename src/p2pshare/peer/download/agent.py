"""
The fetcher that goes through Twisted's agent (L{IAgent}): a run is one
C{Range} request guarded by C{If-Match}, its body cut into pieces as it
arrives, each handed to a thread to be verified and written.  It serves
holders the thread fetcher does not (an https holder without our TLS
context) and every simulated network, whose holders live in memory; it
also asks partial holders which pieces they have, for both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from p2pshare.peer.download import fetch
from p2pshare.peer.download.fetch import (
    PENDING_PIECES,
    Broke,
    Busy,
    Deadline,
    Gone,
    IPieceSink,
    Run,
    no_answer,
    seconds,
    why_failed,
)
from p2pshare.peer.download.holders import Source
from p2pshare.peer.download.storing import Parts
from p2pshare.peer.reversal import RelayBusy
from p2pshare.pieces import from_bitfield

RELAY_BUSY_WAIT = 5.0  # seconds before a holder behind a full relay is asked again


class _RunReceiver(Protocol):
    """
    The body of one range response: cut into pieces as it arrives, each
    complete piece handed to C{on_piece}; C{done} fires with the reason
    the body ended.  Cancelling C{done} stops the transfer.
    """

    def __init__(
        self, clock: IReactorTime, first_byte: int, spans: list[tuple[int, int, int]],
        on_piece: Callable[[int, Parts], None],
    ) -> None:
        self.clock = clock
        self.spans = spans  # (index, start, stop) of the pieces asked for, in order
        self.on_piece = on_piece
        self.position = first_byte
        self.chunks: Parts = []  # what arrived of the next piece
        self.held = 0
        self.received = 0
        self.done: Deferred[BaseException] = Deferred(lambda d: self.stop())
        self._idle: IDelayedCall | None = None
        # The next piece's deadline; its missed says why it ended the run.
        self.deadline = Deadline(clock, self.stop)
        self.stalled = False
        self.paused = False
        self.stopped = False  # no more pieces are handed on once stopped

    def connectionMade(self) -> None:
        self._idle = self.clock.callLater(fetch.IDLE_TIMEOUT, self._stall)
        self._expect_piece()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.deadline.cancel()
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def _stall(self) -> None:
        self._idle = None
        self.stalled = True
        self.stop()

    def _expect_piece(self) -> None:
        """
        The next piece asked for must be whole within its deadline (from
        now: the end of the one before it, or of the response head).
        """
        if self.spans and not (self.stopped or self.paused):
            index, start, stop = self.spans[0]
            self.deadline.expect_piece(index, stop - start)
        else:
            self.deadline.cancel()

    def pause(self) -> None:
        transport: Any = self.transport
        if not self.paused and transport is not None:
            self.paused = True
            transport.pauseProducing()
            if self._idle is not None and self._idle.active():
                self._idle.cancel()  # our own pause is no stall
                self._idle = None
            self.deadline.cancel()  # nor does it count against the holder

    def resume(self) -> None:
        transport: Any = self.transport
        if self.paused and transport is not None and not self.stopped:
            self.paused = False
            self._idle = self.clock.callLater(fetch.IDLE_TIMEOUT, self._stall)
            self._expect_piece()  # the piece under way is given its time afresh
            transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self._idle is not None and self._idle.active():
            self._idle.reset(fetch.IDLE_TIMEOUT)
        if self.stopped or not self.spans:
            return  # more than was asked for is ignored, and the run ends
        self.chunks.append(memoryview(data))
        self.held += len(data)
        while self.spans and not self.stopped:
            index, start, stop = self.spans[0]
            need = stop - self.position
            if self.held < need:
                break
            piece: Parts = []
            while need:
                block = self.chunks[0]
                if len(block) <= need:
                    piece.append(self.chunks.pop(0))
                    need -= len(block)
                else:
                    piece.append(block[:need])  # views: nothing is copied
                    self.chunks[0] = block[need:]
                    need = 0
            self.held -= stop - self.position
            self.position = stop
            self.spans.pop(0)
            self._expect_piece()
            self.on_piece(index, piece)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self.deadline.cancel()
        if not self.done.called:
            self.done.callback(reason.value or ResponseDone())


class _Collect(Protocol):
    """
    A response body of at most C{limit} bytes (a holder cannot make us hold
    more: past it, the connection is cut).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred(lambda d: self._cut())

    def _cut(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > self.limit:
            self._cut()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self.done.called:
            return
        if len(self.data) > self.limit:
            self.done.errback(ValueError(f"it sent more than the {self.limit} bytes expected"))
        elif isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(reason)


def read_at_most(response: Any, limit: int) -> Deferred[bytes]:
    """
    The body of C{response}, if it is at most C{limit} bytes long.
    """
    collect = _Collect(limit)
    deliver(response, collect)
    return collect.done


class AgentFetcher:
    """
    Runs through C{agent}, on C{clock}.
    """

    def __init__(self, agent: IAgent, clock: IReactorTime) -> None:
        self.agent = agent
        self.clock = clock
        self._receivers: set[_RunReceiver] = set()
        self._requests: set[Deferred[Any]] = set()
        self._stopped = False

    def begin(self, piece: int, holders: int) -> None:
        self._stopped = False

    def stop(self, halt: bool) -> None:
        self._stopped = self._stopped or halt
        for receiver in list(self._receivers):
            receiver.stop()
        if halt:
            for request in list(self._requests):
                request.cancel()

    def close(self) -> None:
        pass

    async def _head(self, url: bytes, headers: Headers | None = None) -> IResponse:
        """
        The whole response head, however slowly it comes (the agent's
        request is cancelled, its connection aborted, at the deadline).
        """
        request = self.agent.request(b"GET", url, headers)
        self._requests.add(request)
        try:
            return cast(IResponse, await request.addTimeout(fetch.HEADER_TIMEOUT, self.clock, no_answer))
        except Broke:
            raise
        except CancelledError:
            if self._stopped:
                raise
            raise Broke(f"no answer in {seconds(fetch.HEADER_TIMEOUT)} s") from None
        except RelayBusy as e:
            raise Busy(RELAY_BUSY_WAIT, str(e)) from None  # the holder is not at fault: later
        except Exception as e:
            raise Broke(f"no response ({why_failed(e)})") from None
        finally:
            self._requests.discard(request)

    def pieces_of(self, holder: Source, count: int) -> Deferred[set[int] | None]:
        return Deferred.fromCoroutine(self._pieces_of(holder, count))

    async def _pieces_of(self, holder: Source, count: int) -> set[int] | None:
        assert holder.have_url is not None
        response = await self._head(holder.have_url())
        if response.code != 200:
            deliver(response, Protocol())
            if response.code in (404, 410):
                raise Gone("it no longer holds the file")
            return None
        request = read_at_most(response, (count + 7) // 8)
        self._requests.add(request)
        try:
            bits = await request.addTimeout(fetch.HEADER_TIMEOUT, self.clock)
        finally:
            self._requests.discard(request)
        return from_bitfield(bits, count)

    def fetch(self, run: Run, sink: IPieceSink) -> Deferred[None]:
        return Deferred.fromCoroutine(self._fetch(run, sink))

    async def _fetch(self, run: Run, sink: IPieceSink) -> None:
        source = run.holder
        headers = Headers()
        headers.addRawHeader(b"if-match", f'"{run.sha256}"'.encode())
        if run.last >= run.first:
            headers.addRawHeader(b"range", f"bytes={run.first}-{run.last}".encode())
        response = await self._head(run.url, headers)
        problem = run.problem(response.code, lambda name: _header(response, name))
        if problem is not None:
            deliver(response, Protocol())
            raise problem
        if run.size == 0:
            deliver(response, Protocol())
            await sink.write(source, 0, [])
            return
        started = self.clock.seconds()
        writes: list[Deferred[None]] = []
        receiver: _RunReceiver

        def on_piece(index: int, data: Parts) -> None:
            source.pace.served += sum(len(p) for p in data)
            if sink.verified_already(index):
                return  # another holder's copy came first (the endgame)
            d = sink.write(source, index, data)
            writes.append(d)  # first: stopping below may end the run at once

            def failed(f: Failure) -> Failure:
                receiver.stop()  # a corrupt piece ends the run
                return f

            def written(result: object) -> object:
                receiver.resume()
                return result

            d.addErrback(failed)
            pending = [w for w in writes if not w.called]
            if len(pending) >= PENDING_PIECES:
                receiver.pause()
                d.addBoth(written)
            if sink.elsewhere([i for i, _, _ in receiver.spans]):
                receiver.stop()  # the rest of this run came from elsewhere

        receiver = _RunReceiver(self.clock, run.first, list(run.spans), on_piece)
        self._receivers.add(receiver)
        sink.sending(source)
        try:
            deliver(response, receiver)
            if sink.stopping():
                receiver.stop()
            reason = await receiver.done
        finally:
            self._receivers.discard(receiver)
        # Every piece handed to a thread is written (or refused) before the
        # run ends: nobody closes the part file under a write.
        results = await DeferredList(writes, consumeErrors=True)
        for ok, result in results:
            if not ok:
                cast(Failure, result).raiseException()
        source.ran(self.clock.seconds() - started, receiver.received)
        left = [i for i, _, _ in receiver.spans]
        if left and not sink.elsewhere(left):
            if receiver.deadline.missed is not None:
                raise Broke(receiver.deadline.missed)
            if receiver.stalled:
                raise Broke(f"it sent nothing for {seconds(fetch.IDLE_TIMEOUT)} s")
            if isinstance(reason, ResponseDone):
                raise Broke("it sent less than asked for")
            raise Broke(f"the transfer broke off ({why_failed(reason)})")


def _header(response: IResponse, name: str) -> str | None:
    """
    A header of a Twisted response, as C{http.client} gives it.
    """
    values = response.headers.getRawHeaders(name.encode())
    return values[0].decode("latin-1") if values else None


def deliver(response: IResponse, protocol: Protocol) -> None:
    """
    C{response.deliverBody(protocol)}: Twisted declares it on an interface
    without types.
    """
    cast(Any, response).deliverBody(protocol)
