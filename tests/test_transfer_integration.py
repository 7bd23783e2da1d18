"""
Real processes: a file at one end of the tree is found and fetched,
verified, from the other end; curl reads the same bytes from the holder's
port, ranges included, and cannot step outside the share.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import shutil
import subprocess
import sys

import pytest_twisted
from twisted.internet.threads import deferToThread

from p2pshare.disk import atomic_write
from p2pshare.launch import progress_at
from p2pshare.topo import distances, far_apart, parse_topo

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[(p2pmeta|p2ppeer( s\d+)?)( warn| error| critical)?\] \S")
CHATTER = re.compile(r"Starting factory|Stopping factory|Scheduling retry|object at 0x| starting on |Port \S+ Closed|reactor class")
CURL = shutil.which("curl") or "curl"  # .ci/run installs it; missing, the test fails


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def on_terminal(*argv: str) -> str:
    """
    What a command prints when its output is a terminal.
    """
    main, side = pty.openpty()
    try:
        subprocess.run(list(argv), stdout=side, stderr=subprocess.DEVNULL, timeout=120, check=True)
        os.close(side)
        side = -1
        out = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            out += chunk
        return out.decode().replace("\r\n", "\n")
    finally:
        os.close(main)
        if side >= 0:
            os.close(side)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CURL, "-s", *args], capture_output=True, timeout=60)


@pytest_twisted.ensureDeferred
async def test_twenty_megabytes_across_six_peers_and_curl(net, tmp_path):
    meta = await net.start_meta(expect=6)
    keys = {}
    for _ in range(6):
        key, proc = await net.start_peer()
    await meta.wait_for("topology settled: 6 peers", 30)
    topo = {e.name: e.neighbours for e in parse_topo((net.meta_dir / "topo.txt").read_text())}
    for key in net.peers:
        status = run(*P2P, "status", "--peer", net.control(key))
        keys[status.stdout.split()[1]] = key
    holder, requester = (keys[n] for n in far_apart(topo)[:2])
    data = os.urandom(20 * 1000 * 1000)
    atomic_write(net.root / holder / "shared" / "random.bin", data)
    (net.root / holder / "shared" / ".secret").write_bytes(b"hidden")
    os.symlink("/etc/hostname", net.root / holder / "shared" / "outside")
    (tmp_path / "elsewhere.txt").write_bytes(b"not shared")
    sha = hashlib.sha256(data).hexdigest()

    # The holder notices the new file by itself; a search then finds it.
    await net.peers[holder].wait_for("sharing random.bin", 30)
    found = await deferToThread(run, *P2P, "search", "random.bin", "--peer", net.control(requester))
    assert found.returncode == 0, found.stderr
    name, size, digest, count, holder_name = found.stdout.strip().split("\t")
    assert (name, size, digest, count) == ("random.bin", str(len(data)), sha[:12], "1")
    assert keys[holder_name] == holder
    nothing = await deferToThread(run, *P2P, "search", "no-such-*", "--peer", net.control(requester))
    assert (nothing.returncode, nothing.stdout) == (1, "not found\n")

    out = await deferToThread(run, *P2P, "get", "random.bin", "--peer", net.control(requester))
    assert out.returncode == 0, out.stderr
    target = net.root / requester / "shared" / "random.bin"
    assert out.stdout == f"{target}\n"
    assert target.read_bytes() == data
    assert f"sha256 {sha}" in out.stderr
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]
    # Search as people expect: any case, words, --exact; one line per
    # distinct file with its holders; --json per holder; a header on a terminal.
    me = (await deferToThread(run, *P2P, "status", "--peer", net.control(requester))).stdout.split()[1]
    both = await deferToThread(run, *P2P, "search", "RANDOM", "--peer", net.control(holder))
    assert both.returncode == 0, both.stderr
    [row] = [line.split("\t") for line in both.stdout.splitlines()]
    assert row[:4] == ["random.bin", str(len(data)), sha[:12], "2"]
    assert sorted(row[4].split(", ")) == sorted([holder_name, me])
    exact = await deferToThread(run, *P2P, "search", "random", "--exact", "--peer", net.control(holder))
    assert (exact.returncode, exact.stdout) == (1, "not found\n")
    exact = await deferToThread(run, *P2P, "search", "Random.BIN", "--exact", "--peer", net.control(holder))
    assert exact.stdout == both.stdout
    as_json = await deferToThread(run, *P2P, "search", "bin random", "--json", "--peer", net.control(holder))
    objects = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert sorted(o["holder"] for o in objects) == sorted([holder_name, me])
    assert {(o["name"], o["size"], o["sha256"]) for o in objects} == {("random.bin", len(data), sha)}
    assert set(objects[0]) == {"name", "size", "sha256", "holder", "host", "port"}
    shown = await deferToThread(on_terminal, *P2P, "search", "random", "--peer", net.control(holder))
    header, line = shown.splitlines()
    assert header.split() == ["PATH", "SIZE", "SHA-256", "HOLDERS"]
    assert line.split()[:5] == ["random.bin", "19.1", "MiB", sha[:12], "2"]
    # It is shared onward at once.
    status = await deferToThread(run, *P2P, "status", "--files", "--peer", net.control(requester))
    assert f"  random.bin  19.1 MiB  sha256 {sha[:12]}" in status.stdout.splitlines()
    # Again: already here, nothing to do.
    out = await deferToThread(run, *P2P, "get", "random.bin", "--peer", net.control(requester))
    assert out.returncode == 0 and "already here" in out.stderr

    port = int((net.root / holder / "port").read_text())
    base = f"http://127.0.0.1:{port}/files/"
    whole = await deferToThread(curl, base + "random.bin")
    assert whole.stdout == data
    ranged = await deferToThread(curl, "-r", "1000-1999", "-w", "%{http_code}", "-o", str(tmp_path / "r"), base + "random.bin")
    assert ranged.stdout == b"206"
    assert (tmp_path / "r").read_bytes() == data[1000:2000]
    for path in ["../meta/topo.txt", "%2e%2e/meta/topo.txt", "%2E%2E%2Fmeta%2Ftopo.txt",
                 ".secret", "outside", "..%2f..%2felsewhere.txt", "/etc/passwd", "random.bin/x",
                 "random%0A.bin", "%00", "%ff%fe"]:
        r = await deferToThread(curl, "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", base + path)
        assert r.stdout.startswith(b"4"), (path, r.stdout)
    # Many ranges in one header are not amplified: the file, once.
    many = await deferToThread(curl, "-H", "Range: bytes=" + "0-1," * 300 + "5-6",
                               "-o", str(tmp_path / "m"), "-w", "%{http_code}", base + "random.bin")
    assert many.stdout == b"200" and (tmp_path / "m").stat().st_size == len(data)
    # Nothing was harmed: the holder still serves.
    head = await deferToThread(curl, "-I", base + "random.bin")
    assert b"200 OK" in head.stdout and f'etag: "{sha}"'.encode() in head.stdout.lower()

    # The roles' logs, at the default level, after a network formed, searched
    # and transferred: one event per line with the role and its name, and
    # none of Twisted's chatter (a factory per HTTP connection, ports).
    lines = [line for log in ["meta", *net.peers] for line in (net.root / f"{log}.log").read_text().splitlines()]
    assert len(lines) > 30
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    assert [line for line in lines if CHATTER.search(line)] == []
    assert any(f"[p2ppeer {holder_name}] sharing random.bin" in line for line in lines)


async def tree_of(net, n):
    meta = await net.start_meta(expect=n)
    for _ in range(n):
        await net.start_peer()
    await meta.wait_for(f"topology settled: {n} peers", 30)
    topo = {e.name: e.neighbours for e in parse_topo((net.meta_dir / "topo.txt").read_text())}
    keys = {}
    for key in net.peers:
        status = await deferToThread(run, *P2P, "status", "--peer", net.control(key))
        keys[status.stdout.split()[1]] = key
    return topo, keys


@pytest_twisted.ensureDeferred
async def test_a_holder_killed_halfway_never_leaves_a_partial_file(net):
    topo, keys = await tree_of(net, 4)
    requester = next(n for n in topo if max(distances(topo, n).values()) >= 2)
    dist = distances(topo, requester)
    near = next(n for n in topo if dist[n] == 1)
    far = next(n for n in topo if dist[n] >= 2)
    data = os.urandom(150 * 1000 * 1000)
    for holder in (near, far):
        atomic_write(net.root / keys[holder] / "shared" / "big.bin", data)
    for holder in (near, far):
        await net.peers[keys[holder]].wait_for("sharing big.bin", 60)

    get = net.p2p("get", "big.bin", "--peer", net.control(keys[requester]))
    await progress_at(get, 5)
    net.peers[keys[near]].signal(9)  # the nearest holder, the one in use, dies
    # The other holder is there: the download goes on from it, and only the
    # whole, verified file appears.
    assert await get.when_ended(120) == 0, get.output()
    assert "Traceback" not in get.output()
    target = net.root / keys[requester] / "shared" / "big.bin"
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["big.bin"]


@pytest_twisted.ensureDeferred
async def test_two_downloads_from_one_holder_while_searching(net):
    topo, keys = await tree_of(net, 4)
    holder, first, second, searcher = sorted(topo)
    data = os.urandom(40 * 1000 * 1000)
    atomic_write(net.root / keys[holder] / "shared" / "shared.bin", data)
    await net.peers[keys[holder]].wait_for("sharing shared.bin", 60)
    gets = [net.p2p("get", "shared.bin", "--peer", net.control(keys[k])) for k in (first, second)]
    searches = [net.p2p("search", "*.bin", "--peer", net.control(keys[searcher])) for _ in range(3)]
    for proc in gets + searches:
        assert await proc.when_ended(120) == 0, proc.output()
    for k in (first, second):
        assert (net.root / keys[k] / "shared" / "shared.bin").read_bytes() == data
    for proc in searches:
        assert f"shared.bin\t{len(data)}\t" in proc.output()
