"""
Serving a file over TLS, as a peer on an C{mtls:} port does: the body is
sealed in records by the sender itself (L{serving._TLSSender}, through
L{tls.DirectTLS}) and written straight to the socket, beside Twisted's
TLS layer, which keeps the handshake, the certificates and every other
byte.  Checked over real loopback sockets with Python's C{ssl} as the
client: the bytes arrive whole and in order on one kept-open connection
(ranges, a head, another resource after), also when the socket takes
only part of each write; a file that shrinks is cut off; a client that
stops reading loses its slot; a rate cap still goes through the
producer; and a client without a member's certificate gets nothing.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
from collections import Counter
from types import SimpleNamespace

import pytest
import pytest_twisted
from hosts import StaticFileHost
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread

from p2pshare import tls as tls_module
from p2pshare.common import LimitedFactory
from p2pshare.peer import serving
from p2pshare.peer.http import SniffingFactory, make_site
from p2pshare.peer.protocol import PeerFactory
from p2pshare.peer.serving import UploadSlots
from p2pshare.peer.share import ShareIndex
from p2pshare.tls import PeerTLS, TLSServerEndpoint, make_certs, whole_writes

DATA = os.urandom(5 * 2**20 + 4321)  # ten blocks and a bit: neither end on a block's edge


@pytest.fixture
def tls_port(reactor, tmp_path):
    """
    A peer's port with mutual TLS (sniffer, HTTP, the per-host caps)
    serving one file, with no overlay behind it; C{client} is an C{ssl}
    context with a member's certificate.
    """
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file.bin").write_bytes(DATA)
    share = ShareIndex(shared)
    share.refresh()
    certs = tmp_path / "certs"
    make_certs(certs, ["holder", "client"])

    def load(name: str) -> PeerTLS:
        pem = str(certs / f"{name}.pem")
        return PeerTLS.load(pem, pem, str(certs / "trust"))

    node = StaticFileHost(reactor, share, upload_slots=UploadSlots(4))
    # What the line protocol reads of its node, for lines that are only ever refused here.
    overlay = SimpleNamespace(clock=reactor, secret=None, peer_name=None, messages=Counter())
    factory = LimitedFactory(SniffingFactory(make_site(node, reactor), PeerFactory(overlay)),
                             clock=reactor)
    endpoint = TLSServerEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
                                 load("holder"), reactor)
    port = pytest_twisted.blockon(endpoint.listen(factory))
    yield SimpleNamespace(port=port.getHost().port, node=node, share=share,
                          path=shared / "file.bin", client=load("client").stdlib_client(),
                          certs=certs)
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def senders(monkeypatch):
    """
    The kind of sender each response body went out through, in order.
    """
    used: list[str] = []
    for kind in (serving._DirectSender, serving._BigFileSender):  # _TLSSender is a _DirectSender
        begin = kind.beginFileTransfer
        monkeypatch.setattr(kind, "beginFileTransfer", lambda self, *a, begin=begin: (
            used.append(type(self).__name__) or begin(self, *a)
        ))
    return used


class ShortWrites:
    """
    The C{os} module as serving.py sees it, but a socket takes at most
    a few KiB of every other write: the rest of a block must wait in
    TCP's buffer, in order, ahead of anything written after it.
    """

    def __init__(self) -> None:
        self.calls = 0

    def write(self, fd: int, data: memoryview) -> int:
        self.calls += 1
        if self.calls % 2:
            return os.write(fd, data[:3000])
        return os.write(fd, data)

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)


def requests_on_one_connection(port: int, context: ssl.SSLContext) -> list[tuple[int, bytes]]:
    """
    Several requests, one after another, on one kept-open connection.
    """
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    answers = []
    try:
        for method, headers in [
            ("GET", {}),
            ("GET", {"Range": "bytes=1000-2099999"}),
            ("HEAD", {}),
            ("GET", {"Range": f"bytes={len(DATA) - 77}-"}),
            ("GET", {}),
        ]:
            conn.request(method, "/files/file.bin", headers=headers)
            response = conn.getresponse()
            answers.append((response.status, response.read()))
        conn.request("GET", "/index.json")
        response = conn.getresponse()
        answers.append((response.status, response.read()))
        assert conn.sock is not None  # the same connection all along
    finally:
        conn.close()
    return answers


@pytest.mark.parametrize("short_writes", [False, True])
@pytest.mark.parametrize("bindings", ["ours", "pyopenssl"])
@pytest_twisted.ensureDeferred
async def test_a_file_over_tls_arrives_whole_and_in_order_on_one_connection(
    tls_port, senders, monkeypatch, short_writes, bindings
):
    """
    The sender seals each block itself; the responses' ends, the next
    heads and another resource, written by Twisted's TLS layer, follow
    its records in order, also when the socket takes only part of each
    write (TCP's buffer then holds the rest) and when the records are
    read out of OpenSSL with pyOpenSSL's own calls.
    """
    short = ShortWrites()
    if short_writes:
        monkeypatch.setattr(serving, "os", short)
    if bindings == "pyopenssl":
        monkeypatch.setattr(tls_module, "_OPENSSL", None)
    answers = await deferToThread(requests_on_one_connection, tls_port.port, tls_port.client)
    assert [status for status, _ in answers] == [200, 206, 200, 206, 200, 200]
    assert answers[0][1] == DATA and answers[4][1] == DATA
    assert answers[1][1] == DATA[1000:2100000]
    assert answers[2][1] == b""
    assert answers[3][1] == DATA[-77:]
    assert b'"file.bin"' in answers[5][1]
    assert senders == ["_TLSSender"] * 4
    assert (short.calls > 10) == short_writes


def test_records_are_read_out_of_openssl_into_a_buffer_of_ours():
    """
    With this pyOpenSSL, the sender reads records into its own buffer
    (pyOpenSSL's bio_read would make two fresh copies of each: a fifth
    of a TLS sender's CPU).  If this fails, the fallback still works
    (the test above runs it): find where pyOpenSSL keeps its bindings.
    """
    assert tls_module._OPENSSL is not None


@pytest_twisted.ensureDeferred
async def test_under_a_rate_cap_tls_goes_through_the_producer(tls_port, senders, reactor):
    tls_port.node.upload_rate = serving.UploadRate(2.0**40, reactor)
    answers = await deferToThread(requests_on_one_connection, tls_port.port, tls_port.client)
    assert answers[0] == (200, DATA) and answers[1] == (206, DATA[1000:2100000])
    assert senders == ["_BigFileSender"] * 4


def test_whole_writes_takes_a_large_write_in_one_call(tmp_path):
    """
    pyOpenSSL's contexts return from a write after each 16 KiB record;
    the listening side's do not (OpenSSL's own default).
    """
    make_certs(tmp_path, ["holder"])
    pem = str(tmp_path / "holder.pem")
    options = PeerTLS.load(pem, pem, str(tmp_path / "trust")).options()
    partial = tls_module.SSL_MODE_ENABLE_PARTIAL_WRITE
    assert options.getContext().set_mode(0) & partial  # set_mode(0) reads the modes
    assert not whole_writes(options).getContext().set_mode(0) & partial


def read_while_shrinking(port: int, context: ssl.SSLContext, path) -> tuple[int, bytes]:
    """
    A GET of the whole file, which is cut to 1,000 bytes once the first
    MiB of its body has arrived: (Content-Length, what arrived).
    """
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    try:
        conn.request("GET", "/files/file.bin")
        response = conn.getresponse()
        declared = int(response.getheader("content-length"))
        body = response.read(2**20)
        os.truncate(path, 1000)
        while True:
            try:
                chunk = response.read(2**16)
            except (http.client.IncompleteRead, ssl.SSLError, ConnectionError) as e:
                chunk = getattr(e, "partial", b"")
                body += chunk
                break
            if not chunk:
                break
            body += chunk
        return declared, body
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_file_shrinking_while_served_over_tls_ends_the_response(tls_port, senders):
    """
    The sender reads the file into its buffer (never from mapped pages,
    which would be a SIGBUS here): the read comes up short, the response
    is cut off, and the peer goes on serving.
    """
    big = os.urandom(64 * 2**20)
    tls_port.path.write_bytes(big)
    tls_port.share.refresh()
    declared, body = await deferToThread(read_while_shrinking, tls_port.port, tls_port.client,
                                         tls_port.path)
    assert declared == len(big) and 2**20 <= len(body) < len(big)
    assert big.startswith(body)
    assert senders == ["_TLSSender"]
    tls_port.share.refresh()
    answers = await deferToThread(requests_on_one_connection, tls_port.port, tls_port.client)
    assert answers[0] == (200, big[:1000])


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_over_tls_is_cut_off_and_its_slot_freed(
    tls_port, senders, monkeypatch, reactor
):
    monkeypatch.setattr(serving, "STALL_TIMEOUT", 1)
    tls_port.path.write_bytes(os.urandom(64 * 2**20))
    tls_port.share.refresh()
    slots = tls_port.node.upload_slots
    freed: Deferred[None] = Deferred()
    give = slots.give

    def given(upload):
        give(upload)
        if not freed.called:
            freed.callback(None)

    monkeypatch.setattr(slots, "give", given)

    def ask() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(30)
        s.connect(("127.0.0.1", tls_port.port))
        s = tls_port.client.wrap_socket(s)
        s.sendall(b"GET /files/file.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        return s

    s = await deferToThread(ask)
    with s:
        await freed.addTimeout(120, reactor)  # a hang, not a speed: the event itself is awaited
        assert slots.used == 0
        assert senders == ["_TLSSender"]

        def drain() -> int:
            got = 0
            try:
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            except (ConnectionResetError, ssl.SSLError):
                pass
            return got

        assert await deferToThread(drain) < 64 * 2**20  # cut off, not finished


@pytest_twisted.ensureDeferred
async def test_a_client_without_a_members_certificate_gets_no_bytes(tls_port):
    context = ssl.create_default_context(cafile=str(tls_port.certs / "trust" / "ca.pem"))
    context.check_hostname = False

    def anonymous_get() -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", tls_port.port), timeout=30) as raw:
                with context.wrap_socket(raw) as s:
                    s.sendall(b"GET /files/file.bin HTTP/1.1\r\nHost: x\r\n\r\n")
                    return s.recv(2**16)
        except (ssl.SSLError, ConnectionError):
            return b""

    assert await deferToThread(anonymous_get) == b""
