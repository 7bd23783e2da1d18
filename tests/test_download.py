"""
The downloader against real HTTP holders in this process (127.0.0.1):
holders that break off, stall, are busy or send wrong bytes, files already
there, resumes.  Whatever happens, nothing partial or corrupt appears
under the target name.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import pytest_twisted
from hosts import StaticFileHost
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from p2pshare import wire
from p2pshare.peer.download.transfer import Downloader, FetchError, part_path
from p2pshare.peer.http import FilesResource, PiecesResource
from p2pshare.peer.serving import parse_range
from p2pshare.peer.share import ShareIndex
from p2pshare.pieces import piece_count, piece_span, root_of

DATA = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(DATA).hexdigest()
PIECES = b"".join(
    hashlib.sha256(DATA[slice(*piece_span(i, len(DATA)))]).digest() for i in range(piece_count(len(DATA)))
)
ROOT = root_of(PIECES)
MiB = 1 << 20


class Recorded(Resource):
    """
    Wraps a holder's /files/ and notes every Range it is asked for.
    """

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.ranges = []
        self.if_ranges = []
        self.clients = []  # the client's port, per request

    def getChild(self, path, request):
        self.clients.append(request.getClientAddress().port)
        self.ranges.append(request.getHeader(b"range"))
        self.if_ranges.append(request.getHeader(b"if-range"))
        return self.inner.getChild(path, request)

    def served(self):
        """
        The byte ranges asked for, as (first, last) pairs.
        """
        spans = []
        for r in self.ranges:
            first, last = r.decode().removeprefix("bytes=").split("-")
            spans.append((int(first), int(last)))
        return spans


def asked(request):
    """
    The range a request asks for, as (first, last).
    """
    first, last = request.getHeader(b"range").decode().removeprefix("bytes=").split("-")
    return int(first), int(last)


class BreaksOff(Resource):
    """
    Answers a range, sends the first half of it, and ends the response
    there, closing the connection (as a holder process that dies does).
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.asked = 0

    def render_GET(self, request):
        self.asked += 1
        first, last = asked(request)
        request.setResponseCode(206)
        request.setHeader(b"content-range", f"bytes {first}-{last}/{len(DATA)}".encode())
        request.setHeader(b"content-length", str(last - first + 1).encode())
        request.setHeader(b"connection", b"close")
        request.channel.persistent = False  # closed once finished, whatever the client asked
        request.write(DATA[first:first + (last - first + 1) // 2])
        request.finish()
        return NOT_DONE_YET


class ThePieceList(Resource):
    """
    /pieces/SHA of DATA, for holders that are not a real share.
    """

    isLeaf = True

    def __init__(self, digests=PIECES):
        super().__init__()
        self.digests = digests

    def render_GET(self, request):
        if request.postpath != [SHA.encode()]:
            request.setResponseCode(404)
            return b""
        return self.digests


@pytest.fixture
def holders(reactor, tmp_path):
    ports = []

    def serve(files_resource, pieces=None):
        root = Resource()
        root.putChild(b"files", files_resource)
        inner = getattr(files_resource, "inner", files_resource)
        if pieces is None and isinstance(inner, FilesResource):
            pieces = PiecesResource(inner.node)
        root.putChild(b"pieces", pieces or ThePieceList())
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        ports.append(port)
        return port.getHost().port

    yield serve
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


def share_with(tmp_path, label, content):
    d = tmp_path / label
    d.mkdir()
    (d / "file.bin").write_bytes(content)
    share = ShareIndex(d)
    share.refresh()
    return share


def match(port, holder, hops, root=ROOT):
    return wire.Match("file.bin", len(DATA), SHA, holder, "127.0.0.1", port, hops, root)


def honest_files(reactor, tmp_path, label, **extra):
    share = share_with(tmp_path, label, DATA)
    return Recorded(FilesResource(StaticFileHost(reactor, share, **extra)))


@pytest.fixture(params=["direct", "agent"])
def downloader(reactor, request, monkeypatch):
    """
    A downloader that reads plain-TCP holders in threads (what a peer
    does), or one that reads everything through Twisted's agent (what it
    does over TLS): every test here runs with both.  Holders in this
    process are fast enough for one to make the others wait (FAST_ENOUGH);
    these tests are about several at once, so none ever is, but in
    test_a_holder_fast_enough_alone_keeps_the_others_waiting.
    """
    from p2pshare.peer.download import pacing

    monkeypatch.setattr(pacing, "FAST_ENOUGH", float("inf"))
    pool = HTTPConnectionPool(reactor, persistent=False)
    d = Downloader(
        Agent(reactor, pool=pool), reactor, lambda f, *a: _now(f, *a),
        direct=reactor if request.param == "direct" else None,
    )
    d.spread = False  # pieces in order, so that the ranges asked for are known
    yield d


def _now(f, *args):
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


def fetch(downloader, matches, directory, force=False, sources=4):
    return Deferred.fromCoroutine(downloader.fetch(matches, directory, force, None, sources))


def visible(directory):
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


@pytest_twisted.ensureDeferred
async def test_four_holders_each_serve_part_of_the_file(holders, downloader, tmp_path, reactor):
    files = [honest_files(reactor, tmp_path, f"h{i}") for i in range(4)]
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(holders(f), f"h{i}", i) for i, f in enumerate(files)], out)
    assert (out / "file.bin").read_bytes() == DATA and os.listdir(out) == ["file.bin"]
    assert all(f.ranges for f in files), [f.ranges for f in files]  # every holder was asked for a part
    assert all(f.if_ranges == [None] * len(f.ranges) for f in files)
    # Together they sent each piece once: runs are disjoint and cover it.
    spans = sorted(span for f in files for span in f.served())
    assert spans[0][0] == 0 and spans[-1][1] == len(DATA) - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert sorted(fetched.holder.split(", ")) == ["h0", "h1", "h2", "h3"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("fast_enough", [1e6, float("inf")])
async def test_a_holder_fast_enough_alone_keeps_the_others_waiting(holders, downloader, tmp_path, reactor, monkeypatch, fast_enough):
    """
    The nearest holder begins alone; if its first run shows it delivers
    FAST_ENOUGH alone, the others are never asked (more holders would only
    add contention), else they join.
    """
    from p2pshare.peer.download import pacing

    monkeypatch.setattr(pacing, "MAX_RUN", MiB)  # a piece per run
    monkeypatch.setattr(pacing, "FIRST_RUN", MiB)
    monkeypatch.setattr(pacing, "FAST_ENOUGH", fast_enough)
    monkeypatch.setattr(pacing, "FIRST_ALONE", 60.0)  # judged by its first run, however long
    files = [honest_files(reactor, tmp_path, f"h{i}") for i in range(4)]
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(holders(f), f"h{i}", i) for i, f in enumerate(files)], out)
    assert (out / "file.bin").read_bytes() == DATA
    asked = [len(f.ranges) for f in files]
    if fast_enough < float("inf"):  # 1 MB/s: the first alone is plenty
        assert asked == [4, 0, 0, 0] and fetched.holder == "h0", asked
    else:
        assert all(asked), asked


