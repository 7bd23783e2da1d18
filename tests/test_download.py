"""
The downloader against real HTTP holders in this process (127.0.0.1):
a holder that breaks off, one that serves wrong bytes, files already
there.  Whatever happens, nothing partial or corrupt appears under the
target name.
"""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from p2pshare import wire
from p2pshare.peer.http import FilesResource, parse_range
from p2pshare.peer.share import ShareIndex
from p2pshare.peer.transfer import Downloader, FetchError, part_path

DATA = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(DATA).hexdigest()


class Recorded(Resource):
    """
    Wraps a holder's /files/ and notes every Range it is asked for.
    """

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.ranges = []
        self.if_ranges = []

    def getChild(self, path, request):
        self.ranges.append(request.getHeader(b"range"))
        self.if_ranges.append(request.getHeader(b"if-range"))
        return self.inner.getChild(path, request)


class BreaksOff(Resource):
    """
    Promises the whole file, sends the first half, and ends the response
    there, closing the connection (as a holder process that dies does).
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-length", str(len(DATA)).encode())
        request.setHeader(b"connection", b"close")
        request.write(DATA[: len(DATA) // 2])
        request.finish()
        return NOT_DONE_YET


@pytest.fixture
def holders(reactor, tmp_path):
    ports = []

    def serve(files_resource):
        root = Resource()
        root.putChild(b"files", files_resource)
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


def match(port, holder, hops):
    return wire.Match("file.bin", len(DATA), SHA, holder, "127.0.0.1", port, hops)


@pytest.fixture
def downloader(reactor):
    pool = HTTPConnectionPool(reactor, persistent=False)
    d = Downloader(Agent(reactor, pool=pool), reactor, lambda f, *a: _now(f, *a))
    yield d


def _now(f, *args):
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


def fetch(downloader, matches, directory, force=False):
    return Deferred.fromCoroutine(downloader.fetch(matches, directory, force))


def visible(directory):
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


@pytest_twisted.ensureDeferred
async def test_a_holder_that_breaks_off_is_resumed_elsewhere_with_a_range(holders, downloader, tmp_path, reactor):
    honest = Recorded(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "honest", DATA))))
    broken = Resource()
    broken.putChild(b"file.bin", BreaksOff())
    near, far = holders(broken), holders(honest)
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(near, "near", 1), match(far, "far", 2)], out)
    assert fetched.holder == "far"
    assert (out / "file.bin").read_bytes() == DATA
    assert honest.ranges == [f"bytes={len(DATA) // 2}-".encode()]
    assert os.listdir(out) == ["file.bin"]


@pytest_twisted.ensureDeferred
async def test_wrong_bytes_are_detected_and_fetched_from_an_honest_holder(holders, downloader, tmp_path, reactor):
    liar_share = share_with(tmp_path, "liar", bytes(len(DATA)))
    real = liar_share.files["file.bin"]
    # It claims the honest hash (and so the ETag) but serves zeros.
    liar_share.files["file.bin"] = type(real)(real.name, real.size, SHA, real.stamp)
    liar_files = Recorded(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=liar_share)))
    liar = holders(liar_files)
    honest = holders(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "honest", DATA))))
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(liar, "liar", 1), match(honest, "honest", 3)], out)
    assert fetched.holder == "honest"
    assert hashlib.sha256((out / "file.bin").read_bytes()).hexdigest() == SHA
    assert os.listdir(out) == ["file.bin"]
    # The liar is passed over for the cooling-off period, though nearest.
    assert "liar" in downloader.distrusted and len(liar_files.ranges) == 1
    (out / "file.bin").unlink()
    fetched = await fetch(downloader, [match(liar, "liar", 1), match(honest, "honest", 3)], out)
    assert fetched.holder == "honest"
    assert len(liar_files.ranges) == 1  # not asked again


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
    assert e.value.text.startswith("could not download file.bin: flaky: the transfer broke off")
    assert visible(out) == []
    # The verified... no: the received prefix is kept, hidden, for a resume.
    assert part_path(out, "file.bin", SHA).stat().st_size == len(DATA) // 2


@pytest_twisted.ensureDeferred
async def test_an_interrupted_download_resumes_from_its_prefix(holders, downloader, tmp_path, reactor):
    honest = Recorded(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "honest", DATA))))
    port = holders(honest)
    out = tmp_path / "out"
    out.mkdir()
    part_path(out, "file.bin", SHA).write_bytes(DATA[:1000])
    await fetch(downloader, [match(port, "h", 1)], out)
    assert honest.ranges == [b"bytes=1000-"]
    assert honest.if_ranges == [f'"{SHA}"'.encode()]
    assert (out / "file.bin").read_bytes() == DATA


@pytest_twisted.ensureDeferred
async def test_an_existing_file_is_never_silently_replaced(holders, downloader, tmp_path, reactor):
    port = holders(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "honest", DATA))))
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


@pytest_twisted.ensureDeferred
async def test_a_busy_holder_answers_503_and_the_download_goes_elsewhere(holders, downloader, tmp_path, reactor):
    from p2pshare.peer.http import UploadSlots

    busy_share = share_with(tmp_path, "busy", DATA)
    busy = holders(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=busy_share, upload_slots=UploadSlots(0))))
    honest = holders(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "honest", DATA),
                                                   upload_slots=UploadSlots(1))))
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(b"GET", f"http://127.0.0.1:{busy}/files/file.bin".encode())
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"5"]
    out = tmp_path / "out"
    out.mkdir()
    fetched = await fetch(downloader, [match(busy, "busy", 1), match(honest, "honest", 2)], out)
    assert fetched.holder == "honest" and (out / "file.bin").read_bytes() == DATA


class _FullDisk:
    """
    A part file's writer that fails with ENOSPC once C{room} bytes are in.
    """

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        import errno

        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest_twisted.ensureDeferred
async def test_a_full_disk_mid_download_is_a_local_fault(holders, downloader, tmp_path, reactor, monkeypatch):
    from p2pshare.peer import transfer

    real_init = transfer.PartFile.__init__

    def full_after_a_megabyte(self, path):
        real_init(self, path)
        self.f = _FullDisk(self.f, 1 << 20)

    monkeypatch.setattr(transfer.PartFile, "__init__", full_after_a_megabyte)
    first = Recorded(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "a", DATA))))
    second = Recorded(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "b", DATA))))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(transfer.LocalFault) as e:
        await fetch(downloader, [match(holders(first), "a", 1), match(holders(second), "b", 2)], out)
    assert e.value.text == f"no space left on {out}: 3.1 MB needed"
    assert len(first.ranges) == 1 and second.ranges == []  # no other holder is tried
    assert os.listdir(out) == []  # the part is gone: it only took space


@pytest_twisted.ensureDeferred
async def test_a_folder_it_may_not_write_is_a_local_fault(holders, downloader, tmp_path, reactor, monkeypatch):
    import errno

    from p2pshare.peer import transfer

    def read_only(self, path):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(transfer.PartFile, "__init__", read_only)
    files = Recorded(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "a", DATA))))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(transfer.LocalFault) as e:
        await fetch(downloader, [match(holders(files), "a", 1)], out)
    assert e.value.text == f"cannot write into {out}: read-only file system"
    assert files.ranges == []


@pytest_twisted.ensureDeferred
async def test_a_second_download_of_one_target_waits_for_the_first(holders, downloader, tmp_path, reactor):
    files = Recorded(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "a", DATA))))
    port = holders(files)
    out = tmp_path / "out"
    out.mkdir()
    first = fetch(downloader, [match(port, "a", 1)], out)
    second = fetch(downloader, [match(port, "a", 1)], out)
    one, two = await first, await second
    assert (one.already, two.already) == (False, True)
    assert len(files.ranges) == 1
    assert os.listdir(out) == ["file.bin"]


def test_a_part_file_in_use_elsewhere_is_refused(tmp_path):
    from p2pshare.peer.transfer import PartFile

    path = tmp_path / ".f.part"
    held = PartFile(path)
    with pytest.raises(BlockingIOError):
        PartFile(path)
    held.close()
    PartFile(path).close()


@pytest_twisted.ensureDeferred
async def test_a_name_of_255_bytes_downloads(holders, downloader, tmp_path, reactor):
    name = "é" * 127 + "x"  # 255 bytes of UTF-8: the longest name a file system takes
    d = tmp_path / "long"
    d.mkdir()
    (d / name).write_bytes(DATA)
    share = ShareIndex(d)
    share.refresh()
    port = holders(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share)))
    out = tmp_path / "out"
    out.mkdir()
    m = wire.Match(name, len(DATA), SHA, "h", "127.0.0.1", port, 1)
    fetched = await fetch(downloader, [m], out)
    assert fetched.path == out / name and (out / name).read_bytes() == DATA
    assert len(part_path(out, name, SHA).name.encode()) <= 255


def test_only_the_same_names_other_versions_are_forgotten(tmp_path):
    from p2pshare.peer.transfer import _forget_other_versions

    mine = part_path(tmp_path, "a", "1" * 64)
    old = part_path(tmp_path, "a", "2" * 64)
    other_name = part_path(tmp_path, "a.b", "3" * 64)
    for p in (mine, old, other_name):
        p.write_bytes(b"x")
    _forget_other_versions(tmp_path, "a", mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other_name.name])


class Stalls(Resource):
    """
    Promises the whole file, sends a first part, then says nothing more
    while keeping the connection open.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-length", str(len(DATA)).encode())
        request.write(DATA[:1000])
        return NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_a_holder_that_stalls_is_left_at_the_idle_deadline(holders, downloader, tmp_path, reactor, monkeypatch):
    import time

    from p2pshare.peer import transfer

    monkeypatch.setattr(transfer, "IDLE_TIMEOUT", 0.5)
    stalled = Resource()
    stalled.putChild(b"file.bin", Stalls())
    honest = Recorded(FilesResource(SimpleNamespace(clock=reactor, secret=None, share=share_with(tmp_path, "h", DATA))))
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    fetched = await fetch(downloader, [match(holders(stalled), "slow", 1), match(holders(honest), "h", 2)], out)
    assert fetched.holder == "h" and (out / "file.bin").read_bytes() == DATA
    assert honest.ranges == [b"bytes=1000-"]  # it went on from what the stalled one sent
    assert time.monotonic() - started < 5
