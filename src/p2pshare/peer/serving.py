"""
Sending the bytes of one file over HTTP (L{SharedFileResource}, and
L{PartialFileResource} for a download in progress): single ranges and the
validators of RFC 9110, upload slots (C{--max-uploads}, shared fairly
between addresses: L{UploadSlots}) and the rate cap (C{--upload-rate}),
where each downloader is told to begin (L{StartSpreader}), and the three
ways a body goes out: straight to the socket from the mapped file
(L{_DirectSender}), sealed in TLS records by the sender and written
straight to the socket (L{_TLSSender}), or through a producer and
Twisted's transports (L{_BigFileSender}: under a rate cap).
L{p2pshare.peer.http} routes requests here.
"""

from __future__ import annotations

import errno
import functools
import mimetypes
import mmap
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

from OpenSSL.SSL import Error as SSLError
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from p2pshare.httpserver import http_date, parse_http_date
from p2pshare.peer.interfaces import IFileHost
from p2pshare.peer.share import stamp_of
from p2pshare.tls import DirectTLS

if TYPE_CHECKING:
    from p2pshare.peer.download.attempt import Partial
    from p2pshare.peer.share import ShareIndex

MAX_UPLOADS = 16  # files served at once; more get 503 and a Retry-After
# When every slot is taken and someone else wants one (UploadSlots):
FLOOR_RATE = 64 * 1024  # bytes/s; an upload slower than this gives its slot up
RATE_WINDOW = 10.0  # s: rates are of the last 10 to 20 s, judged after 10
WAITING = 15.0  # s an address refused a slot counts as waiting (3 Retry-Afters)
STALL_TIMEOUT = 60  # seconds a response may wait for a client that does not read
MAX_DIGITS = 18  # longer numbers in a Range header are absurd: 416
# A plain TCP response is sent from the file's page cache itself, mapped
# WINDOW bytes at a time (see _Slice.send), CHUNK bytes between two checks
# that the file has not changed: faster than reading into a buffer,
# because the sender's second copy is gone.  docs/performance.rst has the
# figures and what else was tried.
WINDOW = 2**24
CHUNK = 2**19  # also the buffer for files that cannot be mapped
SHORTER = "the file became shorter while it was being served"
NOT_YET = b"This peer is still downloading the file and has not these bytes yet.\n"
BUSY = b"This peer is serving as many files as it may; try again soon.\n"
_RANGE = re.compile(rb"bytes=(\d*)-(\d*)")
# Content types (content_headers): what Python's own table lacks, for
# common media and documents, so that every peer, on any host, serves a
# name with the same type (the host's mime.types is not read).
EXTRA_TYPES = {
    ".flac": "audio/flac", ".m4a": "audio/mp4", ".oga": "audio/ogg", ".ogg": "audio/ogg",
    ".mkv": "video/x-matroska", ".ogv": "video/ogg", ".webp": "image/webp",
    ".md": "text/markdown", ".epub": "application/epub+zip",
    ".xhtml": "application/xhtml+xml", ".xht": "application/xhtml+xml", ".shtml": "text/html",
}
# A compressed file is served as what it is (a .tar.gz as gzip), never with
# a Content-Encoding a browser would undo.
COMPRESSED_TYPES = {
    "gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
    "compress": "application/x-compress",
}
# Types a browser shows as what they are, running nothing in the peer's
# origin: served inline.  With them, text, images, audio and video, but
# not the subtypes below, which a browser renders as a document or runs.
INLINE_TYPES = frozenset({"application/pdf", "application/json"})
INLINE_KINDS = frozenset({"text", "image", "audio", "video"})
_ACTIVE_SUBTYPE = re.compile(r"html|xml|xsl|script|x-component")


def peer_host(transport: Any) -> str:
    return str(getattr(transport.getPeer(), "host", "?")) if transport is not None else "?"


