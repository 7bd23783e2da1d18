"""
Downloads against forged search results and lying holders, in this
process on 127.0.0.1, each through both read paths (threads, and
Twisted's agent): forged matches that name one victim address or many,
many names at one address, holders that drip their response head or a
piece, a file said to be huge, and the memory a download's pieces take.
What is asserted is what a user or a victim sees: the bytes on disk, the
error sentence, the connections a fake victim counted.
"""

from __future__ import annotations

import builtins
import hashlib
import os

import pytest
import pytest_twisted
from hosts import StaticFileHost
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.pages import errorPage
from twisted.web.resource import Resource
from twisted.web.server import Site

from p2pshare import wire
from p2pshare.peer.coverage import Coverage, Found
from p2pshare.peer.download import direct, fetch, pacing, rounds, swarm
from p2pshare.peer.download.transfer import SOURCES, Downloader, FetchError
from p2pshare.peer.files import PeerFiles
from p2pshare.peer.http import FilesResource, PiecesResource
from p2pshare.peer.share import ShareIndex
from p2pshare.pieces import MAX_SIZE, piece_count, piece_span, root_of

MiB = 1 << 20
DATA = os.urandom(3 * MiB + 17)
SHA = hashlib.sha256(DATA).hexdigest()
PIECES = b"".join(
    hashlib.sha256(DATA[slice(*piece_span(i, len(DATA)))]).digest()
    for i in range(piece_count(len(DATA)))
)
ROOT = root_of(PIECES)
FAKE_SHA = hashlib.sha256(b"no such file").hexdigest()


def fake_root(i: int) -> str:
    return hashlib.sha256(f"root {i}".encode()).hexdigest()


class Victim(Protocol):
    """
    One connection to an address that forged results name: it reads the
    request's head and answers as its factory's C{mode} says.
    """

    def connectionMade(self):
        self.factory.connections += 1
        self.data = b""
        if self.factory.mode == "close":  # no HTTP at all
            self.transport.loseConnection()

    def dataReceived(self, data):
        self.data += data
        if b"\r\n\r\n" not in self.data:
            return
        head = self.data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        path = head[0].split()[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        self.data = b""
        self.factory.requests.append(path)
        mode = self.factory.mode
        if mode == "garbage":
            self.transport.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        elif mode in ("list", "zeros") and path.startswith("/pieces/"):
            self.reply(200, PIECES)
        elif mode == "zeros" and path.startswith("/files/"):
            first, last = map(int, headers["range"].removeprefix("bytes=").split("-"))
            self.reply(206, bytes(last - first + 1),
                       f"Content-Range: bytes {first}-{last}/{len(DATA)}\r\n")
        else:
            self.reply(500 if mode == "500" else 404, b"")
        self.transport.loseConnection()

    def reply(self, code, body, extra=""):
        self.transport.write(
            f"HTTP/1.1 {code} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n".encode()
            + body
        )


class VictimFactory(Factory):
    protocol = Victim

    def __init__(self, mode):
        self.mode = mode
        self.connections = 0
        self.requests = []


class Dripper(Protocol):
    """
    A holder that gives its piece list at once, then for the file either
    drips its response head (mode C{head}) or, after a proper head, the
    body: one byte every 50 ms, never stopping.
    """

    def connectionMade(self):
        self.data = b""
        self.call = None

    def dataReceived(self, data):
        self.data += data
        if b"\r\n\r\n" not in self.data:
            return
        head = self.data.split(b"\r\n\r\n")[0].decode().split("\r\n")
        line = head[0]
        self.data = b""
        if " /pieces/" in line:
            self.transport.write(
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(PIECES)}\r\n\r\n".encode() + PIECES
            )
            return
        if self.factory.mode == "head":
            self.transport.write(b"HTTP/1.1 206 Partial Content\r\nX-Drip: ")
        else:
            asked = next(h for h in head if h.lower().startswith("range:"))
            first, last = map(int, asked.split("=")[1].split("-"))
            self.transport.write(
                f"HTTP/1.1 206 Partial Content\r\nContent-Length: {last - first + 1}\r\n"
                f"Content-Range: bytes {first}-{last}/{len(DATA)}\r\n\r\n".encode()
            )
        self.drip()

    def drip(self):
        self.transport.write(b"a" if self.factory.mode == "head" else DATA[:1])
        self.call = self.factory.reactor.callLater(0.05, self.drip)

    def connectionLost(self, reason):
        if self.call is not None and self.call.active():
            self.call.cancel()