@pytest_twisted.ensureDeferred
async def test_a_holders_runs_share_one_connection(holders, downloader, tmp_path, reactor, monkeypatch):
    """
    Over plain TCP, the runs of one holder go over one HTTP/1.1 connection
    kept open between them (through the agent, a connection per run).
    """
    from p2pshare.peer.download import pacing

    monkeypatch.setattr(pacing, "MAX_RUN", MiB)  # a piece per run
    files = honest_files(reactor, tmp_path, "h")
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(holders(files), "h", 1)], out, sources=1)
    assert fetched.holder == "h" and (out / "file.bin").read_bytes() == DATA
    assert len(files.ranges) == piece_count(len(DATA)) == 4
    connections = len(set(files.clients))
    assert connections == (1 if downloader.direct is not None else 4), files.clients


@pytest_twisted.ensureDeferred
async def test_over_tls_runs_are_read_in_threads_on_one_kept_open_connection(reactor, tmp_path, monkeypatch):
    """
    A holder over TLS (the network's CA, certificates both ways) is read
    by the same threads as over plain TCP, through Python's ssl with the
    peer's certificate: one connection for every run.
    """
    from p2pshare.peer.download import pacing
    from p2pshare.peer.tap import _Endpoints
    from p2pshare.tls import PeerTLS, make_certs

    monkeypatch.setattr(pacing, "MAX_RUN", MiB)  # a piece per run
    monkeypatch.setattr(pacing, "FAST_ENOUGH", float("inf"))
    certs = tmp_path / "certs"
    make_certs(certs, ["holder", "getter"])

    def load(name):
        return PeerTLS.load(str(certs / f"{name}.pem"), str(certs / f"{name}.pem"), str(certs / "trust"))

    files = honest_files(reactor, tmp_path, "h")
    root = Resource()
    root.putChild(b"files", files)
    root.putChild(b"pieces", PiecesResource(files.inner.node))
    port = reactor.listenSSL(0, Site(root), load("holder").options(), interface="127.0.0.1")
    try:
        getter = load("getter")
        agent = Agent.usingEndpointFactory(  # the piece list comes through it
            reactor, _Endpoints(reactor, getter), pool=HTTPConnectionPool(reactor, persistent=False)
        )
        d = Downloader(
            agent, reactor, lambda f, *a: _now(f, *a), scheme="https",
            direct=reactor, tls=getter.stdlib_client(),
        )
        d.spread = False
        out = tmp_path / "out"
        out.mkdir()
        fetched = await fetch(d, [match(port.getHost().port, "h", 1)], out, sources=1)
        assert fetched.holder == "h" and (out / "file.bin").read_bytes() == DATA
        assert len(files.ranges) == 4 and len(set(files.clients)) == 1, files.clients
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_holder_that_refuses_connections_is_passed_over(holders, downloader, tmp_path, reactor):
    closed = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    gone = closed.getHost().port
    await closed.stopListening()
    honest = honest_files(reactor, tmp_path, "h")
    out = tmp_path / "out"
    out.mkdir()
    # The piece list comes from h; runs are asked of both.
    fetched = await fetch(downloader, [match(gone, "gone", 1), match(holders(honest), "h", 2)], out)
    assert fetched.holder == "h" and (out / "file.bin").read_bytes() == DATA


