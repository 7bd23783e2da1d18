"""
What a peer's HTTP port says its files are, over real loopback sockets:
the content type a name implies with C{nosniff}, active content (HTML,
SVG, JavaScript, XML) as a sandboxed attachment and inert content inline,
for HEAD, ranges and conditional requests too; a folder's page and where
C{/files/FOLDER} leads; links on the pages percent-encoded, so that names
with C{?}, C{#}, C{%}, brackets, quotes, spaces and accents all work.
"""

from __future__ import annotations

import http.client
import os
import re
import time
from collections import Counter
from html import unescape
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
import pytest_twisted
from hosts import StaticFileHost
from twisted.internet.threads import deferToThread

from p2pshare.admission import Secret
from p2pshare.common import LimitedFactory
from p2pshare.peer.http import SniffingFactory, make_site, url_path
from p2pshare.peer.protocol import PeerFactory
from p2pshare.peer.serving import UploadSlots, content_type, is_inline
from p2pshare.peer.share import ShareIndex

# name -> (content type, served inline?)
TYPED = {
    "doc.pdf": ("application/pdf", True),
    "song.mp3": ("audio/mpeg", True),
    "notes.txt": ("text/plain", True),
    "Photo.JPG": ("image/jpeg", True),
    "blob.bin": ("application/octet-stream", False),
    "no suffix": ("application/octet-stream", False),
    "page.html": ("text/html", False),
    "old.HTM": ("text/html", False),
    "picture.svg": ("image/svg+xml", False),
    "app.js": ("application/javascript", False),
    "feed.xml": ("text/xml", False),
    "strict.xhtml": ("application/xhtml+xml", False),
    "style.xsl": ("application/xml", False),
    "saved.mhtml": ("message/rfc822", False),
    "backup.tar.gz": ("application/gzip", False),
}
# Names that break links unless each reserved character is encoded.
ODD = {
    "q?.txt": b"question",
    "What's Up?.mp3": b"ID3 what's up",
    "a*b.txt": b"star",
    "[2019] Best Of/01 Intro.mp3": b"ID3 intro",
    "[2019] Best Of/02 #2 & more;=@:.txt": b"second",
    "50% off #1.txt": b"half price",
    "Été été/ça va + 日本語 file.txt": b"unicode",
    "a b/c d/e f.txt": b"spaces",
}
HIDDEN = {".secret/x.txt": b"hidden", "[2019] Best Of/.draft.txt": b"draft"}


def contents(name: str) -> bytes:
    return ODD.get(name, name.encode() * 50)


@pytest.fixture
def peer_port(reactor, tmp_path):
    """
    A peer's port (sniffer, HTTP, the per-host caps) serving a share of
    the names above and hidden ones, and a folder linked from outside.
    """
    shared = tmp_path / "shared"
    for name in [*TYPED, *ODD, *HIDDEN]:
        (shared / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / name).write_bytes(HIDDEN.get(name) or contents(name))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "out.txt").write_bytes(b"outside")
    os.symlink(outside, shared / "escape")
    share = ShareIndex(shared)
    share.refresh()
    assert sorted(share.files) == sorted([*TYPED, *ODD])
    node = StaticFileHost(reactor, share, peer_name="s7", upload_slots=UploadSlots(4))
    # What the line protocol reads of its node, for lines that are only ever refused here.
    overlay = SimpleNamespace(clock=reactor, secret=None, peer_name="s7", messages=Counter())
    site = make_site(node, reactor)
    port = reactor.listenTCP(0, LimitedFactory(SniffingFactory(site, PeerFactory(overlay)),
                                               clock=reactor), interface="127.0.0.1")
    yield SimpleNamespace(port=port.getHost().port, node=node, share=share)
    pytest_twisted.blockon(port.stopListening())


def _fetch(port: int, target: str, method: str, headers: dict[str, str]):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, target, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def fetch(port: int, target: str, method: str = "GET", **headers: str):
    """
    C{target} sent as it is: status, headers (lower-case names), body.
    """
    named = {k.replace("_", "-"): v for k, v in headers.items()}
    return await deferToThread(_fetch, port, target, method, named)


