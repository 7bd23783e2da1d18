"""
Real processes: a share with nested folders, Unicode, spaces and capitals
in its names, a hidden folder, a hidden file and symlinks leading out.
Search finds exactly the shared files by word and by glob, in any case;
p2p get recreates the path; curl fetches by percent-encoded URL; hidden
and escaping paths are refused; p2p ls, / and /index.json agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from urllib.parse import quote

import pytest_twisted
from twisted.internet.threads import deferToThread

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
CURL = shutil.which("curl") or "curl"  # .ci/run installs it; missing, the test fails
SONG = "Music/Live Set/Été 2026.ogg"
REPORT = "docs/Report FINAL.pdf"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def curl(url: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CURL, "-s", "--path-as-is", "-w", "\n%{http_code}", url],
                          capture_output=True, timeout=60)


@pytest_twisted.ensureDeferred
async def test_folders_are_shared_searched_fetched_and_recreated(net, tmp_path):
    meta = await net.start_meta(expect=2)
    holder, holder_proc = await net.start_peer()
    getter, _ = await net.start_peer()
    await meta.wait_for("topology settled: 2 peers", 30)
    shared = net.root / holder / "shared"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_bytes(b"outside")
    contents = {SONG: os.urandom(300_000), REPORT: b"%PDF report"}
    hidden = {".private/secret.txt": b"secret", "notes/.draft.txt": b"draft"}
    for name, data in {**hidden, **contents}.items():
        (shared / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / name).write_bytes(data)
    os.symlink(outside, shared / "escape")
    os.symlink(outside / "f.txt", shared / "notes" / "link-out.txt")
    await holder_proc.wait_for(f"sharing {REPORT}", 30)
    await holder_proc.wait_for(f"sharing {SONG}", 30)

    async def search(*args: str) -> list[dict]:
        out = await deferToThread(run, *P2P, "search", *args, "--json", "--peer", net.control(getter))
        assert out.returncode in (0, 1), out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    assert [m["name"] for m in await search("live OGG")] == [SONG]
    assert [m["name"] for m in await search("été")] == [SONG]
    assert [m["name"] for m in await search("*.PDF")] == [REPORT]
    assert sorted(m["name"] for m in await search("*")) == sorted(contents)
    assert await search("music/live set/été 2026.ogg", "--exact") != []
    for nothing in ("secret", "draft", "outside", "f.txt", "*private*"):
        assert await search(nothing) == [], nothing

    got = await deferToThread(run, *P2P, "get", SONG, "--peer", net.control(getter))
    assert got.returncode == 0, got.stderr
    target = net.root / getter / "shared" / SONG
    assert got.stdout == f"{target}\n" and target.read_bytes() == contents[SONG]
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".")]
    # Shared onward at once, by the same path.
    assert sorted(m["holder"] for m in await search("live ogg")) == sorted(
        m["holder"] for m in await search("*")
        if m["name"] == SONG
    ) and len(await search("live ogg")) == 2

    port = int((net.root / holder / "port").read_text())
    base = f"http://127.0.0.1:{port}/files/"
    for name, data in contents.items():
        r = await deferToThread(curl, base + quote(name))
        assert r.stdout == data + b"\n200", name
    for bad in [".private/secret.txt", "notes/.draft.txt", "escape/f.txt", "notes/link-out.txt",
                "Music/../.private/secret.txt", "Music/Live%20Set/..%2F..%2F.private%2Fsecret.txt",
                "docs//Report%20FINAL.pdf", "notes/", ".private/"]:
        r = await deferToThread(curl, base + bad)
        assert r.stdout.endswith((b"\n404", b"\n400")), (bad, r.stdout[-200:])
    # A folder is a page of its shared files (without its slash: sent there).
    assert (await deferToThread(curl, base + "Music")).stdout.endswith(b"\n302")
    page = await deferToThread(curl, base + "Music/")
    assert page.stdout.endswith(b"\n200") and quote("Été 2026.ogg").encode() in page.stdout

    # Browsing: p2p ls finds the holder by name through the network and
    # lists exactly what / and /index.json show.
    names = {}
    for key in (holder, getter):
        status = await deferToThread(run, *P2P, "status", "--peer", net.control(key))
        names[key] = status.stdout.split()[1]
    listed = await deferToThread(run, *P2P, "ls", names[holder], "--json", "--peer", net.control(getter))
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    index = json.loads((await deferToThread(curl, base.removesuffix("files/") + "index.json")).stdout[:-4])
    assert listing == {"peer": names[holder], "files": index["files"]}
    assert [f["name"] for f in listing["files"]] == sorted(contents)
    plain = await deferToThread(run, *P2P, "ls", names[holder], "--peer", net.control(getter))
    assert [line.split("\t")[0] for line in plain.stdout.splitlines()] == sorted(contents)
    page = (await deferToThread(curl, base.removesuffix("files/"))).stdout.decode()
    assert all(name.rpartition("/")[2] in page for name in contents) and "secret" not in page
    mine = await deferToThread(run, *P2P, "ls", names[getter], "--json", "--peer", net.control(getter))
    assert [f["name"] for f in json.loads(mine.stdout)["files"]] == [SONG]
    nobody = await deferToThread(run, *P2P, "ls", "s99", "--peer", net.control(getter))
    assert nobody.returncode == 1 and "s99 is not in the network" in nobody.stderr
    (net.root / getter / "shared" / SONG).unlink()  # the getter now shares nothing
    await net.peers[getter].wait_for(f"no longer sharing {SONG}", 30)
    empty = await deferToThread(run, *P2P, "ls", names[getter], "--peer", net.control(holder))
    assert (empty.returncode, empty.stdout) == (0, f"{names[getter]} shares nothing\n"), empty.stderr