@pytest_twisted.ensureDeferred
async def test_one_source_asks_one_holder(holders, downloader, tmp_path, reactor):
    files = [honest_files(reactor, tmp_path, f"h{i}") for i in range(3)]
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(holders(f), f"h{i}", i) for i, f in enumerate(files)], out, sources=1)
    assert fetched.holder == "h0" and (out / "file.bin").read_bytes() == DATA
    assert files[1].ranges == files[2].ranges == []


@pytest_twisted.ensureDeferred
async def test_a_holder_that_breaks_off_gives_its_pieces_to_the_others(holders, downloader, tmp_path, reactor):
    honest = honest_files(reactor, tmp_path, "honest")
    broken = Resource()
    breaker = BreaksOff()
    broken.putChild(b"file.bin", breaker)
    near, far = holders(broken), holders(honest)
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(near, "near", 1), match(far, "far", 2)], out)
    assert (out / "file.bin").read_bytes() == DATA
    assert os.listdir(out) == ["file.bin"]
    assert breaker.asked >= 1
    assert "far" in fetched.holder


@pytest_twisted.ensureDeferred
async def test_a_corrupt_piece_names_its_holder_who_is_dropped(holders, downloader, tmp_path, reactor):
    liar_share = share_with(tmp_path, "liar", bytes(len(DATA)))
    real = liar_share.files["file.bin"]
    # It claims the honest hash and piece list but serves zeros.
    liar_share.files["file.bin"] = type(real)(real.name, real.size, SHA, real.stamp, PIECES)
    liar_files = Recorded(FilesResource(StaticFileHost(reactor, liar_share)))
    liar = holders(liar_files)
    honest = holders(honest_files(reactor, tmp_path, "honest"))
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(liar, "liar", 1), match(honest, "honest", 3)], out)
    assert fetched.holder == "honest"
    assert fetched.notes == ["liar sent a corrupt piece of file.bin; dropped"]
    assert hashlib.sha256((out / "file.bin").read_bytes()).hexdigest() == SHA
    assert os.listdir(out) == ["file.bin"]
    asked = len(liar_files.ranges)
    assert asked == 1  # dropped after its first run
    # The liar is passed over for the cooling-off period, though nearest.
    assert "liar" in downloader.distrusted
    (out / "file.bin").unlink()
    fetched = await fetch(downloader, [match(liar, "liar", 1), match(honest, "honest", 3)], out)
    assert fetched.holder == "honest" and fetched.notes == []
    assert len(liar_files.ranges) == asked  # not asked again


