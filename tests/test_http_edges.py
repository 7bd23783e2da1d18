"""
The HTTP side of a peer's port, byte by byte over real loopback sockets:
validators (ETag, Last-Modified) and every conditional header, methods
(405 / 501, never the line protocol's ERROR lines), absurd ranges, the
503's headers, an address holding every upload slot while another asks, a
file that shrinks or changes while it is served, and a request head
dripped a byte at a time.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import time
from collections import Counter
from types import SimpleNamespace

import pytest
import pytest_twisted
from hosts import StaticFileHost
from twisted.internet.threads import deferToThread

from p2pshare.common import LimitedFactory
from p2pshare.httpserver import http_date
from p2pshare.peer.http import SniffingFactory, make_site
from p2pshare.peer.protocol import PeerFactory
from p2pshare.peer.serving import UploadSlots
from p2pshare.peer.share import ShareIndex

DATA = os.urandom(256 * 1024)


@pytest.fixture
def peer_port(reactor, tmp_path):
    """
    A peer's port (sniffer, HTTP and the per-host caps) serving one file,
    with no overlay behind it.
    """
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file.bin").write_bytes(DATA)
    (shared / "empty").write_bytes(b"")
    share = ShareIndex(shared)
    share.refresh()
    node = StaticFileHost(reactor, share, upload_slots=UploadSlots(4))
    # What the line protocol reads of its node, for lines that are only ever refused here.
    overlay = SimpleNamespace(clock=reactor, secret=None, peer_name=None, messages=Counter())
    sniffing = SniffingFactory(make_site(node, reactor), PeerFactory(overlay))
    port = reactor.listenTCP(0, LimitedFactory(sniffing, clock=reactor), interface="127.0.0.1")
    yield SimpleNamespace(port=port.getHost().port, node=node, share=share, path=shared / "file.bin",
                          sniffing=sniffing)
    pytest_twisted.blockon(port.stopListening())


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """
    Send C{data} and read until the server closes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def head_of(response: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


async def get(port: int, *headers: str, method: str = "GET", target: str = "/files/file.bin",
              host: str = "x"):
    request = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    request += "".join(h + "\r\n" for h in headers) + "\r\n"
    return head_of(await deferToThread(exchange, port, request.encode()))


def test_a_peer_and_the_stand_in_provide_all_the_http_side_reads():
    """
    The HTTP side knows its host only as IFileHost: a peer's site serves
    from its files, which provide all of it, as the stand-in these tests
    serve from does.
    """
    from twisted.internet.task import Clock
    from zope.interface.verify import verifyObject

    from p2pshare.peer.interfaces import IFileHost
    from p2pshare.peer.node import PeerNode, PeerSettings

    node = PeerNode(clock=Clock(), listen=None, meta=None, connect=None,
                    settings=PeerSettings(name="s1"))
    assert node.site.resource.children[b"files"].node is node.files
    assert verifyObject(IFileHost, node.files)
    assert verifyObject(IFileHost, StaticFileHost(Clock(), None))


@pytest_twisted.ensureDeferred
async def test_validators_and_conditional_requests(peer_port):
    shared = peer_port.share.files["file.bin"]
    etag = f'"{shared.sha256}"'
    mtime = shared.stamp[1] // 10**9
    lm = http_date(mtime).decode()

    status, h, body = await get(peer_port.port)
    assert status == 200 and body == DATA
    assert h[b"etag"] == etag.encode() and h[b"last-modified"] == lm.encode()

    # If-None-Match / If-Modified-Since: 304, validators kept, no body.
    for header in (f"If-None-Match: {etag}", f"If-None-Match: W/{etag}", "If-None-Match: *",
                   f'If-None-Match: "other", {etag}', f"If-Modified-Since: {lm}"):
        status, h, body = await get(peer_port.port, header)
        assert (status, body) == (304, b""), header
        assert h[b"etag"] == etag.encode()
    status, _, body = await get(peer_port.port, 'If-None-Match: "other"')
    assert (status, body) == (200, DATA)
    status, _, body = await get(peer_port.port, f"If-Modified-Since: {http_date(mtime - 10).decode()}")
    assert (status, body) == (200, DATA)
    # If-None-Match wins over If-Modified-Since.
    status, _, _ = await get(peer_port.port, 'If-None-Match: "other"', f"If-Modified-Since: {lm}")
    assert status == 200

    # If-Match: 412 unless the strong tag (or *) matches.
    for header in ('If-Match: "other"', f"If-Match: W/{etag}"):
        status, _, _ = await get(peer_port.port, header)
        assert status == 412, header
    for header in (f"If-Match: {etag}", "If-Match: *"):
        status, _, body = await get(peer_port.port, header)
        assert (status, body) == (200, DATA), header
    status, _, _ = await get(peer_port.port, f"If-Unmodified-Since: {http_date(mtime - 10).decode()}")
    assert status == 412

    # If-Range: the range for this version only; the whole file otherwise.
    status, h, body = await get(peer_port.port, "Range: bytes=100-", f"If-Range: {etag}")
    assert status == 206 and body == DATA[100:]
    assert h[b"content-range"] == f"bytes 100-{len(DATA) - 1}/{len(DATA)}".encode()
    status, _, body = await get(peer_port.port, "Range: bytes=100-", f"If-Range: {lm}")
    assert status == 206 and body == DATA[100:]
    for stale in ('"0000"', f"W/{etag}", http_date(mtime - 10).decode()):
        status, h, body = await get(peer_port.port, "Range: bytes=100-", f"If-Range: {stale}")
        assert (status, body) == (200, DATA), stale
        assert b"content-range" not in h


@pytest_twisted.ensureDeferred
async def test_methods_and_ranges(peer_port):
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"):
        status, h, _ = await get(peer_port.port, method=method)
        assert status == 405 and h[b"allow"] == b"GET, HEAD", method
    for method in ("PROPFIND", "get", "FROB"):
        status, _, body = await get(peer_port.port, method=method)
        assert status == 501, method
        assert b"ERROR" not in body
    status, h, body = await get(peer_port.port, method="HEAD")
    assert (status, body) == (200, b"") and h[b"content-length"] == str(len(DATA)).encode()

    for digits in ("9" * 5000 + "-", "0-" + "9" * 5000, "-" + "9" * 5000, f"{len(DATA)}-"):
        status, h, body = await get(peer_port.port, f"Range: bytes={digits}")
        assert status == 416, digits[:20]
        assert h[b"content-range"] == f"bytes */{len(DATA)}".encode()
    status, h, _ = await get(peer_port.port, "Range: bytes=-5", target="/files/empty")
    assert status == 416 and h[b"content-range"] == b"bytes */0"
    status, h, body = await get(peer_port.port, "Range: bytes=-5")
    assert status == 206 and body == DATA[-5:]

    # A full peer answers 503 with Retry-After and no Content-Range.  (The
    # slots are held by this client's own address: nobody else wants one,
    # so none of its uploads is cut for it.)
    from p2pshare.peer.serving import Upload

    slots = peer_port.node.upload_slots
    while slots.used < slots.limit:
        assert slots.take(Upload("127.0.0.1", peer_port.node.clock.seconds(), lambda: 0, lambda: None))
    status, h, _ = await get(peer_port.port, "Range: bytes=0-9")
    assert status == 503 and h[b"retry-after"] == b"5" and b"content-range" not in h


@pytest_twisted.ensureDeferred
async def test_odd_methods_do_not_put_the_host_in_cooling_off(peer_port):
    for _ in range(15):
        status, _, _ = await get(peer_port.port, method="PROPFIND")
        assert status == 501
    status, _, body = await get(peer_port.port)
    assert (status, body) == (200, DATA)


def read_truncated(port: int, change) -> tuple[int, bytes, float]:
    """
    GET the file, call C{change} after the first bytes arrive, and read
    until the server closes: (declared length, bytes read, seconds).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /files/file.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        got = s.recv(4096)
        change()
        started = time.monotonic()
        try:
            while chunk := s.recv(4096):
                got += chunk
                time.sleep(0.001)  # a slow reader, so the server is still sending
        except ConnectionResetError:
            pass
        took = time.monotonic() - started
    status, h, body = head_of(got)
    assert status == 200
    return int(h[b"content-length"]), body, took


@pytest.mark.parametrize("how", ["shrink", "rewrite"])
@pytest_twisted.ensureDeferred
async def test_a_file_changed_while_served_ends_the_response_at_once(peer_port, how):
    big = os.urandom(64 * 1024 * 1024)
    peer_port.path.write_bytes(big)
    peer_port.share.refresh()

    def change():
        if how == "shrink":
            os.truncate(peer_port.path, 1000)
        else:  # the end, which has not been sent yet
            before = os.stat(peer_port.path).st_mtime_ns
            with open(peer_port.path, "r+b") as f:
                f.seek(len(big) - 10)
                f.write(b"x" * 10)
            # An edit a moment later: the clock that stamps files may not
            # have moved since the file was written (then nothing tells).
            later = before + 10**9
            os.utime(peer_port.path, ns=(later, later))

    from twisted.logger import globalLogPublisher

    stopped: list[str] = []

    def observe(event):
        if event.get("log_format", "").startswith("stopped serving"):
            stopped.append(event["why"])

    globalLogPublisher.addObserver(observe)
    try:
        declared, body, _ = await deferToThread(read_truncated, peer_port.port, change)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert declared == len(big)
    assert len(body) < len(big)
    assert big.startswith(body) or how == "shrink"  # none of the new bytes
    # Cut because the file changed (not by the idle timeout, 30 to 60 s on).
    assert len(stopped) == 1 and "while it was being served" in stopped[0]


def send_all(body, timeout: float = 10.0) -> bytes:
    """
    What L{serving._Slice.send} writes, read back from a socket pair.
    """
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.settimeout(timeout)
        got = bytearray()
        while True:
            try:
                if body.send(a.fileno()) == 0:
                    break
            except BlockingIOError:
                got += b.recv(2**20)
        a.close()
        while chunk := b.recv(2**20):
            got += chunk
    body.close()
    return bytes(got)


@pytest.mark.parametrize("mapped", [True, False])
def test_a_range_is_sent_whole_across_windows_mapped_or_read(tmp_path, monkeypatch, mapped):
    from p2pshare.peer import serving

    data = os.urandom(5 * 2**20 + 123)
    path = tmp_path / "f"
    path.write_bytes(data)
    monkeypatch.setattr(serving, "WINDOW", 2 * mmap.ALLOCATIONGRANULARITY)  # many windows
    if not mapped:  # a file system that cannot map files: read into a buffer
        def no_mmap(*args, **kw):
            raise OSError(errno.ENODEV, "no mmap here")

        monkeypatch.setattr(serving.mmap, "mmap", no_mmap)
    start, length = 12345, len(data) - 12345 - 999  # neither end on a window's edge
    with open(path, "rb") as f:
        assert send_all(serving._Slice(f, start, length, None)) == data[start : start + length]


def test_a_file_shrinking_under_its_mapping_ends_the_response_and_nothing_else(tmp_path):
    from p2pshare.peer import serving

    data = os.urandom(8 * 2**20)
    path = tmp_path / "f"
    path.write_bytes(data)
    a, b = socket.socketpair()
    with a, b, open(path, "rb") as f:
        a.setblocking(False)
        body = serving._Slice(f, 0, len(data), None)
        first = body.send(a.fileno())  # the window is mapped and partly sent
        assert 0 < first < serving.CHUNK
        os.truncate(path, 0)  # the rest of this chunk is no longer there
        b.setblocking(False)
        while True:  # room in the socket, so the next write is tried
            try:
                b.recv(2**20)
            except BlockingIOError:
                break
        # The kernel, not this process, touches the vanished pages: the
        # write fails (EFAULT) instead of a SIGBUS killing the peer.
        assert body.send(a.fileno()) == 0
        assert body.broken == serving.SHORTER
        assert body.sent == first
        body.close()


def drip(port: int, first: bytes, dripped: bytes) -> tuple[bytes, int]:
    """
    Send C{first} at once, then C{dripped} a byte every half second, until
    the server closes: (what it said, how many bytes of C{dripped} were
    sent before the connection broke).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(first)
        sent = 0
        try:
            for byte in dripped:
                s.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.5)  # the drip itself: a byte every half second
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            rest = s.recv(65536)
        except ConnectionResetError:
            rest = b""
        return rest, sent