class DripperFactory(Factory):
    protocol = Dripper

    def __init__(self, reactor, mode):
        self.reactor = reactor
        self.mode = mode


@pytest.fixture
def listen(reactor):
    ports = []

    def start(factory):
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        return port.getHost().port

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


def honest(reactor, tmp_path, label, data=DATA):
    """
    A real share's HTTP side holding C{data} as file.bin: a Site.
    """
    d = tmp_path / label
    d.mkdir()
    (d / "file.bin").write_bytes(data)
    share = ShareIndex(d)
    share.refresh()
    node = StaticFileHost(reactor, share)
    root = Resource()
    root.putChild(b"files", FilesResource(node))
    root.putChild(b"pieces", PiecesResource(node))
    return Site(root)


@pytest.fixture(params=["direct", "agent"])
def downloader(reactor, request, monkeypatch):
    monkeypatch.setattr(pacing, "FAST_ENOUGH", float("inf"))  # every holder joins (see test_download)
    d = Downloader(
        Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)), reactor,
        lambda f, *a: maybeDeferred(f, *a),
        direct=reactor if request.param == "direct" else None,
    )
    d.spread = False
    return d


def match(port, holder, hops, sha=SHA, root=ROOT, size=None):
    size = len(DATA) if size is None else size
    return wire.Match("file.bin", size, sha, holder, "127.0.0.1", port, hops, root)


def get(reactor, downloader, out, found, monkeypatch):
    """
    C{p2p get file.bin} through a peer whose every search finds C{found}
    (its four search rounds without pauses between them).
    """
    monkeypatch.setattr(rounds, "PAUSES", (0.0, 0.0, 0.0))
    searches = []

    def find(pattern, timeout, exact, enough):
        searches.append(pattern)
        return succeed(Found(list(found), Coverage(1, 1)))

    peer = PeerFiles(
        clock=reactor, run_blocking=maybeDeferred, find=find, me=lambda: "me",
        on_files_changed=lambda: None, downloads=out, downloader=downloader,
    )
    # The download of a name once it is known to mean one file (p2p get
    # refuses a name with several versions first: see the next test);
    # its search rounds meet every forged version again.
    d = Deferred.fromCoroutine(peer._fetch_one(
        "file.bin", out, False, None, 10.0, SOURCES, None, None
    ))
    return d.addTimeout(60, reactor), searches


@pytest_twisted.ensureDeferred
async def test_p2p_get_of_a_name_a_liar_gives_another_version_is_refused_untried(
        reactor, tmp_path, listen, monkeypatch):
    """
    A name two versions answer (a liar's, nearest, and the real one) is
    refused with both listed and how to choose; nobody is connected to.
    """
    victim = VictimFactory("404")
    forged = [match(listen(victim), "forger", 0, FAKE_SHA, fake_root(1))]
    real = [match(listen(VictimFactory("404")), "h", 2)]
    peer = PeerFiles(
        clock=reactor, run_blocking=maybeDeferred,
        find=lambda *a: succeed(Found(forged + real, Coverage(1, 1))), me=lambda: "me",
        on_files_changed=lambda: None, downloads=tmp_path, downloader=Downloader(
            Agent(reactor), reactor, maybeDeferred),
    )
    with pytest.raises(FetchError) as e:
        await Deferred.fromCoroutine(peer.fetch("file.bin", tmp_path))
    assert e.value.code == wire.E_AMBIGUOUS
    assert f"sha256:{FAKE_SHA[:12]}" in e.value.text and f"sha256:{SHA[:12]}" in e.value.text
    assert "--from HOLDER" in e.value.text
    assert victim.connections == 0 and os.listdir(tmp_path) == []


# Forged search results.


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("forged, real, expected", [
    # 500 matches of another version, at one victim, nearest: the real
    # version, held at two addresses, is fetched and the victim never asked.
    ("another version", 2, 0),
    # Held at one address as the forged one is at one: the nearest first,
    # which costs the victim one connection, then the real one at once.
    ("another version", 1, 1),
    # 500 other piece roots for the real SHA-256, at one victim.
    ("other roots", 1, 1),
])
async def test_forged_matches_naming_one_address_cost_it_one_connection_at_most(
        reactor, tmp_path, listen, downloader, monkeypatch, forged, real, expected):
    victim = VictimFactory("404")
    at = listen(victim)
    fake = [
        match(at, f"forger{i}", 0, FAKE_SHA if forged == "another version" else SHA, fake_root(i))
        for i in range(500)
    ]
    holders = [match(listen(honest(reactor, tmp_path, f"h{i}")), f"h{i}", 2 + i) for i in range(real)]
    out = tmp_path / "out"
    out.mkdir()
    d, searches = get(reactor, downloader, out, fake + holders, monkeypatch)
    fetched = await d
    assert (out / "file.bin").read_bytes() == DATA
    assert set(fetched.holder.split(", ")) <= {m.holder for m in holders}
    assert victim.connections == expected, victim.requests[:5]
    assert fetched.notes == []  # the forged version is not reported as one that "changed"