@pytest_twisted.ensureDeferred
async def test_holders_whose_piece_list_leads_elsewhere_are_dropped_as_a_group(holders, downloader, tmp_path, reactor):
    """
    Two holders claim the SHA-256 but hold other bytes, with a piece list
    true to those bytes: every piece verifies, the whole file does not.
    """
    zeros = bytes(len(DATA))
    liars = []
    for label in ("l1", "l2"):
        share = share_with(tmp_path, label, zeros)
        real = share.files["file.bin"]
        share.files["file.bin"] = type(real)(real.name, real.size, SHA, real.stamp, real.pieces)
        liars.append((label, holders(FilesResource(StaticFileHost(reactor, share))), real.root))
    honest = holders(honest_files(reactor, tmp_path, "honest"))
    out = tmp_path / "out"
    out.mkdir()
    matches = [match(port, label, 1, root) for label, port, root in liars] + [match(honest, "honest", 2)]
    fetched = await fetch(downloader, matches, out)
    assert fetched.holder == "honest" and (out / "file.bin").read_bytes() == DATA
    assert fetched.notes == ["l1, l2 gave piece hashes that do not match file.bin; dropped"]


@pytest_twisted.ensureDeferred
async def test_a_piece_list_that_does_not_match_its_root_is_refused(holders, downloader, tmp_path, reactor):
    bad = bytearray(PIECES)
    bad[0] ^= 1
    files = honest_files(reactor, tmp_path, "h")
    port = holders(files, pieces=ThePieceList(bytes(bad)))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FetchError) as e:
        await fetch(downloader, [match(port, "h", 1)], out)
    assert "h: a piece list that does not match its root" in e.value.text
    assert files.ranges == [] and visible(out) == []


@pytest_twisted.ensureDeferred
async def test_when_every_holder_fails_there_is_a_clear_error_and_no_file(holders, downloader, tmp_path, reactor):
    broken = Resource()
    broken.putChild(b"file.bin", BreaksOff())
    port = holders(broken)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FetchError) as e:
        await fetch(downloader, [match(port, "flaky", 1)], out)
    assert e.value.code == wire.E_FAILED
    assert e.value.text.startswith("could not download file.bin: flaky: the transfer broke off"), e.value.text
    assert "are kept: the same command resumes" in e.value.text
    assert visible(out) == []
    # What verified is kept, hidden, for a resume: the first pieces.
    kept = part_path(out, "file.bin", SHA).read_bytes()
    assert kept[:MiB] == DATA[:MiB]


@pytest_twisted.ensureDeferred
async def test_an_interrupted_download_resumes_from_its_verified_pieces(holders, downloader, tmp_path, reactor):
    honest = honest_files(reactor, tmp_path, "honest")
    port = holders(honest)
    out = tmp_path / "out"
    out.mkdir()
    # Piece 0 arrived whole; piece 2 holds garbage (written, never verified).
    part = bytearray(DATA[:MiB + 1000]) + bytes(MiB - 1000) + bytes(len(DATA) - 2 * MiB)
    part[2 * MiB:2 * MiB + 10] = b"x" * 10
    part_path(out, "file.bin", SHA).write_bytes(bytes(part))
    await fetch(downloader, [match(port, "h", 1)], out)
    assert (out / "file.bin").read_bytes() == DATA
    assert honest.served() == [(MiB, len(DATA) - 1)]  # not piece 0 again


