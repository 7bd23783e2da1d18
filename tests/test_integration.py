"""
Real twistd processes on 127.0.0.1, talked to with real clients: plain
sockets, the p2p command, and the files the metadata server writes.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread

from p2pshare.launch import CLEAN_EXITS, LocalNetwork
from p2pshare.simnet import assert_tree
from p2pshare.topo import parse_topo

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]


def p2p(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*P2P, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def in_thread(f, *args, **kwargs) -> Deferred:
    return deferToThread(f, *args, **kwargs)


def talk(port: int, payload: bytes, lines: int = 1) -> list[bytes]:
    """
    Send C{payload} with a plain socket, as nc would, and read up to
    C{lines} reply lines (fewer if the server closes).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        while data.count(b"\n") < lines:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return data.splitlines(keepends=True)


def start(net: LocalNetwork, n: int) -> Deferred:
    return gatherResults([Deferred.fromCoroutine(net.start_peer()) for _ in range(n)])


async def formed(net: LocalNetwork, n: int):
    """
    A metadata server and C{n} peers started at once, once the network is
    complete; returns the metadata server's process.
    """
    meta = await net.start_meta(expect=n)
    await start(net, n)
    await meta.wait_for("network complete", 30)
    return meta


def read_topo(net: LocalNetwork) -> dict[str, list[str]]:
    return {e.name: e.neighbours for e in parse_topo((net.meta_dir / "topo.txt").read_text())}


@pytest_twisted.ensureDeferred
async def test_eight_peers_at_once_form_a_tree_and_bad_input_harms_nothing(net):
    meta = await formed(net, 8)

    topo = read_topo(net)
    assert len(topo) == 8
    assert_tree(topo, {name: 2 for name in topo})
    assert (net.meta_dir / "NumberOfServers.txt").read_text() == "8\n"
    # topo.txt is the union of the peers' own views.
    views = {}
    for key in net.peers:
        out = await in_thread(p2p_status_json, net, key)
        views[out["name"]] = [n["name"] for n in out["neighbours"]]
    assert views == topo

    port = net.meta_port
    replies = await gatherResults([
        in_thread(talk, port, b"P2P port=" + b"9" * 100_000 + b"\r\n"),
        in_thread(talk, port, bytes(range(256)) * 4 + b"\r\n"),
        in_thread(talk, port, b"P2P\r\nFROBNICATE now\r\n", 2),
        in_thread(talk, port, b"GIMME a place\r\n"),
        in_thread(talk, port, b"P2P\r\nTOPO\r\n", 10),
    ])
    too_long, garbage, unknown, wrong_flag, topo_reply = replies
    assert too_long == [b"ERROR too-long lines are at most 4096 bytes\r\n"]
    assert garbage[0].startswith(b"ERROR ")
    assert unknown == [b"OK observer: TOPO lists the network\r\n",
                       b"ERROR unknown-verb unknown verb 'FROBNICATE'\r\n"]
    assert wrong_flag == [
        b"ERROR bad-flag the first line must start with the P2P flag, e.g. P2P port=5001\r\n"
    ]
    assert topo_reply[0] == b"OK observer: TOPO lists the network\r\n"
    assert topo_reply[-1] == b"END 8\r\n"

    # Everyone is still there, and one more peer still joins.
    assert meta.running and all(p.running for p in net.peers.values())
    since = len(meta.lines)
    key, _ = await net.start_peer()
    await meta.wait_for("topology settled: 9 peers", 30, since)
    topo = read_topo(net)
    assert len(topo) == 9
    assert (net.meta_dir / "NumberOfServers.txt").read_text() == "9\n"
    assert_tree(topo, {name: 2 for name in topo})


def p2p_status_json(net: LocalNetwork, key: str) -> dict:
    """
    Ask a peer over its control socket, as a plain client would.
    """
    path = net.root / key / "control.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"STATUS\n")
        lines = s.makefile("rb")
        status: dict = {}
        while (line := lines.readline()).startswith(b"ITEM "):
            _, name, entry = line.decode().split(" ", 2)
            status.setdefault(name, []).append(json.loads(entry))
    assert line.startswith(b"OK ")
    return {**json.loads(line[3:]), **status}


