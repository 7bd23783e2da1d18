"""
The peer's web page in a real headless Chromium, against a real network
of five peers: log in with the address `p2p ui` prints, search, download
a file and a folder, watch a progress bar move, pause and resume one
download, cancel another, browse a peer's share; every kept file is
verified against its original.  A name holding `<script>`, bidi controls
and 200 characters shows as text and keeps the layout.  Screenshots of
each section are saved in the test's directory.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from chromium import By, needs_chromium, start_chromium, wait_until
from twisted.internet.threads import deferToThread

from p2pshare.disk import atomic_write

pytestmark = needs_chromium

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
MiB = 2**20
# <script>, a right-to-left override and a zero-width space, 200 characters.
HOSTILE = ("<script>alert(1)</script>\u202egpj.exe\u200b-" + "w" * 200)[:200]


@pytest.fixture
def browser(tmp_path):
    driver = start_chromium(tmp_path / "chromium-profile")
    driver.set_window_size(1280, 900)
    yield driver
    driver.quit()


def put(shared: Path, name: str, data: bytes) -> None:
    path = shared / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def rows(driver):
    """
    The download rows: name -> (state, progress value, progress max).
    """
    return {r[0]: tuple(r[1:]) for r in js(driver, """
        return [...document.querySelectorAll('#queue tr.download')].map(tr => {
            const p = tr.querySelector('progress');
            return [tr.dataset.name, tr.dataset.state,
                    p && p.hasAttribute('value') ? p.value : null, p ? p.max : null];});""")}


def state_of(driver, name):
    return rows(driver).get(name, (None,))[0]


def click_in_row(driver, name, selector):
    js(driver, """for (const tr of document.querySelectorAll('#queue tr.download'))
                      if (tr.dataset.name === arguments[0])
                          tr.querySelector(arguments[1]).click();""", name, selector)


def search(driver, words):
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(words)
    driver.find_element(By.ID, "search-go").click()
    # The coverage line is classed once the answer is shown.
    wait_until(driver, lambda d: js(d, "return document.getElementById('coverage').className"))


def get_result(driver, name, folder=False):
    """
    Click a result's Download (or Download folder) button; it is queued.
    """
    clicked = js(driver, """for (const tr of document.querySelectorAll('#results tr.result'))
                      if (tr.dataset.name === arguments[0]) {
                          tr.querySelector(arguments[1]).click(); return true;}
                  return false;""", name, "button.get-folder" if folder else "button.get")
    assert clicked, name
    queued = name.rsplit("/", 1)[0] + "/" if folder else name
    wait_until(driver, lambda d: queued in rows(d)
               or js(d, "return document.getElementById('message').textContent"))
    assert not js(driver, "return document.getElementById('message').textContent")


def tab(driver, name, shots: Path):
    driver.find_element(By.ID, f"tab-{name}").click()
    wait_until(driver, lambda d: not js(d, f"return document.getElementById('{name}').hidden"))
    driver.save_screenshot(str(shots / f"ui-{name}.png"))


def drive(driver, login: str, shots: Path, holder: str) -> dict[str, object]:
    """
    Everything a person does on the page, in a thread (Selenium blocks).
    """
    seen: dict[str, object] = {}
    driver.get(login)
    wait_until(driver, lambda d: js(d, "return document.getElementById('peer').textContent"))
    assert "token" not in driver.current_url  # the login address is gone from the bar

    # Two big downloads from a capped holder: one paused and resumed, one
    # cancelled; then a file and a folder.
    search(driver, "film")
    driver.save_screenshot(str(shots / "ui-search.png"))
    get_result(driver, "big/film.bin")
    search(driver, "other bin")
    get_result(driver, "big/other.bin")
    tab(driver, "downloads", shots)
    wait_until(driver, lambda d: (rows(d).get("big/film.bin", (None, 0))[1] or 0) > 0)
    first = rows(driver)["big/film.bin"][1]
    wait_until(driver, lambda d: (rows(d)["big/film.bin"][1] or 0) > first)  # it moves
    seen["moved"] = (first, rows(driver)["big/film.bin"][1])
    driver.save_screenshot(str(shots / "ui-downloads.png"))  # both under way
    click_in_row(driver, "big/other.bin", "button.cancel")
    wait_until(driver, lambda d: state_of(d, "big/other.bin") == "cancelled")
    click_in_row(driver, "big/film.bin", "button.pause")
    wait_until(driver, lambda d: state_of(d, "big/film.bin") == "paused")
    seen["paused_at"] = rows(driver)["big/film.bin"][1]
    driver.find_element(By.ID, "tab-search").click()
    search(driver, "report")
    get_result(driver, "docs/report.txt")
    search(driver, "one ogg")
    get_result(driver, "music/Live Set/one.ogg", folder=True)
    driver.find_element(By.ID, "tab-downloads").click()
    click_in_row(driver, "big/film.bin", "button.resume")
    wait_until(driver, lambda d: all(
        state_of(d, n) == "done" for n in ("big/film.bin", "docs/report.txt", "music/Live Set/")))
    driver.save_screenshot(str(shots / "ui-downloads-done.png"))
    seen["rows"] = rows(driver)

    # Browse the holder's share as a tree.
    driver.find_element(By.ID, "tab-browse").click()
    box = driver.find_element(By.ID, "holder")
    box.clear()
    box.send_keys(holder)
    driver.find_element(By.ID, "browse-go").click()
    wait_until(driver, lambda d: js(d, "return document.querySelectorAll('#tree li.file').length"))
    seen["tree"] = sorted(js(driver, "return [...document.querySelectorAll('#tree li.file')]"
                                     ".map(li => li.dataset.name)"))
    driver.save_screenshot(str(shots / "ui-browse.png"))
    tab(driver, "share", shots)
    wait_until(driver, lambda d: js(d, "return document.getElementById('shared-count').textContent"))
    seen["shared"] = js(driver, "return document.getElementById('shared-count').textContent")
    tab(driver, "network", shots)
    seen["network"] = js(driver, "return document.getElementById('network').innerText")
    seen["map"] = js(driver, "const a = document.getElementById('meta-web');"
                             "return a.hidden ? null : a.href")

    # The hostile name: text, escaped, inside its cell.
    driver.find_element(By.ID, "tab-search").click()
    search(driver, "alert")
    wait_until(driver, lambda d: js(d, "return document.querySelectorAll('#results tr.result').length"))
    driver.save_screenshot(str(shots / "ui-hostile.png"))
    seen["hostile"] = js(driver, """
        const tr = document.querySelector('#results tr.result');
        const cell = tr.querySelector('td').getBoundingClientRect();
        const table = document.getElementById('results').getBoundingClientRect();
        const boxes = [...tr.querySelectorAll('td')].map(td => td.getBoundingClientRect());
        return {text: tr.querySelector('td').textContent, name: tr.dataset.name,
                scripts: document.querySelectorAll('script').length,
                cell: [cell.left, cell.right], table: [table.left, table.right],
                width: document.documentElement.clientWidth,
                scroll: document.documentElement.scrollWidth,
                apart: boxes.every((b, i) => i === 0 || b.left >= boxes[i - 1].right - 1),
                buttons: [...tr.querySelectorAll('button')].map(b => {
                    const r = b.getBoundingClientRect();
                    return [r.left, r.right, r.width];})};""")
    return seen


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest_twisted.ensureDeferred
async def test_search_download_pause_resume_cancel_and_browse_from_the_page(net, browser, tmp_path):
    meta = await net.start_meta(5, "--web", "tcp:0")
    web = (await meta.wait_for("p2pmeta web page on port", 30)).rsplit(" ", 1)[1]
    getter_key, _ = await net.start_peer()
    holder_key, holder = await net.start_peer("--upload-rate", "1M")
    for _ in range(3):
        await net.start_peer()
    shared = net.root / holder_key / "shared"
    originals = {
        "big/film.bin": b"F" * (6 * MiB) + b"end",
        "big/other.bin": b"O" * (6 * MiB),
        "docs/report.txt": b"the quarterly report\n",
        "music/Live Set/one.ogg": b"OggS one" * 1000,
        "music/Live Set/two.ogg": b"OggS two" * 1000,
        f"odd/{HOSTILE}": b"hostile",
    }
    for name, data in originals.items():
        put(shared, name, data)
    await holder.wait_for("share: 6 files", 30)
    holder_name = next(n for n, k in (await net.names()).items() if k == holder_key)
    said = await deferToThread(subprocess.run, [*P2P, "ui", "--peer", net.control(getter_key)],
                               capture_output=True, text=True, timeout=60)
    assert said.returncode == 0, said.stderr
    shots = tmp_path / "screenshots"
    shots.mkdir()

    seen = await deferToThread(drive, browser, said.stdout.strip(), shots, holder_name)

    first, later = seen["moved"]
    assert 0 < first < later < 6 * MiB + 3  # the bar moved while it ran
    assert 0 < seen["paused_at"] < 6 * MiB + 3  # paused halfway
    states = {name: row[0] for name, row in seen["rows"].items()}
    assert states == {"big/film.bin": "done", "big/other.bin": "cancelled",
                      "docs/report.txt": "done", "music/Live Set/": "done"}
    kept = net.root / getter_key / "shared"
    for name in ("big/film.bin", "docs/report.txt", "music/Live Set/one.ogg",
                 "music/Live Set/two.ogg"):
        assert sha(kept / name) == hashlib.sha256(originals[name]).hexdigest(), name
    assert not (kept / "big/other.bin").exists()
    assert seen["tree"] == sorted(originals)
    assert seen["shared"].startswith("4")  # the getter now shares what it kept
    assert holder_name in seen["network"] and "Network size" in seen["network"]
    assert seen["map"] == f"http://127.0.0.1:{web}/"  # the metadata server's live page

    hostile = seen["hostile"]
    assert hostile["name"] == f"odd/{HOSTILE}"
    assert "<script>alert(1)</script>" in hostile["text"]
    assert "\\u202egpj.exe\\u200b" in hostile["text"] and "\u202e" not in hostile["text"]
    assert hostile["scripts"] == 2  # the page's own two (text.js, app.js), nothing added
    assert hostile["table"][0] <= hostile["cell"][0] < hostile["cell"][1] <= hostile["table"][1]
    assert hostile["scroll"] <= hostile["width"]  # no sideways scrolling
    assert hostile["apart"]
    assert all(width > 20 for _, _, width in hostile["buttons"])
    for name in ("search", "downloads", "downloads-done", "browse", "share", "network",
                 "hostile"):
        assert (shots / f"ui-{name}.png").stat().st_size > 10_000, name
