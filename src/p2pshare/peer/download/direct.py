"""
Runs of pieces read by a thread straight from a holder's connection.

The swarm fetches each run of pieces in a thread of its own: a blocking
HTTP/1.1 request (C{http.client}, on a connection kept open between the
holder's runs; TLS through Python's C{ssl} with the peer's certificate),
then C{recv_into()} each piece into one of a few reused piece-sized
buffers, which a second thread of the run checks, writes and hands to
the in-order whole-file hash while the first reads (over TLS: receives
and decrypts) the next, without the reactor thread touching a byte.
Through Twisted every received block was a fresh C{bytes} object handed
from the reactor thread to a hashing thread and back, which cost a
verified download a third of its time (docs/performance.rst has the
figures).  In-process tests on a L{Clock} use Twisted's client (the
agent fetcher); the serving side makes a similar split
(L{p2pshare.peer.serving._DirectSender}, and C{_TLSSender} over TLS).

The swarm stays in charge: the thread reports each piece to the reactor
(C{callFromThread}), and the reactor stops a run by L{Link.stop}, which
shuts the socket down under the blocked read; that is also how the
swarm's overall deadlines (for a response head, for each piece) end a run
whose holder drips bytes too slowly for the socket's own timeout, which
counts only the gap between two of them.

The piece buffers are the download's, not a holder's: L{PieceBuffers}
makes at most the number the swarm's memory budget allows, and every
holder's runs read into those.
"""

from __future__ import annotations

import functools
import http.client
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

BUFFERS = 3  # piece buffers per holder: one being read, two being hashed or written


class PieceBuffers:
    """
    The piece buffers of one download, shared by the runs of all its
    holders: at most C{most} are ever made (each C{piece} bytes), so what
    a download holds in memory does not grow with the holders it meets.
    Any thread may take and give back.
    """

    def __init__(self, piece: int, most: int) -> None:
        self.piece = piece
        self.most = max(1, most)
        self.made = 0
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def take(self) -> memoryview:
        """
        A free buffer, waiting for one to be given back if all are in use
        (the whole-file hash gives them back, and never waits for a run).
        """
        with self._lock:
            make = self.made < self.most
            if make:
                self.made += 1
        if make:
            return memoryview(bytearray(self.piece))
        return self._free.get()

    def give(self, buffer: memoryview) -> None:
        self._free.put(buffer)


