"""
One run of pieces read by a thread (peer/download/direct.py's
L{fetch_run}), against a real holder in this process: the run's thread
reads, a second thread hands each piece to C{on_piece} in the order read,
and the run ends only once every piece read is stored or given back.  A
corrupt piece, a piece that cannot be written and any other error of
C{on_piece} end the run at the next piece, with every buffer back in the
pool.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest
import pytest_twisted
from hosts import StaticFileHost
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from p2pshare.peer.download.direct import Link, PieceBuffers, fetch_run
from p2pshare.peer.http import FilesResource
from p2pshare.peer.share import ShareIndex

PIECE = 2**20
DATA = os.urandom(6 * PIECE + 999)
SPANS = [(i, i * PIECE, min((i + 1) * PIECE, len(DATA))) for i in range(7)]


@pytest.fixture
def holder(reactor, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file.bin").write_bytes(DATA)
    share = ShareIndex(shared)
    share.refresh()
    root = Resource()
    root.putChild(b"files", FilesResource(StaticFileHost(reactor, share)))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}/files/file.bin".encode()
    pytest_twisted.blockon(port.stopListening())


class Pool(PieceBuffers):
    """
    The download's piece buffers, counting those out of the pool.
    """

    def __init__(self) -> None:
        super().__init__(PIECE, 3)
        self.out = 0
        self._count = threading.Lock()

    def take(self) -> memoryview:
        buffer = super().take()
        with self._count:
            self.out += 1
        return buffer

    def give(self, buffer: memoryview) -> None:
        with self._count:
            self.out -= 1
        super().give(buffer)


def run(url: bytes, on_piece: Callable[[int, memoryview, Callable[[], None]], bool], pool: Pool):
    link = Link(pool)
    try:
        return fetch_run(
            link, url, {"Range": f"bytes=0-{len(DATA) - 1}"}, SPANS,
            lambda status, header: None if status == 206 else ValueError(status),
            on_piece, 30, 30,
        ), link
    finally:
        link.drop()


@pytest_twisted.ensureDeferred
async def test_pieces_are_stored_by_a_second_thread_in_order_before_the_run_ends(holder):
    pool = Pool()
    stored: list[tuple[int, bytes, str]] = []

    def on_piece(index: int, data: memoryview, release: Callable[[], None]) -> bool:
        stored.append((index, bytes(data), threading.current_thread().name))
        release()
        return True

    result, _ = await deferToThread(run, holder, on_piece, pool)
    assert result.answered and result.received == len(DATA)
    assert result.failed is None and result.corrupt is None and result.local is None
    assert [i for i, _, _ in stored] == list(range(7))
    assert b"".join(data for _, data, _ in stored) == DATA
    assert {name for _, _, name in stored} == {"p2p piece store"}
    assert pool.out == 0


@pytest.mark.parametrize("failure", ["corrupt", "disk", "bug"])
@pytest_twisted.ensureDeferred
async def test_a_piece_that_fails_ends_the_run_and_every_buffer_comes_back(holder, failure):
    pool = Pool()
    seen: list[int] = []

    def on_piece(index: int, data: memoryview, release: Callable[[], None]) -> bool:
        seen.append(index)
        release()
        if index == 2:
            if failure == "disk":
                raise OSError(28, "No space left on device")
            if failure == "bug":
                raise RuntimeError("a bug in on_piece")
            return False
        return True

    if failure == "bug":
        with pytest.raises(RuntimeError, match="a bug in on_piece"):
            await deferToThread(run, holder, on_piece, pool)
    else:
        result, link = await deferToThread(run, holder, on_piece, pool)
        assert result.corrupt == (2 if failure == "corrupt" else None)
        assert (result.local is not None) == (failure == "disk")
        assert link._conn is None  # a run cut short leaves no connection to reuse
    assert seen == [0, 1, 2]  # nothing after the piece that failed
    assert pool.out == 0