class StartSpreader:
    """
    Which piece a holder suggests each downloader of a file begin with.
    One that comes while nobody is fetching that file here begins at the
    first piece, so it hashes the whole file in order as the pieces arrive
    and reads nothing back.  One that comes while others are (a response
    of that file in progress, or a suggestion made in the last L{QUIET}
    seconds) begins in the middle of the longest stretch of pieces where
    no recent downloader began, so that peers fetching one file together
    hold different pieces from the start and feed each other (swarming).
    """

    QUIET = 2.0  # seconds between a piece list and the first range asked for, at most
    WINDOW = 120.0  # starts older than this are forgotten
    KEPT = 64  # starts remembered per file

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._starts: dict[str, list[tuple[float, int]]] = {}
        self._sending: dict[str, int] = {}

    def suggest(self, sha256: str, count: int) -> int:
        now = self.clock.seconds()
        recent = [(t, s) for t, s in self._starts.get(sha256, ()) if now - t < self.WINDOW]
        busy = self._sending.get(sha256, 0) > 0 or any(now - t < self.QUIET for t, _ in recent)
        start = _middle_of_longest_gap(sorted({s for _, s in recent}), count) if busy else 0
        self._starts[sha256] = ([*recent, (now, start)] if busy else [(now, start)])[-self.KEPT:]
        if len(self._starts) > 4 * self.KEPT:  # forget files nobody fetched lately
            self._starts = {
                k: v for k, v in self._starts.items() if now - v[-1][0] < self.WINDOW
            }
        return start

    def sending(self, sha256: str, more: int) -> None:
        """
        A response of that file began (C{more=1}) or ended (C{-1}).
        """
        left = self._sending.get(sha256, 0) + more
        if left > 0:
            self._sending[sha256] = left
        else:
            self._sending.pop(sha256, None)


