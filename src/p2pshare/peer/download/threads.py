"""
The fetcher that reads each run in a thread (peer/download/direct.py): a
blocking HTTP/1.1 request on a connection kept open per holder, over
plain TCP or over TLS with our context; the thread reads, verifies and
writes the pieces itself and the reactor hears of each.  The reactor
holds the run to its deadlines (the head, then each piece: the socket's
own timeout counts only the gaps between bytes) and stops it when they
pass or when the rest of the run came from elsewhere.  What it cannot
read this way (an https holder without our context, an empty file) and
the partial holders' questions go through the agent fetcher.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime

from p2pshare.peer.download import fetch
from p2pshare.peer.download.agent import AgentFetcher
from p2pshare.peer.download.direct import (
    BUFFERS,
    Link,
    PieceBuffers,
    RunResult,
    fetch_run,
    in_thread,
)
from p2pshare.peer.download.fetch import (
    Broke,
    Corrupt,
    Deadline,
    IPieceSink,
    Run,
    seconds,
)
from p2pshare.peer.download.holders import Source
from p2pshare.pieces import piece_span


class ThreadFetcher:
    """
    Runs read in threads that report to C{reactor}; C{tls}: the context
    for https holders (None: those go through C{agent}).
    """

    def __init__(
        self, reactor: IReactorFromThreads, clock: IReactorTime, agent: AgentFetcher,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.agent = agent
        self.tls = tls
        self._links: dict[str, Link] = {}  # by holder
        self._running: set[Link] = set()  # those with a run under way
        self._buffers = PieceBuffers(1, BUFFERS)

    def begin(self, piece: int, holders: int) -> None:
        # Each holder fetched from at once holds up to BUFFERS pieces.
        self._buffers = PieceBuffers(piece, holders * BUFFERS)
        self.agent.begin(piece, holders)

    def stop(self, halt: bool) -> None:
        for link in list(self._running):
            link.stop()
        self.agent.stop(halt)

    def close(self) -> None:
        for link in self._links.values():
            link.drop()
        self._links.clear()

    def pieces_of(self, holder: Source, count: int) -> Deferred[set[int] | None]:
        return self.agent.pieces_of(holder, count)

    def _reads(self, run: Run) -> bool:
        if b".reversed.invalid:" in run.url:
            return False  # a reversed connection is the agent's (reversal.py)
        return run.last >= run.first and (
            run.url.startswith(b"http://") or (run.url.startswith(b"https://") and self.tls is not None)
        )

    def fetch(self, run: Run, sink: IPieceSink) -> Deferred[None]:
        if not self._reads(run):
            return self.agent.fetch(run, sink)
        return Deferred.fromCoroutine(self._fetch(run, sink))

    async def _fetch(self, run: Run, sink: IPieceSink) -> None:
        source = run.holder
        link = self._links.get(source.name)
        if link is None:
            link = self._links[source.name] = Link(self._buffers, self.tls)
        link.stopping = False
        left = run.indices  # not arrived yet, as the reactor knows
        deadline = Deadline(self.clock, link.stop)

        def expect_piece() -> None:
            if not left:
                return
            start, stop = piece_span(left[0], run.size)
            deadline.expect_piece(left[0], stop - start)

        def on_piece(index: int, data: memoryview, release: Callable[[], None]) -> bool:
            # In the run's thread; it owns the buffer until release().
            stored = False
            try:
                if not sink.verified_already(index):  # else another holder's copy came first
                    if not sink.store(index, [data], release):
                        release()
                        return False
                    stored = True
                else:
                    release()
            except BaseException:
                release()
                raise
            self.reactor.callFromThread(arrived, index, len(data), stored)
            return True

        def arrived(index: int, size: int, stored: bool) -> None:
            source.pace.served += size
            left.remove(index)
            if stored:
                sink.stored(source, index, size)
            if left and sink.elsewhere(left):
                link.stop()  # the rest of this run came from elsewhere
            elif left:
                expect_piece()
            else:
                deadline.cancel()

        def check(code: int, header: Callable[[str], str | None]) -> Exception | None:
            # In the run's thread, once the head is in: the pieces' deadlines begin.
            problem = run.problem(code, header)
            if problem is None:
                self.reactor.callFromThread(expect_piece)
            return problem

        headers = {"If-Match": f'"{run.sha256}"', "Range": f"bytes={run.first}-{run.last}"}
        started = self.clock.seconds()
        sink.sending(source)
        self._running.add(link)
        if sink.stopping():
            link.stop()
        # The connection and the whole head, however slowly it comes.
        deadline.expect(fetch.HEADER_TIMEOUT, f"no answer in {seconds(fetch.HEADER_TIMEOUT)} s")
        try:
            result: RunResult = await in_thread(
                self.reactor, fetch_run, link, run.url, headers, run.spans, check, on_piece,
                fetch.HEADER_TIMEOUT, fetch.IDLE_TIMEOUT,
            )
        finally:
            deadline.cancel()
            self._running.discard(link)
        if result.local is not None:
            raise sink.cannot_write(result.local)
        if result.corrupt is not None:
            source.ran(self.clock.seconds() - started, result.received)
            raise Corrupt(result.corrupt)
        if deadline.missed is not None and left and not sink.elsewhere(left):
            # Whatever the thread made of a response cut off under it.
            raise Broke(deadline.missed)
        if result.problem is not None:
            raise result.problem
        if not result.answered:
            raise Broke(result.failed or "no response")
        source.ran(self.clock.seconds() - started, result.received)
        if left and not sink.elsewhere(left):
            if result.stalled:
                raise Broke(f"it sent nothing for {seconds(fetch.IDLE_TIMEOUT)} s")
            raise Broke(result.failed or "the transfer was stopped")
