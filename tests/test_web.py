"""
The metadata server's web side, in this process on 127.0.0.1: the
documented shape of /topology.json, /topo.txt, the page itself, read-only,
loopback by default.
"""

from __future__ import annotations

import json
import shutil

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from p2pshare.common import loopback_by_default
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaServer
from p2pshare.meta.tap import Options
from p2pshare.meta.web import make_site

# The documented shape (docs/operations.rst): key -> type.
PEER_SHAPE = {
    "name": str, "host": str, "port": int, "neighbours": list, "neighbour_count": int,
    "max_neighbours": int, "shared_files": int, "root": bool, "parent": (str, type(None)),
    "live": bool, "shared_bytes": int, "transfers": list, "transfer_count": int,
}
TOP_SHAPE = {"peers": list, "links": list, "count": int, "expect": (int, type(None)),
             "complete": bool, "events": list}
EVENT_SHAPE = {"time": (int, float), "event": str, "peer": str, "text": str}


def check_shape(value, shape):
    assert set(value) == set(shape), sorted(set(value) ^ set(shape))
    for key, kind in shape.items():
        assert isinstance(value[key], kind), (key, value[key])


def server_with(names_and_links, tmp_path):
    server = MetaServer(Registry(), Clock(), data_dir=tmp_path, expect=3)
    server.startService()
    for i, (name, neighbours) in enumerate(names_and_links):
        server.registry.add(name, f"127.0.0.{i + 1}", 6000 + i, 2)
        server.registry.set_neighbours(name, neighbours)
    first = server.registry.get(names_and_links[0][0])
    first.is_root = True
    server.event("join", names_and_links[0][0], f"{names_and_links[0][0]} joined")
    return server


@pytest.fixture
def serve(reactor):
    ports = []

    def start(server):
        port = reactor.listenTCP(0, make_site(server, reactor), interface="127.0.0.1")
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


async def get(reactor, url, method=b"GET"):
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(method, url.encode())
    return response, await readBody(response)


@pytest_twisted.ensureDeferred
async def test_topology_json_has_the_documented_shape(reactor, serve, tmp_path):
    server = server_with([("s1", ["s2", "s3"]), ("s2", ["s1"]), ("s3", ["s1"])], tmp_path)
    base = serve(server)
    response, body = await get(reactor, base + "/topology.json")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    data = json.loads(body)
    check_shape(data, TOP_SHAPE)
    for peer in data["peers"]:
        check_shape(peer, PEER_SHAPE)
    for event in data["events"]:
        check_shape(event, EVENT_SHAPE)
    assert [p["name"] for p in data["peers"]] == ["s1", "s2", "s3"]
    assert data["links"] == [["s1", "s2"], ["s1", "s3"]]
    assert (data["count"], data["expect"], data["complete"]) == (3, 3, False)
    assert [p["root"] for p in data["peers"]] == [True, False, False]

    response, body = await get(reactor, base + "/topo.txt")
    assert body == b"s1: s2 s3\ns2: s1\ns3: s1\n"
    response, body = await get(reactor, base + "/")
    assert response.code == 200 and b"<svg id=\"tree\"" in body
    # Read-only.
    response, _ = await get(reactor, base + "/topology.json", b"POST")
    assert response.code == 405
    response, _ = await get(reactor, base + "/nothing-here")
    assert response.code == 404
    server.stopService()


def test_an_expected_size_is_shown_only_when_the_operator_set_one(tmp_path):
    from p2pshare.meta.server import DEFAULT_EXPECT
    from p2pshare.meta.web import topology

    # twistd p2pmeta without --expect: "network complete" is still logged
    # at the default size, but no plan is claimed.
    o = Options()
    o.parseOptions([])
    assert (o["expect"], o["expect-given"]) == (DEFAULT_EXPECT, False)
    unset = MetaServer(Registry(), Clock(), data_dir=tmp_path)
    assert (unset.expect, unset.planned) == (5, None)
    assert topology(unset)["expect"] is None
    # Given, even at the default's value, it is shown.
    o = Options()
    o.parseOptions(["--expect", "5"])
    assert (o["expect"], o["expect-given"]) == (5, True)
    given = MetaServer(Registry(), Clock(), data_dir=tmp_path, expect=5)
    assert topology(given)["expect"] == 5