@pytest_twisted.ensureDeferred
async def test_a_dripped_request_is_cut_off_at_its_deadline(peer_port, monkeypatch):
    from p2pshare import httpserver
    from p2pshare.peer import http

    monkeypatch.setattr(httpserver, "HEAD_TIMEOUT", 3)
    monkeypatch.setattr(http, "FIRST_LINE_TIMEOUT", 3)
    site = peer_port.sniffing.site
    peer_port.sniffing.site = httpserver.strict_site(site.resource, site.reactor)
    # The headers dripped after a prompt request line: the head deadline
    # (3 s) cuts the connection long before the drip's 50 s are over, and
    # not at once (a byte every half second was taken for a while).
    headers = b"Host: x\r\nX-Slow: " + b"a" * 100
    rest, sent = await deferToThread(
        drip, peer_port.port, b"GET /files/file.bin HTTP/1.1\r\n", headers
    )
    assert rest == b""
    assert 2 <= sent < len(headers)
    # The first line dripped: the first-line deadline, whatever the protocol.
    line = b"GET /files/" + b"f" * 100 + b" HTTP/1.1\r\n"
    rest, sent = await deferToThread(drip, peer_port.port, b"", line)
    assert rest == b""
    assert 2 <= sent < len(line)


@pytest_twisted.ensureDeferred
async def test_a_request_line_too_long_is_answered_in_http(peer_port):
    status, _, _ = await get(peer_port.port, target="/files/" + "a" * 20000)
    assert status == 414
    status, _, _ = await get(peer_port.port, "X-Long: " + "a" * 20000)
    assert status == 431
    # And a long line that is not HTTP is the line protocol's business.
    out = await deferToThread(exchange, peer_port.port, b"HELLO " + b"x" * 5000 + b"\r\n")
    assert out == b"ERROR too-long lines are at most 4096 bytes\r\n"


