"""
The web page's HTTP side: one resource that checks every request (its
C{Host}, its session, and for a change its CSRF token and C{Origin})
before it serves the page's three static files, the JSON API of
L{p2pshare.peer.ui.api}, or the API's live stream (Server-Sent Events).

Every answer forbids framing and any script or style not from the page
itself (C{Content-Security-Policy}), is never cached, and sends no
C{Referer} (the login address carries a token).  A request body is at
most L{MAX_BODY} bytes, JSON, and only C{POST} changes anything.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from p2pshare.admission import authority
from p2pshare.common import LimitedFactory, ListenService
from p2pshare.display import leading_page
from p2pshare.httpserver import StrictRequest, StrictSite, strict_site
from p2pshare.peer.ui.api import Api, ApiError
from p2pshare.peer.ui.guard import COOKIE, Guard, key_ok, origin_ok, own_hosts

MAX_BODY = 64 * 1024  # bytes of a request's JSON body
MAX_STREAMS = 32  # live streams (open pages) at once
MAX_CONNECTIONS = 64  # connections to the page at once (the silent ones make room)
STREAM_EVERY = 1.0  # seconds between looks for a change to stream

SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
    b"cross-origin-opener-policy": b"same-origin",
    b"cross-origin-resource-policy": b"same-origin",
}
STATIC = {  # path: (package, file, type)
    b"/": ("p2pshare.peer.ui", "index.html", b"text/html; charset=utf-8"),
    b"/text.js": ("p2pshare", "text.js", b"text/javascript; charset=utf-8"),
    b"/app.js": ("p2pshare.peer.ui", "app.js", b"text/javascript; charset=utf-8"),
    b"/app.css": ("p2pshare.peer.ui", "app.css", b"text/css; charset=utf-8"),
}
NO_SESSION = ("this page needs a session: open the address that `p2p ui` prints "
              "(it holds a one-time login token)")


class UIRequest(StrictRequest):
    """
    A request to the page: C{POST} too, and a body of at most L{MAX_BODY}
    bytes: a longer one is answered C{413} as soon as its length (or its
    bytes) say so, and the connection closed, so nothing more is read.
    """

    served = (b"GET", b"HEAD", b"POST")
    _received = 0

    def process(self) -> None:
        for name, value in SECURITY_HEADERS.items():  # every answer, a refusal too
            self.setHeader(name, value)
        super().process()

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length if length is not None and length <= MAX_BODY else None)
        if length is not None and length > MAX_BODY:
            self._too_big()

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self._too_big()
            return
        super().handleContentChunk(data)

    def _too_big(self) -> None:
        transport: Any = self.channel.transport if self.channel is not None else None
        if transport is None or getattr(transport, "disconnecting", False):
            return
        text = f"a request's body is at most {MAX_BODY // 1024} KiB\n".encode()
        transport.write(b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n"
                        b"Content-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text)
        transport.loseConnection()


class UISite(StrictSite):
    requestFactory = UIRequest


def _static(package: str, name: str) -> bytes:
    return resources.files(package).joinpath(name).read_bytes()


class Page(Resource):
    """
    The whole page: every path goes through L{render}.

    @param hosts: the C{Host} headers that name this page (set once it
        listens: L{p2pshare.peer.ui.guard.own_hosts}).
    """

    isLeaf = True
    log = Logger()

    def __init__(self, api: Api, guard: Guard, clock: IReactorTime) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api = api
        self.guard = guard
        self.clock = clock
        self.hosts: frozenset[str] = frozenset()
        self.port = 0
        self.address = ""
        self.files = {path: (_static(package, name), kind)
                      for path, (package, name, kind) in STATIC.items()}
        self.streams = Streams(api, clock)
        self.gets: dict[bytes, Callable[[Request], Awaitable[object] | object]] = {
            b"/api/status": lambda r: api.fresh_status(),
            b"/api/search": lambda r: api.search(_arg(r, b"q"), _arg(r, b"exact") == "1"),
            b"/api/ls": lambda r: api.ls(_arg(r, b"holder")),
            b"/api/downloads": lambda r: api.downloads(),
        }
        self.posts: dict[bytes, Callable[[dict[str, Any]], object]] = {
            b"/api/get": api.get,
            b"/api/pause": api.pause,
            b"/api/resume": api.resume,
            b"/api/cancel": api.cancel,
            b"/api/settings": api.settings,
        }

    def listening(self, hosts: frozenset[str], port: int, address: str) -> None:
        """
        The page listens: on C{port}, at C{address} (C{http://HOST:PORT}),
        answering requests that name one of C{hosts}.
        """
        self.hosts, self.port, self.address = hosts, port, address

    @property
    def cookie(self) -> bytes:
        # Browsers keep cookies by host, not port: each peer's page on one
        # host has its own.
        return f"{COOKIE}-{self.port}".encode()

    def login_url(self, token: str) -> str:
        return f"{self.address}/login?token={quote(token)}"

    def render(self, request: Request) -> bytes | int:
        body = self._render(request)
        return b"" if request.method == b"HEAD" and isinstance(body, bytes) else body

    def _render(self, request: Request) -> bytes | int:
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) != 1 or hosts[0].decode("latin-1").strip().lower() not in self.hosts:
            return _error(request, 403, "this page answers only at its own address")
        path = request.path
        if path == b"/login":
            return self._login(request)
        session = self.guard.session(_text(request.getCookie(self.cookie)))
        if session is None:
            return _error(request, 403, NO_SESSION, page=not path.startswith(b"/api/"))
        if path in self.files and request.method != b"POST":
            body, kind = self.files[path]
            request.setHeader(b"content-type", kind)
            return body
        # The API asks for the session's key too, which only the page's own
        # origin holds: a cookie goes to every port of this host, the key
        # does not (an EventSource cannot send a header: it says the key
        # in its address).
        given = _text(request.getHeader(b"x-session-key"))
        if path == b"/api/events" and given is None:
            try:
                given = _arg(request, b"key", default=None)
            except ApiError:
                given = None  # not UTF-8: not the key
        if not key_ok(session, given):
            return _error(request, 403, NO_SESSION)
        if request.method == b"POST":
            return self._post(request)
        if path == b"/api/session":
            return _json(request, {"peer": self.api.node.peer_name})
        if path == b"/api/events":
            return self.streams.add(request)
        handler = self.gets.get(path)
        if handler is None:
            return _error(request, 404, "there is no such page", page=not path.startswith(b"/api/"))
        return self._answer(request, lambda: handler(request))

    def _login(self, request: Request) -> bytes:
        """
        Trade the login token for a session: its cookie, and a page that
        moves on to C{/} with the session's key in the address's fragment
        (which no request carries).  The move is the page's own, so the
        browser sends the new C{SameSite=Strict} cookie with it even when
        the login address was opened from another site.
        """
        if request.method != b"GET":
            # A HEAD (a link preview, a prefetch) or a POST never spends the token.
            return _error(request, 405 if request.method == b"POST" else 200,
                          "open this address with GET", page=True)
        try:
            session = self.guard.log_in(_arg(request, b"token"))
        except ApiError:
            session = None
        if session is None:
            return _error(request, 403, "this login address is used or too old: "
                          "run `p2p ui` for a new one", page=True)
        request.addCookie(self.cookie, session.cookie.encode(), path=b"/", httpOnly=True,
                          sameSite="strict")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        self.log.info("a browser logged in to the web page")
        return leading_page(f"/#key={quote(session.secret)}")

    def _post(self, request: Request) -> bytes | int:
        handler = self.posts.get(request.path)
        if handler is None:
            return _error(request, 404, "there is no such request")
        if not origin_ok(_text(request.getHeader(b"origin")), self.hosts):
            return _error(request, 403, "this request did not come from the page itself")
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != b"application/json":
            return _error(request, 415, "send JSON")
        assert request.content is not None
        try:
            body = json.loads(request.content.read())
        except (ValueError, UnicodeDecodeError, RecursionError):
            return _error(request, 400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(request, 400, "the body is a JSON object")
        return self._answer(request, lambda: handler(body))

    def _answer(self, request: Request, call: Callable[[], object]) -> bytes | int:
        """
        Answer with what C{call} returns (a value, or an awaitable one).
        """
        try:
            result = call()
        except ApiError as e:
            return _error(request, e.status, e.text)
        if not isinstance(result, Awaitable):
            return _json(request, result)
        d = Deferred.fromCoroutine(_awaited(result))

        def answered(value: object) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_json(request, value))
                request.finish()

        def failed(failure: Failure) -> None:
            if failure.check(CancelledError):
                return
            if isinstance(failure.value, ApiError):
                status, text = failure.value.status, failure.value.text
            else:
                self.log.failure("a request of the web page failed", failure)
                status, text = 500, "the peer could not do that (see its log)"
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_error(request, status, text))
                request.finish()

        d.addCallbacks(answered, failed)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return NOT_DONE_YET

    def stop(self) -> None:
        self.streams.stop()
        self.guard.end_all()


async def _awaited(value: Awaitable[object]) -> object:
    return await value


class Streams:
    """
    The open pages' live streams: a C{downloads} and a C{status} event at
    once, then each again whenever it changed (looked at every
    L{STREAM_EVERY} seconds while a page is open).
    """

    def __init__(self, api: Api, clock: IReactorTime) -> None:
        self.api = api
        self.open: dict[Request, dict[str, bytes]] = {}  # a stream -> what it was last sent
        self.loop = LoopingCall(self.tick)
        self.loop.clock = clock

    def add(self, request: Request) -> bytes | int:
        if len(self.open) >= MAX_STREAMS:
            return _error(request, 503, f"at most {MAX_STREAMS} pages may follow this peer at once")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.write(b"retry: 2000\n\n")
        self.open[request] = {}
        request.notifyFinish().addBoth(lambda _: self.open.pop(request, None))
        self._send(request, self._now())
        if not self.loop.running:
            self.loop.start(STREAM_EVERY, now=False)
        return NOT_DONE_YET

    def _now(self) -> dict[str, bytes]:
        return {
            "downloads": json.dumps(self.api.downloads(), separators=(",", ":")).encode(),
            "status": json.dumps(self.api.status(), separators=(",", ":")).encode(),
        }

    def _send(self, request: Request, now: dict[str, bytes]) -> None:
        sent = self.open.get(request)
        if sent is None:
            return
        for event, data in now.items():
            if sent.get(event) != data:
                request.write(b"event: " + event.encode() + b"\ndata: " + data + b"\n\n")
                sent[event] = data

    def tick(self) -> None:
        if not self.open:
            self.loop.stop()
            return
        now = self._now()
        for request in list(self.open):
            self._send(request, now)

    def stop(self) -> None:
        for request in list(self.open):
            self.open.pop(request, None)
            if not request.finished and not getattr(request, "_disconnected", False):
                request.finish()
        if self.loop.running:
            self.loop.stop()


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _arg(request: Request, name: bytes, default: str | None = "") -> Any:
    args: dict[bytes, list[bytes]] = request.args or {}
    if name not in args:
        return default
    values = args[name] or [b""]
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{name.decode()} is not UTF-8") from None


def _json(request: Request, value: object) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, separators=(",", ":")).encode()


def _error(request: Request, status: int, text: str, page: bool = False) -> bytes:
    request.setResponseCode(status)
    if page:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (text + "\n").encode()
    return _json(request, {"error": text})


def make_site(page: Page, reactor: IReactorTime) -> Site:
    return strict_site(page, reactor, UISite)


class UIService(ListenService):
    """
    The page, listening on C{--ui} while the peer runs; C{p2p ui} asks it
    for a login address (L{login_url}).
    """

    def __init__(self, endpoint: IStreamServerEndpoint, page: Page, reactor: IReactorTime,
                 what: str) -> None:
        limited = LimitedFactory(make_site(page, reactor), total=MAX_CONNECTIONS,
                                 per_host=MAX_CONNECTIONS, clock=reactor)
        super().__init__(endpoint, limited, self._listening_on, what)
        self.page = page
        self.address: str | None = None

    def _listening_on(self, port: IListeningPort) -> None:
        bound: Any = port.getHost()
        ip = listening = ipaddress.ip_address(bound.host)
        if ip.is_unspecified:  # every interface: this machine reaches it on loopback
            ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
        url = f"http://{authority(ip.compressed, bound.port)}"
        self.page.listening(own_hosts(bound.host, bound.port), bound.port, url)
        self.address = url + "/"
        if not listening.is_loopback:
            self.log.warn("the web page listens on {host}, not only on this machine: anyone "
                          "who can reach it sees its address (it still asks for a login)",
                          host=bound.host)
        self.log.info("web page at {url} (p2p ui prints its login address)", url=self.address)

    def login_url(self) -> str | None:
        if self.address is None:
            return None
        return self.page.login_url(self.page.guard.new_login())

    def stopService(self) -> Deferred[None] | None:
        self.page.stop()
        return super().stopService()