def filename_star(disposition: str) -> str:
    [encoded] = re.findall(r"filename\*=UTF-8''([^;\s]+)", disposition)
    return unquote(encoded, errors="strict")


def test_the_type_a_name_implies():
    for name, (kind, inline) in TYPED.items():
        assert (content_type("some/folder/" + name), is_inline(kind)) == (kind, inline), name
    # The name is a path, never a URL: a scheme-like prefix is not read.
    assert content_type("data:text/html,x.txt") == "text/plain"
    assert content_type("page.html/x") == "application/octet-stream"  # the last segment only
    for kind in ("text/html", "application/xhtml+xml", "image/svg+xml", "text/javascript",
                 "application/ecmascript", "application/xml", "application/rss+xml",
                 "text/xsl", "application/x-shockwave-flash", "application/zip", "font/woff2",
                 "TEXT/HTML"):
        assert not is_inline(kind), kind
    for kind in ("image/png", "video/mp4", "audio/ogg", "text/plain", "text/csv",
                 "application/json", "application/PDF"):
        assert is_inline(kind), kind


@pytest_twisted.ensureDeferred
async def test_every_file_carries_its_type_nosniff_and_its_disposition(peer_port):
    for name, (kind, inline) in TYPED.items():
        status, h, body = await fetch(peer_port.port, "/files/" + url_path(name))
        assert (status, body) == (200, contents(name)), name
        assert h["content-type"] == kind, name  # no charset: the file's encoding is not known
        assert h["x-content-type-options"] == "nosniff", name
        disposition = h["content-disposition"]
        assert disposition.split(";")[0] == ("inline" if inline else "attachment"), name
        assert filename_star(disposition) == name
        if inline:
            assert "content-security-policy" not in h, name
        else:  # rendered anyway by some client: no script, no origin
            assert h["content-security-policy"] == "sandbox; default-src 'none'", name


@pytest_twisted.ensureDeferred
async def test_an_attachment_keeps_its_name_whatever_it_holds(peer_port):
    name = 'Été été/ça va + 日本語 file.txt'
    _, h, _ = await fetch(peer_port.port, "/files/" + url_path(name))
    assert filename_star(h["content-disposition"]) == "ça va + 日本語 file.txt"
    # The ASCII fallback holds no quote, backslash or percent a client could misread.
    [fallback] = re.findall(r'filename="([^"]*)"', h["content-disposition"])
    assert fallback == "_a va + ___ file.txt"
    _, h, _ = await fetch(peer_port.port, "/files/" + url_path("50% off #1.txt"))
    assert re.findall(r'filename="([^"]*)"', h["content-disposition"]) == ["50_ off #1.txt"]
    assert filename_star(h["content-disposition"]) == "50% off #1.txt"


@pytest_twisted.ensureDeferred
async def test_head_ranges_and_conditional_requests_keep_the_type(peer_port):
    for name in ("doc.pdf", "page.html"):
        kind, inline = TYPED[name]
        data = contents(name)
        target = "/files/" + url_path(name)
        etag = f'"{peer_port.share.files[name].sha256}"'
        _, whole, _ = await fetch(peer_port.port, target)

        status, h, body = await fetch(peer_port.port, target, method="HEAD")
        assert (status, body) == (200, b"")
        assert h["content-length"] == str(len(data))
        for header in ("content-type", "x-content-type-options", "content-disposition"):
            assert h[header] == whole[header], (name, header)

        status, h, body = await fetch(peer_port.port, target, range="bytes=10-19")
        assert (status, body) == (206, data[10:20])
        assert h["content-range"] == f"bytes 10-19/{len(data)}"
        assert (h["content-type"], h["content-disposition"]) == (
            whole["content-type"], whole["content-disposition"])
        assert h["x-content-type-options"] == "nosniff"

        status, h, body = await fetch(peer_port.port, target, range="bytes=-5", if_range=etag)
        assert (status, body, h["content-type"]) == (206, data[-5:], kind)
        status, h, body = await fetch(peer_port.port, target, range="bytes=-5", if_range='"old"')
        assert (status, body, h["content-type"]) == (200, data, kind)
        status, h, _ = await fetch(peer_port.port, target, method="HEAD", range="bytes=0-0")
        assert (status, h["content-type"], h["content-length"]) == (206, kind, "1")
        status, h, body = await fetch(peer_port.port, target, if_none_match='"old"')
        assert (status, body, h["content-type"]) == (200, data, kind)

        # Not the file's bytes: no claim that they are of its type.
        status, h, body = await fetch(peer_port.port, target, if_none_match=etag)
        assert (status, body) == (304, b"") and h["etag"] == etag
        assert "content-disposition" not in h
        status, h, _ = await fetch(peer_port.port, target, if_match='"old"')
        assert status == 412 and h["content-type"] == "text/plain; charset=utf-8"
        assert "content-disposition" not in h
        status, h, _ = await fetch(peer_port.port, target, range=f"bytes={len(data)}-")
        assert status == 416 and h["content-type"] == "text/plain; charset=utf-8"


