"""
Pieces, piece lists and bitfields (pure), the piece book's choices, the
match format that carries roots and partial holders, and a download in
progress served to others: only what it has verified.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import pytest_twisted
from hosts import StaticFileHost
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from p2pshare import wire
from p2pshare.peer.download.swarm import PieceBook
from p2pshare.peer.download.transfer import Partial
from p2pshare.peer.http import HaveResource, PiecesResource, make_site
from p2pshare.peer.share import ShareIndex
from p2pshare.pieces import (
    MAX_PIECES,
    PIECE_MIN,
    bitfield,
    check_list,
    from_bitfield,
    hash_file,
    piece_count,
    piece_size,
    piece_span,
    root_of,
)

MiB = 1 << 20


@pytest.mark.parametrize(
    "size, piece, count",
    [(0, MiB, 1), (1, MiB, 1), (MiB, MiB, 1), (MiB + 1, MiB, 2), (4 << 30, MiB, 4096),
     ((4 << 30) + 1, 2 * MiB, 2049), (1 << 40, 256 * MiB, 4096)],
)
def test_piece_size_follows_from_the_size(size, piece, count):
    assert (piece_size(size), piece_count(size)) == (piece, count)
    assert piece_size(size) >= PIECE_MIN and piece_count(size) <= MAX_PIECES
    assert piece_span(count - 1, size)[1] == size


@given(st.integers(0, 3 * MiB + 7))
def test_one_pass_gives_the_sha256_and_the_piece_list(tmp_path_factory, size):
    path = tmp_path_factory.mktemp("f") / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    sha, pieces = hash_file(path)
    assert sha == hashlib.sha256(data).hexdigest()
    assert pieces == b"".join(
        hashlib.sha256(data[slice(*piece_span(i, size))]).digest() for i in range(piece_count(size))
    )
    assert check_list(pieces, size, root_of(pieces)) is None
    assert check_list(pieces + b"x" * 32, size, None) is not None
    assert check_list(pieces, size, "0" * 64) == "a piece list that does not match its root"


@given(st.integers(1, 5000), st.data())
def test_bitfields_round_trip(count, data):
    indices = data.draw(st.sets(st.integers(0, count - 1)))
    bits = bitfield(indices, count)
    assert len(bits) == (count + 7) // 8
    assert from_bitfield(bits, count) == indices
    assert from_bitfield(b"\xff" * len(bits), count) == set(range(count))


def test_matches_carry_the_root_and_a_partial_holders_pieces():
    root = "b" * 64
    whole = wire.Match("a b", 5, "a" * 64, "s1", "127.0.0.1", 7001, 1, root)
    partial = wire.Match("a b", 5, "a" * 64, "s2", "127.0.0.1", 7002, 2, root, 3)
    assert whole.field().split("/")[6] == root
    assert partial.field().split("/")[6] == root + "+3"
    assert wire.Match.parse(whole.field()) == whole
    assert wire.Match.parse(partial.field()) == partial
    for bad in ["x" * 64, root + "+", root + "+x", root + "+1234567", "-+-1", root.upper()]:
        field = f"1/s1/h/1/5/{'a' * 64}/{bad}/n"
        with pytest.raises(wire.WireError):
            wire.Match.parse(field)


def test_the_book_begins_where_told_and_runs_stay_consecutive():
    book = PieceBook(10 * MiB, first=8)
    assert book.take("a", 4) == [8, 9]  # a run stops at the end of the file
    assert book.take("b", 4) == [0, 1, 2, 3]
    book.give_back([8, 9], "a")
    assert book.take("c", 1) == [8]


def test_a_partial_holder_is_asked_only_for_what_it_has():
    book = PieceBook(8 * MiB)
    assert book.take("p", 8, has={5, 6}) == [5, 6]
    assert book.take("q", 8, now=0, patience=1, has={5, 6}) == []  # taken, too fresh for the endgame
    assert book.take("q", 8, now=10, patience=1, has={6}) == [6]  # the endgame
    assert book.take("w", 3) == [0, 1, 2]


@pytest.fixture
def downloading(tmp_path):
    """
    A peer that shares nothing yet and is downloading f.bin: pieces 0 and
    2 of four are verified.
    """
    size = 3 * MiB + 100
    data = os.urandom(size)
    part = tmp_path / ".f.bin.part"
    part.write_bytes(data)
    digests = b"".join(
        hashlib.sha256(data[slice(*piece_span(i, size))]).digest() for i in range(piece_count(size))
    )
    book = PieceBook(size, {0, 2})
    sha = hashlib.sha256(data).hexdigest()
    partial = Partial("f.bin", size, sha, root_of(digests), book, Path(part), digests)
    share = ShareIndex(tmp_path)
    node = StaticFileHost(None, share, partials=[partial])
    return node, partial, data


def get(resource, path, headers=None):
    request = DummyRequest(path)
    for k, v in (headers or {}).items():
        request.requestHeaders.addRawHeader(k, v)
    child = resource
    while request.postpath:
        child = child.getChild(request.postpath.pop(0), request)
    body = child.render(request)
    if isinstance(body, bytes):
        request.write(body)
        request.finish()
    return request


@pytest_twisted.ensureDeferred
async def test_a_download_in_progress_serves_only_its_verified_pieces(downloading, reactor):
    node, partial, data = downloading
    node.clock = reactor
    port = reactor.listenTCP(0, make_site(node, reactor), interface="127.0.0.1")
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    url = f"http://127.0.0.1:{port.getHost().port}/files/f.bin".encode()

    async def fetch(range_=None, **more):
        headers = Headers({b"range": [range_]} if range_ else {})
        for k, v in more.items():
            headers.addRawHeader(k.replace("_", "-"), v)
        response = await agent.request(b"GET", url, headers)
        return response, await readBody(response)

    try:
        inside, body = await fetch(f"bytes=10-{MiB - 1}".encode())
        assert inside.code == 206 and body == data[10:MiB]
        assert inside.headers.getRawHeaders(b"content-range") == [f"bytes 10-{MiB - 1}/{partial.size}".encode()]
        third, body = await fetch(f"bytes={2 * MiB}-{3 * MiB - 1}".encode())
        assert third.code == 206 and body == data[2 * MiB:3 * MiB]
        outside, _ = await fetch(f"bytes={MiB - 1}-{MiB}".encode())  # into piece 1
        assert outside.code == 416
        whole, _ = await fetch()  # no range: it has not the whole file
        assert whole.code == 416
        other, _ = await fetch(b"bytes=0-5", if_match=b'"' + b"0" * 64 + b'"')
        assert other.code == 412
    finally:
        await port.stopListening()
    have = get(HaveResource(node), [partial.sha256.encode()])
    assert b"".join(have.written) == bitfield({0, 2}, 4) == bytes([0b10100000])
    pieces = get(PiecesResource(node), [partial.sha256.encode()])
    assert b"".join(pieces.written) == partial.pieces
    assert get(HaveResource(node), [b"0" * 64]).responseCode == 404


def test_pieces_are_written_from_their_blocks_whatever_the_blocks(tmp_path, monkeypatch):
    """
    A piece arrives as many views of received blocks (some empty, some
    longer than one write); short writes are carried on.
    """

    from p2pshare.peer.download import storing

    data = os.urandom(300_000)
    cuts = sorted({0, *range(0, 5000, 97), 5000, len(data)})  # small blocks, then one large
    parts = [memoryview(data)[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    parts.insert(3, memoryview(b""))
    assert max(len(p) for p in parts) > storing.WRITE_SIZE
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, off: real(fd, data[:1000], off))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        digest = hashlib.sha256(data).digest()
        assert not storing.verify_and_write(fd, 10, parts, hashlib.sha256(b"other").digest())
        assert os.fstat(fd).st_size == 0  # a corrupt piece writes nothing
        assert storing.verify_and_write(fd, 10, parts, digest)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"\0" * 10 + data
