"""
The topology page in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium; nothing downloads a browser): a live
network of 6 real peers, a newcomer appearing and a peer leaving without a
reload, a screenshot, and strings from the network shown as text, never run
as markup.  Skipped, with the reason, where the browser is not installed.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from chromium import By, needs_chromium, start_chromium, wait_until
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread

from p2pshare import wire
from p2pshare.disk import atomic_write
from p2pshare.launch import CLEAN_EXITS, LocalNetwork
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaFactory, MetaServer
from p2pshare.meta.web import make_site
from p2pshare.topo import parse_topo

pytestmark = needs_chromium


@pytest.fixture
def browser(tmp_path):
    driver = start_chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


# The page redraws every second: read it in one script call, not element
# by element (an element found may be replaced before it is read).
def shown(driver, script):
    return driver.execute_script(script)


def peers_shown(driver):
    return sorted(shown(driver, "return [...document.querySelectorAll('g.peer')]"
                                ".map(g => g.getAttribute('data-name'))"))


def links_shown(driver):
    pairs = shown(driver, "return [...document.querySelectorAll('line.link')]"
                          ".map(l => [l.getAttribute('data-a'), l.getAttribute('data-b')])")
    return sorted(tuple(sorted(p)) for p in pairs)


def drawn(driver):
    return links_shown(driver), peers_shown(driver)


def topo_links(net):
    entries = parse_topo((net.meta_dir / "topo.txt").read_text())
    return sorted({tuple(sorted((e.name, n))) for e in entries for n in e.neighbours}), sorted(
        e.name for e in entries
    )


@pytest_twisted.ensureDeferred
async def test_the_page_follows_a_live_network(reactor, tmp_path, browser):
    net = LocalNetwork(reactor, tmp_path)
    try:
        meta = await net.start_meta(6, "--web", "tcp:0")
        line = await meta.wait_for("p2pmeta web page on port", 30)
        url = f"http://127.0.0.1:{line.rsplit(' ', 1)[1]}/"
        for _ in range(6):
            await net.start_peer()
        await meta.wait_for("topology settled: 6 peers", 30)
        links, names = topo_links(net)

        await deferToThread(browser.get, url)
        # The page may draw a poll taken between a peer's arrival and its
        # link: wait for the drawing to match the file, names and links.
        await deferToThread(wait_until, browser, lambda d: drawn(d) == (links, names))
        assert shown(browser, "return document.getElementById('count').textContent") == "6"
        assert shown(browser, "return document.getElementById('state').textContent") == (
            "network complete: 6 peers"
        )
        counts = shown(browser, "return document.getElementById('counts').innerText")
        assert "peers: 6" in counts and "expected: 6" in counts  # --expect 6 was given
        assert "NumberOfServers" not in shown(browser, "return document.body.innerText")
        assert shown(browser, "return document.querySelectorAll('g.peer.root').length") == 1

        # A newcomer appears, without a reload.
        since = len(meta.lines)
        key, _ = await net.start_peer()
        await meta.wait_for("topology settled: 7 peers", 30, since)
        links, names = topo_links(net)
        await deferToThread(wait_until, browser, lambda d: drawn(d) == (links, names))
        # The header follows the live count.
        await deferToThread(wait_until, browser, lambda d: shown(
            d, "return document.getElementById('state').textContent") == "network complete: 7 peers")

        # A peer that stops disappears.
        since = len(meta.lines)
        await net.peers[key].stop()
        await meta.wait_for("topology settled: 6 peers", 30, since)
        links, names = topo_links(net)
        await deferToThread(wait_until, browser, lambda d: peers_shown(d) == names)
        events = shown(browser, "return document.getElementById('events').textContent")
        assert " left" in events and " joined" in events

        shot = tmp_path / "topology.png"
        assert await deferToThread(browser.save_screenshot, str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    finally:
        await net.stop_all()


NASTY = '<b>bold</b>&amp;"\'<script>window.hacked=1</script>'


@pytest_twisted.ensureDeferred
async def test_strings_from_the_network_are_shown_as_text(reactor, tmp_path, browser):
    """
    A registry whose names and hosts carry HTML (around the name rules, as
    a corrupted or hostile registry might) is drawn as text.
    """
    server = MetaServer(Registry(), Clock(), data_dir=tmp_path, expect=2)
    server.startService()
    server.registry.add(NASTY, "<i>host</i>", 6000, 2)
    server.registry.add("plain", "127.0.0.1", 6001, 2)
    server.registry.set_neighbours(NASTY, ["plain"])
    server.registry.set_neighbours("plain", [NASTY])
    server.registry.get(NASTY).is_root = True
    port = reactor.listenTCP(0, make_site(server, reactor), interface="127.0.0.1")
    try:
        await deferToThread(browser.get, f"http://127.0.0.1:{port.getHost().port}/")
        await deferToThread(wait_until, browser, lambda d: len(peers_shown(d)) == 2)
        assert sorted(peers_shown(browser)) == sorted([NASTY, "plain"])
        texts = shown(browser, "return [...document.querySelectorAll('g.peer text')]"
                               ".map(t => t.textContent)")
        assert NASTY in texts
        assert any("<i>host</i>:6000" in t for t in texts)
        # Nothing in the drawing or the event list became an element.
        assert shown(browser, "return document.querySelectorAll("
                              "'#tree b, #tree i, #tree script, #events b, #events script').length") == 0
        assert browser.execute_script("return window.hacked === undefined")
    finally:
        await port.stopListening()
        server.stopService()


def _register(server, name, port, max_neighbours):
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + port))
    proto = MetaFactory(server).buildProtocol(transport.getPeer())
    proto.makeConnection(transport)
    proto.dataReceived(f"P2P port={port} name={name} max={max_neighbours}\r\n".encode())
    return proto


def hundred_peers(server, max_neighbours):
    """
    100 peers registered through the wire protocol, in a tree where each
    has at most C{max_neighbours} links; every ninth has a long name, one
    the longest a name may be.
    """
    names = [f"s{i}" if i % 9 else f"peer-{i}-with-a-rather-long-name" for i in range(100)]
    names[50] = "x" * wire.NAME_MAX
    protos = [_register(server, name, 6000 + i, max_neighbours) for i, name in enumerate(names)]
    parent: dict[int, int] = {}
    children: dict[int, list[int]] = {i: [] for i in range(100)}
    free = [0]
    for i in range(1, 100):
        p = free[0]
        parent[i] = p
        children[p].append(i)
        if len(children[p]) + (p > 0) == max_neighbours:
            free.pop(0)
        free.append(i)
    for i, proto in enumerate(protos):
        links = ([names[parent[i]]] if i else []) + [names[c] for c in children[i]]
        up = f" up={names[parent[i]]}" if i else " root=1"
        proto.dataReceived(f"NEIGHBOURS {' '.join(links)}{up} files={i}\r\n".encode())
    server.clock.advance(server.flush_interval)  # what it learnt is flushed
    return names, protos


def overlapping(rects):
    rects = sorted(rects, key=lambda r: r["left"])
    found = []
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            if b["left"] >= a["right"]:
                break
            if b["top"] < a["bottom"] and a["top"] < b["bottom"]:
                found.append((a["name"], b["name"]))
    return found


@pytest.mark.parametrize("max_neighbours", [2, 4])
@pytest_twisted.ensureDeferred
async def test_a_hundred_peers_are_drawn_apart_and_a_click_shows_one(
    reactor, tmp_path, browser, max_neighbours
):
    server = MetaServer(Registry(), Clock(), data_dir=tmp_path, expect=100)
    server.startService()
    names, protos = hundred_peers(server, max_neighbours)
    busy = names[7]
    protos[7].dataReceived(
        b"TRANSFER down 1048576 4194304 524288 2%20holders music/live%20set.ogg\r\n"
        b"TRANSFER up 100 200 50 127.0.0.9 %3Cb%3Ereport%3C%2Fb%3E.pdf\r\n"
        b"TRANSFER up 1536 4096 1280 127.0.0.1%3A6003 notes.txt\r\n"
        b"SUMMARY files=7 bytes=3145728 transfers=3\r\n"
    )
    port = reactor.listenTCP(0, make_site(server, reactor), interface="127.0.0.1")
    try:
        await deferToThread(browser.set_window_size, 1400, 1000)
        await deferToThread(browser.get, f"http://127.0.0.1:{port.getHost().port}/")
        await deferToThread(wait_until, browser, lambda d: len(peers_shown(d)) == 100)
        assert sorted(peers_shown(browser)) == sorted(names)
        assert len(await deferToThread(links_shown, browser)) == 99
        assert shown(browser, "return document.getElementById('state').textContent") == (
            "network complete: 100 peers"
        )
        assert shown(browser, "return document.getElementById('counts').innerText").startswith(
            "peers: 100")
        # Every peer's drawing (circle, name, address, counts) is apart
        # from every other's.
        rects = shown(browser, """return [...document.querySelectorAll('g.peer')].map(g => {
            const r = g.getBoundingClientRect();
            return {name: g.getAttribute('data-name'), left: r.left, right: r.right,
                    top: r.top, bottom: r.bottom};})""")
        assert overlapping(rects) == []
        assert all(r["right"] - r["left"] > 40 for r in rects)
        longest = next(r for r in rects if r["name"] == "x" * wire.NAME_MAX)
        assert longest["right"] - longest["left"] > 300  # drawn whole, not cut

        # A click on a peer shows its details, its transfers among them.
        group = await deferToThread(
            browser.find_element, By.CSS_SELECTOR, f'g.peer[data-name="{busy}"]')
        await deferToThread(group.click)
        await deferToThread(wait_until, browser, lambda d: shown(
            d, "return document.querySelector('#details h2')?.textContent") == busy)
        details = shown(browser, "return document.getElementById('details').innerText")
        assert "127.0.0.1:6007" in details
        assert "7 files, 3.0 MiB" in details
        assert "3 in progress" in details
        rows = shown(browser, "return [...document.querySelectorAll('#transfers li')]"
                              ".map(r => r.innerText)")
        assert len(rows) == 3
        assert "music/live set.ogg" in rows[0] and "from 2 holders" in rows[0]
        assert "1.0 MiB of 4.0 MiB (25%), 512.0 KiB/s" in rows[0]
        assert "<b>report</b>.pdf" in rows[1] and "to 127.0.0.9" in rows[1]  # nobody there
        # An address where one peer is registered shows as its name.
        assert "notes.txt" in rows[2] and "to s3: 1.5 KiB of 4.0 KiB (37%), 1.3 KiB/s" in rows[2]
        neighbours = shown(browser, "return [...document.querySelectorAll("
                                    "'#details button.neighbour')].map(b => b.textContent)")
        assert neighbours == server.registry.get(busy).neighbours
        assert shown(browser, "return document.querySelectorAll('#details b').length") == 0
        # The details follow a neighbour clicked in them, and the peer's
        # state as it changes.
        button = await deferToThread(browser.find_element, By.CSS_SELECTOR,
                                     "#details button.neighbour")
        await deferToThread(button.click)
        await deferToThread(wait_until, browser, lambda d: shown(
            d, "return document.querySelector('#details h2')?.textContent") == neighbours[0])
        await deferToThread(group.click)
        protos[7].dataReceived(b"SUMMARY files=8 bytes=0 transfers=0\r\n")
        protos[7].dataReceived(b"NEIGHBOURS " + " ".join(neighbours).encode()
                               + b" up=" + neighbours[0].encode() + b" files=8\r\n")
        await deferToThread(wait_until, browser, lambda d: "none in progress" in shown(
            d, "return document.getElementById('details').innerText"))

        # "fit" brings the whole tree into view.
        await deferToThread((await deferToThread(browser.find_element, By.ID, "zoom-fit")).click)
        fits = shown(browser, """const v = document.getElementById('view').getBoundingClientRect();
            const t = document.getElementById('tree').getBoundingClientRect();
            return t.width <= v.width && t.height <= v.height;""")
        assert fits
    finally:
        await port.stopListening()
        server.stopService()


def details_of(driver, name):
    """
    Click peer C{name} (again, if the page redrew it) and read its details.
    """
    driver.execute_script(
        "document.querySelector(`g.peer[data-name=\"${arguments[0]}\"]`)"
        ".dispatchEvent(new MouseEvent('click', {bubbles: true}))", name)
    return shown(driver, "return document.getElementById('details').innerText")


@pytest_twisted.ensureDeferred
async def test_a_real_download_shows_in_both_peers_details(net, browser):
    """
    Real peers report what they move: while one fetches a file from a
    holder capped at 2 MiB/s, the page shows the download at the getter and
    the upload at the holder; once it is done, neither has a transfer.
    """
    meta = await net.start_meta(3, "--web", "tcp:0")
    line = await meta.wait_for("p2pmeta web page on port", 30)
    holder, _ = await net.start_peer("--upload-rate", "2M")
    getter, _ = await net.start_peer()
    await net.start_peer()
    await meta.wait_for("topology settled: 3 peers", 30)
    names = {key: name for name, key in (await net.names()).items()}
    data = os.urandom(12 * 2**20)
    atomic_write(net.root / holder / "shared" / "film one.mkv", data)
    await net.peers[holder].wait_for("sharing film one.mkv", 30)

    await deferToThread(browser.get, f"http://127.0.0.1:{line.rsplit(' ', 1)[1]}/")
    await deferToThread(wait_until, browser, lambda d: len(peers_shown(d)) == 3)
    await deferToThread(wait_until, browser, lambda d: "1 file, 12.0 MiB" in details_of(
        d, names[holder]))
    get = net.p2p("get", "film one.mkv", "--peer", net.control(getter))
    await deferToThread(wait_until, browser, lambda d: "\u2193 film one.mkv\nfrom 1 holder: "
                        in details_of(d, names[getter]))
    await deferToThread(wait_until, browser, lambda d: "\u2191 film one.mkv\nto 127.0.0.1: "
                        in details_of(d, names[holder]))
    assert await get.when_ended(60) == 0, get.output()
    await deferToThread(wait_until, browser, lambda d: "none in progress" in details_of(
        d, names[getter]))
    await deferToThread(wait_until, browser, lambda d: "none in progress" in details_of(
        d, names[holder]))


async def start_meta_without_expect(net, *extra):
    """
    C{twistd p2pmeta} as an operator starts it: no C{--expect}.
    """
    from p2pshare.launch import read_port, twistd

    net.meta_dir.mkdir(parents=True, exist_ok=True)
    portfile = net.meta_dir / "port"
    proc = twistd(net.reactor, "p2pmeta", [
        "--port", "tcp:0:interface=127.0.0.1", "--data-dir", str(net.meta_dir),
        "--portfile", str(portfile), *extra,
    ], net.root, net.root / "meta.log").start()
    net.meta = proc
    await proc.wait_for("p2pmeta ready", 30)
    net.meta_port = read_port(portfile)
    return proc


@pytest_twisted.ensureDeferred
async def test_without_expect_the_page_claims_no_expected_size_and_is_not_logged(net, browser):
    """
    Without --expect the page shows how many peers are in, and no
    expectation ("forming: 2 of 5" was shown for ever); it says "peers",
    never "NumberOfServers"; and its polling of /topology.json leaves no
    line in the log at the default level.
    """
    meta = await start_meta_without_expect(net, "--web", "tcp:0")
    line = await meta.wait_for("p2pmeta web page on port", 30)
    for _ in range(2):
        await net.start_peer()
    await meta.wait_for("topology settled: 2 peers", 30)

    await deferToThread(browser.get, f"http://127.0.0.1:{line.rsplit(' ', 1)[1]}/")
    await deferToThread(wait_until, browser, lambda d: len(peers_shown(d)) == 2)
    assert shown(browser, "return document.getElementById('count').textContent") == "2"
    page = shown(browser, "return document.body.innerText")
    assert "peers: 2" in page
    assert "NumberOfServers" not in page
    assert "of 5" not in page and "expected" not in page and "forming" not in page, page
    assert shown(browser, "return document.getElementById('state').textContent") == ""
    # Several polls later (the page redraws when a peer's summary changes,
    # but asks every second), the server's whole log, read to its end:
    # the requests were served, and not one is in it.
    await deferToThread(wait_until, browser, lambda d: d.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.endsWith('/topology.json')).length") >= 3)
    assert await meta.stop() in CLEAN_EXITS
    assert not any("GET /" in line for line in meta.lines), meta.output()


@pytest_twisted.ensureDeferred
async def test_the_page_writes_sizes_as_the_command_does(reactor, tmp_path, browser):
    """
    The page's script and p2pshare.disk.human_size write every size alike:
    powers of 1024, one decimal rounded half up, the next unit from 1024.
    """
    import random

    from p2pshare.disk import human_size

    server = MetaServer(Registry(), Clock(), data_dir=tmp_path)
    server.startService()
    port = reactor.listenTCP(0, make_site(server, reactor), interface="127.0.0.1")
    rng = random.Random(7)
    sizes = [0, 1, 512, 1023, 1024, 1280, 1536, 2**20 - 1, 2**20, 8 * 2**20, 2**30 - 1,
             3 * 2**29, 2**40, 2**50, 2**60, 2**63 - 1, 10**6, 10**9, 10**12, 1023.5, 0.5,
             *(k * 2**e + d for k in (1, 5, 13, 999, 1023, 1025) for e in (0, 10, 20, 30)
               for d in (-1, 0, 1)),
             *(rng.randrange(2**rng.randrange(1, 53)) for _ in range(300))]
    try:
        await deferToThread(browser.get, f"http://127.0.0.1:{port.getHost().port}/")
        got = await deferToThread(browser.execute_script,
                                  "return arguments[0].map(human)", sizes)
        assert got == [human_size(n) for n in sizes]
        assert got[:10] == ["0 B", "1 B", "512 B", "1023 B", "1.0 KiB", "1.3 KiB", "1.5 KiB",
                            "1.0 MiB", "1.0 MiB", "8.0 MiB"]
    finally:
        await port.stopListening()
        server.stopService()
