"""
The HTTP side of a peer's port: C{GET} and C{HEAD /files/NAME}, with single
C{Range} requests, so that peers (and C{curl}) fetch files directly from a
holder.

A request names a file; the name is looked up in the share's index, never
joined onto a path, so C{..}, encoded traversal, absolute paths, dotfiles,
directories and symlinks out of the share are simply not there (404).  The
file is opened again by its real path, which must still be a regular file
directly inside the share and unchanged since it was hashed.  Bodies are
streamed by a producer, never read whole.

L{Sniffer} lets one port speak both protocols: it looks at the first word a
client sends, as Gnutella servents do, and hands the connection to HTTP or
to the line protocol.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, BinaryIO

from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.pages import errorPage, notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from p2pshare.tls import tls_failure

if TYPE_CHECKING:
    from p2pshare.peer.node import PeerNode
    from p2pshare.peer.share import ShareIndex

IDLE_TIMEOUT = 60  # seconds an HTTP connection may stay idle
MAX_UPLOADS = 16  # files served at once; more get 503 and a Retry-After
HTTP_METHODS = {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH",
                b"CONNECT"}
_RANGE = re.compile(rb"bytes=(\d*)-(\d*)")


class Sniffer(Protocol):
    """
    The first protocol on every accepted connection: it waits for the first
    word, then becomes HTTP (C{GET}, C{HEAD}, ...) or the line protocol.
    """

    log = Logger()

    def __init__(self, node: PeerNode) -> None:
        self.node = node
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        word, space, _ = self._buffer.partition(b" ")
        if not space and b"\n" not in self._buffer and len(self._buffer) < 8:
            return  # not enough to tell yet
        transport: Any = self.transport
        addr = transport.getPeer()
        proto: Any
        if word in HTTP_METHODS:
            proto = self.node.site.buildProtocol(addr)
        else:
            from p2pshare.peer.protocol import PeerProtocol

            proto = PeerProtocol(self.node)
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = proto  # counted by a LimitedFactory
        else:
            transport.protocol = proto
        proto.makeConnection(transport)
        buffered, self._buffer = self._buffer, b""
        proto.dataReceived(buffered)


    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Lost before the first word: a TLS handshake that failed (another
        # CA's certificate, plain TCP on a TLS port) is worth a log line.
        failed = tls_failure(reason)
        if failed is not None:
            peer = getattr(self.transport.getPeer(), "host", "?") if self.transport else "?"
            self.log.warn("TLS with {peer} failed: {why}", peer=peer, why=failed)


class SniffingFactory(Factory):
    noisy = False

    def __init__(self, node: PeerNode) -> None:
        self.node = node

    def buildProtocol(self, addr: object) -> Sniffer:
        return Sniffer(self.node)


def make_site(node: PeerNode, reactor: Any) -> Site:
    root = Resource()
    root.putChild(b"files", FilesResource(node))
    site = Site(root, reactor=reactor, timeout=IDLE_TIMEOUT)
    site.displayTracebacks = False
    site.noisy = False
    return site


class FilesResource(Resource):
    """
    C{/files/}: the share's own index as text; C{/files/NAME}: one file.
    """

    isLeaf = False

    def __init__(self, node: PeerNode) -> None:
        super().__init__()
        self.node = node

    def getChild(self, path: bytes, request: Request) -> IResource:
        refused = self._refused(request)
        if refused is not None:
            return refused
        share = self.node.share
        if request.postpath or share is None:
            return notFound("No such file", "This peer shares no such file.")
        if path == b"":
            return self
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return errorPage(400, "Bad file name", "A file name is UTF-8.")
        if name not in share.files:
            return notFound("No such file", "This peer shares no such file.")
        return SharedFileResource(share, name, self.node)

    def _refused(self, request: Request) -> IResource | None:
        """
        In a private network, a 403 unless the URL is signed with its
        secret (docs/security.rst); L{None} when the request may go on.
        """
        secret = self.node.secret
        if secret is None:
            return None
        args: dict[bytes, list[bytes]] = request.args or {}
        expires = (args.get(b"expires") or [b""])[0].decode("ascii", "replace")
        sig = (args.get(b"sig") or [b""])[0].decode("ascii", "replace")
        path = (request.path or b"").decode("ascii", "replace")
        problem = secret.check_path(path, expires, sig, self.node.clock.seconds())
        if problem is None:
            return None
        return errorPage(403, "Forbidden", problem)

    def render_GET(self, request: Request) -> bytes:
        refused = self._refused(request)
        if refused is not None:
            return refused.render(request)
        share = self.node.share
        files = share.files.values() if share is not None else []
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return "".join(f"{f.name}\t{f.size}\t{f.sha256}\n" for f in files).encode("utf-8")


class UploadSlots:
    """
    How many files a peer serves at once; beyond that, 503.
    """

    def __init__(self, limit: int = MAX_UPLOADS) -> None:
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used -= 1


class _Slice:
    """
    A file read from C{start} for C{length} bytes, for L{FileSender}.
    """

    def __init__(self, f: BinaryIO, start: int, length: int) -> None:
        self.f = f
        self.remaining = length
        f.seek(start)

    def read(self, n: int) -> bytes:
        if self.remaining <= 0:
            return b""
        data = self.f.read(min(n, self.remaining))
        self.remaining -= len(data)
        return data


class _BigFileSender(FileSender):
    CHUNK_SIZE = 2**20  # 1 MiB reads: 64 KiB ones serve a third slower


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | None | str:
    """
    The byte range C{(first, last)} that a C{Range} header asks for, L{None}
    to send the whole file (no header, one we do not serve, several ranges),
    or C{"unsatisfiable"}.
    """
    if header is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None  # several ranges, or not bytes: the whole file, once
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return (max(size - n, 0), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size:
        return "unsatisfiable"
    if start > end:
        return None  # invalid: ignored, as RFC 9110 says
    return (start, min(end, size - 1))


class SharedFileResource(Resource):
    isLeaf = True

    def __init__(self, share: ShareIndex, name: str, node: Any = None) -> None:
        super().__init__()
        self.share = share
        self.name = name
        self.node = node

    def render_HEAD(self, request: Request) -> bytes | int:
        return self.render_GET(request)

    def render_GET(self, request: Request) -> bytes | int:
        shared = self.share.files.get(self.name)
        path = self.share.resolve(self.name)
        if shared is None or path is None:
            request.setResponseCode(404)
            return b"No such file.\n"
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed when the transfer ends)
        except OSError:
            request.setResponseCode(404)
            return b"No such file.\n"
        st = os.fstat(f.fileno())
        if (st.st_size, st.st_mtime_ns, st.st_ino) != shared.stamp:
            f.close()
            request.setResponseCode(503)
            request.setHeader(b"retry-after", b"2")
            return b"The file changed; it is being hashed again.\n"
        size = st.st_size
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"etag", f'"{shared.sha256}"'.encode())
        request.setHeader(b"content-type", b"application/octet-stream")
        wanted = parse_range(request.getHeader(b"range"), size)
        if wanted == "unsatisfiable":
            f.close()
            request.setResponseCode(416)
            request.setHeader(b"content-range", f"bytes */{size}".encode())
            return b""
        if wanted is None:
            start, length = 0, size
        else:
            assert isinstance(wanted, tuple)
            start, length = wanted[0], wanted[1] - wanted[0] + 1
            request.setResponseCode(206)
            request.setHeader(
                b"content-range", f"bytes {wanted[0]}-{wanted[1]}/{size}".encode()
            )
        request.setHeader(b"content-length", str(length).encode())
        if request.method == b"HEAD" or length == 0:
            f.close()
            return b""
        slots: UploadSlots | None = getattr(self.node, "upload_slots", None)
        if slots is not None and not slots.take():
            f.close()
            request.setResponseCode(503)
            request.setHeader(b"retry-after", b"5")
            return b""
        sender = _BigFileSender()
        sending = sender.beginFileTransfer(_Slice(f, start, length), request)

        def finished(result: object) -> None:
            f.close()
            if slots is not None:
                slots.give()
            if not request.finished and not getattr(request, "_disconnected", False):
                request.finish()

        def gone(failure: object) -> None:
            if sender.deferred is not None and not sender.deferred.called:
                sender.stopProducing()

        sending.addBoth(finished)
        request.notifyFinish().addErrback(gone)
        return NOT_DONE_YET
