"""
Real processes and real clients: a peer's web page as a stranger meets
it.  Without the login token every page and call is 403; a token works
once; a foreign C{Host} (DNS rebinding) is 403 even with the session; a
cross-origin POST is refused and changes nothing; the default binding
does not answer from 127.0.0.2; C{--ui off} has no page, and C{p2p ui}
says so.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet.threads import deferToThread

from p2pshare.peer.ui.site import MAX_CONNECTIONS

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
CURL = shutil.which("curl") or "curl"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def curl(url: str, *extra: str) -> tuple[int, dict[str, str], str]:
    """
    One request by curl: its status, headers (the last of each) and body.
    """
    done = run(CURL, "-s", "-i", "--max-time", "30", *extra, url)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return int(lines[0].split()[1]), headers, body


@pytest_twisted.ensureDeferred
async def test_a_stranger_gets_nothing_from_the_page(net):
    await net.start_meta(2)
    key, peer = await net.start_peer()
    control = net.control(key)
    said = await deferToThread(run, *P2P, "ui", "--peer", control)
    assert said.returncode == 0, said.stderr
    login = said.stdout.strip()
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/login\?token=([A-Za-z0-9_-]{40,})", login)
    assert m, login
    port = int(m.group(1))
    base = f"http://127.0.0.1:{port}"

    # Without the token: every page and call is 403.
    for path in ("/", "/app.js", "/api/status", "/api/session", "/api/downloads",
                 "/api/search?q=a", "/api/events", "/login?token=guessed"):
        status, headers, _ = await deferToThread(curl, base + path)
        assert status == 403, path
        assert headers["x-frame-options"] == "DENY"
    # The token, once: a session cookie, and the key for the API.
    jar = net.root / "cookies"
    status, headers, body = await deferToThread(curl, login, "-c", str(jar))
    assert status == 200
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page_key = re.search(r'url=/#key=([A-Za-z0-9_-]+)"', body).group(1)
    status, _, _ = await deferToThread(curl, login)
    assert status == 403  # used
    status, headers, body = await deferToThread(curl, base + "/", "-b", str(jar))
    assert status == 200 and "<script src=\"/app.js\"" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    # The cookie alone (which the browser also sends to other ports of
    # 127.0.0.1) opens no API call.
    status, _, _ = await deferToThread(curl, base + "/api/session", "-b", str(jar))
    assert status == 403
    with_key = ["-b", str(jar), "-H", f"X-Session-Key: {page_key}"]
    status, _, body = await deferToThread(curl, base + "/api/session", *with_key)
    session = json.loads(body)
    assert status == 200 and (await net.names())[session["peer"]] == key

    # A foreign Host header (a DNS-rebinding page): 403, with the session too.
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}"):
        status, _, _ = await deferToThread(curl, base + "/api/status", *with_key,
                                           "-H", f"Host: {host}")
        assert status == 403, host

    # A cross-origin POST (another site's form or script: no key).
    for extra in (
        ["-H", "Origin: http://evil.example", "-H", "Content-Type: application/json"],
        ["-H", "Content-Type: application/x-www-form-urlencoded"],
        ["-H", "Origin: http://evil.example", "-H", f"X-Session-Key: {page_key}",
         "-H", "Content-Type: application/json"],
    ):
        status, _, body = await deferToThread(
            curl, base + "/api/get", "-b", str(jar), "-X", "POST",
            "--data", json.dumps({"name": "x.txt"}), *extra)
        assert status == 403, (extra, body)
    status, _, body = await deferToThread(curl, base + "/api/downloads", *with_key)
    assert json.loads(body) == {"downloads": []}  # nothing was queued
    # The page itself may.
    status, _, body = await deferToThread(
        curl, base + "/api/get", *with_key, "-X", "POST", "--data",
        json.dumps({"name": "x.txt"}), "-H", "Content-Type: application/json",
        "-H", f"Origin: {base}")
    assert status == 200 and json.loads(body)["download"]["name"] == "x.txt"

    # The default binding is loopback's 127.0.0.1 alone.
    def from_elsewhere() -> str:
        try:
            socket.create_connection(("127.0.0.2", port), timeout=10).close()
        except ConnectionRefusedError:
            return "refused"
        return "answered"

    assert await deferToThread(from_elsewhere) == "refused"

    # A stranger that opens many silent connections holds no more than
    # the page's cap (the silent ones make room): the page still answers.
    def crowd() -> list[socket.socket]:
        return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]

    def closed_by_the_peer(socks: list[socket.socket]) -> int:
        readable, _, _ = select.select(socks, [], [], 10)
        return len(readable)  # an end of file, or a reset: nothing else was sent to them

    crowded = await deferToThread(crowd)
    try:
        status, _, body = await deferToThread(curl, base + "/api/status", *with_key)
        assert status == 200 and json.loads(body)["name"] == session["peer"]
        assert await deferToThread(closed_by_the_peer, crowded) >= 100 - MAX_CONNECTIONS
    finally:
        for s in crowded:
            s.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    await deferToThread(conn.request, "GET", "/api/status")
    assert (await deferToThread(conn.getresponse)).status == 403
    conn.close()
    assert peer.running


@pytest_twisted.ensureDeferred
async def test_p2p_ui_open_hands_the_address_to_the_browser(net, tmp_path):
    await net.start_meta(2)
    key, _ = await net.start_peer()
    opened = tmp_path / "opened"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys; open({str(opened)!r}, 'w').write(sys.argv[1])\n")
    env = {**os.environ, "BROWSER": f"{sys.executable} {browser} %s"}
    said = await deferToThread(subprocess.run, [*P2P, "ui", "--open", "--peer", net.control(key)],
                               capture_output=True, text=True, timeout=60, env=env)
    assert said.returncode == 0, said.stderr
    # The browser's command line (which any user may read) holds no token:
    # a page only we may read leads to the login address.
    given = opened.read_text()
    assert given.startswith("file:///") and "token" not in given
    page = Path(given.removeprefix("file://"))
    assert page.stat().st_mode & 0o777 == 0o600 and page.parent.stat().st_mode & 0o777 == 0o700
    login = said.stdout.strip()
    assert f'content="0;url={html.escape(login)}"' in page.read_text()


@pytest_twisted.ensureDeferred
async def test_ui_off_has_no_page(net):
    await net.start_meta(2)
    key, peer = await net.start_peer("--ui", "off")
    said = await deferToThread(run, *P2P, "ui", "--peer", net.control(key))
    assert said.returncode == 1
    assert said.stderr.strip().endswith("this peer's web page is off (--ui off)")
    status = await deferToThread(run, *P2P, "status", "--peer", net.control(key))
    assert "web page" not in status.stdout
    assert "web page at" not in peer.output()