OLDER = {  # older versions of DATA, and the pieces of DATA they hold at their place
    "edited in place": (DATA[:MiB + 5] + b"x" + DATA[MiB + 6:], {0, 2, 3}),
    "cut short": (DATA[:2 * MiB + 5], {0, 1}),
    "grown": (DATA[:3 * MiB] + os.urandom(MiB), {0, 1, 2}),
}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("older", sorted(OLDER))
@pytest.mark.parametrize("where", ["part", "replaced file"])
async def test_pieces_an_older_copy_here_holds_are_not_fetched_again(holders, downloader, tmp_path, reactor, older, where):
    honest = honest_files(reactor, tmp_path, "honest")
    port = holders(honest)
    out = tmp_path / "out"
    out.mkdir()
    old, same = OLDER[older]
    old_sha = hashlib.sha256(old).hexdigest()
    if where == "part":  # an interrupted download of the older version
        part_path(out, "file.bin", old_sha).write_bytes(old)
    else:  # the copy this download replaces (--force)
        (out / "file.bin").write_bytes(old)
    fetched = await fetch(downloader, [match(port, "h", 1)], out, force=where == "replaced file")
    assert (out / "file.bin").read_bytes() == DATA
    # Only the pieces the older copy lacks were asked for.
    wanted = sorted(i for i in range(piece_count(len(DATA))) if i not in same)
    got = {i for first, last in honest.served() for i in range(first // MiB, last // MiB + 1)}
    assert sorted(got) == wanted, honest.served()
    assert fetched.notes == [
        f"{len(same)} of 4 pieces of file.bin were already here, in an older copy, and were not "
        "fetched again"
    ]
    assert sorted(os.listdir(out)) == ["file.bin"]  # the older part is gone


@pytest_twisted.ensureDeferred
async def test_an_existing_file_is_never_silently_replaced(holders, downloader, tmp_path, reactor):
    port = holders(honest_files(reactor, tmp_path, "honest"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "file.bin").write_bytes(b"mine")
    with pytest.raises(FetchError) as e:
        await fetch(downloader, [match(port, "h", 1)], out)
    assert e.value.code == wire.E_EXISTS
    assert (out / "file.bin").read_bytes() == b"mine"
    fetched = await fetch(downloader, [match(port, "h", 1)], out, force=True)
    assert (out / "file.bin").read_bytes() == DATA and not fetched.already
    fetched = await fetch(downloader, [match(port, "h", 1)], out)
    assert fetched.already and fetched.holder is None


@pytest_twisted.ensureDeferred
async def test_a_busy_holder_answers_503_and_the_download_goes_elsewhere(holders, downloader, tmp_path, reactor):
    from p2pshare.peer.serving import UploadSlots

    busy_files = honest_files(reactor, tmp_path, "busy", upload_slots=UploadSlots(0))
    busy = holders(busy_files)
    honest = holders(honest_files(reactor, tmp_path, "honest", upload_slots=UploadSlots(1)))
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(b"GET", f"http://127.0.0.1:{busy}/files/file.bin".encode())
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"5"]
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(busy, "busy", 1), match(honest, "honest", 2)], out)
    assert fetched.holder == "honest" and (out / "file.bin").read_bytes() == DATA
    assert len(busy_files.ranges) == 2  # the GET above, and one range; its 5 s pause ended with the download


class ChangesUnder(Resource):
    """
    Serves its first C{good} requests from an honest share, then answers
    412 to the download's C{If-Match}: its file changed under the download.
    """

    def __init__(self, inner, good):
        super().__init__()
        self.inner, self.good = inner, good
        self.asked = 0

    def getChild(self, path, request):
        self.asked += 1
        if self.asked > self.good:
            assert request.getHeader(b"if-match") == f'"{SHA}"'.encode()
            gone = Resource()
            gone.render_GET = lambda request: (request.setResponseCode(412), b"")[1]
            gone.isLeaf = True
            return gone
        return self.inner.getChild(path, request)


