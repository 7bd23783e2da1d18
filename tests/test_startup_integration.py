"""
Real processes: a role that cannot start says why in one sentence, shows
no traceback, and is gone within seconds; it never lingers half-started.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from p2pshare.launch import LocalNetwork, twistd

DEADLINE = 10.0


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


async def fails(reactor, tmp_path: Path, role: str, *args: str) -> str:
    """
    Start C{twistd ROLE ARGS}; assert it ends non-zero within the deadline
    with one sentence and no traceback; return that sentence.
    """
    proc = twistd(reactor, role, list(args), tmp_path, tmp_path / f"{role}-fails.log").start()
    try:
        code = await proc.when_ended(DEADLINE)
    finally:
        if proc.running:
            await Deferred.fromCoroutine(proc.stop(2))
    out = proc.output()
    assert code not in (0, None), out
    assert "Traceback" not in out and "Unhandled" not in out, out
    sentences = [line for line in proc.lines if "cannot start" in line or line.startswith("twistd ")]
    assert len(sentences) == 1, out
    return sentences[0]


@pytest_twisted.ensureDeferred
async def test_a_busy_port_ends_either_role(reactor, tmp_path, busy_port):
    said = await fails(reactor, tmp_path, "p2pmeta", "--port", f"tcp:{busy_port}:interface=127.0.0.1",
                       "--data-dir", str(tmp_path / "m"))
    assert said.endswith(f"p2pmeta cannot start: cannot listen on --port tcp:{busy_port}"
                         ":interface=127.0.0.1: address already in use")
    said = await fails(reactor, tmp_path, "p2ppeer", "--port", f"tcp:{busy_port}:interface=127.0.0.1",
                       "--data-dir", str(tmp_path / "p"))
    assert said.endswith("address already in use")
    # A start-up that fails half-way: the role's port is free, the manhole's is not.
    said = await fails(reactor, tmp_path, "p2pmeta", "--port", "0", "--manhole", str(busy_port),
                       "--data-dir", str(tmp_path / "m2"))
    assert said.endswith(f"cannot listen on --manhole tcp:{busy_port}:interface=127.0.0.1: "
                         "address already in use")


@pytest_twisted.ensureDeferred
async def test_bad_endpoints_end_the_peer(reactor, tmp_path):
    said = await fails(reactor, tmp_path, "p2ppeer", "--port", "unix:/nonexistent/dir/peer.sock",
                       "--data-dir", str(tmp_path / "p"))
    assert said.endswith("cannot listen on --port unix:/nonexistent/dir/peer.sock: no such file or directory")
    said = await fails(reactor, tmp_path, "p2ppeer", "--port", "frob:1", "--data-dir", str(tmp_path / "p"))
    assert said == ("twistd p2ppeer: --port 'frob:1': not an endpoint (a port number, tcp:PORT, "
                    "ssl:PORT:..., unix:PATH) (see twistd p2ppeer --help)")
    said = await fails(reactor, tmp_path, "p2ppeer", "--meta", "foo:bar", "--data-dir", str(tmp_path / "p"))
    assert said.startswith("twistd p2ppeer: --meta 'foo:bar': not an endpoint (HOST:PORT, ")
    for role in ("p2pmeta", "p2ppeer"):
        said = await fails(reactor, tmp_path, role, "--port", "0", "--portfile", "/nonexistent/port",
                           "--data-dir", str(tmp_path / role))
        assert said.endswith(f"{role} cannot start: --portfile /nonexistent/port: the folder "
                             "/nonexistent does not exist")
    said = await fails(reactor, tmp_path, "p2ppeer", "--heartbeat", "0")
    assert said == "twistd p2ppeer: --heartbeat is from 0.5 to 300 seconds (see twistd p2ppeer --help)"


@pytest_twisted.ensureDeferred
async def test_a_data_dir_in_use_ends_the_second_process(reactor, tmp_path, net):
    await net.start_meta(expect=1)
    key, first = await net.start_peer()
    said = await fails(reactor, tmp_path, "p2ppeer", "--port", "0", "--meta", str(net.meta_port),
                       "--data-dir", str(net.root / key))
    assert said.endswith(f"p2ppeer cannot start: the data dir {net.root / key} is in use by "
                         f"another p2ppeer (pid {first.pid}); give each one its own --data-dir")
    said = await fails(reactor, tmp_path, "p2pmeta", "--port", "0", "--data-dir", str(net.meta_dir))
    assert f"the data dir {net.meta_dir} is in use by another p2pmeta (pid {net.meta.pid})" in said
    # The first ones never noticed.
    assert first.running and net.meta.running
    assert (net.root / key / "control.sock").exists()


@pytest_twisted.ensureDeferred
async def test_an_unreadable_registry_is_refused_then_moved_aside_with_reset(reactor, tmp_path):
    data = tmp_path / "meta"  # where LocalNetwork keeps its metadata server
    data.mkdir()
    (data / "registry.sqlite").write_bytes(b"this is not a database" * 100)
    said = await fails(reactor, tmp_path, "p2pmeta", "--port", "0", "--data-dir", str(data))
    assert said.endswith(f"the registry {data / 'registry.sqlite'} cannot be read (file is not a "
                         "database); move it aside, or start a new network with --reset")
    net = LocalNetwork(reactor, tmp_path)
    try:
        meta = await net.start_meta(1, "--reset")
        moved = [p for p in data.iterdir() if p.name.startswith("registry.sqlite.unreadable-")]
        assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not a database")
        assert any(f"moved to {moved[0]}" in line for line in meta.lines)
    finally:
        await net.stop_all()


@pytest_twisted.ensureDeferred
async def test_bad_tls_files_end_either_role(reactor, tmp_path):
    from p2pshare.tls import make_certs

    certs = tmp_path / "certs"
    make_certs(certs, ["meta", "s1"], ["127.0.0.1"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    trust = certs / "trust"
    for role, key, why in [
        ("p2pmeta", garbage, f"{garbage} holds no PEM certificate"),
        ("p2ppeer", tmp_path / "missing.pem", f"cannot read the certificate {tmp_path / 'missing.pem'}"),
    ]:
        said = await fails(reactor, tmp_path, role, "--port", f"ssl:0:privateKey={key}:trustRoots={trust}",
                           "--data-dir", str(tmp_path / role))
        assert why in said, said
    # A certificate with another's key.
    mixed = f"mtls:0:privateKey={certs / 's1.pem'}:certificate={certs / 'meta.pem'}:trustRoots={trust}"
    said = await fails(reactor, tmp_path, "p2pmeta", "--port", mixed, "--data-dir", str(tmp_path / "m"))
    assert "does not belong to the certificate" in said
    # The peer's link to the metadata server, with bad files.
    for meta, why in [
        (f"tls:127.0.0.1:1:trustRoots={trust}:certificate={garbage}:privateKey={garbage}",
         "its certificate or key files hold no usable PEM data"),
        (f"tls:127.0.0.1:1:trustRoots={tmp_path / 'nowhere'}", "its trustRoots directory cannot be read"),
    ]:
        said = await fails(reactor, tmp_path, "p2ppeer", "--port",
                           f"mtls:0:privateKey={certs / 's1.pem'}:trustRoots={trust}",
                           "--meta", meta, "--data-dir", str(tmp_path / "p"))
        assert said.endswith(f"--meta {meta} is not a usable endpoint: {why}"), said
    # TLS on one side and plain on the other, or TLS that checks nobody.
    for args, why in [
        (["p2ppeer", "--port", "0", "--meta", f"tls:127.0.0.1:1:trustRoots={trust}"],
         "--meta is TLS but --port tcp:0 is not"),
        (["p2ppeer", "--port", f"mtls:0:privateKey={certs / 's1.pem'}:trustRoots={trust}"],
         "--port is TLS but --meta tcp:127.0.0.1:5000 is not"),
        (["p2pmeta", "--port", f"tls:0:privateKey={certs / 'meta.pem'}"],
         "tls: listens without asking clients for a certificate"),
    ]:
        said = await fails(reactor, tmp_path, *args, "--data-dir", str(tmp_path / "q"))
        assert why in said, said


def read_only_dir(path: Path) -> None:
    path.mkdir()
    if os.geteuid() == 0:  # root writes through modes: mount a read-only tmpfs
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
    else:
        path.chmod(0o500)


@pytest_twisted.ensureDeferred
async def test_an_unwritable_data_dir_ends_either_role(reactor, tmp_path):
    ro = tmp_path / "ro"
    read_only_dir(ro)
    try:
        for role in ("p2pmeta", "p2ppeer"):
            said = await fails(reactor, tmp_path, role, "--port", "0", "--data-dir", str(ro))
            assert said.endswith(f"{role} cannot start: cannot write in the data dir {ro}: "
                                 "read-only file system") or "permission denied" in said
        said = await fails(reactor, tmp_path, "p2ppeer", "--port", "0", "--data-dir", "/etc/hostname/x")
        assert said.endswith("cannot write in the data dir /etc/hostname/x: not a directory")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=True)
