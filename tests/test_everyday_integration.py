"""
Real processes, the everyday second floor: a file still being written is
not offered; a folder is fetched whole and resumed; downloads queued in
the peer survive its restart; the commands find the per-user peer from
any directory; names with glob characters, bare names, two versions of
one name, and holders of the same bytes under another name.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]


def run(*argv: str, cwd: Path | None = None, env: dict | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*P2P, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


async def p2p(*argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return await deferToThread(run, *argv, **kw)


async def until(check, timeout: float, what: str, every: float = 0.1):
    """
    Wait for C{check()} (run in a thread) to be true, at most C{timeout} s.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await deferToThread(check)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await deferLater(reactor, every)


def put(shared: Path, name: str, data: bytes) -> None:
    path = shared / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest_twisted.ensureDeferred
async def test_a_file_being_written_is_not_offered_until_it_is_complete(net, tmp_path):
    meta = await net.start_meta(expect=2)
    holder, holder_proc = await net.start_peer()
    getter, _ = await net.start_peer()
    await meta.wait_for("topology settled: 2 peers", 60)
    shared = net.root / holder / "shared"
    data = os.urandom(20 * 2**20)
    done = threading.Event()

    def copy_slowly() -> None:  # as cp of a big file onto a slow disk: 20 MiB over 6 s
        with open(shared / "big.bin", "wb") as f:
            for i in range(20):
                f.write(data[i * 2**20:(i + 1) * 2**20])
                f.flush()
                time.sleep(0.3)
        done.set()

    writer = threading.Thread(target=copy_slowly)
    writer.start()
    seen = []
    try:
        got = None
        while not done.is_set():
            out = await p2p("search", "big.bin", "--json", "--peer", net.control(getter))
            seen += [json.loads(line)["size"] for line in out.stdout.splitlines()
                     if line.startswith("{")]
            if got is None:  # a get started while it is being written
                got = deferToThread(run, "get", "big.bin", "-o", str(tmp_path / "early"),
                                    "--peer", net.control(getter))
    finally:
        writer.join()
    assert seen == []  # never found while it was written
    early = await got
    kept = tmp_path / "early" / "big.bin"
    if early.returncode == 0:
        assert kept.read_bytes() == data  # the whole file, or none
    else:
        assert early.returncode == 1 and "not found" in early.stderr and not kept.exists()
    await holder_proc.wait_for(f"sha256 {hashlib.sha256(data).hexdigest()})", 60)
    out = await p2p("get", "big.bin", "-o", str(tmp_path / "late"), "--peer", net.control(getter))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "late" / "big.bin").read_bytes() == data
    assert f"{len(data)} bytes" not in holder_proc.output()  # sizes are in binary units
    assert "sharing big.bin (20.0 MiB, " in holder_proc.output()


@pytest_twisted.ensureDeferred
async def test_a_folder_is_fetched_whole_and_a_second_run_fetches_only_what_is_missing(
        net, tmp_path):
    meta = await net.start_meta(expect=3)
    a, a_proc = await net.start_peer()
    b, b_proc = await net.start_peer()
    getter, _ = await net.start_peer()
    await meta.wait_for("topology settled: 3 peers", 60)
    files = {
        f"Music/Album {i // 30}/Disc {i % 3}/{i:03d} track.txt": os.urandom(1000 + i)
        for i in range(300)
    }
    held = {a: 0, b: 0}
    for i, (name, data) in enumerate(files.items()):  # half each, one in seven by both
        for key in [k for k, mine in ((a, i % 2 == 0), (b, i % 2 == 1)) if mine or i % 7 == 0]:
            put(net.root / key / "shared", name, data)
            held[key] += 1
    await a_proc.wait_for(f"share: {held[a]} files", 120)
    await b_proc.wait_for(f"share: {held[b]} files", 120)
    out_dir = tmp_path / "got"  # does not exist yet: get makes it
    first = net.p2p("get", "Music/", "-o", str(out_dir), "--peer", net.control(getter))
    kept_dir = out_dir / "Music"

    def some_kept() -> int:
        return sum(1 for p in kept_dir.rglob("*.txt")) if kept_dir.exists() else 0

    await until(lambda: some_kept() >= 20, 120, "20 files kept")
    first.signal(signal.SIGKILL)  # killed midway
    assert await first.when_ended(30) != 0
    before = {p: p.stat().st_ino for p in kept_dir.rglob("*.txt")}
    assert 20 <= len(before) < 300  # it was stopped midway
    second = await p2p("get", "Music/", "-o", str(out_dir), "--peer", net.control(getter))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "kept 300 of 300 files" in second.stderr
    already = int(second.stderr.split(" downloaded and verified, ")[1].split(" already")[0])
    assert already >= len(before)
    for name, data in files.items():
        assert (out_dir / name).read_bytes() == data, name
    for path, inode in before.items():  # a kept file is not fetched again
        assert path.stat().st_ino == inode
    assert second.stdout.strip() == str(kept_dir)
    # A folder named without its slash is the folder too.
    third = await p2p("get", "music/album 3", "-o", str(tmp_path / "again"),
                      "--peer", net.control(getter))
    assert third.returncode == 0, third.stderr
    assert len(list((tmp_path / "again" / "Music" / "Album 3").rglob("*.txt"))) == 30