@pytest_twisted.ensureDeferred
async def test_a_holder_whose_file_changes_under_the_download_is_dropped(
    holders, downloader, tmp_path, reactor, monkeypatch
):
    """
    Its first run verifies; then its file is another version (412 to the
    If-Match): it is let go at once, not retried, and the other holder
    brings the rest, over either fetcher.
    """
    from p2pshare.peer.download import pacing

    monkeypatch.setattr(pacing, "MAX_RUN", MiB)  # a piece per run
    monkeypatch.setattr(pacing, "FIRST_RUN", MiB)
    changer = ChangesUnder(honest_files(reactor, tmp_path, "changer"), good=1)
    near = holders(changer, pieces=ThePieceList())
    far = holders(honest_files(reactor, tmp_path, "honest"))
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(near, "near", 1), match(far, "far", 2)], out, sources=2)
    assert (out / "file.bin").read_bytes() == DATA and visible(out) == ["file.bin"]
    assert changer.asked == 2  # one run served, one 412, then never again
    assert "far" in fetched.holder


@pytest_twisted.ensureDeferred
async def test_a_full_disk_mid_download_is_a_local_fault(holders, downloader, tmp_path, reactor, monkeypatch):
    import errno

    from p2pshare.peer.download import storing, transfer

    real = storing.verify_and_write
    room = [MiB]

    def full_after_a_megabyte(fd, offset, data, digest, writing=None):
        size = sum(len(p) for p in data)
        if room[0] < size:
            raise OSError(errno.ENOSPC, "No space left on device")
        room[0] -= size
        return real(fd, offset, data, digest, writing)

    monkeypatch.setattr(storing, "verify_and_write", full_after_a_megabyte)
    first, second = honest_files(reactor, tmp_path, "a"), honest_files(reactor, tmp_path, "b")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(transfer.LocalFault) as e:
        await fetch(downloader, [match(holders(first), "a", 1), match(holders(second), "b", 2)], out)
    assert e.value.text == f"no space left on {out}: 3.0 MiB needed"
    assert os.listdir(out) == []  # the part is gone: it only took space


@pytest_twisted.ensureDeferred
async def test_a_folder_it_may_not_write_is_a_local_fault(holders, downloader, tmp_path, reactor, monkeypatch):
    import errno

    from p2pshare.peer.download import transfer

    def read_only(self, path):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(transfer.PartFile, "__init__", read_only)
    files = honest_files(reactor, tmp_path, "a")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(transfer.LocalFault) as e:
        await fetch(downloader, [match(holders(files), "a", 1)], out)
    assert e.value.text == f"cannot write into {out}: read-only file system"
    assert files.ranges == []


@pytest_twisted.ensureDeferred
async def test_a_second_download_of_one_target_waits_for_the_first(holders, downloader, tmp_path, reactor):
    files = honest_files(reactor, tmp_path, "a")
    port = holders(files)
    out = tmp_path / "out"
    out.mkdir()
    first = fetch(downloader, [match(port, "a", 1)], out)
    second = fetch(downloader, [match(port, "a", 1)], out)
    one, two = await first, await second
    assert (one.already, two.already) == (False, True)
    assert files.served() == [(0, len(DATA) - 1)]
    assert os.listdir(out) == ["file.bin"]


@pytest_twisted.ensureDeferred
async def test_a_name_of_255_bytes_downloads(holders, downloader, tmp_path, reactor):
    name = "é" * 127 + "x"  # 255 bytes of UTF-8: the longest name a file system takes
    d = tmp_path / "long"
    d.mkdir()
    (d / name).write_bytes(DATA)
    share = ShareIndex(d)
    share.refresh()
    port = holders(FilesResource(StaticFileHost(reactor, share)))
    out = tmp_path / "out"
    out.mkdir()
    m = wire.Match(name, len(DATA), SHA, "h", "127.0.0.1", port, 1, ROOT)
    fetched = await fetch(downloader, [m], out)
    assert fetched.path == out / name and (out / name).read_bytes() == DATA
    assert len(part_path(out, name, SHA).name.encode()) <= 255


