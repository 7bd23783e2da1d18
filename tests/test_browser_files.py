"""
A real peer's files in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium, as in test_browser.py): a PDF opens
in the browser, inline; an HTML file and an SVG file with scripts are
saved as downloads under their own names and their scripts never run in
the peer's origin; every link on the share page and on a folder's page,
clicked or fetched by the browser, gives its file's bytes, whatever
characters the names hold.  Skipped, with the reason, where the browser is
not installed.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit

import pytest
import pytest_twisted
from chromium import By, needs_chromium, start_chromium, wait_until
from twisted.internet.threads import deferToThread

from p2pshare.disk import atomic_write

pytestmark = needs_chromium


def tiny_pdf(text: str) -> bytes:
    """
    A valid one-page PDF showing C{text} (ASCII, no parentheses).
    """
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return out


# Were they rendered in the peer's origin, these would leave a mark there.
RAN = "document.title='ran'; localStorage.setItem('ran', location.pathname)"
PAGE = f"<!DOCTYPE html><html><head><title>page</title></head><body>page<script>{RAN}</script>"
SVG = (f'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>{RAN}</script>'
       '<rect width="10" height="10"/></svg>')
PDF = "docs/Report 2026.pdf"
ACTIVE = {"Seite ü & co.html": PAGE.encode(), "art/picture.svg": SVG.encode()}
TEXTS = {  # clicked, and shown as text
    "q?.txt": b"question mark",
    "a*b.txt": b"star",
    "50% off #1.txt": b"half price",
    "[2019] Best Of/02 #2 & more;=@:.txt": b"second",
    "\u00c9t\u00e9/\u00e7a va + \u65e5\u672c\u8a9e.txt": b"unicode",
    "a b/c d/e f.txt": b"spaces",
}
FILES = {
    PDF: tiny_pdf("Hello from a peer"),
    "What's Up?.mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00not really a song",
    "[2019] Best Of/01 Intro.mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00intro",
    **TEXTS,
    **ACTIVE,
}
FOLDER = "[2019] Best Of"


@pytest.fixture
def downloads(tmp_path):
    where = tmp_path / "downloads"
    where.mkdir()
    return where


@pytest.fixture
def browser(tmp_path, downloads):
    driver = start_chromium(tmp_path / "chromium-profile", downloads)
    yield driver
    driver.quit()


LINKS = """
return [...document.querySelectorAll('a')].map(a => a.href)
    .filter(u => new URL(u).pathname.startsWith('/files/'));
