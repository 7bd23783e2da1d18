"""
The HTTP side of a peer's port: C{GET} and C{HEAD /files/NAME}, with single
C{Range} requests, so that peers (and C{curl}) fetch files directly from a
holder; C{/pieces/SHA256} and C{/have/SHA256} for downloaders; C{/}, and
C{/files/FOLDER/} for one folder, the share as a page (L{ShareListing}).

A request names a file; the name is looked up in the share's index, never
joined onto a path, so C{..}, encoded traversal, absolute paths, dotfiles,
directories and symlinks out of the share are simply not there (404).  The
file is opened again by its real path, which must still be a regular file
inside the share (by its real path) and unchanged since it was hashed.  Sending its
bytes is L{p2pshare.peer.serving}'s part.

L{Sniffer} lets one port speak both protocols: it looks at the first word a
client sends, as Gnutella servents do, and hands the connection to HTTP or
to the line protocol.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.pages import errorPage, notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from p2pshare import wire
from p2pshare.admission import authority
from p2pshare.common import OncePerMinute
from p2pshare.disk import human_size
from p2pshare.display import shown
from p2pshare.httpserver import strict_site
from p2pshare.peer.interfaces import IFileHost
from p2pshare.peer.reversal import reversed_host
from p2pshare.peer.serving import (
    PartialFileResource,
    SharedFileResource,
    StartSpreader,
    peer_host,
)
from p2pshare.peer.share import SharedFile, is_shareable_name
from p2pshare.pieces import DIGEST, bitfield, piece_count
from p2pshare.relay import GIV, SPLICE, hand_over
from p2pshare.tls import is_tls_hello, tls_failure
from p2pshare.wire import url_path

if TYPE_CHECKING:
    from p2pshare.peer.download.attempt import Partial

FIRST_LINE_TIMEOUT = 30  # seconds to finish the first line, whatever the protocol
_TOLD = OncePerMinute()  # which addresses' stray GIV and SPLICE lines were logged
# An HTTP request line: method, target, version (RFC 9112 section 3).
_REQUEST_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP/\d\.\d\r?")
_REQUEST_START = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ /")


class Sniffer(Protocol, TimeoutMixin):
    """
    The first protocol on every accepted connection: it waits for the first
    line, then becomes HTTP (a request line: C{METHOD TARGET HTTP/1.1},
    whatever the method) or the line protocol.  Deciding on the whole line
    means an HTTP client with an odd method gets an HTTP answer (C{501}),
    never a run of C{ERROR} lines.  The first line must be complete within
    L{FIRST_LINE_TIMEOUT} seconds.
    """

    log = Logger()
    engaged = False  # nothing useful said yet: evicted first when full

    def __init__(
        self, site: Site, lines: IProtocolFactory, reversals: Any = None, relay: Any = None
    ) -> None:
        self.site = site
        self.lines = lines
        self.reversals = reversals  # Reversals: a GIV line is a holder we asked for
        self.relay = relay  # Relay (--relay): SPLICE, and a GIV for a splice
        self._buffer = b""

    def connectionMade(self) -> None:
        self.setTimeout(FIRST_LINE_TIMEOUT)

    def timeoutConnection(self) -> None:
        transport: Any = self.transport
        self.log.info("closing {peer}: no first line in time", peer=peer_host(transport))
        transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if not self._buffer and is_tls_hello(data):
            self.log.warn(
                "refused {peer}: it speaks TLS, and this port does not (a network secret or "
                "certificates one side has and the other has not)", peer=peer_host(self.transport),
            )
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._buffer += data
        line, newline, _ = self._buffer.partition(b"\n")
        if not newline and len(self._buffer) < wire.MAX_LINE:
            return  # not enough to tell yet
        self.setTimeout(None)
        transport: Any = self.transport
        addr = transport.getPeer()
        proto: Any
        giv = GIV.fullmatch(line) if newline else None
        splice = SPLICE.fullmatch(line) if newline else None
        if giv is not None or splice is not None:
            rest, self._buffer = self._buffer.partition(b"\n")[2], b""
            if splice is not None and self.relay is not None:
                self.relay.splice_line(splice, transport, rest)
            elif giv is not None and self._given(giv, transport, rest):
                pass
            else:
                clock = getattr(self.reversals or self.relay, "clock", None)
                if clock is None or _TOLD.due(peer_host(transport), clock.seconds()):
                    self.log.info("closing {peer}: a {what} nobody here waits for (said once a "
                                  "minute)", peer=peer_host(transport),
                                  what=line.split()[0].decode("ascii"))
                transport.abortConnection()
            return
        if (newline and _REQUEST_LINE.fullmatch(line)) or (
            not newline and _REQUEST_START.match(line)
        ):
            # A request line, or a long one that starts like one (HTTP
            # answers it: 400 when it is too long, never ERROR lines).
            proto = self.site.buildProtocol(addr)
        else:
            proto = self.lines.buildProtocol(addr)
        buffered, self._buffer = self._buffer, b""
        hand_over(transport, proto, buffered)

    def _given(self, giv: re.Match[bytes], transport: Any, rest: bytes) -> bool:
        """
        A holder we asked to connect, or one to splice to a downloader
        that waits at this relay.
        """
        token, name = (g.decode("ascii") for g in giv.groups())
        return (self.reversals is not None and self.reversals.arrived(token, name, transport, rest)) or (
            self.relay is not None and self.relay.giv(token, name, transport, rest)
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        # Lost before the first line: a TLS handshake that failed (another
        # CA's certificate, plain TCP on a TLS port) is worth a log line.
        failed = tls_failure(reason)
        if failed is not None:
            self.log.warn("TLS with {peer} failed: {why}", peer=peer_host(self.transport), why=failed)


class SniffingFactory(Factory):
    """
    A peer's port: HTTP for C{site}, the line protocol from C{lines}.
    """

    noisy = False

    def __init__(
        self, site: Site, lines: IProtocolFactory, reversals: Any = None, relay: Any = None
    ) -> None:
        self.site = site
        self.lines = lines
        self.reversals = reversals
        self.relay = relay

    def buildProtocol(self, addr: object) -> Sniffer:
        return Sniffer(self.site, self.lines, self.reversals, self.relay)


def make_site(node: IFileHost, reactor: Any) -> Site:
    root = Resource()
    starts = StartSpreader(node.clock)
    root.putChild(b"", ShareListing(node, as_json=False))
    root.putChild(b"index.json", ShareListing(node, as_json=True))
    root.putChild(b"files", FilesResource(node, starts))
    root.putChild(b"pieces", PiecesResource(node, starts))
    root.putChild(b"have", HaveResource(node))
    return strict_site(root, reactor)


class FilesResource(Resource):
    """
    C{/files/}: the share's own index as text; C{/files/NAME}: one file;
    C{/files/FOLDER/}: the page of the share's files under that folder
    (C{/files/FOLDER} is sent there).  Only names the share's index holds
    are found, so hidden folders, C{..} and links out have no page either.
    """

    isLeaf = False

    def __init__(self, node: IFileHost, starts: StartSpreader | None = None) -> None:
        super().__init__()
        self.node = node
        self.starts = starts or StartSpreader(node.clock)

    def getChild(self, path: bytes, request: Request) -> IResource:
        refused = self._refused(request)
        if refused is not None:
            return refused
        share = self.node.share
        if share is None:
            return notFound("No such file", "This peer shares no such file.")
        if path == b"" and not request.postpath:
            return self
        try:
            # /files/music/live/set.ogg: the segments, each percent-decoded.
            name = b"/".join([path, *(request.postpath or [])]).decode("utf-8")
        except UnicodeDecodeError:
            return errorPage(400, "Bad file name", "A file name is UTF-8.")
        if name in share.files:
            return SharedFileResource(share, name, self.node, self.starts)
        partial = self.node.partial_named(name)
        if partial is not None:
            return PartialFileResource(share, partial, self.node, self.starts)
        folder = name.removesuffix("/")
        if is_shareable_name(folder) and any(n.startswith(folder + "/") for n in share.files):
            if folder == name:  # no slash: where the page is
                return _ToFolder(self.node, folder)
            return ShareListing(self.node, as_json=False, folder=folder)
        return notFound("No such file", "This peer shares no such file.")

    def _refused(self, request: Request) -> IResource | None:
        return refused(self.node, request)

    def render_GET(self, request: Request) -> bytes:
        refused = self._refused(request)
        if refused is not None:
            return refused.render(request)
        share = self.node.share
        files = share.files.values() if share is not None else []
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return "".join(f"{f.name}\t{f.size}\t{f.sha256}\n" for f in files).encode("utf-8")


class ShareListing(Resource):
    """
    C{GET /}: what this peer shares, as a page people read (a section per
    folder: name, size, the SHA-256's first digits, a link); C{GET
    /files/FOLDER/}: the same page for the files under one folder (404
    when it holds none); C{GET /index.json}: the whole share for programs,
    C{{"peer": NAME, "files": [{"name", "size", "sha256"}]}}.  Every link
    is percent-encoded (L{url_path}).  In a private network all of them
    need a signed URL, and the page's links are signed in turn.
    """

    isLeaf = True
    # The page runs nothing, and loads nothing but its own inline style.
    POLICY = b"default-src 'none'; style-src 'unsafe-inline'"

    def __init__(self, node: IFileHost, as_json: bool, folder: str = "") -> None:
        super().__init__()
        self.node = node
        self.as_json = as_json
        self.folder = folder

    def render_GET(self, request: Request) -> bytes:
        no = refused(self.node, request)
        if no is not None:
            return no.render(request)  # type: ignore[no-any-return]
        share = self.node.share
        files = sorted(share.files.values(), key=lambda f: f.name) if share is not None else []
        if self.folder:
            files = [f for f in files if f.name.startswith(self.folder + "/")]
            if not files:
                gone = notFound("No such folder", "This peer shares no file in that folder.")
                return gone.render(request)  # type: ignore[no-any-return]
        name = self.node.peer_name
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self.as_json:
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            listing = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in files]
            return json.dumps({"peer": name, "files": listing}, ensure_ascii=False).encode()
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", self.POLICY)
        # Links on the page are signed for this peer, as the viewer reached it.
        where = (this_peer(self.node, request) or "") if self.node.secret is not None else ""
        return self._page(name, files, where).encode("utf-8")

    def _link(self, path: str, where: str) -> str:
        secret = self.node.secret
        if secret is None:
            return path
        return secret.sign_path(path, self.node.clock.seconds(), where=where)

    def _a(self, path: str, text: str, where: str) -> str:
        """
        A link to C{path} (percent-encoded already), signed if need be,
        showing C{text}.
        """
        return f"<a href=\"{escape(self._link(path, where))}\">{escape(shown(text))}</a>"

    def _page(self, peer: str | None, files: list[SharedFile], where: str = "") -> str:
        folders: dict[str, list[SharedFile]] = {}
        for f in files:
            folder, _, _ = f.name.rpartition("/")
            folders.setdefault(folder, []).append(f)
        who = escape(shown(peer or "this peer"))
        total = human_size(sum(f.size for f in files))
        title = f"{who}: {escape(shown(self.folder))}/" if self.folder else f"{who}: shared files"
        within = f" in {escape(shown(self.folder))}/" if self.folder else ""
        parts = [
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            f"<title>{title}</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td{padding:.1em 1em .1em 0}td.n{text-align:right}code{color:#555}</style>",
            "</head><body>",
        ]
        if self.folder:  # where this folder is: every folder above it, each a link
            above = self.folder.split("/")
            trail = [self._a("/", "all files", where)] + [
                self._a("/files/" + url_path("/".join(above[: i + 1])) + "/", segment, where)
                for i, segment in enumerate(above[:-1])
            ]
            parts.append(f"<p class=\"up\">{' / '.join([*trail, escape(shown(above[-1]))])}</p>")
        parts.append(f"<h1>{who} shares {len(files)} files ({total}){within}</h1>")
        if not files:
            parts.append("<p>Nothing yet.</p>")
        for folder in sorted(folders):
            parts.append(f"<h2>{escape(shown(folder + '/' if folder else '/'))}</h2>")
            if folder and folder != self.folder:
                page = "/files/" + url_path(folder) + "/"
                parts.append(f"<p class=\"open\">{self._a(page, 'this folder alone', where)}</p>")
            parts.append("<table>")
            for f in folders[folder]:
                base = f.name.rpartition("/")[2]
                parts.append(
                    f"<tr><td>{self._a('/files/' + url_path(f.name), base, where)}</td>"
                    f"<td class=\"n\">{human_size(f.size)}</td>"
                    f"<td><code title=\"{f.sha256}\">{f.sha256[:12]}</code></td></tr>"
                )
            parts.append("</table>")
        index = self._a("/index.json", "index.json", where)
        parts.append(f"<p>The whole share also as {index}.</p></body></html>\n")
        return "\n".join(parts)


class _ToFolder(Resource):
    """
    C{/files/FOLDER}: a folder's page is at C{/files/FOLDER/} (signed
    again, in a private network: the request was).
    """

    isLeaf = True

    def __init__(self, node: IFileHost, folder: str) -> None:
        super().__init__()
        self.node = node
        self.folder = folder

    def render_GET(self, request: Request) -> bytes:
        path = "/files/" + url_path(self.folder) + "/"
        secret = self.node.secret
        if secret is not None:
            where = this_peer(self.node, request) or ""
            path = secret.sign_path(path, self.node.clock.seconds(), where=where)
        request.setResponseCode(302)
        request.setHeader(b"location", path.encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"A folder: its page is {path}\n".encode("ascii")


def refused(node: IFileHost, request: Request) -> IResource | None:
    """
    In a private network, a 403 unless the URL is signed with its secret,
    for this peer (docs/security.rst); L{None} when the request may go on.
    """
    secret = node.secret
    if secret is None:
        return None
    args: dict[bytes, list[bytes]] = request.args or {}
    expires = (args.get(b"expires") or [b""])[0].decode("ascii", "replace")
    sig = (args.get(b"sig") or [b""])[0].decode("ascii", "replace")
    path = (request.path or b"").decode("ascii", "replace")
    where = this_peer(node, request)  # None: the Host names another; no signature fits
    problem = secret.check_path(path, expires, sig, node.clock.seconds(), where or "-")
    if problem is None:
        return None
    return errorPage(403, "Forbidden", problem)


def this_peer(node: IFileHost, request: Request) -> str | None:
    """
    The C{HOST:PORT} the request's C{Host} names, if it names this peer:
    the address the connection came in at, its advertised host, or
    C{localhost} on loopback, and this port.  A URL signed for another
    member does not work here.
    """
    raw = (request.getHeader(b"host") or b"").decode("ascii", "replace").strip().lower()
    host, _, port = raw.rpartition(":") if not raw.endswith("]") else (raw, "", "")
    if not host or "]" in port:
        host, port = raw, ""
    local: Any = request.getHost()
    here = str(getattr(local, "host", ""))
    number = getattr(local, "port", None)
    if not port:
        port = "443" if request.isSecure() else "80"
    bare = host.strip("[]")
    me = getattr(node, "peer_name", None)
    if port == "0" and me is not None and bare == reversed_host(me):
        return authority(bare, 0)  # a holder nobody dials, named as downloaders name it
    if not port.isdigit() or int(port) != number:
        return None
    names = {here.lower(), (node.advertised() or "").lower()}
    if here.startswith("127.") or here in ("::1", "::ffff:127.0.0.1"):
        names.add("localhost")
    if here.startswith("::ffff:"):
        names.add(here[7:])
    return authority(bare, int(port)) if bare in names else None


class _BySha256(Resource):
    """
    C{/KIND/SHA256}: something about the file with that content, shared
    here or being downloaded here (L{found} says what).
    """

    def __init__(self, node: IFileHost) -> None:
        super().__init__()
        self.node = node

    def getChild(self, path: bytes, request: Request) -> IResource:
        no = refused(self.node, request)
        if no is not None:
            return no
        share = self.node.share
        sha = path.decode("ascii", "replace")
        if share is not None and not request.postpath:
            shared = share.by_sha256(sha)
            held = shared if shared is not None else self.node.partial_by_sha(sha)
            if held is not None:
                return self.found(held)
        return notFound("No such file", "This peer shares no file with that SHA-256.")

    def found(self, held: SharedFile | Partial) -> IResource:
        """
        The answer about C{held}: a file shared here, or one being
        downloaded here.
        """
        raise NotImplementedError

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(404)  # /pieces or /have alone: no such file
        return b"No such file.\n"

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


class PiecesResource(_BySha256):
    """
    C{/pieces/SHA256}: the piece list (pieces.py) of a shared file with
    that content: its 32-byte piece digests end to end, with the list's
    root as its strong C{ETag}, and in C{P2P-Start-Piece} the piece this
    holder suggests the downloader begin with (L{StartSpreader}).
    """

    def __init__(self, node: IFileHost, starts: StartSpreader | None = None) -> None:
        super().__init__(node)
        self.starts = starts or StartSpreader(node.clock)

    def found(self, held: SharedFile | Partial) -> IResource:
        return _PieceList(held.pieces, held.root, self.starts, held.sha256)


class HaveResource(_BySha256):
    """
    C{/have/SHA256}: which pieces of that file this peer can serve, as a
    bitfield (pieces.py): all of them for a shared file, the verified ones
    for a download in progress.
    """

    def found(self, held: SharedFile | Partial) -> IResource:
        if isinstance(held, SharedFile):
            count = piece_count(held.size)
            return _Bits(bitfield(set(range(count)), count))
        return _Bits(held.bits())


class _Bits(Resource):
    isLeaf = True

    def __init__(self, bits: bytes) -> None:
        super().__init__()
        self.bits = bits

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"cache-control", b"no-store")
        return self.bits


class _PieceList(Resource):
    isLeaf = True

    def __init__(self, digests: bytes, root: str, starts: StartSpreader, sha256: str) -> None:
        super().__init__()
        self.digests = digests
        self.root = root
        self.starts = starts
        self.sha256 = sha256

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"etag", f'"{self.root}"'.encode())
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"GET":
            start = self.starts.suggest(self.sha256, len(self.digests) // DIGEST)
            request.setHeader(b"p2p-start-piece", str(start).encode())
        return self.digests

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)