@pytest_twisted.ensureDeferred
async def test_a_file_still_downloading_is_served_with_its_type(peer_port, tmp_path):
    data = b"<script>document.title='ran'</script>" * 1000
    (tmp_path / ".part").write_bytes(data)
    partial = SimpleNamespace(
        name="in progress/live.html", size=len(data), sha256="ab" * 32, path=tmp_path / ".part",
        holds=lambda first, last: last < 1000,
    )
    peer_port.node.partials.append(partial)
    target = "/files/" + url_path(partial.name)
    status, h, body = await fetch(peer_port.port, target, range="bytes=0-99")
    assert (status, body) == (206, data[:100])
    assert h["content-type"] == "text/html" and h["content-disposition"].startswith("attachment;")
    assert h["x-content-type-options"] == "nosniff"
    status, h, _ = await fetch(peer_port.port, target, range="bytes=5000-5099")
    assert status == 416 and h["content-type"] == "text/plain; charset=utf-8"


def links(page: bytes) -> list[str]:
    return [unescape(href) for href in re.findall(r'href="([^"]*)"', page.decode())]


ENCODED = re.compile(r"/files/[A-Za-z0-9._~%/-]+")  # nothing reserved but the slashes


@pytest_twisted.ensureDeferred
async def test_every_link_on_the_share_page_fetches_its_file(peer_port):
    status, h, page = await fetch(peer_port.port, "/")
    assert status == 200 and h["content-type"] == "text/html; charset=utf-8"
    assert h["x-content-type-options"] == "nosniff"
    assert "script-src" not in h["content-security-policy"]
    assert h["content-security-policy"].startswith("default-src 'none'")
    hrefs = links(page)
    files = [link for link in hrefs if link.startswith("/files/") and not link.endswith("/")]
    assert sorted(unquote(link.removeprefix("/files/")) for link in files) == sorted([*TYPED, *ODD])
    for link in files:
        assert ENCODED.fullmatch(link), link
        status, _, body = await fetch(peer_port.port, link)
        assert (status, body) == (200, contents(unquote(link.removeprefix("/files/")))), link
    assert "/files/" + "%5B2019%5D%20Best%20Of/01%20Intro.mp3" in files
    assert "/files/q%3F.txt" in files and "/files/50%25%20off%20%231.txt" in files
    # A link to the page of each folder that holds files, which answers.
    folders = [link for link in hrefs if link.startswith("/files/") and link.endswith("/")]
    assert sorted(unquote(link) for link in folders) == sorted(
        f"/files/{f}/" for f in ("[2019] Best Of", "Été été", "a b/c d"))
    for link in folders:
        assert ENCODED.fullmatch(link), link
        status, h, _ = await fetch(peer_port.port, link)
        assert (status, h["content-type"]) == (200, "text/html; charset=utf-8"), link
    assert ".secret" not in page.decode() and "draft" not in page.decode()