@pytest_twisted.ensureDeferred
async def test_peer_bad_input_gets_errors(net):
    await net.start_meta(expect=1)
    key, _ = await net.start_peer()
    port = int((net.root / key / "port").read_text())
    replies = await gatherResults([
        in_thread(talk, port, b"x" * 100_000),
        in_thread(talk, port, b"\x00\x01\x02\xff\r\n"),
        in_thread(talk, port, b"FROB\r\n"),
        in_thread(talk, port, b"FREE 1\r\n"),
    ])
    assert replies[0] == [b"ERROR too-long lines are at most 4096 bytes\r\n"]
    assert replies[1][0].startswith(b"ERROR ")
    assert replies[2] == [b"ERROR unknown-verb unknown verb 'FROB'\r\n"]
    assert replies[3] == [b"ERROR unexpected FREE is for overlay links\r\n"]
    assert (await in_thread(p2p_status_json, net, key))["root"] is True
    # The control socket is for its owner only.
    assert (os.stat(net.root / key / "control.sock").st_mode & 0o777) == 0o600


@pytest_twisted.ensureDeferred
async def test_restart_keeps_the_registry_and_reset_empties_it(net):
    meta = await formed(net, 3)
    before = read_topo(net)
    assert sorted(before) == ["s1", "s2", "s3"]

    assert await meta.stop() in CLEAN_EXITS
    assert read_topo(net) == before  # the files outlive the process
    meta = await net.start_meta(3)
    assert "with 3 peer(s) in the registry" in (await meta.wait_for("p2pmeta ready", 30))
    # The peers come back by themselves, and names keep counting up.
    for name in before:
        await meta.wait_for(f"peer {name} registered", 30)
    since = len(meta.lines)
    key, _ = await net.start_peer()
    await meta.wait_for("topology settled: 4 peers", 30, since)
    after = read_topo(net)
    assert sorted(after) == ["s1", "s2", "s3", "s4"]
    assert_tree(after, {name: 2 for name in after})

    for proc in list(net.peers.values()):
        await proc.stop()
    await meta.stop()
    meta = await net.start_meta(3, "--reset")
    assert "with 0 peer(s) in the registry" in (await meta.wait_for("p2pmeta ready", 30))
    assert (net.meta_dir / "topo.txt").read_text() == ""
    assert (net.meta_dir / "NumberOfServers.txt").read_text() == "0\n"
    key, peer = await net.start_peer()
    await peer.wait_for("peer s1 is the root", 30)
    assert (net.meta_dir / "topo.txt").read_text() == "s1:\n"


@pytest_twisted.ensureDeferred
async def test_a_live_name_is_refused_with_a_clear_error(net):
    await net.start_meta(expect=1)
    await net.start_peer("--name", "alice")
    key, dup = await net.start_peer("--name", "alice", wait=False)
    await dup.wait_for("the name alice is already live in this network", 30)
    assert await dup.when_ended(30) == 1