def test_a_transfer_names_the_peer_at_the_address_it_reports(tmp_path):
    """
    A peer says whom it sends to by the address it sees; the server names
    the peer when exactly one is registered there, and keeps what was said
    otherwise.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from p2pshare import wire
    from p2pshare.meta.server import MetaFactory
    from p2pshare.meta.web import topology

    server = MetaServer(Registry(), Clock(), data_dir=tmp_path, expect=4)
    server.startService()
    protos = {}
    for name, host, port in [("alone", "10.0.0.5", 6001), ("one", "10.0.0.7", 6002),
                             ("two", "10.0.0.7", 6003), ("sender", "10.0.0.9", 6004)]:
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        proto = MetaFactory(server).buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        proto.dataReceived(f"P2P port={port} name={name}\r\n".encode())
        assert transport.value().startswith(b"WELCOME "), transport.value()
        protos[name] = proto
    said = ["10.0.0.5", "10.0.0.7", "10.0.0.7:6003", "10.0.0.8", "2 holders", "one", "[::1]:6001"]
    protos["sender"].dataReceived("".join(
        f"TRANSFER up 1 2 0 {wire.quote_name(peer)} f{i}\r\n" for i, peer in enumerate(said)
    ).encode() + b"SUMMARY files=0 bytes=0 transfers=7\r\n")
    [sender] = [p for p in topology(server)["peers"] if p["name"] == "sender"]
    assert [t["peer"] for t in sender["transfers"]] == [
        "alone",  # the only peer at that host
        "10.0.0.7",  # two peers there: which one is not known
        "two",  # the port tells them apart
        "10.0.0.8",  # nobody registered there
        "2 holders",
        "one",  # a name is a name
        "[::1]:6001",
    ]
    # What the peer said is kept as it said it (p2p status reads the same record).
    assert server.registry.get("sender").activity.transfers[0]["peer"] == "10.0.0.5"
    server.stopService()


def test_the_web_side_listens_on_loopback_unless_told_otherwise():
    o = Options()
    o.parseOptions(["--web", "8080"])
    assert o["web"] == "tcp:8080:interface=127.0.0.1"
    o = Options()
    o.parseOptions(["--web", "tcp:8080:interface=0.0.0.0"])
    assert o["web"] == "tcp:8080:interface=0.0.0.0"
    assert loopback_by_default("unix:/tmp/x") == "unix:/tmp/x"
    assert loopback_by_default("tcp6:8080") == "tcp6:8080:interface=\\:\\:1"  # colons escaped


@pytest_twisted.ensureDeferred
async def test_a_control_reply_that_stalls_is_given_up(reactor, tmp_path):
    """
    p2p waits for a download as long as progress keeps coming, and no
    longer than its timeout once it stops.
    """
    from twisted.internet.protocol import Factory
    from twisted.internet.threads import deferToThread

    from p2pshare.channel import LineChannel
    from p2pshare.control_client import control_request

    class Stalls(LineChannel):
        def msg_FETCH(self, msg):
            self.send("PROGRESS", 1, 10)  # and then nothing more

    path = tmp_path / "c.sock"
    port = reactor.listenUNIX(str(path), Factory.forProtocol(Stalls))
    seen = []
    try:
        started = reactor.seconds()
        with pytest.raises(TimeoutError):
            await deferToThread(control_request, f"unix:{path}", "FETCH", "x", timeout=0.5,
                                on_progress=lambda d, t, *_: seen.append((d, t)))
        assert seen == [(1, 10)]
        assert 0.4 < reactor.seconds() - started < 5
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_web_port_answers_other_methods_with_405_or_501(reactor, serve, tmp_path):
    server = server_with([("s1", [])], tmp_path)
    base = serve(server)
    for method, code in [(b"POST", 405), (b"DELETE", 405), (b"OPTIONS", 405),
                         (b"PROPFIND", 501), (b"get", 501)]:
        response, _ = await get(reactor, base + "/topology.json", method)
        assert response.code == code, method
        if code == 405:
            assert response.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
    response, _ = await get(reactor, base + "/topology.json", b"HEAD")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_events_say_what_a_restart_of_the_metadata_server_did(reactor, serve, tmp_path):
    """
    After a restart the page's events say so, then which peers came back
    and which were dropped for not coming back.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from p2pshare.meta.server import MetaFactory

    def register(server, name, port):
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto = MetaFactory(server).buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        token = f"{port:032x}"  # a name is taken back by the token it was registered with
        proto.dataReceived(f"P2P port={port} name={name} token={token}\r\n".encode())
        assert proto.transport.value().startswith(b"WELCOME "), proto.transport.value()
        return proto

    db = str(tmp_path / "registry.sqlite")
    first = MetaServer(Registry(db), Clock(), data_dir=tmp_path, expect=2)
    first.startService()
    assert [e.text for e in first.events] == ["metadata server started with no peers"]
    register(first, "s1", 6001)
    register(first, "s2", 6002)
    await first.stopService()

    clock = Clock()
    clock.advance(1000)
    server = MetaServer(Registry(db), clock, data_dir=tmp_path, expect=2, grace=30)
    server.startService()
    base = serve(server)
    register(server, "s1", 6001)
    clock.advance(31)
    _, body = await get(reactor, base + "/topology.json")
    events = json.loads(body)["events"]
    for event in events:
        check_shape(event, EVENT_SHAPE)
    assert [(e["event"], e["peer"], e["text"]) for e in events] == [
        ("restart", "", "metadata server restarted: 2 peers known from before; "
                        "those that do not come back within 30 s are dropped"),
        ("back", "s1", "s1 came back after the restart"),
        ("lost", "s2", "s2 did not come back after the restart; dropped"),
    ]
    assert [e["time"] for e in events] == [1000, 1000, 1031]
    await server.stopService()