@pytest_twisted.ensureDeferred
async def test_queued_downloads_survive_a_restart_of_the_peer_and_resume(net, tmp_path):
    meta = await net.start_meta(expect=2)
    holder, holder_proc = await net.start_peer("--upload-rate", "256K")
    getter, getter_proc = await net.start_peer()
    await meta.wait_for("topology settled: 2 peers", 60)
    files = {f"q{i}.bin": os.urandom(3 * 2**20) for i in range(3)}
    for name, data in files.items():
        put(net.root / holder / "shared", name, data)
    await holder_proc.wait_for("share: 3 files", 60)
    for name in files:
        out = await p2p("get", "--background", name, "--peer", net.control(getter))
        assert out.returncode == 0 and out.stdout.startswith(f"queued {name}"), out.stderr

    def listing() -> list[dict]:
        out = run("downloads", "--json", "--peer", net.control(getter))
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    await until(lambda: any(e["done"] > 2**20 for e in listing()), 120, "a MiB downloaded")
    stop = await p2p("stop", "--peer", net.control(getter))
    assert stop.returncode == 0, stop.stderr
    assert await getter_proc.when_ended(60) == 0
    await net.start_peer(key=getter)
    after = listing()
    assert sorted(e["name"] for e in after) == sorted(files)
    assert all(e["state"] in ("queued", "running", "done") for e in after), after
    await until(lambda: all(e["state"] == "done" for e in listing()), 180, "all kept")
    final = listing()
    assert any((e["resumed_at"] or 0) > 0 for e in final), final  # from its verified pieces
    for name, data in files.items():
        assert (net.root / getter / "shared" / name).read_bytes() == data
    shown = await p2p("downloads", "--peer", net.control(getter))
    assert shown.stdout.count(" done ") == 3, shown.stdout


@pytest_twisted.ensureDeferred
async def test_commands_find_the_per_user_peer_from_any_directory(net, short_tmp):
    tmp_path = short_tmp  # a home of a usual length: the per-user socket is in it
    meta = await net.start_meta(expect=2)
    holder, holder_proc = await net.start_peer()
    put(net.root / holder / "shared", "far away.txt", b"found from anywhere")
    await holder_proc.wait_for("sharing far away.txt", 60)
    home = tmp_path / "home"
    music = home / "Music"
    music.mkdir(parents=True)
    (music / "mine.txt").write_bytes(b"mine")
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(home / "state")}
    env.pop("P2P_PEER", None)
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    share = await p2p("share", str(music), "--meta", f"127.0.0.1:{net.meta_port}",
                      "--port", "tcp:0:interface=127.0.0.1", cwd=home, env=env)
    data_dir = home / "state" / "p2pshare" / "peer"
    try:
        assert share.returncode == 0, share.stderr + share.stdout
        assert "1 file, 4 B" in share.stdout  # indexed before it returned
        assert (data_dir / "control.sock").is_socket()
        status = await p2p("status", cwd=elsewhere, env=env)
        assert status.returncode == 0, status.stderr
        assert "sharing: 1 file, 4 B" in status.stdout
        found = await p2p("search", "far", cwd=elsewhere, env=env)
        assert found.returncode == 0 and "far away.txt" in found.stdout, found.stderr
        got = await p2p("get", "far away.txt", cwd=elsewhere, env=env)
        assert got.returncode == 0, got.stderr
        assert (music / "far away.txt").read_bytes() == b"found from anywhere"
        # Nothing there: the error names where it looked.
        nowhere = {**env, "XDG_STATE_HOME": str(tmp_path / "empty")}
        lost = await p2p("status", cwd=elsewhere, env=nowhere)
        assert lost.returncode == 1
        assert str(tmp_path / "empty" / "p2pshare" / "peer" / "control.sock") in lost.stderr
    finally:
        stop = await p2p("stop", cwd=elsewhere, env=env)
        pid_file = data_dir / "p2ppeer.pid"
        if stop.returncode != 0 and pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        await until(lambda: not pid_file.exists(), 60, "the shared peer to stop")
    await meta.wait_for("topology settled: 1 peers", 60)