"""
FETCH = """
const [links, done] = arguments;
Promise.all(links.map(async url => {
    const r = await fetch(url);
    const bytes = new Uint8Array(await r.arrayBuffer());
    let text = '';
    for (const b of bytes) text += String.fromCharCode(b);
    return {url: url, status: r.status, type: r.headers.get('content-type'),
            disposition: r.headers.get('content-disposition'),
            nosniff: r.headers.get('x-content-type-options'), body: btoa(text)};
})).then(done, e => done(String(e)));
"""


def fetched_by_browser(driver, elsewhere: str) -> dict[str, dict]:
    """
    Every link to /files/ on the page, as the browser reads it, fetched by
    the browser from C{elsewhere} in the same origin (the pages allow no
    script to fetch anything): by the name the URL's path names.
    """
    links = driver.execute_script(LINKS)
    driver.get(elsewhere)
    results = driver.execute_async_script(FETCH, links)
    assert isinstance(results, list), results
    return {unquote(urlsplit(r["url"]).path.removeprefix("/files/")): r for r in results}


def click(driver, href):
    """
    Click the link whose (encoded) href is C{href}, and wait for the page.
    """
    before = driver.current_url
    link = driver.find_element(By.CSS_SELECTOR, f'a[href="{href}"]')
    link.click()
    wait_until(driver, lambda d: d.current_url != before
               and d.execute_script("return document.readyState") == "complete")


@pytest_twisted.ensureDeferred
async def test_files_open_download_and_link_rightly_in_a_browser(net, browser, downloads):
    await net.start_meta(1)
    key, peer = await net.start_peer()
    shared = net.root / key / "shared"
    for name, data in FILES.items():
        (shared / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(shared / name, data)
    await peer.wait_for(f"share: {len(FILES)} files,", 60)
    base = f"http://127.0.0.1:{int((net.root / key / 'port').read_text())}"

    # Every link on the share page, fetched by the browser: the right bytes.
    await deferToThread(browser.get, base + "/")
    plain = base + "/files/a%2Ab.txt"  # a page of the peer's origin, with no policy
    got = await deferToThread(fetched_by_browser, browser, plain)
    files = {name: r for name, r in got.items() if not name.endswith("/")}
    folders = {name: r for name, r in got.items() if name.endswith("/")}
    assert sorted(folders) == sorted({n.rpartition("/")[0] + "/" for n in FILES if "/" in n})
    for name, r in folders.items():
        assert (r["status"], r["type"]) == (200, "text/html; charset=utf-8"), name
    assert sorted(files) == sorted(FILES)
    for name, r in files.items():
        assert (r["status"], base64.b64decode(r["body"])) == (200, FILES[name]), name
        assert r["nosniff"] == "nosniff", name
    assert files[PDF]["type"] == "application/pdf"
    assert files[PDF]["disposition"].startswith("inline")
    assert files["What's Up?.mp3"]["type"] == "audio/mpeg"
    assert files["Seite ü & co.html"]["type"] == "text/html"
    assert files["Seite ü & co.html"]["disposition"].startswith("attachment")
    assert files["art/picture.svg"]["disposition"].startswith("attachment")

    # Clicked, each text file shows as its text, at its own address.
    await deferToThread(browser.get, base + "/")
    hrefs = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('a')]"
        ".map(a => [decodeURIComponent(new URL(a.href).pathname), a.getAttribute('href')]))")
    for name, text in TEXTS.items():
        await deferToThread(click, browser, hrefs["/files/" + name])
        shown = browser.execute_script(
            "return [document.contentType, document.body.innerText,"
            " decodeURIComponent(location.pathname)]")
        assert shown == ["text/plain", text.decode(), "/files/" + name], name
        await deferToThread(browser.get, base + "/")
    await deferToThread(click, browser, hrefs["/files/What's Up?.mp3"])
    assert browser.execute_script("return document.contentType") == "audio/mpeg"

    # A folder's page, reached by its link, and its links.
    await deferToThread(browser.get, base + "/")
    await deferToThread(click, browser, hrefs[f"/files/{FOLDER}/"])
    assert unquote(urlsplit(browser.current_url).path) == f"/files/{FOLDER}/"
    assert browser.execute_script("return document.contentType") == "text/html"
    got = await deferToThread(fetched_by_browser, browser, plain)
    in_folder = {n for n in FILES if n.startswith(FOLDER + "/")}
    assert set(got) == in_folder
    for name in in_folder:
        assert (got[name]["status"], base64.b64decode(got[name]["body"])) == (200, FILES[name])
    # Without the slash, the browser is sent to the same page.
    folder_url = base + "/files/%5B2019%5D%20Best%20Of"
    await deferToThread(browser.get, folder_url)
    assert browser.current_url == folder_url + "/"

    # The PDF opens in the browser: a PDF document at its own address.
    pdf_url = base + hrefs["/files/" + PDF]
    await deferToThread(browser.get, pdf_url)
    assert browser.execute_script("return document.contentType") == "application/pdf"
    assert browser.current_url == pdf_url

    # The HTML and SVG files are saved, under their own names, not rendered.
    for name in ACTIVE:
        await deferToThread(browser.get, base + hrefs["/files/" + name])
    saved = {name.rpartition("/")[2]: data for name, data in ACTIVE.items()}

    def all_saved(_driver) -> bool:
        here = {p.name: p for p in downloads.iterdir()}
        return set(saved) <= set(here) and all(here[n].read_bytes() == saved[n] for n in saved)

    await deferToThread(wait_until, browser, all_saved)
    # Nothing else was saved: the PDF, the texts and the song were shown.
    assert sorted(p.name for p in downloads.iterdir()) == sorted(saved)
    assert browser.current_url == pdf_url  # a download leaves the page as it was
    assert browser.title != "ran"
    # No script ran in the peer's origin.
    await deferToThread(browser.get, base + "/")
    assert browser.execute_script("return localStorage.getItem('ran')") is None
    assert browser.title != "ran"