@pytest_twisted.ensureDeferred
async def test_p2p_topo_and_status(net, tmp_path):
    await formed(net, 3)
    expected = (net.meta_dir / "topo.txt").read_text()

    out = await in_thread(p2p, "topo", "--meta", f"tcp:127.0.0.1:{net.meta_port}")
    assert (out.returncode, out.stdout, out.stderr) == (0, expected, "")
    # A peer's port is not a metadata server: said so, in one sentence.
    peer_port = int((net.root / next(iter(net.peers)) / "port").read_text())
    wrong = await in_thread(p2p, "topo", "--meta", f"127.0.0.1:{peer_port}")
    assert wrong.returncode == 1
    assert "is a peer's port (or another p2pshare role), not a metadata server" in wrong.stderr
    out = await in_thread(p2p, "topo", "--data-dir", str(net.meta_dir))
    assert (out.returncode, out.stdout) == (0, expected)

    # Whichever peer asked for a place first is the root (names are given
    # at registration, which may come in another order).
    logs = {k: (net.root / f"{k}.log").read_text() for k in net.peers}
    root_key, root = next(
        (k, name) for k in net.peers for name in ("s1", "s2", "s3")
        if f"peer {name} is the root of the overlay" in logs[k]
    )
    out = await in_thread(p2p, "status", "--peer", net.control(root_key))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"name: {root}"
    assert lines[2] == "reachable: yes"  # the metadata server dialled it back
    lines.pop(2)
    assert lines[2] == "state: root"
    # Three peers joining at once may form a line (the third placed under
    # the root's child): the status says what topo.txt says.
    linked = {e.name: e.neighbours for e in parse_topo(expected)}[root]
    n = len(linked)
    assert lines[3] == "network: 3 peers"  # as the metadata server says it
    assert lines[4] == f"neighbours ({n} of at most 2):"
    assert sorted(line.split()[0] for line in lines[5:5 + n]) == sorted(linked)
    assert len(lines) == 7 + n and lines[5 + n].startswith("sharing: 0 files, 0 ")
    assert re.fullmatch(r"web page: http://127\.0\.0\.1:\d+/ \(p2p ui prints its login address\)",
                        lines[6 + n]), lines[6 + n]
    # The default --peer is ./p2ppeer-data/control.sock.
    (tmp_path / "here").mkdir()
    out = await in_thread(p2p, "status", cwd=tmp_path / "here")
    assert out.returncode == 1
    assert out.stderr.startswith("p2p status: no peer found: $P2P_PEER is not set, and neither "
                                 "./p2ppeer-data/control.sock nor ")
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_p2p_errors_and_usage(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "topo.txt").write_text("")
    out = p2p("topo", "--data-dir", str(empty))
    assert (out.returncode, out.stdout) == (0, "empty network\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "topo.txt").write_text("s1: s2 s3\ns2: s1 s4\ns3: s1\ns4: s2\n")
    out = p2p("topo", "--tree", "--data-dir", str(tree))
    assert (out.returncode, out.stdout) == (0, "s1\n├── s2\n│   └── s4\n└── s3\n")
    out = p2p("topo", "--data-dir", str(tmp_path / "missing"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    # A port nobody listens on.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    out = p2p("topo", "--meta", f"tcp:127.0.0.1:{free}")
    assert out.returncode == 1
    assert out.stderr.startswith(f"p2p topo: cannot reach the metadata server at tcp:127.0.0.1:{free}")
    assert p2p("frobnicate").returncode == 2
    assert p2p("topo", "--meta", "x", "--data-dir", "y").returncode == 2
    assert p2p().returncode == 2


def test_p2p_demo_forms_a_tree_of_five_and_stops_cleanly():
    out = subprocess.run([*P2P, "demo"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    topo_block = text.split("topo.txt says:\n", 1)[1].split("NumberOfServers.txt", 1)[0]
    topo = {e.name: e.neighbours for e in parse_topo(topo_block)}
    assert sorted(topo) == ["s1", "s2", "s3", "s4", "s5"]
    assert_tree(topo, {name: 2 for name in topo})
    assert "NumberOfServers.txt says: 5\n" in text
    assert "as a tree:\ns1\n" in text
    # A file placed at one end is found and fetched, verified, at the other.
    assert "$ p2p search demo.bin" in text and "\n  demo.bin\t20000000\t" in text
    assert "  verified 19.1 MiB from " in text
    assert "identical to the original" in text
    assert "$ p2p search no-such-file.txt\n  not found\n" in text
    assert text.endswith("all processes stopped\n")


@pytest_twisted.ensureDeferred
async def test_logs_as_json_lines_with_twistd_logger(reactor, tmp_path, net):
    from p2pshare.launch import TWISTD, ChildProcess

    (tmp_path / "jmeta").mkdir()
    meta = ChildProcess(reactor, "p2pmeta", TWISTD + [
        "--logger", "p2pshare.logs.json_lines", "-n", "--pidfile=", "p2pmeta",
        "--port", "tcp:0:interface=127.0.0.1", "--portfile", str(tmp_path / "jmeta" / "port"),
        "--data-dir", str(tmp_path / "jmeta"), "--expect", "1",
    ], tmp_path, tmp_path / "jmeta.log").start()
    try:
        await meta.wait_for("p2pmeta ready", 30)
        net.meta_port = int((tmp_path / "jmeta" / "port").read_text())
        await net.start_peer()
        line = await meta.wait_for("registered from", 30)
        event = json.loads(line)
        assert event["log_namespace"] == "p2pshare.meta.server.MetaServer"
        assert event["log_format"] == "peer {name} registered from {host}:{port}"
        assert (event["name"], event["host"]) == ("s1", "127.0.0.1")
        assert all(json.loads(text) for text in meta.lines if text.strip())
    finally:
        await meta.stop()
