"""
The topology page in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium; nothing downloads a browser): a live
network of 6 real peers, a newcomer appearing and a peer leaving without a
reload, a screenshot, and strings from the network shown as text, never run
as markup.  Skipped, with the reason, where the browser is not installed.
"""

from __future__ import annotations

import shutil

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from p2pshare.launch import LocalNetwork
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaServer
from p2pshare.meta.web import make_site
from p2pshare.topo import parse_topo

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None or webdriver is None,
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them) and selenium",
)
WAIT = 15  # seconds any state may take to show on the page


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
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


def wait_until(driver, condition):
    WebDriverWait(driver, WAIT, poll_frequency=0.2).until(lambda d: condition(d))


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
        await deferToThread(wait_until, browser, lambda d: peers_shown(d) == names)
        assert await deferToThread(links_shown, browser) == links
        assert shown(browser, "return document.getElementById('count').textContent") == "6"
        assert shown(browser, "return document.getElementById('state').textContent") == (
            "network complete: 6 peers"
        )
        assert shown(browser, "return document.querySelectorAll('g.peer.root').length") == 1

        # A newcomer appears, without a reload.
        since = len(meta.lines)
        key, _ = await net.start_peer()
        await meta.wait_for("topology settled: 7 peers", 30, since)
        links, names = topo_links(net)
        await deferToThread(wait_until, browser, lambda d: peers_shown(d) == names)
        assert await deferToThread(links_shown, browser) == links
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