@pytest_twisted.ensureDeferred
async def test_names_with_glob_characters_bare_names_versions_and_copies(net, tmp_path):
    meta = await net.start_meta(expect=3)
    one, one_proc = await net.start_peer("--upload-rate", "512K")
    two, two_proc = await net.start_peer("--upload-rate", "512K")
    getter, _ = await net.start_peer()
    await meta.wait_for("topology settled: 3 peers", 60)
    odd = {"[2019] Best Of/01 Intro.mp3": b"intro", "What's Up?.mp3": b"whats up",
           "a*b.txt": b"a star b", "Music/Live Set/set.ogg": b"live set"}
    for name, data in odd.items():
        put(net.root / one / "shared", name, data)
    put(net.root / one / "shared", "dup.txt", b"version one")
    put(net.root / two / "shared", "dup.txt", b"version two")
    big = os.urandom(4 * 2**20)
    put(net.root / one / "shared", "big.bin", big)
    put(net.root / two / "shared", "copy.bin", big)
    await one_proc.wait_for("share: 6 files", 60)
    await two_proc.wait_for("share: 2 files", 60)
    peer = ("--peer", net.control(getter))

    for name, data in odd.items():
        if name.endswith("set.ogg"):
            continue
        found = await p2p("search", name, "--json", *peer)
        assert found.returncode == 0, (name, found.stderr)
        assert name in [json.loads(line)["name"] for line in found.stdout.splitlines()], name
        got = await p2p("get", name, "-o", str(tmp_path / "odd"), *peer)
        assert got.returncode == 0, (name, got.stderr)
        assert (tmp_path / "odd" / name).read_bytes() == data

    # A bare name that ends exactly one path.
    got = await p2p("get", "set.ogg", "-o", str(tmp_path / "bare"), *peer)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "bare" / "Music" / "Live Set" / "set.ogg").read_bytes() == b"live set"

    # Two versions of one name: refused, both listed, how to choose said.
    dup = await p2p("get", "dup.txt", "-o", str(tmp_path / "dup"), *peer)
    assert dup.returncode == 1
    for data in (b"version one", b"version two"):
        assert f"sha256:{hashlib.sha256(data).hexdigest()[:12]}" in dup.stderr
    assert "--from" in dup.stderr and not (tmp_path / "dup" / "dup.txt").exists()
    sha = hashlib.sha256(b"version two").hexdigest()
    chosen = await p2p("get", f"sha256:{sha[:12]}", "-o", str(tmp_path / "dup"), *peer)
    assert chosen.returncode == 0, chosen.stderr
    assert (tmp_path / "dup" / "dup.txt").read_bytes() == b"version two"

    # The same bytes under another name count: both holders send.
    got = await p2p("get", "big.bin", "-o", str(tmp_path / "big"), *peer)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "big" / "big.bin").read_bytes() == big
    verified = [line for line in got.stderr.splitlines() if line.startswith("verified ")]
    holders = verified[0].split(" from ")[1].split(", sha256")[0].split(", ")
    assert len(holders) == 2, got.stderr