def _middle_of_longest_gap(starts: list[int], count: int) -> int:
    """
    The piece halfway along the longest run of pieces (around the end
    and back to the start) that begins at one of C{starts} and ends
    before the next.
    """
    if not starts or count <= 1:
        return 0
    best, middle = -1, 0
    for i, here in enumerate(starts):
        following = starts[i + 1] if i + 1 < len(starts) else starts[0] + count
        if following - here > best:
            best, middle = following - here, (here + (following - here) // 2) % count
    return middle


@dataclass(eq=False)
class Upload:
    """
    A response that holds (or asks for) an upload slot: to which address,
    since when, how many bytes it has sent so far, and how to cut it off.
    """

    host: str
    started: float
    sent: Callable[[], int]
    cut: Callable[[], None]
    _mark: tuple[float, int] = field(init=False, repr=False)  # (time, sent) rates start from
    _next: tuple[float, int] = field(init=False, repr=False)  # the mark to come

    def __post_init__(self) -> None:
        self._mark = self._next = (self.started, 0)

    def rate(self, now: float) -> float:
        """
        Bytes per second over its recent past: since its start at first,
        and once it has run L{RATE_WINDOW} seconds, since a point one to
        two windows back (if asked at least once a window, as the slots
        ask while anyone waits).  So a quick start into the socket's
        buffers is soon forgotten.
        """
        sent = self.sent()
        if now - self._next[0] >= RATE_WINDOW:
            self._mark, self._next = self._next, (now, sent)
        then, before = self._mark
        return (sent - before) / (now - then) if now > then else 0.0


class UploadSlots:
    """
    How many files a peer serves at once, and to whom, so that one address
    cannot keep everyone else out.

    An address alone may hold every slot, at any speed.  When others hold
    or want slots too, an address's fair share is the slots divided by the
    addresses that hold or want them (the newcomer's counted, and never
    less than one slot): it is refused beyond that.  A newcomer that finds
    every slot taken gets one by cutting off, at once, the slowest upload
    of the address holding most beyond its share (it took them while
    alone); failing that, the slowest upload of another address that has
    run L{RATE_WINDOW} seconds at less than the floor (L{FLOOR_RATE}).
    Otherwise it is refused (503), and its address counts as waiting for
    L{WAITING} seconds.  Decisions are taken at the newcomer's C{started}:
    the peer's clock, read by the resource.
    """

    log = Logger()

    def __init__(self, limit: int = MAX_UPLOADS, cap: float | None = None) -> None:
        """
        @param cap: the peer's C{--upload-rate}, if any: the floor is then
            at most half of one slot's part of it, so that uploads slowed by
            the cap itself are not cut for being slow.
        """
        self.uploads: list[Upload] = []
        self._waiting: dict[str, float] = {}  # address -> when it was last refused
        self.set_limit(limit, cap)

    def set_limit(self, limit: int, cap: float | None) -> None:
        """
        New limits, for the uploads that ask from now on (those running
        keep their slots).
        """
        self.limit = limit
        self.floor = min(FLOOR_RATE, cap / max(limit, 1) / 2) if cap else FLOOR_RATE

    @property
    def used(self) -> int:
        return len(self.uploads)

    def take(self, upload: Upload) -> bool:
        """
        Whether C{upload} gets a slot, perhaps one freed by cutting another
        upload off (see the class); if not, answer 503.
        """
        now, host = upload.started, upload.host
        self._waiting = {
            h: t for h, t in self._waiting.items() if h != host and now - t < WAITING
        }
        held = Counter(u.host for u in self.uploads)
        addresses = len(held.keys() | self._waiting.keys() | {host})

        def beyond_share(count: int) -> bool:  # more than max(1, limit / addresses)
            return count > 1 and count * addresses > self.limit

        if beyond_share(held[host] + 1):
            return False
        if len(self.uploads) >= self.limit:
            rates = {u: u.rate(now) for u in self.uploads}
            greedy = [u for u in self.uploads if beyond_share(held[u.host])]
            slow = [
                u for u in self.uploads
                if u.host != host and now - u.started >= RATE_WINDOW and rates[u] < self.floor
            ]
            if greedy:
                victim = min(greedy, key=lambda u: (-held[u.host], rates[u]))
                why = (
                    f"held {held[victim.host]} of {self.limit} slots while {addresses} addresses"
                    " wanted them"
                )
            elif slow:
                victim = min(slow, key=rates.__getitem__)
                why = f"read {rates[victim] / 1024:.1f} KiB/s, under {self.floor / 1024:.0f} KiB/s"
            else:
                self._waiting[host] = now
                if len(self._waiting) > self.limit:  # more would not make a share smaller
                    del self._waiting[next(iter(self._waiting))]  # the one refused longest ago
                return False
            self.uploads.remove(victim)
            self.log.info(
                "cut an upload to {host}, which {why}, to serve {newcomer}",
                host=victim.host, why=why, newcomer=host,
            )
            victim.cut()
        self.uploads.append(upload)
        return True

    def give(self, upload: Upload) -> None:
        """
        C{upload} ended (one cut off has given its slot up already).
        """
        if upload in self.uploads:
            self.uploads.remove(upload)


class _Slice:
    """
    A file from C{start} for C{length} bytes: read by L{FileSender}
    (L{read}), or written to the socket from the mapped file by
    L{_DirectSender} (L{send}; L{close} unmaps it).  It stops (C{broken})
    as soon as the file is found changed or shorter than promised, so that
    the response is cut off rather than finished with other bytes or too
    few.
    """

    def __init__(
        self, f: BinaryIO, start: int, length: int, stamp: tuple[int, int, int] | None
    ) -> None:
        self.f = f
        self.start = start
        self.length = length
        self.remaining = length
        self.stamp = stamp
        self.broken: str | None = None
        self._map: mmap.mmap | None = None  # for send(): the window mapped
        self._at = 0  # where in the file the window begins
        self._view = memoryview(b"")  # all of the window
        self._buffer: memoryview | None = None  # for files that cannot be mapped
        self._unsent = memoryview(b"")
        f.seek(start)

    @property
    def sent(self) -> int:
        return self.length - self.remaining

    def _going(self) -> bool:
        if self.remaining <= 0 or self.broken:
            return False
        st = os.fstat(self.f.fileno())
        if self.stamp is not None and stamp_of(st) != self.stamp:
            self.broken = "the file changed while it was being served"
            return False
        return True

    def read(self, n: int) -> bytes:
        if not self._going():
            return b""
        data = self.f.read(min(n, self.remaining))
        if not data:
            self.broken = SHORTER
        self.remaining -= len(data)
        return data

    def send(self, socket_fd: int) -> int:
        """
        Write the next bytes straight to a non-blocking socket: how many the
        socket took (0 at the end or when broken); L{BlockingIOError} when
        it takes nothing now.

        The bytes are written from the file's pages in the page cache,
        mapped L{WINDOW} bytes at a time, so the kernel copies each byte
        once, into the socket (a read into a buffer and a write from it
        copy twice).  A file that shrinks under its mapping cannot crash
        the peer: the pages are only ever touched by the kernel, inside
        C{write()}, which then fails with C{EFAULT} (no C{SIGBUS}, which
        comes only from reads in user space); that and a window that no
        longer fits the file end the response as "shorter".
        """
        if not self._unsent:
            if not self._going():
                return 0
            self._unsent = self._next_bytes()
            if not self._unsent:
                return 0
        try:
            sent = os.write(socket_fd, self._unsent)
        except OSError as e:
            if e.errno != errno.EFAULT:
                raise
            self.broken = SHORTER
            return 0
        self._unsent = self._unsent[sent:]
        self.remaining -= sent
        return sent

    def _next_bytes(self) -> memoryview:
        offset = self.start + self.sent
        if self._buffer is None and not self._at <= offset < self._at + len(self._view):
            self.close()
            at = offset - offset % mmap.ALLOCATIONGRANULARITY
            size = min(WINDOW, self.start + self.length - at)
            try:
                self._map = mmap.mmap(
                    self.f.fileno(), size, flags=mmap.MAP_SHARED,
                    prot=mmap.PROT_READ, offset=at,
                )
            except ValueError:  # mmap checks the file's size first
                self.broken = SHORTER
                return memoryview(b"")
            except OSError:  # a file system without mmap: read into a buffer
                self._buffer = memoryview(bytearray(CHUNK))
            else:
                if hasattr(mmap, "MADV_SEQUENTIAL"):  # read ahead as read() would
                    self._map.madvise(mmap.MADV_SEQUENTIAL)
                self._at, self._view = at, memoryview(self._map)
        if self._buffer is not None:
            n = os.preadv(self.f.fileno(), [self._buffer[: min(self.remaining, CHUNK)]], offset)
            if n == 0:
                self.broken = SHORTER
            return self._buffer[:n]
        i = offset - self._at
        return self._view[i : i + min(self.remaining, CHUNK)]

    def read_block(self) -> memoryview:
        """
        The next bytes (at most L{CHUNK}), read into a buffer reused from
        one call to the next and counted as sent (empty at the end or when
        broken): for a sender that reads them in this process (TLS seals
        them), never from the mapped pages, which a file shrinking under
        them would turn into a C{SIGBUS}.
        """
        if not self._going():
            return memoryview(b"")
        if self._buffer is None:
            self._buffer = memoryview(bytearray(CHUNK))
        n = os.preadv(self.f.fileno(), [self._buffer[: min(self.remaining, CHUNK)]], self.start + self.sent)
        if n == 0:
            self.broken = SHORTER
        self.remaining -= n
        return self._buffer[:n]

    def close(self) -> None:
        """
        Unmap the window (the file itself is closed by whoever opened it).
        """
        self._unsent = memoryview(b"")
        self._view.release()
        self._view = memoryview(b"")
        if self._map is not None:
            self._map.close()
            self._map = None


class UploadRate:
    """
    A token bucket over all the uploads of a peer (C{--upload-rate}): a
    response takes tokens before each read, and waits when there are none,
    so the cap holds over every upload together and nothing piles up in
    memory.
    """

    def __init__(self, rate: float, clock: Any) -> None:
        self.clock = clock
        self.tokens = float("inf")  # a full bucket: set_rate cuts it to its capacity
        self.set_rate(rate)
        self.last = clock.seconds()

    def set_rate(self, rate: float) -> None:
        """
        A new cap, at once for every upload (they all draw from this bucket).
        """
        self.rate = rate
        self.capacity = max(16384.0, rate / 4)  # a quarter second's worth
        self.tokens = min(self.tokens, self.capacity)

    def chunk(self) -> int:
        """
        How much one read may take at a time.
        """
        return int(min(2**20, self.capacity))

    def take(self, n: int) -> float:
        """
        Take C{n} tokens and return 0, or return how many seconds to wait
        before there are enough.
        """
        now = self.clock.seconds()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class _BigFileSender(FileSender):
    """
    1 MiB reads (small reads cost a Python round each), a client that reads
    nothing for L{STALL_TIMEOUT} seconds is cut off, and an L{UploadRate}
    (if any) is obeyed.
    """

    CHUNK_SIZE = 2**20

    def __init__(self, clock: Any, on_stall: Any, rate: UploadRate | None = None) -> None:
        self._stall = clock.callLater(STALL_TIMEOUT, on_stall)
        self._clock = clock
        self._rate = rate
        self._later: Any = None
        if rate is not None:
            self.CHUNK_SIZE = rate.chunk()

    def resumeProducing(self) -> None:
        if self._stall.active():
            self._stall.reset(STALL_TIMEOUT)
        if self._rate is not None and self.file is not None:
            if self._later is not None:
                return  # already waiting for tokens
            wait = self._rate.take(self.CHUNK_SIZE)
            if wait > 0:
                self._later = self._clock.callLater(wait, self._tokens_came)
                return
        super().resumeProducing()

    def _tokens_came(self) -> None:
        self._later = None
        if self.consumer is not None and self.file is not None:
            self.resumeProducing()

    def stopProducing(self) -> None:
        self.done()
        super().stopProducing()

    def done(self) -> None:
        if self._stall.active():
            self._stall.cancel()
        if self._later is not None and self._later.active():
            self._later.cancel()
        self._later = None


def plain_tcp(request: Request) -> tcp.Connection | None:
    """
    The TCP connection under C{request} if its bytes go to the socket as
    they are (no TLS on the way), else L{None}.
    """
    transport = request.channel.transport if request.channel is not None else None
    while transport is not None and not ISSLTransport.providedBy(transport):
        if isinstance(transport, tcp.Connection):
            return transport
        if not isinstance(transport, ProtocolWrapper):
            return None
        transport = transport.transport
    return None


class _DirectSender:
    """
    A response body written straight to the socket, where the connection
    is plain TCP and no rate cap applies: written from the mapped file
    (L{_Slice.send}) until the socket is full, with no allocation, no copy
    into Twisted's buffer and no callback per chunk.  (C{sendfile(2)} was
    measured too, and was slower to C{curl} on loopback, because the receiver
    then copies from page-cache pages that are not in any CPU cache,
    where here the sender copies them into the socket and the receiver
    reads them back while they are still in cache; see
    docs/performance.rst.)

    It is the request's push producer.  The bytes bypass the transport's
    buffer, so it tells the transport it is paused and asks it to watch
    for writability: once the buffer (the headers) has drained and the
    socket takes more, the transport resumes its producer, the HTTP
    channel, which resumes this.  Nothing is sent while the socket is full,
    and no turn sends more than L{TURN} bytes, so other connections get
    theirs.  A client that takes nothing for L{STALL_TIMEOUT} seconds is
    cut off.
    """

    TURN = 2**24

    def __init__(self, clock: Any, on_stall: Any, connection: tcp.Connection) -> None:
        self._stall = clock.callLater(STALL_TIMEOUT, on_stall)
        self._tcp = connection
        self.deferred: Deferred[None] | None = None
        self._body: _Slice | None = None
        self._request: Request | None = None

    def beginFileTransfer(self, body: _Slice, request: Request) -> Deferred[None]:
        self._body, self._request = body, request
        self.deferred = Deferred()
        request.registerProducer(self, True)
        request.write(b"")  # the headers, into the transport's buffer
        self._when_writable()
        return self.deferred

    def _when_writable(self) -> None:
        self._tcp.producerPaused = True
        self._tcp.startWriting()

    def resumeProducing(self) -> None:
        body, d = self._body, self.deferred
        if body is None or d is None or d.called:
            return
        turn = 0
        try:
            while turn < self.TURN:
                n = body.send(self._tcp.fileno())
                if n == 0:
                    break
                turn += n
        except BlockingIOError:
            pass
        except OSError as e:
            self._end(Failure(e))
            self._tcp.abortConnection()
            return
        if turn and self._stall.active():
            self._stall.reset(STALL_TIMEOUT)
        if body.remaining == 0 or body.broken:
            self._end(None)
        else:
            self._when_writable()

    def pauseProducing(self) -> None:
        pass  # nothing goes through the transport's buffer: it never fills

    def stopProducing(self) -> None:
        self._end(Failure(ConnectionError("the client went away")))

    def _end(self, result: Failure | None) -> None:
        self.done()
        d, self.deferred = self.deferred, None
        request, self._request = self._request, None
        if request is not None:
            request.unregisterProducer()
        if d is not None and not d.called:
            if result is None:
                d.callback(None)
            else:
                d.errback(result)

    def done(self) -> None:
        if self._stall.active():
            self._stall.cancel()


class _TLSSender(_DirectSender):
    """
    A response body over TLS with no rate cap: read a block at a time
    into one reused buffer (L{_Slice.read_block}), sealed in records by
    OpenSSL in one call per block (L{DirectTLS.seal}) and written straight
    to the socket, on the reactor thread like L{_DirectSender} and with
    its rules: nothing is read while the socket is full, at most L{TURN}
    bytes a turn, and a client that takes nothing for L{STALL_TIMEOUT}
    seconds is cut off.  Through Twisted's TLS layer each 16 KiB record
    cost a round through Python, copies and fresh buffers: that, not the
    encryption, was most of a TLS holder's CPU (docs/performance.rst).

    Records must reach the wire in the order they were made.  They are
    written here only while TCP's own buffer is empty; when the socket
    takes part of a block, the rest goes into that buffer, behind which
    anything the TLS layer writes later (a response's end, an alert)
    waits its turn, and this sender waits for the buffer to drain.
    """

    TURN = 2**22  # sealing costs more than copying: a shorter turn, so others wait no longer

    def __init__(self, clock: Any, on_stall: Any, tls: DirectTLS) -> None:
        super().__init__(clock, on_stall, tls.tcp)
        self._tls = tls

    def _paused(self) -> None:
        # Paused through the TLS layer's stand-in producer, which passes a
        # resume (the transport's, or the layer's own) on only to a
        # producer it paused.
        membrane: Any = self._tcp.producer
        if membrane is not None:
            membrane.pauseProducing()

    def _when_writable(self) -> None:
        self._paused()
        super()._when_writable()

    def resumeProducing(self) -> None:
        body, d = self._body, self.deferred
        if body is None or d is None or d.called:
            return
        waiting = self._tls.waiting()
        if waiting == "socket":
            self._when_writable()  # bytes written before go first
            return
        if waiting is not None:
            self._paused()  # the layer resumes its producer once its own writes are out
            return
        fd, turn, full = self._tcp.fileno(), 0, False
        try:
            while turn < self.TURN and not full:
                block = body.read_block()
                if not block:
                    break
                for record in self._tls.seal(block):
                    if full:  # behind what TCP's buffer holds already
                        self._tcp.write(bytes(record))
                        continue
                    try:
                        written = os.write(fd, record)
                    except BlockingIOError:
                        written = 0
                    turn += written
                    if written < len(record):  # the socket is full: TCP's buffer keeps the rest
                        full = True
                        self._tcp.write(bytes(record[written:]))
        except (OSError, SSLError) as e:
            self._end(Failure(e))
            self._tcp.abortConnection()
            return
        if turn and self._stall.active():
            self._stall.reset(STALL_TIMEOUT)
        if body.remaining == 0 or body.broken:
            self._end(None)  # what TCP's buffer holds goes out before anything written after
        else:
            self._when_writable()


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | None | str:
    """
    The byte range C{(first, last)} that a C{Range} header asks for, L{None}
    to send the whole file (no header, one we do not serve, several ranges),
    or C{"unsatisfiable"} (also for numbers too long to mean anything, and
    any range of an empty file).
    """
    if header is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None  # several ranges, or not bytes: the whole file, once
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if len(first) > MAX_DIGITS or len(last) > MAX_DIGITS or size == 0:
        return "unsatisfiable"
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return (max(size - n, 0), size - 1)
    start = int(first)
    if last and start > int(last):
        return None  # invalid: ignored, as RFC 9110 says
    if start >= size:
        return "unsatisfiable"
    end = int(last) if last else size - 1
    return (start, min(end, size - 1))


@functools.cache
def _types() -> mimetypes.MimeTypes:
    types = mimetypes.MimeTypes()  # Python's table only, not the host's
    for suffix, kind in EXTRA_TYPES.items():
        types.add_type(kind, suffix)
    return types


def content_type(name: str) -> str:
    """
    The content type that file C{name} (a path in the share) implies, by
    the suffixes of its last segment; C{application/octet-stream} when
    none does.  No charset: a shared file's encoding is not known.
    """
    # "./" first: the name is read as a path, never as a URL with a scheme.
    kind, compressed = _types().guess_type("./" + name.rpartition("/")[2], strict=True)
    if compressed is not None:
        return COMPRESSED_TYPES.get(compressed, "application/octet-stream")
    return kind or "application/octet-stream"


def is_inline(kind: str) -> bool:
    """
    May a file of content type C{kind} be shown in the browser?  Only what
    a browser shows inertly: PDF, JSON, and text, images, audio and video
    other than HTML, XML (SVG among it), XSL and scripts.  Everything else
    (those, and every type not known to be inert) is an attachment.
    """
    top, _, sub = kind.lower().partition("/")
    if _ACTIVE_SUBTYPE.search(sub):
        return False
    return kind.lower() in INLINE_TYPES or top in INLINE_KINDS


def content_disposition(name: str, inline: bool) -> bytes:
    """
    C{inline} or C{attachment} with the file's own name (its last
    segment): C{filename*} percent-encoded UTF-8 (RFC 6266, RFC 8187), and
    an ASCII C{filename} for clients that know no better.
    """
    base = name.rpartition("/")[2]
    ascii_name = re.sub(r"[^A-Za-z0-9 !#$&'()+,.;=@^_`{}~-]", "_", base)
    encoded = quote(base, safe="!#$&+^`|", errors="strict")
    disposition = "inline" if inline else "attachment"
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}".encode("ascii")


