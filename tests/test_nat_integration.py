"""
Beyond one LAN, with real processes in the NAT test bed (tests/nat.py): the
metadata server and a public peer P on the public segment; peer A behind
router A, whose UPnP gateway forwards A's port once A asks; peers B and C
behind routers that only masquerade.

Every peer joins one tree; B and C are leaves; A is reachable once its
mapping exists (the router's table shows it) and takes a child.  A search
from every peer finds the files of every other.  Files move, verified:
to P and to A from B by reversed connections (B dials out), to C from A
directly through A's mapping.  Stopping A removes its mapping.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess

import pytest
import pytest_twisted
from nat import WHY_NOT, NatBed, nat_bed, stop_all  # noqa: F401 (the fixture, taken by name below)
from twisted.internet.threads import deferToThread
from watching import status_line

from p2pshare.disk import atomic_write
from p2pshare.launch import P2P, TWISTD, ChildProcess
from p2pshare.simnet import assert_tree
from p2pshare.topo import parse_topo

pytestmark = [pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or ""), pytest.mark.slow]
BEAT = "1"
SIZE = 3 * 2**20


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


async def said(control: str, start: str, end: str) -> str:
    """
    The line of C{p2p status} that starts with C{start} and ends with
    C{end}, once there is one.
    """
    return await status_line(control, rf"^{re.escape(start)}.*{re.escape(end)}$")


@pytest_twisted.ensureDeferred
async def test_peers_behind_nat_join_search_and_share(reactor, tmp_path, nat_bed):  # noqa: F811
    bed: NatBed = nat_bed
    procs: list[ChildProcess] = []

    def start(ns: str, role: str, argv: list[str], log: str) -> ChildProcess:
        p = ChildProcess(reactor, role, [*bed.exec_prefix(ns), *argv], tmp_path,
                         tmp_path / log).start()
        procs.append(p)
        return p

    def peer(name: str, ns: str, *extra: str) -> ChildProcess:
        data = tmp_path / name
        (data / "shared").mkdir(parents=True)
        atomic_write(data / "shared" / f"{name}.bin", os.urandom(SIZE))
        return start(ns, "p2ppeer", TWISTD + [
            "-n", "--pidfile=", "p2ppeer", "--name", name, "--port", "tcp:5001",
            "--meta", f"tcp:{bed.pub_ip}:5000", "--data-dir", str(data), "--heartbeat", BEAT,
            "--upload-rate", "1M", *extra,
        ], f"{name}.log")

    def control(name: str) -> str:
        return f"unix:{tmp_path / name / 'control.sock'}"

    try:
        meta_dir = tmp_path / "meta"
        meta_dir.mkdir()
        meta = start(bed.pub, "p2pmeta", TWISTD + [
            "-n", "--pidfile=", "p2pmeta", "--port", f"tcp:5000:interface={bed.pub_ip}",
            "--data-dir", str(meta_dir), "--expect", "4",
        ], "meta.log")
        await meta.wait_for("p2pmeta ready", 30)
        p = peer("P", bed.pub, "--relay", "--relay-slots", "1")  # one splice at a time
        await p.wait_for(" ready on port ", 30)
        a = peer("A", bed.ha)
        # A came from a private address: it asks its gateway, then the
        # metadata server to check again, and is reachable.
        await a.wait_for("it can take children", 60)
        assert f"the gateway forwards {bed.a_public}:5001 to {bed.a_host_ip}:5001" in a.output()
        assert "dpt:5001" in bed.mappings()
        b = peer("B", bed.hb)
        await b.wait_for(" ready on port ", 30)
        c = peer("C", bed.hc)
        await c.wait_for(" ready on port ", 30)
        await meta.wait_for("topology settled: 4 peers", 60)
        for leaf in (b, c):
            assert "cannot reach this peer" in leaf.output()

        # One tree; B and C are leaves; P has room for two, so C hangs from A.
        topo = run(*P2P, "topo", "--data-dir", str(meta_dir))
        views = {e.name: e.neighbours for e in parse_topo(topo.stdout)}
        assert_tree(views, {n: 2 for n in views})
        assert len(views["B"]) == 1 and len(views["C"]) == 1
        assert views["C"] == ["A"], views
        status = {n: run(*P2P, "status", "--peer", control(n)).stdout for n in "PABC"}
        assert "reachable: yes (the gateway forwards 11.0.0.21:5001)" in status["A"], status["A"]
        assert "reachable: yes\n" in status["P"]
        for n in "BC":
            assert "reachable: no, a leaf" in status[n], status[n]

        # Every peer finds every other's file (once each has indexed its own).
        for n, proc in zip("PABC", (p, a, b, c), strict=True):
            await proc.wait_for(f"sharing {n}.bin", 30)
        for n in "PABC":
            found = await deferToThread(run, *P2P, "search", "bin", "--peer", control(n))
            assert found.returncode == 0, (n, found.stdout, found.stderr)
            for m in "PABC":
                assert f"{m}.bin" in found.stdout, (n, found.stdout)

        # Verified downloads along each path, each named in p2p status at
        # both ends while it runs (the holders send at 1 MiB/s).
        for getter, holder, path in (("P", "B", "reversed"), ("A", "B", "reversed"),
                                     ("C", "A", "direct")):
            out = tmp_path / f"{getter}-got"
            get = ChildProcess(reactor, "p2p", [*P2P, "get", f"{holder}.bin", "--peer",
                               control(getter), "-o", str(out)], tmp_path,
                               tmp_path / f"get-{getter}-{holder}.log").start()
            procs.append(get)
            await said(control(getter), f"downloading {holder}.bin", f", {path}")
            await said(control(holder), f"uploading {holder}.bin to ", f", {path}")
            assert await get.when_ended(60) == 0, get.output()
            want = (tmp_path / holder / "shared" / f"{holder}.bin").read_bytes()
            kept = (out / f"{holder}.bin").read_bytes()
            assert hashlib.sha256(kept).digest() == hashlib.sha256(want).digest()

        # Both ends unreachable, both ways at once: through the relay P,
        # which splices one transfer at a time and refuses the other with a
        # sentence; that download waits and gets its turn.
        gets = {}
        for getter, holder in (("C", "B"), ("B", "C")):
            gets[getter] = ChildProcess(reactor, "p2p", [
                *P2P, "get", f"{holder}.bin", "--peer", control(getter), "-o",
                str(tmp_path / f"{getter}-relayed")], tmp_path,
                tmp_path / f"get-{getter}-{holder}.log").start()
            procs.append(gets[getter])
        await said(control("C"), "downloading B.bin", ", relayed")
        await said(control("B"), "uploading B.bin to ", ", relayed")
        for getter, holder in (("C", "B"), ("B", "C")):
            assert await gets[getter].when_ended(90) == 0, gets[getter].output()
            want = (tmp_path / holder / "shared" / f"{holder}.bin").read_bytes()
            kept = (tmp_path / f"{getter}-relayed" / f"{holder}.bin").read_bytes()
            assert hashlib.sha256(kept).digest() == hashlib.sha256(want).digest()
        assert "refused a splice: this relay splices 1 transfer at once, its most" in p.output()
        # The one that waited was told why (as it waited, or at the end).
        said_busy = gets["B"].output() + gets["C"].output()
        assert "this relay splices 1 transfer at once, its most; try again later" in said_busy
        relay = run(*P2P, "status", "--peer", control("P")).stdout
        assert re.search(r"^relay: splicing 0 of at most 1 at once \(no rate cap\); "
                         r"[2-9]\d* spliced, [1-9]\d* refused at the cap so far$", relay, re.M), relay

        # A stops: its mapping goes with it.
        a.signal(signal.SIGTERM)
        await a.when_ended(30)
        assert "dpt:5001" not in bed.mappings()
    finally:
        await stop_all(procs)