@pytest_twisted.ensureDeferred
async def test_a_file_changed_since_it_was_hashed_gets_503_until_hashed_again(peer_port):
    with open(peer_port.path, "r+b") as f:
        f.write(b"changed")  # same size, new content: the index's hash is stale
    status, h, body = await get(peer_port.port, "Range: bytes=0-9")
    assert status == 503 and h[b"retry-after"] == b"2"
    assert b"content-range" not in h and b"etag" not in h
    peer_port.share.refresh()
    status, h, body = await get(peer_port.port)
    assert status == 200 and body.startswith(b"changed")
    assert h[b"etag"] == f'"{peer_port.share.files["file.bin"].sha256}"'.encode()


@pytest.mark.parametrize("path", ["direct", "producer"])
@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_cut_off_and_its_slot_freed(peer_port, monkeypatch, reactor, path):
    """
    Plain TCP without a rate cap is written straight to the socket; with a
    cap (or TLS) through a producer.  Either way a client that takes nothing for the
    stall deadline is cut off and its upload slot given back.
    """
    from twisted.internet.defer import Deferred

    from p2pshare.peer import serving

    monkeypatch.setattr(serving, "STALL_TIMEOUT", 1)
    big = os.urandom(64 * 1024 * 1024)
    peer_port.path.write_bytes(big)
    peer_port.share.refresh()
    if path == "producer":
        peer_port.node.upload_rate = serving.UploadRate(2.0**40, reactor)
    slots = peer_port.node.upload_slots
    freed: Deferred[None] = Deferred()
    give = slots.give

    def given(upload):
        give(upload)
        if not freed.called:
            freed.callback(None)

    monkeypatch.setattr(slots, "give", given)
    senders = []
    for kind in (serving._DirectSender, serving._BigFileSender):
        monkeypatch.setattr(kind, "done", lambda self, done=kind.done: senders.append(type(self)) or done(self))
    with socket.create_connection(("127.0.0.1", peer_port.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /files/file.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        await freed.addTimeout(120, reactor)  # a hang, not a speed: the event itself is awaited
        assert time.monotonic() - started > 0.9  # never before the stall deadline
        assert slots.used == 0
        assert senders[0] is (serving._DirectSender if path == "direct" else serving._BigFileSender)

        def drain() -> int:
            got = 0
            try:
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            except ConnectionResetError:
                pass
            return got

        assert await deferToThread(drain) < len(big)  # cut off, not finished


def open_get(port: int, request: bytes, source: str, tls) -> socket.socket:
    """
    A connection from C{source} (an address of 127.0.0.0/8) that sent
    C{request}; a small receive buffer keeps it from taking much unread.
    """
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        if tls is not None:
            s = tls.wrap_socket(s)
        s.sendall(request)
    except BaseException:
        s.close()
        raise
    return s


def hold_slots(port: int, request: bytes, count: int, tls) -> list[socket.socket]:
    """
    C{count} clients from 127.0.0.1 that read the status line (their
    response has begun: each holds an upload slot) and then nothing.
    """
    readers: list[socket.socket] = []
    try:
        for _ in range(count):
            readers.append(open_get(port, request, "127.0.0.1", tls))
            head = readers[-1].recv(64)
            assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 206 ")), head
    except BaseException:
        for s in readers:
            s.close()
        raise
    return readers


def taken(readers: list[socket.socket], most: int) -> list[int]:
    """
    How many more bytes each client gets, up to C{most}, before its
    connection ends.
    """
    import ssl

    counts = []
    for s in readers:
        n = 0
        try:
            while n < most and (chunk := s.recv(min(2**16, most - n))):
                n += len(chunk)
        except (ConnectionResetError, ssl.SSLError):
            pass
        counts.append(n)
    return counts


def read_all(port: int, request: bytes, source: str, tls) -> bytes:
    with open_get(port, request, source, tls) as s:
        got = bytearray()
        while chunk := s.recv(2**20):
            got += chunk
    return bytes(got)


@pytest.mark.parametrize("path", ["direct", "producer", "tls"])
@pytest.mark.parametrize("kind", ["shared", "partial"])
@pytest_twisted.ensureDeferred
async def test_an_address_holding_every_slot_loses_one_to_a_newcomer(
    peer_port, reactor, tmp_path, kind, path, monkeypatch
):
    """
    Every upload slot (4 here) is held by clients from one address that
    read nothing.  A GET from another address is served all the same, for
    a shared file or a download in progress, however its bytes go out
    (straight to a TCP socket, through a producer, over TLS sealed by the
    sender itself): one of the first address's uploads is cut off for it,
    and the log says so.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.logger import formatEvent, globalLogPublisher

    from p2pshare.peer import serving
    from p2pshare.tls import PeerTLS, TLSServerEndpoint, make_certs

    big = bytes(range(256)) * (2**24 // 256)  # more than a reader's socket buffers take
    if kind == "shared":
        peer_port.path.write_bytes(big)
        peer_port.share.refresh()
        request = b"GET /files/file.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    else:
        partial = SimpleNamespace(name="part.bin", sha256="ab" * 32, size=len(big),
                                  path=tmp_path / "part.bin", holds=lambda first, last: True)
        partial.path.write_bytes(big)
        peer_port.node.partials.append(partial)
        request = (b"GET /files/part.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\n"
                   b"Connection: close\r\n\r\n")
    if path == "producer":
        peer_port.node.upload_rate = serving.UploadRate(2.0**40, reactor)
    tls, listening = None, None
    if path == "tls":
        make_certs(tmp_path / "certs", ["holder", "client"])

        def load(name: str) -> PeerTLS:
            pem = str(tmp_path / "certs" / f"{name}.pem")
            return PeerTLS.load(pem, pem, str(tmp_path / "certs" / "trust"))

        # As a peer listens (mtls:): the body sealed by the sender itself.
        endpoint = TLSServerEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
                                     load("holder"), reactor)
        listening = await endpoint.listen(LimitedFactory(peer_port.sniffing, clock=reactor))
        tls = load("client").stdlib_client()
    port = listening.getHost().port if listening is not None else peer_port.port
    senders: list[str] = []
    for sender in (serving._DirectSender, serving._BigFileSender):
        begin = sender.beginFileTransfer
        monkeypatch.setattr(sender, "beginFileTransfer", lambda self, *a, begin=begin: (
            senders.append(type(self).__name__) or begin(self, *a)
        ))
    cuts: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_format", "").startswith("cut an upload"):
            cuts.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    readers: list[socket.socket] = []
    try:
        slots = peer_port.node.upload_slots
        readers = await deferToThread(hold_slots, port, request, slots.limit, tls)
        assert slots.used == slots.limit
        got = await deferToThread(read_all, port, request, "127.0.0.2", tls)
        status, _, body = head_of(got)
        assert status == (200 if kind == "shared" else 206)  # it was 503
        assert body == big
        assert cuts == ["cut an upload to 127.0.0.1, which held 4 of 4 slots while 2 addresses "
                        "wanted them, to serve 127.0.0.2"]
        assert [u.host for u in slots.uploads] == ["127.0.0.1"] * 3
        expected = {"direct": "_DirectSender", "producer": "_BigFileSender", "tls": "_TLSSender"}
        assert set(senders) == {expected[path]}
        # Its client sees its download break; the others' go on.
        counts = await deferToThread(taken, readers, 2**20)
        assert sorted(n == 2**20 for n in counts) == [False, True, True, True], counts
    finally:
        globalLogPublisher.removeObserver(observe)
        for s in readers:
            s.close()
        if listening is not None:
            await listening.stopListening()


def test_where_a_holder_suggests_its_downloaders_begin():
    """
    The first downloader of a file begins at its first piece; those that
    come while it is being fetched begin in the middle of the longest
    stretch where nobody began; once nobody fetches it for a while, the
    next begins at the first piece again.
    """
    from twisted.internet.task import Clock

    from p2pshare.peer.serving import StartSpreader

    clock = Clock()
    starts = StartSpreader(clock)
    assert starts.suggest("a", 64) == 0
    assert [starts.suggest("a", 64) for _ in range(3)] == [32, 16, 48]
    assert starts.suggest("b", 64) == 0  # another file: nobody fetches it
    clock.advance(10)  # nobody fetched "a" meanwhile
    assert starts.suggest("a", 64) == 0
    starts.sending("a", 1)  # a response of "a" in progress
    clock.advance(10)
    assert starts.suggest("a", 64) == 32
    starts.sending("a", -1)
    clock.advance(10)
    assert starts.suggest("a", 64) == 0
    assert starts.suggest("one piece", 1) == 0 and starts.suggest("one piece", 1) == 0


@pytest_twisted.ensureDeferred
async def test_the_share_is_browsable_as_a_page_and_as_json(peer_port):
    """
    GET / and GET /index.json list exactly the share, folders included;
    the page's links fetch the files; nothing hidden appears; names are
    escaped in the page.
    """
    import json

    from p2pshare import wire

    shared = peer_port.path.parent
    (shared / "Live Set").mkdir()
    (shared / "Live Set" / "<b>été & co.ogg").write_bytes(b"song")
    (shared / ".hidden").mkdir()
    (shared / ".hidden" / "x").write_bytes(b"x")
    peer_port.node.peer_name = "s9"
    peer_port.share.refresh()
    status, h, body = await get(peer_port.port, target="/index.json")
    assert status == 200 and h[b"content-type"] == b"application/json; charset=utf-8"
    listing = json.loads(body)
    assert listing == {"peer": "s9", "files": [
        {"name": f.name, "size": f.size, "sha256": f.sha256}
        for f in sorted(peer_port.share.files.values(), key=lambda f: f.name)
    ]}
    assert [f["name"] for f in listing["files"]] == ["Live Set/<b>été & co.ogg", "empty", "file.bin"]
    status, h, page = await get(peer_port.port, target="/")
    assert status == 200 and h[b"content-type"] == b"text/html; charset=utf-8"
    text = page.decode()
    assert "<h1>s9 shares 3 files" in text and "<b>" not in text and "&lt;b&gt;été &amp; co.ogg" in text
    assert "<h2>Live Set/</h2>" in text and ".hidden" not in text
    link = "/files/" + wire.url_path("Live Set/<b>été & co.ogg")
    assert f'href="{link}"' in text
    status, _, song = await get(peer_port.port, target=link)
    assert (status, song) == (200, b"song")


@pytest_twisted.ensureDeferred
async def test_in_a_private_network_browsing_needs_a_signed_url_and_links_are_signed(peer_port):
    import re

    from p2pshare.admission import Secret

    secret = Secret(b"k" * 32)
    peer_port.node.secret = secret
    here = f"127.0.0.1:{peer_port.port}"
    for target in ("/", "/index.json"):
        status, _, body = await get(peer_port.port, target=target, host=here)
        assert status == 403 and b"signed URL" in body, target
        signed = secret.sign_path(target, time.time(), where=here)
        status, _, _ = await get(peer_port.port, target=signed, host=here)
        assert status == 200, target
        # Signed for this peer, but asked under another peer's name: refused.
        status, _, body = await get(peer_port.port, target=signed, host="127.0.0.2:5001")
        assert status == 403 and b"or this peer" in body, target
        # Signed for another peer (the URL names it): refused here.
        elsewhere = secret.sign_path(target, time.time(), where="127.0.0.2:5001")
        status, _, _ = await get(peer_port.port, target=elsewhere, host=here)
        assert status == 403, target
    # localhost names this peer too, on loopback.
    status, _, _ = await get(peer_port.port, host=f"localhost:{peer_port.port}", target=secret.sign_path(
        "/files/file.bin", time.time(), where=f"localhost:{peer_port.port}"))
    assert status == 200
    _, _, page = await get(peer_port.port, target=secret.sign_path("/", time.time(), where=here),
                           host=here)
    [link] = re.findall(r'href="(/files/file\.bin[^"]*)"', page.decode())
    assert "sig=" in link
    status, _, body = await get(peer_port.port, target=link.replace("&amp;", "&"), host=here)
    assert (status, body) == (200, DATA)