EVIL = "evil\u202egpj.exe"  # shows as "evilexe.jpg" where printed raw


@pytest_twisted.ensureDeferred
async def test_the_share_page_shows_hidden_characters_of_names_as_escapes(reactor, tmp_path):
    """
    A peer's page of what it shares (GET /) shows a name's bidi controls
    and line separators as escapes, in file and folder names alike, while
    its links still fetch the file by its real name.
    """
    from hosts import StaticFileHost

    from p2pshare import wire
    from p2pshare.peer.http import make_site as peer_site
    from p2pshare.peer.serving import UploadSlots
    from p2pshare.peer.share import ShareIndex

    shared = tmp_path / "shared"
    (shared / "dir\u2066x").mkdir(parents=True)
    (shared / "dir\u2066x" / "in\u2028side.txt").write_bytes(b"inside")
    (shared / EVIL).write_bytes(b"evil")
    (shared / "été 東京.ogg").write_bytes(b"song")
    share = ShareIndex(shared)
    share.refresh()
    node = StaticFileHost(reactor, share, peer_name="s9", upload_slots=UploadSlots(4))
    port = reactor.listenTCP(0, peer_site(node, reactor), interface="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port.getHost().port}"
        response, body = await get(reactor, base + "/")
        assert response.code == 200
        page = body.decode("utf-8")
        assert "<h1>s9 shares 3 files" in page
        assert ">evil\\u202egpj.exe</a>" in page
        assert "<h2>dir\\u2066x/</h2>" in page and ">in\\u2028side.txt</a>" in page
        assert ">été 東京.ogg</a>" in page  # ordinary names as they are
        assert not any(c in page for c in "\u202e\u2066\u2028")
        _, evil = await get(reactor, base + "/files/" + wire.quote_path(EVIL))
        assert evil == b"evil"
    finally:
        await port.stopListening()


def test_the_topology_page_never_puts_network_strings_in_as_markup():
    from importlib import resources

    page = resources.files("p2pshare.meta").joinpath("page.html").read_text("utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in page, sink


# The same rule as p2pshare.display.shown, in the topology page's script,
# run by the browser that draws it (Debian's chromium and chromium-driver).
@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver")
@pytest_twisted.ensureDeferred
async def test_the_topology_page_shows_names_escaped_as_the_command_does(
    reactor, serve, tmp_path
):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.internet.threads import deferToThread

    from p2pshare import wire
    from p2pshare.display import shown
    from p2pshare.meta.server import MetaFactory

    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    server = MetaServer(Registry(), Clock(), data_dir=tmp_path, expect=1)
    server.startService()
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto = MetaFactory(server).buildProtocol(transport.getPeer())
    proto.makeConnection(transport)
    proto.dataReceived(b"P2P port=6001 name=s1\r\n")
    # A download whose name carries a bidi control, as a peer reports it.
    proto.dataReceived(f"TRANSFER down 1 2 0 s2 {wire.quote_name(EVIL)}\r\n"
                       "SUMMARY files=0 bytes=0 transfers=1\r\n".encode())
    assert b"ERROR" not in transport.value(), transport.value()
    base = serve(server)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = await deferToThread(
        webdriver.Chrome, service=Service(shutil.which("chromedriver")), options=options)
    samples = [EVIL, "a\\b", "été 東京 😀", "<b>x</b>", "\x00\x07\n\x7f\x85\x9f\u00ad",
               "\u061c\u200b\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069",
               "\u2028\u2029\ufeff\ue000\U000f0000\U000e0001\u0378\uffff\U0010ffff\ud800x"]
    try:
        await deferToThread(driver.get, base + "/")

        def transfer_shown(d):
            d.execute_script("if (data) select('s1')")
            return d.execute_script(
                "return document.querySelector('#transfers .file')?.textContent")

        shown_file = await deferToThread(WebDriverWait(driver, 15, 0.2).until, transfer_shown)
        assert shown_file == "\u2193 evil\\u202egpj.exe"
        # As JSON text: the driver refuses a lone surrogate in its arguments.
        got = await deferToThread(driver.execute_script,
                                  "return JSON.parse(arguments[0]).map(shown)", json.dumps(samples))
        assert got == [shown(s) for s in samples]
    finally:
        await deferToThread(driver.quit)
        await server.stopService()