def content_headers(request: Request, name: str) -> None:
    """
    The headers that say what the bytes of file C{name} are: its content
    type, C{nosniff} so that no browser guesses another, and its
    disposition.  Active content (HTML, SVG, XML, scripts, anything not
    known to be inert) is an attachment, so it is saved and never rendered
    in the peer's origin, and sandboxed should a client render it anyway.
    """
    kind = content_type(name)
    inline = is_inline(kind)
    request.setHeader(b"content-type", kind.encode("ascii"))
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-disposition", content_disposition(name, inline))
    if not inline:
        request.setHeader(b"content-security-policy", b"sandbox; default-src 'none'")


def _plain(request: Request, status: int, text: bytes) -> bytes:
    """
    An answer about the file instead of its bytes, as plain text.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return text


def _etags(header: bytes) -> list[bytes]:
    """
    The entity-tags of an C{If-Match} / C{If-None-Match} list (C{*} too).
    """
    return [tag.strip() for tag in header.split(b",") if tag.strip()]


def _weak_match(tags: list[bytes], etag: bytes) -> bool:
    return any(t == b"*" or t.removeprefix(b"W/") == etag for t in tags)


def _strong_match(tags: list[bytes], etag: bytes) -> bool:
    return any(t == b"*" or t == etag for t in tags)


def preconditions(request: Request, etag: bytes, mtime: int) -> int | None:
    """
    RFC 9110 section 13.2.2, for a file that exists: the status to answer
    instead of the file (C{412}, C{304}), or L{None} to go on.
    """
    if_match = request.getHeader(b"if-match")
    if if_match is not None:
        if not _strong_match(_etags(if_match), etag):
            return 412
    else:
        since = parse_http_date(request.getHeader(b"if-unmodified-since"))
        if since is not None and mtime > since:
            return 412
    if_none_match = request.getHeader(b"if-none-match")
    if if_none_match is not None:
        if _weak_match(_etags(if_none_match), etag):
            return 304
    else:
        since = parse_http_date(request.getHeader(b"if-modified-since"))
        if since is not None and mtime <= since:
            return 304
    return None


def range_applies(request: Request, etag: bytes, mtime: int) -> bool:
    """
    C{If-Range}: honour the C{Range} only for the version it names (a
    strong entity-tag, or exactly our C{Last-Modified}); otherwise the
    whole file is sent, so a resumed download never mixes two versions.
    """
    if_range = request.getHeader(b"if-range")
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith((b'"', b"W/")):
        return if_range == etag
    return parse_http_date(if_range) == mtime


class SharedFileResource(Resource):
    isLeaf = True
    log = Logger()

    def __init__(
        self, share: ShareIndex, name: str, node: IFileHost, starts: StartSpreader | None = None
    ) -> None:
        super().__init__()
        self.share = share
        self.name = name
        self.node = node
        self.starts = starts

    def render_HEAD(self, request: Request) -> bytes | int:
        return self.render_GET(request)

    def render_GET(self, request: Request) -> bytes | int:
        shared = self.share.files.get(self.name)
        path = self.share.resolve(self.name)
        if shared is None or path is None:
            return _plain(request, 404, b"No such file.\n")
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed when the transfer ends)
        except OSError:
            return _plain(request, 404, b"No such file.\n")
        st = os.fstat(f.fileno())
        if stamp_of(st) != shared.stamp:
            f.close()
            request.setHeader(b"retry-after", b"2")
            return _plain(request, 503, b"The file changed; it is being hashed again.\n")
        size = st.st_size
        etag = f'"{shared.sha256}"'.encode()
        mtime = st.st_mtime_ns // 10**9
        request.setHeader(b"etag", etag)
        request.setHeader(b"last-modified", http_date(mtime))
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"x-content-type-options", b"nosniff")
        status = preconditions(request, etag, mtime)
        if status == 304:
            f.close()
            request.setResponseCode(304)
            return b""
        if status is not None:
            f.close()
            return _plain(request, status, b"The file is not the version asked for.\n")
        wanted = parse_range(request.getHeader(b"range"), size)
        if not range_applies(request, etag, mtime):
            wanted = None
        if wanted == "unsatisfiable":
            f.close()
            request.setHeader(b"content-range", f"bytes */{size}".encode())
            return _plain(request, 416, b"")
        if wanted is None:
            start, length = 0, size
        else:
            assert isinstance(wanted, tuple)
            start, length = wanted[0], wanted[1] - wanted[0] + 1
        streaming = request.method == b"GET" and length > 0
        slots: UploadSlots | None = self.node.upload_slots
        body = _Slice(f, start, length, shared.stamp)
        upload = self._upload(request, body)
        if streaming and slots is not None and not slots.take(upload):
            f.close()
            request.setHeader(b"retry-after", b"5")
            return _plain(request, 503, BUSY)
        content_headers(request, self.name)
        if wanted is not None:
            request.setResponseCode(206)
            request.setHeader(b"content-range", f"bytes {start}-{start + length - 1}/{size}".encode())
        request.setHeader(b"content-length", str(length).encode())
        if not streaming:
            f.close()
            return b""
        return self._send(request, f, body, slots, upload, shared.sha256)

    def _upload(self, request: Request, body: _Slice) -> Upload:
        """
        This response as an upload, for the slots to weigh.
        """
        transport: Any = request.channel.transport if request.channel is not None else None

        def cut_off() -> None:
            if transport is not None:
                transport.abortConnection()

        return Upload(peer_host(transport), self.node.clock.seconds(), lambda: body.sent, cut_off)

    def _send(
        self, request: Request, f: BinaryIO, body: _Slice, slots: UploadSlots | None,
        upload: Upload, sha256: str,
    ) -> int:
        cut_off = upload.cut
        if self.starts is not None:
            self.starts.sending(sha256, 1)
        path = getattr(request.channel, "transfer_path", "direct")  # reversal.py marks its own
        shown = self.node.upload_began(self.name, upload.host, body.length, upload.sent, path)
        rate: UploadRate | None = self.node.upload_rate
        connection = plain_tcp(request)
        tls = DirectTLS.under(request.channel.transport) if connection is None else None
        sender: _BigFileSender | _DirectSender
        if rate is None and connection is not None:
            sender = _DirectSender(self.node.clock, cut_off, connection)
        elif rate is None and tls is not None:
            sender = _TLSSender(self.node.clock, cut_off, tls)
        else:
            sender = _BigFileSender(self.node.clock, cut_off, rate)
        sending = sender.beginFileTransfer(body, request)
        lost = False  # the connection went before the response ended (set by gone)

        def finished(result: object) -> None:
            sender.done()
            body.close()
            f.close()
            if self.starts is not None:
                self.starts.sending(sha256, -1)
            self.node.upload_ended(shown)
            if slots is not None:
                slots.give(upload)
            self.log.info(
                "sent {name} bytes {first}-{last} ({sent} bytes) to {peer}",
                name=self.name, first=body.start, last=body.start + body.sent - 1, sent=body.sent,
                peer=upload.host,
            )
            if body.broken:
                self.log.warn("stopped serving {name}: {why}", name=self.name, why=body.broken)
                cut_off()  # the client sees the transfer break, at once
            elif isinstance(result, Failure):
                pass  # stopped because the connection is going: nothing to finish
            elif not request.finished and not lost:
                request.finish()

        def gone(failure: object) -> None:
            nonlocal lost
            lost = True
            if sender.deferred is not None and not sender.deferred.called:
                sender.stopProducing()

        sending.addBoth(finished)
        request.notifyFinish().addErrback(gone)
        return NOT_DONE_YET


class PartialFileResource(SharedFileResource):
    """
    A file this peer is still downloading: byte ranges that lie in pieces
    it has verified are served (C{206}), anything else gets C{416}, so
    peers fetching one file at once feed each other (swarming).
    """

    def __init__(
        self, share: ShareIndex, partial: Partial, node: IFileHost,
        starts: StartSpreader | None = None,
    ) -> None:
        super().__init__(share, partial.name, node, starts)
        self.partial = partial

    def render_GET(self, request: Request) -> bytes | int:
        p = self.partial
        etag = f'"{p.sha256}"'.encode()
        request.setHeader(b"etag", etag)
        request.setHeader(b"accept-ranges", b"bytes")
        wanted_tags = request.getHeader(b"if-match")
        if wanted_tags is not None and not _strong_match(_etags(wanted_tags), etag):
            return _plain(request, 412, b"The file is not the version asked for.\n")
        wanted = parse_range(request.getHeader(b"range"), p.size)
        if not isinstance(wanted, tuple) or not p.holds(*wanted):
            request.setHeader(b"content-range", f"bytes */{p.size}".encode())
            return _plain(request, 416, NOT_YET)
        start, length = wanted[0], wanted[1] - wanted[0] + 1
        try:
            f = open(p.path, "rb")  # noqa: SIM115 (closed when the transfer ends)
        except OSError:
            return _plain(request, 404, b"No such file.\n")
        slots: UploadSlots | None = self.node.upload_slots
        body = _Slice(f, start, length, None)
        upload = self._upload(request, body)
        if request.method == b"GET" and slots is not None and not slots.take(upload):
            f.close()
            request.setHeader(b"retry-after", b"5")
            return _plain(request, 503, BUSY)
        request.setResponseCode(206)
        content_headers(request, p.name)
        request.setHeader(b"content-range", f"bytes {start}-{wanted[1]}/{p.size}".encode())
        request.setHeader(b"content-length", str(length).encode())
        if request.method != b"GET":
            f.close()
            return b""
        return self._send(request, f, body, slots, upload, p.sha256)
