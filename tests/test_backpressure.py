"""
Back-pressure on a real TCP connection: a client that sends and never
reads cannot make a role buffer its replies without bound; the role stops
reading from it until it drains, then goes on, and nobody else waits.
"""

from __future__ import annotations

import select
import socket

import pytest_twisted
from twisted.internet.threads import deferToThread

from p2pshare.common import LimitedFactory
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaFactory, MetaServer

PINGS = b"PING\r\n" * 10_000  # 60 KB a batch
MAX_SENT = 200 * 1024 * 1024  # a bound on the load loop


def pushy_client(port: int) -> tuple[socket.socket, int]:
    """
    Say P2P, then PING as long as the server takes the bytes, without ever
    reading a PONG (L{push}).
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"P2P\r\n")
    s.setblocking(False)
    return s, push(s, 0)


def push(s: socket.socket, sent: int) -> int:
    """
    PING on C{s} until sending has stalled for a second (the server may
    have stopped reading, or only be slow on a busy machine: the caller
    looks) or the load loop's bound is reached; the bytes sent in all.
    """
    while sent < MAX_SENT:
        # Wait (at most a second) for room to send: the server reading.
        _, writable, _ = select.select([], [s], [], 1.0)
        if not writable:
            break  # it has stopped reading from us
        offset = sent % len(PINGS)  # whole lines only, even after a short send
        try:
            sent += s.send(PINGS[offset:])
        except BlockingIOError:
            continue
    return sent


def drain(s: socket.socket, sent: int) -> int:
    """
    Read every reply: one OK, then a PONG per PING the server handled.
    """
    s.setblocking(True)
    s.settimeout(30)
    expected = len(b"OK observer: TOPO lists the network\r\n") + sent // 6 * len(b"PONG\r\n")
    got = 0
    while got < expected:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    s.close()
    return got


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_is_not_buffered_without_bound(reactor, tmp_path):
    server = MetaServer(Registry(":memory:"), reactor, data_dir=tmp_path, expect=1)
    factory = LimitedFactory(MetaFactory(server), clock=reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        s, sent = await deferToThread(pushy_client, port.getHost().port)
        [wrapper] = factory.protocols
        tcp = wrapper.transport
        while not tcp.producerPaused and sent < MAX_SENT:
            sent = await deferToThread(push, s, sent)  # a stall of a busy machine: on
        # The server stopped reading long before the load loop's bound...
        assert sent < MAX_SENT
        buffered = len(tcp.dataBuffer) + tcp._tempDataLen
        # ... with at most about one read's worth of replies queued beyond
        # the transport's own buffer size.
        assert tcp.producerPaused
        assert buffered < tcp.bufferSize + 2 * 1024 * 1024, buffered

        # Another client is served meanwhile.
        def observer() -> bytes:
            with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as o:
                o.sendall(b"P2P\r\nPING\r\n")
                return o.recv(100)

        assert (await deferToThread(observer)).endswith(b"PONG\r\n")
        # Once the pushy client reads, everything it sent is answered.
        got = await deferToThread(drain, s, sent)
        assert got == len(b"OK observer: TOPO lists the network\r\n") + sent // 6 * 6
    finally:
        await port.stopListening()
