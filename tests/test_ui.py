"""
The peer's web page in one process, on a Clock: who gets in (login
tokens, sessions, CSRF, Host, Origin), what every answer forbids, the
JSON API over the real download queue, and the live stream; the bytes
on the wire of an HTTP/1.1 connection (a StringTransport).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from p2pshare.peer.coverage import Coverage, Found
from p2pshare.peer.download.transfer import FetchError
from p2pshare.peer.queue import DownloadQueue
from p2pshare.peer.ui import guard as guard_module
from p2pshare.peer.ui.api import Api
from p2pshare.peer.ui.guard import LOGIN_LIFETIME, SESSION_IDLE, Guard, origin_ok, own_hosts
from p2pshare.peer.ui.site import STREAM_EVERY, Page, make_site
from p2pshare.pieces import piece_count
from p2pshare.wire import Match

PORT = 8300
SIZE = 2**30  # a file of many pieces
HOST = f"127.0.0.1:{PORT}"


# The guard alone.


def test_a_head_of_the_login_address_leaves_its_token_unspent(page):
    token = page.guard.new_login()
    head = ask(page, "HEAD", f"/login?token={token}")
    assert head.status == 200 and head.body == b"" and "set-cookie" not in head.headers
    assert ask(page, "POST", f"/login?token={token}").status == 405
    assert ask(page, "GET", f"/login?token={token}").status == 200  # still good, once


def test_a_login_token_opens_one_session_once_and_only_while_fresh():
    clock = Clock()
    guard = Guard(clock)
    token = guard.new_login()
    session = guard.log_in(token)
    assert session is not None and guard.session(session.cookie) is session
    assert guard.log_in(token) is None  # used
    late = guard.new_login()
    clock.advance(LOGIN_LIFETIME + 1)
    assert guard.log_in(late) is None  # too old
    assert guard.log_in("") is None and guard.log_in("x" * 10_000) is None
    assert guard.session(session.cookie) is session  # the session itself lives on


def test_a_session_unused_for_a_week_ends_and_the_oldest_make_room():
    clock = Clock()
    guard = Guard(clock)
    first = guard.log_in(guard.new_login())
    clock.advance(SESSION_IDLE - 1)
    assert guard.session(first.cookie) is first  # used: its week starts again
    clock.advance(SESSION_IDLE + 1)
    assert guard.session(first.cookie) is None
    keys = []
    for _ in range(guard_module.MAX_SESSIONS + 3):
        clock.advance(1)
        keys.append(guard.log_in(guard.new_login()).cookie)
    assert [guard.session(k) is not None for k in keys[:3]] == [False] * 3
    assert all(guard.session(k) is not None for k in keys[3:])
    assert guard.session(None) is None and guard.session("") is None


def test_the_page_knows_its_own_names():
    assert own_hosts("127.0.0.1", 8300) == {"127.0.0.1:8300", "localhost:8300"}
    assert own_hosts("::1", 8300) == {"[::1]:8300", "localhost:8300"}
    assert own_hosts("192.168.1.5", 80) == {"192.168.1.5:80"}
    assert "127.0.0.1:80" in own_hosts("0.0.0.0", 80)
    hosts = own_hosts("127.0.0.1", 8300)
    assert origin_ok(None, hosts) and origin_ok("http://localhost:8300", hosts)
    for foreign in ("http://evil.example:8300", "https://127.0.0.1:8300", "null",
                    "http://127.0.0.1:8301", ""):
        assert not origin_ok(foreign, hosts), foreign


# The page over HTTP, with a node that answers from memory.


class Search:
    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def start(self, pattern: str, *, exact: int = 0) -> Deferred[Found]:
        self.asked.append((pattern, exact))
        matches = []
        if "song" in pattern:
            matches = [
                Match("music/song.ogg", SIZE, "a" * 64, "s2", "127.0.0.1", 7002, 1),
                Match("other/tune.ogg", SIZE, "a" * 64, "s3", "127.0.0.1", 7003, 2,
                      have=piece_count(SIZE) // 2),
            ]
        return succeed(Found(matches, Coverage(answered=5, total=5)))


class Files:
    max_uploads = 16
    upload_cap: float | None = None

    async def listing(self, holder: str) -> list[dict[str, object]]:
        if holder == "s9":
            raise FetchError("not-found", "s9 is not in the network")
        return [{"name": "a/b.txt", "size": 3, "sha256": "b" * 64}]

    def set_upload_limits(self, max_uploads: int, upload_rate: float | None) -> None:
        self.max_uploads, self.upload_cap = max_uploads, upload_rate


class Node:
    peer_name = "s1"

    def __init__(self, clock: Clock, tmp: Path) -> None:
        self.clock = clock
        self.search = Search()
        self.files = Files()
        self.fetches: list[Deferred[object]] = []
        self.queue = DownloadQueue(self.fetch, clock, tmp / "downloads.json")
        self.queue.open()

    async def fetch(self, name, directory, force, progress, **kw):
        d: Deferred[object] = Deferred()
        self.fetches.append(d)
        progress(10, 100, 2)
        return await d

    def status(self) -> dict[str, object]:
        return {"name": "s1", "shared": [{"name": "x"}], "transfers": [], "neighbours": []}

    def network_size(self):
        return succeed((5, 5))


@pytest.fixture
def page(tmp_path):
    clock = Clock()
    node = Node(clock, tmp_path)
    page = Page(Api(node, node.files), Guard(clock), clock)
    page.listening(own_hosts("127.0.0.1", PORT), PORT, f"http://{HOST}")
    page.node = node  # for the tests
    yield page
    page.stop()


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            self.headers.setdefault(name.lower(), []).append(value)
        if self.headers.get("transfer-encoding") == ["chunked"]:
            self.body = dechunked(self.body)

    def header(self, name: str) -> str:
        return self.headers[name][0]

    def json(self) -> dict:
        return json.loads(self.body)


def dechunked(data: bytes) -> bytes:
    """
    The body of a chunked response (an answer written later, a stream).
    """
    body = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        body, data = body + data[:n], data[n + 2:]
    return body


def connected(page: Page):
    """
    A new HTTP connection to the page: its protocol and transport.
    """
    proto = make_site(page, page.clock).buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    proto.makeConnection(transport)
    return proto, transport


def ask(page: Page, method: str, path: str, *, host: str = HOST, cookie: str | None = None,
        headers: dict[str, str] | None = None, body: bytes = b"") -> Answer:
    proto, transport = connected(page)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if cookie is not None:
        lines.append(f"Cookie: {cookie}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    return Answer(transport.value())


def log_in(page: Page) -> tuple[str, str]:
    """
    Open the login address: the session cookie, and the key the page is
    handed in the fragment of the address it moves to.
    """
    url = page.login_url(page.guard.new_login())
    answer = ask(page, "GET", url.removeprefix(f"http://{HOST}"))
    assert answer.status == 200
    cookie = answer.header("set-cookie")
    parts = [p.strip() for p in cookie.split(";")]
    assert parts[0].startswith(f"p2pshare-session-{PORT}=")
    assert {"httponly", "samesite=strict", "path=/"} <= {p.lower() for p in parts}
    moved = re.search(rb'<meta http-equiv="refresh" content="0;url=/#key=([A-Za-z0-9_-]+)">',
                      answer.body)
    assert moved, answer.body
    return parts[0], moved.group(1).decode()


def get(page: Page, path: str, cookie: str, key: str, **kw) -> Answer:
    return ask(page, "GET", path, cookie=cookie, headers={"X-Session-Key": key}, **kw)


def post(page: Page, path: str, value: object, cookie: str, key: str, **extra: str) -> Answer:
    return ask(page, "POST", path, cookie=cookie, body=json.dumps(value).encode(),
               headers={"Content-Type": "application/json", "X-Session-Key": key,
                        "Origin": f"http://{HOST}", **extra})


def test_without_a_session_every_page_and_call_is_403(page):
    for path in ("/", "/app.js", "/app.css", "/api/status", "/api/session", "/api/search?q=a",
                 "/api/downloads", "/api/events", "/nothing", "/login", "/login?token=forged",
                 "/login?token=%C3%A9", "/login?token=%FF"):
        answer = ask(page, "GET", path)
        assert answer.status == 403, path
        assert answer.header("x-frame-options") == "DENY"
    stale = "p2pshare-session-8300=made-up"
    assert ask(page, "GET", "/api/status", cookie=stale).status == 403
    assert ask(page, "POST", "/api/get", body=b'{"name": "x"}').status == 403
    assert page.node.queue.entries == {}


def test_the_cookie_alone_opens_the_page_but_not_the_api(page):
    # Browsers send a cookie to every port of the host: a program on
    # another port of 127.0.0.1 may be sent it, and must get nothing.
    cookie, key = log_in(page)
    assert ask(page, "GET", "/", cookie=cookie).status == 200
    for path in ("/api/session", "/api/status", "/api/downloads", "/api/events",
                 "/api/search?q=song", f"/api/events?key={key}x", "/api/events?key=%FF"):
        assert ask(page, "GET", path, cookie=cookie).status == 403, path
    assert get(page, "/api/status", cookie, key + "x").status == 403
    assert get(page, "/api/status", cookie, "\u00e9").status == 403  # not ASCII: no crash
    assert get(page, "/api/session", cookie, key).json() == {"peer": "s1"}
    assert post(page, "/api/get", {"name": "a.txt"}, cookie, "").status == 403
    assert page.node.queue.entries == {}
    # A key without its cookie is nothing either.
    assert ask(page, "GET", "/api/status", headers={"X-Session-Key": key}).status == 403


def test_a_foreign_host_header_is_refused_even_with_a_session(page):
    cookie, key = log_in(page)
    assert get(page, "/api/status", cookie, key).status == 200
    for host in ("evil.example:8300", "127.0.0.1:8301", "127.0.0.1", "", "localhost.evil:8300",
                 "127.0.0.1:8300.", f"{HOST}\r\nHost: {HOST}"):
        answer = get(page, "/api/status", cookie, key, host=host)
        assert answer.status in (400, 403), host
    two = ask(page, "GET", "/api/status", cookie=cookie, headers={
        "X-Session-Key": key, "Host": "evil.example"})  # a second Host header
    assert two.status == 403
    assert get(page, "/api/status", cookie, key, host=f"LOCALHOST:{PORT}").status == 200


def test_every_answer_forbids_framing_inline_script_and_caching(page):
    cookie, key = log_in(page)
    html = ask(page, "GET", "/", cookie=cookie)
    assert html.status == 200 and html.header("content-type") == "text/html; charset=utf-8"
    csp = html.header("content-security-policy")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert html.header("x-frame-options") == "DENY"
    assert html.header("x-content-type-options") == "nosniff"
    assert html.header("referrer-policy") == "no-referrer"
    assert html.header("cache-control") == "no-store"
    assert b'<script src="/app.js"' in html.body
    script = ask(page, "GET", "/app.js", cookie=cookie)
    assert script.header("content-type").startswith("text/javascript")
    assert b"innerHTML" not in script.body
    # HEAD: the headers, no body; other methods: refused, with the same headers.
    head = ask(page, "HEAD", "/api/status")
    assert head.status == 403 and head.body == b""
    other = ask(page, "PUT", "/api/get", cookie=cookie)
    assert other.status == 405 and other.header("x-frame-options") == "DENY"
    assert "frame-ancestors 'none'" in other.header("content-security-policy")


def test_a_change_needs_the_key_and_the_pages_origin(page):
    cookie, key = log_in(page)
    refused = [
        post(page, "/api/get", {"name": "a.txt"}, cookie, ""),
        post(page, "/api/get", {"name": "a.txt"}, cookie, key + "x"),
        post(page, "/api/get", {"name": "a.txt"}, cookie, key, Origin="http://evil.example"),
        post(page, "/api/get", {"name": "a.txt"}, cookie, key, Origin="null"),
        post(page, "/api/get", {"name": "a.txt"}, "p2pshare-session-8300=other", key),
    ]
    assert [a.status for a in refused] == [403] * 5
    assert page.node.queue.entries == {}
    # A form of another site can send neither the key nor JSON.
    form = ask(page, "POST", "/api/get", cookie=cookie, body=b"name=a.txt",
               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 403
    plain = ask(page, "POST", "/api/get", cookie=cookie, body=b'{"name": "a.txt"}',
                headers={"Content-Type": "text/plain", "X-Session-Key": key})
    assert plain.status == 415
    sent = post(page, "/api/get", {"name": "a.txt"}, cookie, key)
    assert sent.status == 200 and sent.json()["download"]["name"] == "a.txt"
    assert [e.name for e in page.node.queue.entries.values()] == ["a.txt"]
    # Only POST changes anything.
    assert get(page, "/api/get?name=b.txt", cookie, key).status == 404
    assert ask(page, "DELETE", "/api/get", cookie=cookie).status == 405


def test_bad_bodies_get_one_sentence_and_change_nothing(page):
    cookie, key = log_in(page)
    # A body over the limit is refused as soon as its length says so.
    proto, transport = connected(page)
    proto.dataReceived(f"POST /api/get HTTP/1.1\r\nHost: {HOST}\r\nCookie: {cookie}\r\n"
                       f"X-Session-Key: {key}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {10**12}\r\n\r\n{{".encode())
    big = Answer(transport.value())
    assert big.status == 413 and b"at most 64 KiB" in big.body and transport.disconnecting
    # ... and so is a chunked one, once its bytes pass the limit.
    proto, transport = connected(page)
    chunk = b"a" * 40_000
    proto.dataReceived(f"POST /api/get HTTP/1.1\r\nHost: {HOST}\r\nCookie: {cookie}\r\n"
                       f"X-Session-Key: {key}\r\nContent-Type: application/json\r\n"
                       f"Transfer-Encoding: chunked\r\n\r\n".encode()
                       + (b"9c40\r\n" + chunk + b"\r\n") * 2)
    assert Answer(transport.value()).status == 413 and transport.disconnecting
    for body in (b"not json", b"[1, 2]", b"\xff\xfe", b"[" * 20_000):
        answer = ask(page, "POST", "/api/get", cookie=cookie, body=body, headers={
            "Content-Type": "application/json", "X-Session-Key": key})
        assert answer.status == 400, body[:10]
    for value in ({}, {"name": ""}, {"name": 5}, {"name": "a\x00b"}, {"name": "x" * 5000},
                  {"name": "sha256:zz"}, {"name": "/"}, {"name": "../../etc/passwd"},
                  {"name": ".hidden"}):
        assert post(page, "/api/get", value, cookie, key).status == 400, value
    assert post(page, "/api/pause", {"id": "1"}, cookie, key).status == 400
    assert post(page, "/api/pause", {"id": True}, cookie, key).status == 400
    assert post(page, "/api/pause", {"id": 99}, cookie, key).json() == {
        "error": "there is no download 99"}
    assert post(page, "/api/settings", {"upload_rate": "fast"}, cookie, key).status == 400
    assert post(page, "/api/settings", {"max_uploads": 0}, cookie, key).status == 400
    assert get(page, "/api/search?q=", cookie, key).status == 400
    assert get(page, "/api/search?q=%FF", cookie, key).status == 400
    assert get(page, "/api/ls?holder=<b>", cookie, key).status == 400
    assert page.node.queue.entries == {}


def test_search_groups_by_content_and_says_what_it_covered(page):
    cookie, key = log_in(page)
    found = get(page, "/api/search?q=song", cookie, key).json()
    assert found["coverage"]["text"] == "searched 5 of 5 peers"
    [result] = found["results"]
    assert result["name"] == "music/song.ogg" and result["size"] == SIZE
    assert result["paths"] == ["music/song.ogg", "other/tune.ogg"]
    assert [(h["name"], h["partial"]) for h in result["holders"]] == [("s2", None), ("s3", 0.5)]
    # A glob that finds nothing is tried again as words, as p2p search does.
    get(page, "/api/search?q=%5Bx%5D", cookie, key)
    assert page.node.search.asked[-2:] == [("[x]", 0), ("[x]", 2)]
    listed = get(page, "/api/ls?holder=s2", cookie, key).json()
    assert listed == {"peer": "s2", "files": [{"name": "a/b.txt", "size": 3, "sha256": "b" * 64}]}
    gone = get(page, "/api/ls?holder=s9", cookie, key)
    assert gone.status == 404 and gone.json() == {"error": "s9 is not in the network"}


def test_downloads_are_queued_paused_resumed_and_cancelled(page):
    cookie, key = log_in(page)
    queue = page.node.queue
    first = post(page, "/api/get", {"name": "music/"}, cookie, key).json()["download"]
    assert first["state"] == "running" and len(page.node.fetches) == 1
    paused = post(page, "/api/pause", {"id": first["id"]}, cookie, key).json()["download"]
    assert paused["state"] == "paused" and page.node.fetches[0].called  # cancelled
    assert json.loads((queue.path).read_text())["downloads"][0]["state"] == "paused"
    resumed = post(page, "/api/resume", {"id": first["id"]}, cookie, key).json()["download"]
    assert resumed["state"] == "running" and len(page.node.fetches) == 2
    page.node.fetches[1].callback(type("Kept", (), {"size": 3, "already": False, "path": "/x"})())
    done = get(page, "/api/downloads", cookie, key).json()["downloads"][0]
    assert done["state"] == "done"
    assert post(page, "/api/pause", {"id": first["id"]}, cookie, key).status == 409
    second = post(page, "/api/get", {"name": "b.txt"}, cookie, key).json()["download"]
    cancelled = post(page, "/api/cancel", {"id": second["id"]}, cookie, key).json()["download"]
    assert cancelled["state"] == "cancelled"
    again = post(page, "/api/resume", {"id": second["id"]}, cookie, key).json()["download"]
    assert again["state"] == "running"  # a cancelled one may be started again


def test_settings_change_the_upload_limits(page):
    cookie, key = log_in(page)
    status = post(page, "/api/settings", {"upload_rate": "8M", "max_uploads": 4}, cookie,
                  key).json()
    assert (status["upload_rate"], status["max_uploads"]) == (8 * 2**20, 4)
    status = post(page, "/api/settings", {"upload_rate": ""}, cookie, key).json()
    assert (status["upload_rate"], status["max_uploads"]) == (None, 4)
    assert "shared" not in status  # counts, never the whole list


def test_the_stream_sends_state_at_once_then_each_change(page):
    cookie, key = log_in(page)
    proto, transport = connected(page)
    proto.dataReceived(f"GET /api/events?key={key} HTTP/1.1\r\nHost: {HOST}\r\n"
                       f"Cookie: {cookie}\r\n\r\n".encode())
    answer = Answer(transport.value())
    head = answer.body
    assert answer.status == 200 and answer.header("content-type").startswith("text/event-stream")
    assert b"event: downloads\ndata: {\"downloads\":[]}\n\n" in head
    assert b"event: status\n" in head
    transport.clear()
    page.clock.advance(STREAM_EVERY)
    assert transport.value() == b""  # nothing changed: nothing sent
    post(page, "/api/get", {"name": "a.txt"}, cookie, key)
    page.clock.advance(STREAM_EVERY)
    events = dechunked(transport.value()).split(b"\n\n")
    assert events[0].startswith(b"event: downloads\ndata: ")
    assert json.loads(events[0].split(b"data: ", 1)[1])["downloads"][0]["name"] == "a.txt"
    proto.connectionLost(Failure(ConnectionDone()))  # the page was closed
    assert page.streams.open == {}
    page.clock.advance(STREAM_EVERY)
    assert not page.streams.loop.running