class Stalls(Resource):
    """
    Answers a range, sends a first part of it, then says nothing more
    while keeping the connection open.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.asked = Deferred()  # fires at the first request

    def render_GET(self, request):
        first, last = asked(request)
        request.setResponseCode(206)
        request.setHeader(b"content-range", f"bytes {first}-{last}/{len(DATA)}".encode())
        request.setHeader(b"content-length", str(last - first + 1).encode())
        request.write(DATA[first:first + 1000])
        if not self.asked.called:
            self.asked.callback(None)
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_a_stalled_holders_pieces_are_fetched_from_another(holders, downloader, tmp_path, reactor):
    """
    The endgame: once nothing is left unclaimed, the honest holder fetches
    what the stalled one still owes, and the download ends without waiting
    for the stalled one's deadline (here the default, 30 s).
    """
    stalled = Resource()
    stalled.putChild(b"file.bin", Stalls())
    honest = honest_files(reactor, tmp_path, "h")
    out = tmp_path / "out"
    out.mkdir()
    d = fetch(downloader, [match(holders(stalled), "slow", 1), match(holders(honest), "h", 2)], out)
    fetched = await d.addTimeout(20, reactor)
    assert fetched.holder == "h" and (out / "file.bin").read_bytes() == DATA
    assert os.listdir(out) == ["file.bin"]


@pytest_twisted.ensureDeferred
async def test_a_holder_that_stalls_alone_is_left_at_the_idle_deadline(holders, downloader, tmp_path, reactor, monkeypatch):
    from p2pshare.peer.download import fetch as fetching

    monkeypatch.setattr(fetching, "IDLE_TIMEOUT", 0.2)
    stalled = Resource()
    stalled.putChild(b"file.bin", Stalls())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FetchError) as e:
        await fetch(downloader, [match(holders(stalled), "slow", 1)], out)
    assert "slow: it sent nothing for 0.2 s" in e.value.text, e.value.text
    assert visible(out) == []


@pytest_twisted.ensureDeferred
async def test_a_cancelled_download_stops_every_transfer_and_keeps_its_pieces(holders, downloader, tmp_path, reactor):
    stalled = Resource()
    stalls = Stalls()
    stalled.putChild(b"file.bin", stalls)
    honest = honest_files(reactor, tmp_path, "h")
    out = tmp_path / "out"
    out.mkdir()
    # One source, the stalled one: the download hangs until cancelled.
    d = fetch(downloader, [match(holders(stalled), "slow", 1), match(holders(honest), "h", 2)], out, sources=1)
    await stalls.asked.addTimeout(10, reactor)  # its transfer is under way
    d.cancel()
    with pytest.raises(Exception) as e:
        await d
    assert e.type.__name__ == "CancelledError"
    assert visible(out) == [] and part_path(out, "file.bin", SHA).exists()
    assert honest.ranges == []
    # The same command resumes, from the other holder.
    fetched = await fetch(downloader, [match(holders(honest), "h", 2)], out)
    assert (out / "file.bin").read_bytes() == DATA and fetched.holder == "h"


@pytest.mark.parametrize(
    "header, size, expected",
    [
        (None, 10, None),
        (b"bytes=0-4", 10, (0, 4)),
        (b"bytes=5-", 10, (5, 9)),
        (b"bytes=-3", 10, (7, 9)),
        (b"bytes=-30", 10, (0, 9)),
        (b"bytes=8-100", 10, (8, 9)),
        (b"bytes=10-", 10, "unsatisfiable"),
        (b"bytes=-0", 10, "unsatisfiable"),
        (b"bytes=0-1,3-4", 10, None),
        (b"bytes=" + b"0-1," * 200 + b"3-4", 10, None),
        (b"items=0-1", 10, None),
        (b"bytes=5-2", 10, None),
        (b"bytes=" + b"9" * 5000 + b"-", 10, "unsatisfiable"),
        (b"bytes=0-" + b"9" * 5000, 10, "unsatisfiable"),
        (b"bytes=-" + b"9" * 5000, 10, "unsatisfiable"),
        (b"bytes=-5", 0, "unsatisfiable"),
        (b"bytes=0-", 0, "unsatisfiable"),
    ],
)
def test_parse_range(header, size, expected):
    assert parse_range(header, size) == expected


def test_a_part_file_in_use_elsewhere_is_refused(tmp_path):
    from p2pshare.peer.download.transfer import PartFile

    path = tmp_path / ".f.part"
    held = PartFile(path)
    with pytest.raises(BlockingIOError):
        PartFile(path)
    held.close()
    PartFile(path).close()


def test_only_the_same_names_other_versions_are_taken_and_forgotten(tmp_path):
    from p2pshare.peer.download.keeping import other_versions as _other_versions

    mine = part_path(tmp_path, "a", "1" * 64)
    old = part_path(tmp_path, "a", "2" * 64)
    other_name = part_path(tmp_path, "a.b", "3" * 64)
    for p in (mine, old, other_name):
        p.write_bytes(b"x")
    (found,) = _other_versions(tmp_path, "a", mine)
    assert found.path == old
    found.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other_name.name])




class SuggestsAStart(ThePieceList):
    def render_GET(self, request):
        request.setHeader(b"p2p-start-piece", b"2")
        return super().render_GET(request)


@pytest.mark.parametrize("suggested", [True, False])
@pytest_twisted.ensureDeferred
async def test_a_fresh_download_begins_where_the_holder_suggests(holders, downloader, tmp_path, reactor, suggested):
    files = honest_files(reactor, tmp_path, "h0")
    downloader.spread = True
    out = tmp_path / "out"
    out.mkdir()
    pieces = SuggestsAStart() if suggested else ThePieceList()
    await fetch(downloader, [match(holders(files, pieces), "h0", 0)], out, sources=1)
    assert (out / "file.bin").read_bytes() == DATA
    first = 2 * MiB if suggested else 0
    assert files.served()[0][0] == first


@pytest_twisted.ensureDeferred
async def test_a_verified_file_is_told_with_its_hashes_before_it_appears(holders, downloader, tmp_path, reactor):
    """
    So that the share takes the hashes as they are rather than reading the
    file again (a scan that runs as the file appears must find them).
    """
    told = []
    out = tmp_path / "out"
    out.mkdir()
    downloader.on_verified = lambda path, known: told.append((path, path.exists(), known))
    await fetch(downloader, [match(holders(honest_files(reactor, tmp_path, "h0")), "h0", 0)], out)
    [(path, existed, known)] = told
    st = os.stat(out / "file.bin")
    assert (path, existed) == (out / "file.bin", False)
    assert (known.name, known.size, known.sha256, known.pieces) == ("file.bin", len(DATA), SHA, PIECES)
    assert known.stamp == (st.st_size, st.st_mtime_ns, st.st_ino)


@pytest_twisted.ensureDeferred
async def test_a_file_in_a_folder_keeps_its_path_as_its_name(holders, downloader, tmp_path, reactor):
    """
    The download recreates the folder, and while it runs and once it is
    verified the file is known by its whole path, so that it is served
    (as a partial holder) and shared under the name others ask for.
    """
    d = tmp_path / "h"
    (d / "music").mkdir(parents=True)
    (d / "music" / "file.bin").write_bytes(DATA)
    share = ShareIndex(d)
    share.refresh()
    files = Recorded(FilesResource(StaticFileHost(reactor, share)))
    m = wire.Match("music/file.bin", len(DATA), SHA, "h0", "127.0.0.1", holders(files), 0, ROOT)
    told = []
    downloader.on_verified = lambda path, known: told.append(
        (path, known.name, downloader.partials[SHA].name)
    )
    out = tmp_path / "out"
    out.mkdir()
    await fetch(downloader, [m], out)
    assert (out / "music" / "file.bin").read_bytes() == DATA
    assert told == [(out / "music" / "file.bin", "music/file.bin", "music/file.bin")]


@pytest_twisted.ensureDeferred
async def test_a_holders_index_is_input_only_well_formed_entries_pass(downloader, reactor):
    good = {"name": "music/a.ogg", "size": 3, "sha256": SHA}
    entries = [good, {"name": "../x", "size": 1, "sha256": SHA}, {"name": "b", "size": "1", "sha256": SHA},
               {"name": "c", "size": 1, "sha256": "nothex"}, {"name": "d"}, "e", None]

    class Index(Resource):
        isLeaf = True

        def render_GET(self, request):
            return json.dumps({"peer": "h", "files": entries}).encode()

    root = Resource()
    root.putChild(b"index.json", Index())
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    try:
        m = wire.Match("x", 1, SHA, "h", "127.0.0.1", port.getHost().port, 0, ROOT)
        assert await Deferred.fromCoroutine(downloader.listing(m)) == [good]
    finally:
        await port.stopListening()