@pytest_twisted.ensureDeferred
async def test_a_download_tries_at_most_eight_addresses_that_fail(
        reactor, tmp_path, listen, downloader, monkeypatch):
    """
    Twenty addresses named as holders, none of which holds the file: they
    refuse HTTP, answer errors or nonsense, or give the right piece list
    and then no file or wrong bytes.  Over all four search rounds, eight
    are tried, none twice after it failed, and the sentence says so.
    """
    modes = ["404", "close", "list", "garbage", "zeros", "500"]
    victims = [VictimFactory(modes[i % len(modes)]) for i in range(20)]
    found = [match(listen(v), f"v{i}", i % 3) for i, v in enumerate(victims)]
    out = tmp_path / "out"
    out.mkdir()
    d, searches = get(reactor, downloader, out, found, monkeypatch)
    with pytest.raises(FetchError) as e:
        await d
    assert e.value.code == wire.E_FAILED
    assert e.value.text == (
        "could not download file.bin: 8 addresses said to hold it failed "
        "(the most one download tries), and no other holder is left"
    )
    tried = [v for v in victims if v.connections]
    assert len(tried) == 8, [(v.mode, v.connections) for v in victims]
    # Once failed, never again: a piece list and a run at most.
    assert all(v.connections <= (2 if v.mode in ("list", "zeros") else 1) for v in victims), \
        [(v.mode, v.requests) for v in victims]
    assert os.listdir(out) == [] or all(p.startswith(".") for p in os.listdir(out))


@pytest_twisted.ensureDeferred
async def test_forged_versions_at_many_addresses_cost_eight_connections_and_leave_nothing(
        reactor, tmp_path, listen, downloader, monkeypatch):
    """
    Forty versions nobody holds, each at an address of its own and
    nearest: eight addresses are tried, the real holder (one address, as
    each forged version has) is not reached, and no part file is left.
    """
    victims = [VictimFactory("404") for _ in range(40)]
    found = [
        match(listen(v), f"forger{i}", 0, hashlib.sha256(b"%d" % i).hexdigest(), fake_root(i))
        for i, v in enumerate(victims)
    ]
    real = match(listen(honest(reactor, tmp_path, "h")), "h", 2)
    out = tmp_path / "out"
    out.mkdir()
    d, searches = get(reactor, downloader, out, [*found, real], monkeypatch)
    with pytest.raises(FetchError) as e:
        await d
    assert e.value.text == (
        "could not download file.bin: 8 addresses said to hold it failed "
        "(the most one download tries), and no other holder is left"
    )
    assert [v.connections for v in victims] == [1] * 8 + [0] * 32
    assert os.listdir(out) == []
    assert len(searches) == 1  # no search again once nobody may be tried


@pytest_twisted.ensureDeferred
async def test_many_names_at_one_address_are_one_holder(reactor, tmp_path, listen, downloader):
    port = listen(honest(reactor, tmp_path, "h"))
    out = tmp_path / "out"
    out.mkdir()
    matches = [match(port, f"name{i}", i) for i in range(10)]
    fetched = await Deferred.fromCoroutine(downloader.fetch(matches, out, sources=4))
    assert (out / "file.bin").read_bytes() == DATA
    assert fetched.holder == "name0"  # one source, not four at one address


# Deadlines over the whole head, and over each piece.


@pytest_twisted.ensureDeferred
async def test_a_holder_that_drips_its_response_head_is_left_at_the_header_deadline(
        reactor, tmp_path, listen, downloader, monkeypatch):
    monkeypatch.setattr(fetch, "HEADER_TIMEOUT", 0.5)  # 30 s in a peer
    port = listen(DripperFactory(reactor, "head"))
    out = tmp_path / "out"
    out.mkdir()
    d = Deferred.fromCoroutine(downloader.fetch([match(port, "slow", 1)], out))
    with pytest.raises(FetchError) as e:
        await d.addTimeout(20, reactor)  # a bound for the test; the deadline is 0.5 s
    assert e.value.text == "could not download file.bin: slow: no answer in 0.5 s"
    assert not (out / "file.bin").exists()