@pytest_twisted.ensureDeferred
async def test_a_folder_has_its_own_page_of_its_shared_files(peer_port):
    folder = "/files/" + url_path("[2019] Best Of") + "/"
    status, h, page = await fetch(peer_port.port, folder)
    assert status == 200 and h["content-type"] == "text/html; charset=utf-8"
    assert h["x-content-type-options"] == "nosniff" and h["cache-control"] == "no-store"
    text = page.decode()
    assert "<h1>s7 shares 2 files" in text and "in [2019] Best Of/</h1>" in text
    assert ".draft" not in text  # hidden, as everywhere
    hrefs = links(page)
    files = [link for link in hrefs if link.startswith("/files/")]
    assert sorted(files) == sorted(
        "/files/" + url_path(n) for n in ODD if n.startswith("[2019] Best Of/"))
    for link in files:
        assert ENCODED.fullmatch(link), link
        status, _, body = await fetch(peer_port.port, link)
        assert (status, body) == (200, ODD[unquote(link.removeprefix("/files/"))]), link
    assert "/" in hrefs and "/index.json" in hrefs  # the way back up

    # Nested: every file under it, each subfolder a section; the trail up.
    status, _, page = await fetch(peer_port.port, "/files/a%20b/")
    hrefs = links(page)
    assert status == 200 and "/files/a%20b/c%20d/e%20f.txt" in hrefs
    assert "/files/a%20b/c%20d/" in hrefs and "<h2>a b/c d/</h2>" in page.decode()
    status, _, page = await fetch(peer_port.port, "/files/a%20b/c%20d/")
    assert status == 200 and {"/", "/files/a%20b/"} <= set(links(page))

    # Without the slash: sent to the page.
    status, h, _ = await fetch(peer_port.port, folder.removesuffix("/"))
    assert status == 302 and h["location"] == folder
    status, h, _ = await fetch(peer_port.port, folder.removesuffix("/"), method="HEAD")
    assert status == 302 and h["location"] == folder

    # No page for what holds no shared file, nor for what is not shared.
    for target in ("/files/nothing/", "/files/nothing", "/files/.secret/", "/files/.secret",
                   "/files/%2Esecret/", "/files/escape/", "/files/escape", "/files/a%20b/../",
                   "/files/a%20b/%2E%2E/", "/files//", "/files/a%20b//", "/files/doc.pdf/",
                   "/files/%5B2019%5D%20Best%20Of/.draft.txt", "/files/a%20/",
                   "/files/a%20b/c/"):
        status, _, body = await fetch(peer_port.port, target)
        assert status in (400, 404), target
        assert b"outside" not in body and b"hidden" not in body, target


@pytest_twisted.ensureDeferred
async def test_in_a_private_network_a_folder_page_and_its_links_are_signed(peer_port):
    secret = Secret(b"k" * 32)
    peer_port.node.secret = secret
    here = f"127.0.0.1:{peer_port.port}"
    folder = "/files/" + url_path("[2019] Best Of") + "/"
    status, _, _ = await fetch(peer_port.port, folder, host=here)
    assert status == 403
    status, _, page = await fetch(peer_port.port, secret.sign_path(folder, time.time(), where=here),
                                  host=here)
    assert status == 200
    hrefs = links(page)
    assert hrefs and all("sig=" in link for link in hrefs)
    for link in (link for link in hrefs if not link.startswith("/files/")):
        status, _, _ = await fetch(peer_port.port, link, host=here)
        assert status == 200, link
    for link in (link for link in hrefs if link.startswith("/files/")):
        status, _, body = await fetch(peer_port.port, link, host=here)
        name = unquote(link.partition("?")[0].removeprefix("/files/"))
        assert (status, body) == (200, ODD[name]), link
    # The way to the page from the name without a slash is signed too.
    bare = folder.removesuffix("/")
    status, h, _ = await fetch(peer_port.port, secret.sign_path(bare, time.time(), where=here),
                               host=here)
    assert status == 302 and h["location"].startswith(folder + "?")
    status, _, _ = await fetch(peer_port.port, h["location"], host=here)
    assert status == 200