class Link:
    """
    One holder's HTTP/1.1 connection, kept open from one run to the next;
    its runs read into the download's L{PieceBuffers}.  Used by one run
    (one thread) at a time; L{stop} and L{drop} may also come from the
    reactor, between runs or to end one.
    """

    def __init__(self, buffers: PieceBuffers, tls: ssl.SSLContext | None = None) -> None:
        self.buffers = buffers
        self.tls = tls  # for https holders
        self._conn: http.client.HTTPConnection | None = None
        self._where: tuple[str, int] | None = None
        self.stopping = False

    def connection(self, host: str, port: int, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """
        The connection to C{host}:C{port}, connected: the open one (True:
        it served a run before) or a new one.
        """
        conn = self._conn
        if conn is not None and self._where == (host, port) and conn.sock is not None:
            conn.sock.settimeout(timeout)
            return conn, True
        self.drop()
        conn = self._conn = (
            http.client.HTTPSConnection(host, port, timeout=timeout, context=self.tls)
            if self.tls is not None
            else http.client.HTTPConnection(host, port, timeout=timeout)
        )
        self._where = (host, port)
        conn.connect()
        return conn, False

    def drop(self) -> None:
        """
        Close the connection (a run that ended mid-body leaves it unusable).
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def buffer(self) -> memoryview:
        """
        A free piece buffer (see L{PieceBuffers.take}).
        """
        return self.buffers.take()

    def release(self, buffer: memoryview) -> None:
        """
        C{buffer} may be read into again (from any thread).
        """
        self.buffers.give(buffer)

    def stop(self) -> None:
        """
        From the reactor: end the run under way at once (the blocked read
        returns when its socket is shut down).
        """
        self.stopping = True
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                # The socket's own shutdown, not TLS's: SSLSocket.shutdown
                # would also drop the TLS state under the reading thread.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class RunResult:
    """
    How a run in a thread ended.
    """

    answered: bool = False  # the holder's response was one with the bytes asked for
    received: int = 0  # bytes read
    problem: Exception | None = None  # what the response said instead of bytes
    failed: str | None = None  # why there was no response, or the body ended early
    corrupt: int | None = None  # the index of a piece that did not verify
    local: OSError | None = None  # writing here failed
    stalled: bool = False  # nothing arrived for the idle deadline
    stopped: bool = False  # by the reactor (L{Link.stop})


def fetch_run(
    link: Link,
    url: bytes,
    headers: dict[str, str],
    spans: list[tuple[int, int, int]],
    check: Callable[[int, Callable[[str], str | None]], Exception | None],
    on_piece: Callable[[int, memoryview, Callable[[], None]], bool],
    header_timeout: float,
    idle_timeout: float,
) -> RunResult:
    """
    In a thread: ask for the pieces C{spans} (index, start, stop) in one
    range, and hand each to C{on_piece(index, bytes, release)} as soon as
    it is read whole: in a second thread (L{_Storer}), in order, while
    this one reads the next; every piece read is stored or given back
    before this returns.  C{on_piece} returns False for a corrupt piece,
    which ends the run, and sees that C{release} is called once the bytes
    may be overwritten.  C{check(status, header)} says what is wrong with a
    response, if anything; it is called as soon as the head has arrived.
    The timeouts are the socket's, for one connect or read at a time: the
    overall deadlines are the caller's, who ends the run by L{Link.stop}.
    """
    result = RunResult()
    parts = urlsplit(url.decode("ascii"))
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    response: http.client.HTTPResponse | None = None
    for attempt in range(2):
        reused = False
        try:
            conn, reused = link.connection(host, port, header_timeout)
            if link.stopping:
                raise ConnectionAbortedError("stopped")
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            break
        except (OSError, ValueError, http.client.HTTPException) as e:
            link.drop()
            if link.stopping:
                result.stopped = True
                return result
            if not (reused and attempt == 0):
                result.failed = f"no response ({_why(e)})"
                return result
            # The holder closed the idle connection: once more, afresh.
    assert response is not None
    problem = check(response.status, response.getheader)
    if problem is not None:
        link.drop()
        result.problem = problem
        return result
    result.answered = True
    reusable = False
    storer = _Storer(on_piece)
    try:
        if conn.sock is not None:
            conn.sock.settimeout(idle_timeout)
        for index, start, stop in spans:
            if link.stopping or storer.stopped:
                break
            size = stop - start
            buffer = link.buffer()
            view = buffer[:size]
            got = 0
            while got < size:
                n = response.readinto(view[got:])
                if n == 0:
                    break
                got += n
            result.received += got
            if got < size:
                link.release(buffer)
                result.failed = (
                    "it sent less than asked for" if response.length == 0
                    else "the transfer broke off (the holder closed the connection early)"
                )
                break
            storer.put(index, view, functools.partial(link.release, buffer))
        else:
            reusable = not response.read(1)  # nothing more: the connection may serve again
    except TimeoutError:
        result.stalled = True
    except (OSError, ValueError, http.client.HTTPException) as e:  # ValueError: TLS torn down
        result.failed = f"the transfer broke off ({_why(e)})"
    finally:
        storer.close()  # every piece read is stored (or refused) before the run ends
        if storer.stopped:
            reusable = False
        if not reusable:
            link.drop()
    result.corrupt, result.local = storer.corrupt, storer.local
    if storer.error is not None:
        raise storer.error
    if link.stopping:
        result.stopped = True
    return result


class _Storer:
    """
    The second thread of a run: it hands each piece the run's thread has
    read to C{on_piece} (which checks and writes it), in the order read,
    while the run's thread reads the next one.  So receiving a piece (and
    over TLS decrypting it) overlaps checking and writing the one before,
    on the other core; the run's pool of piece buffers bounds how far the
    reading gets ahead.  Once a piece is corrupt or cannot be written, or
    C{on_piece} fails otherwise, the pieces still queued are only given
    back, and the run stops at its next piece (L{stopped}).
    """

    def __init__(self, on_piece: Callable[[int, memoryview, Callable[[], None]], bool]) -> None:
        self.on_piece = on_piece
        self.corrupt: int | None = None  # the piece that did not verify
        self.local: OSError | None = None  # writing here failed
        self.error: BaseException | None = None  # anything else on_piece raised
        self._queue: queue.SimpleQueue[tuple[int, memoryview, Callable[[], None]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="p2p piece store", daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self.corrupt is not None or self.local is not None or self.error is not None

    def put(self, index: int, view: memoryview, release: Callable[[], None]) -> None:
        """
        Piece C{index}, read whole into C{view}; C{release} gives its
        buffer back (C{on_piece} sees to it, or this does).
        """
        self._queue.put((index, view, release))

    def close(self) -> None:
        """
        Wait until every piece put is stored or given back.
        """
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            index, view, release = item
            if self.stopped:
                release()
                continue
            try:  # on_piece owns the buffer now, whatever happens
                if not self.on_piece(index, view, release):
                    self.corrupt = index
            except OSError as e:
                self.local = e
            except BaseException as e:
                self.error = e


def in_thread(reactor: IReactorFromThreads, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """
    Run C{f(*args)} in a thread of its own (a run may last minutes: it
    does not hold one of the reactor's pool threads); the result comes
    back in the reactor thread.
    """
    d: Deferred[Any] = Deferred()

    def run() -> None:
        try:
            result = f(*args)
        except BaseException as e:
            reactor.callFromThread(d.errback, e)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=run, name="p2p piece run", daemon=True).start()
    return d


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionError)):
        return "the holder closed the connection early"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