@pytest_twisted.ensureDeferred
async def test_a_holder_that_drips_a_piece_is_left_at_the_piece_deadline(
        reactor, tmp_path, listen, downloader, monkeypatch):
    monkeypatch.setattr(fetch, "PIECE_TIMEOUT", 0.5)  # 30 s in a peer
    monkeypatch.setattr(fetch, "PIECE_FLOOR", 1e12)  # so that a MiB gets no longer
    port = listen(DripperFactory(reactor, "body"))
    out = tmp_path / "out"
    out.mkdir()
    d = Deferred.fromCoroutine(downloader.fetch([match(port, "slow", 1)], out))
    with pytest.raises(FetchError) as e:
        await d.addTimeout(20, reactor)  # a bound for the test; the deadline is 0.5 s
    assert e.value.text == "could not download file.bin: slow: piece 0 did not arrive within 0.5 s"
    assert not (out / "file.bin").exists()


def test_a_piece_is_given_thirty_seconds_or_what_the_floor_rate_needs():
    assert fetch.HEADER_TIMEOUT == 30.0
    assert fetch.piece_deadline(MiB) == max(30.0, MiB / fetch.PIECE_FLOOR) == 64.0
    assert fetch.piece_deadline(32 * MiB) == 2048.0
    assert fetch.piece_deadline(1000) == 30.0


# Memory.


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("with_real_holder", [False, True])
async def test_a_file_said_to_be_huge_is_refused_before_anything_is_asked(
        reactor, tmp_path, listen, downloader, monkeypatch, with_real_holder):
    """
    Two addresses claim file.bin is a TiB (pieces of 256 MiB, three
    buffers of them per holder): the version is refused in one sentence,
    nothing is asked of them, and the real file, if anyone holds it,
    arrives.
    """
    victims = [VictimFactory("list") for _ in range(2)]
    huge = [match(listen(v), f"big{i}", 0, FAKE_SHA, fake_root(i), size=1 << 40)
            for i, v in enumerate(victims)]
    real = [match(listen(honest(reactor, tmp_path, "h")), "h", 3)] if with_real_holder else []
    out = tmp_path / "out"
    out.mkdir()
    d, searches = get(reactor, downloader, out, huge + real, monkeypatch)
    if with_real_holder:
        fetched = await d
        assert (out / "file.bin").read_bytes() == DATA and fetched.holder == "h"
    else:
        with pytest.raises(FetchError) as e:
            await d
        assert e.value.text == (
            "could not download file.bin: its holders say it is 1.0 TiB, larger than the "
            "128.0 GiB this peer downloads"
        )
        assert len(searches) == 1  # no point in searching again
        assert os.listdir(out) == []
    assert [v.connections for v in victims] == [0, 0]
    assert MAX_SIZE == 128 << 30


@pytest_twisted.ensureDeferred
async def test_the_pieces_in_memory_stay_within_the_download_budget(
        reactor, tmp_path, listen, downloader, monkeypatch):
    """
    Four holders, and room for three pieces: one holder at a time, and
    (read in threads) three piece buffers in all, whatever the holders.
    """
    monkeypatch.setattr(swarm, "PIECE_MEMORY", 3 * MiB)
    made = []

    def counted(n):
        made.append(n)
        return builtins.bytearray(n)

    monkeypatch.setattr(direct, "bytearray", counted, raising=False)
    data = os.urandom(9 * MiB + 5)
    ports = [listen(honest(reactor, tmp_path, f"h{i}", data)) for i in range(4)]
    digests = b"".join(
        hashlib.sha256(data[slice(*piece_span(i, len(data)))]).digest()
        for i in range(piece_count(len(data)))
    )
    sha = hashlib.sha256(data).hexdigest()
    matches = [match(p, f"h{i}", i, sha, root_of(digests), len(data)) for i, p in enumerate(ports)]
    sending = []
    out = tmp_path / "out"
    out.mkdir()
    await Deferred.fromCoroutine(downloader.fetch(
        matches, out, progress=lambda done, total, now=0: sending.append(now), sources=4,
    ))
    assert (out / "file.bin").read_bytes() == data
    assert max(sending) == 1, sending
    assert sum(made) <= 3 * MiB, made


def test_holders_distrusted_are_forgotten_once_their_time_is_up():
    """
    The names of holders caught sending bad data come from search results,
    which a forger fills with new ones: the record does not grow forever.
    """
    from twisted.internet.task import Clock

    from p2pshare.peer.download.transfer import DISTRUST_FOR

    clock = Clock()
    d = Downloader(None, clock, maybeDeferred)
    d.distrust(f"forged{i}" for i in range(500))
    clock.advance(DISTRUST_FOR + 1)
    d.distrust(["liar"])
    assert list(d.distrusted) == ["liar"]


@pytest_twisted.ensureDeferred
async def test_a_forged_version_at_the_real_holders_address_does_not_bar_it(
        reactor, tmp_path, listen, downloader, monkeypatch):
    """
    A liar says the one real holder, at its real address (so the metadata
    server vouches for it), holds another version, nearer: that version's
    piece list is refused there, and the real version is still fetched from
    the same address.
    """
    at = listen(honest(reactor, tmp_path, "h"))
    forged = match(at, "h", 0, FAKE_SHA, fake_root(1))
    real = match(at, "h", 1)
    out = tmp_path / "out"
    out.mkdir()
    d, _ = get(reactor, downloader, out, [forged, real], monkeypatch)
    fetched = await d
    assert (out / "file.bin").read_bytes() == DATA
    assert fetched.sha256 == SHA


def tired(reactor, tmp_path, label):
    """
    A real holder of file.bin that answers its first request for the file
    and then only C{500}: it served some pieces, then went.
    """
    site = honest(reactor, tmp_path, label)
    files = site.resource.children[b"files"]

    class Tired(Resource):
        answered = 0

        def getChild(self, path, request):
            Tired.answered += 1
            if Tired.answered > 1:
                return errorPage(500, "Gone", "This holder has gone.")
            return files.getChild(path, request)

    site.resource.putChild(b"files", Tired())
    return site


@pytest_twisted.ensureDeferred
async def test_a_download_whose_holders_all_left_waits_for_one_to_come_back(
        reactor, tmp_path, listen, downloader, monkeypatch):
    """
    Its only holder serves a piece and fails, then a search finds nobody
    at all (the holder crashed, and the network has healed without it),
    then the holder is back at another address: the download goes on from
    its verified piece and keeps the file; the person waiting was told
    each time that it searches again.  A download with nothing yet gives
    up at the first search that finds nobody.
    """
    monkeypatch.setattr(rounds, "PAUSES", (0.0, 0.0, 0.0))
    monkeypatch.setattr(pacing, "FIRST_RUN", 1)  # a piece a request
    gone = VictimFactory("500")
    found_by_round = [
        [match(listen(tired(reactor, tmp_path, "first")), "h", 1)],
        [],
        [match(listen(honest(reactor, tmp_path, "h")), "h", 1)],
    ]
    searches = []

    def find(pattern, timeout, exact, enough):
        if pattern.startswith("sha256:"):  # a running download looking for more holders
            return succeed(Found([], Coverage(3, 3)))
        searches.append(pattern)
        return succeed(Found(found_by_round[min(len(searches), len(found_by_round)) - 1], Coverage(3, 3)))

    out = tmp_path / "out"
    out.mkdir()
    notes = []
    peer = PeerFiles(
        clock=reactor, run_blocking=maybeDeferred, find=find, me=lambda: "me",
        on_files_changed=lambda: None, downloads=out, downloader=downloader,
    )
    fetched = await Deferred.fromCoroutine(peer._fetch_one(
        "file.bin", out, False, None, 10.0, SOURCES, None, notes.append
    )).addTimeout(60, reactor)
    assert (out / "file.bin").read_bytes() == DATA and fetched.holder == "h"
    assert len(searches) == 3
    again = [n for n in notes if "searching again" in n]
    assert len(again) == 2 and again[1] == (
        "file.bin: no holder of it is in the network now; searching again in 0 s"
    ), notes

    # Nothing verified: the first search that finds nobody is the answer.
    searches.clear()
    found_by_round[0] = [match(listen(gone), "h", 1)]
    (out / "file.bin").unlink()
    with pytest.raises(FetchError) as e:
        await Deferred.fromCoroutine(peer._fetch_one(
            "file.bin", out, True, None, 10.0, SOURCES, None, None
        )).addTimeout(60, reactor)
    assert e.value.text == "file.bin was not found in the network"
    assert gone.connections >= 1 and len(searches) == 2
