"""
The NAT test bed (tests/nat.py) does what it says: a host behind a router
reaches the public segment, masqueraded; nobody reaches it there; and a
port mapping asked of router A's UPnP gateway (with miniupnpc, from the
host behind it) opens a way in until it is deleted.
"""

from __future__ import annotations

import importlib.util
import select
import subprocess
import sys

import pytest
from nat import WHY_NOT, NatBed, nat_bed  # noqa: F401 (the fixture, taken by name below)

WHY_NOT_HERE = WHY_NOT or (None if importlib.util.find_spec("miniupnpc") else
                           "the miniupnpc module is not installed (pip install miniupnpc)")
pytestmark = [pytest.mark.skipif(WHY_NOT_HERE is not None, reason=WHY_NOT_HERE or ""),
              pytest.mark.slow]  # namespaces and real processes: not the fast tier

PY = sys.executable  # the venv's: it has miniupnpc

LISTEN = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
s.settimeout(20)
conn, peer = s.accept()
print(peer[0], flush=True)
"""

CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[4]))
if sys.argv[3]:
    s.bind((sys.argv[3], 0))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    print(type(e).__name__)
else:
    print("connected")
"""

UPNP = """
import miniupnpc, sys
u = miniupnpc.UPnP()
u.discoverdelay = 2000
print("devices", u.discover())
print("igd", u.selectigd())
print("external", u.externalipaddress())
if sys.argv[1] == "add":
    print("added", u.addportmapping(5001, "TCP", u.lanaddr, 5001, "nat bed test", ""))
else:
    print("deleted", u.deleteportmapping(5001, "TCP"))
"""


class Listener:
    """
    A TCP listener in a namespace that accepts one connection and says
    from where.
    """

    def __init__(self, bed: NatBed, ns: str, host: str, port: int) -> None:
        self.proc = subprocess.Popen([*bed.exec_prefix(ns), PY, "-c", LISTEN, host, str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        assert ready and self.proc.stdout.readline() == "listening\n", self.proc.stderr

    def peer(self) -> str:
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return out.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=15)


def connect(bed: NatBed, ns: str, host: str, port: int, source: str = "",
            timeout: float = 5) -> str:
    """
    "connected", or the name of the error a connection from C{ns} met.
    """
    done = subprocess.run(
        [*bed.exec_prefix(ns), PY, "-c", CONNECT, host, str(port), source, str(timeout)],
        capture_output=True, text=True, timeout=timeout + 20)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def upnp(bed: NatBed, action: str) -> str:
    done = subprocess.run([*bed.exec_prefix(bed.ha), PY, "-c", UPNP, action],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_masquerade_reaches_out_nothing_reaches_in_but_a_upnp_mapping(
        nat_bed: NatBed) -> None:  # noqa: F811 (the fixture imported above)
    bed = nat_bed
    listeners: list[Listener] = []
    try:
        # (1) Behind B, out to the public segment, seen as B's address.
        pub = Listener(bed, bed.pub, bed.pub_ip, 5000)
        listeners.append(pub)
        assert connect(bed, bed.hb, bed.pub_ip, 5000) == "connected"
        assert pub.peer() == bed.b_public

        # (2) Nothing reaches a listener behind B from outside.
        hb = Listener(bed, bed.hb, "0.0.0.0", 5002)
        listeners.append(hb)
        assert connect(bed, bed.pub, bed.b_public, 5002, timeout=3) in (
            "ConnectionRefusedError", "TimeoutError")

        # (3) Behind A: no way in, then a UPnP mapping, then none again.
        ha = Listener(bed, bed.ha, bed.a_host_ip, 5001)
        listeners.append(ha)
        assert connect(bed, bed.pub, bed.a_public, 5001, timeout=3) == "ConnectionRefusedError"
        added = upnp(bed, "add")
        assert "devices 1\n" in added
        assert f"igd http://{bed.a_router_ip}:" in added
        assert f"external {bed.a_public}\n" in added
        assert "added True\n" in added
        rules = bed.mappings()
        assert "DNAT" in rules and "dpt:5001" in rules, rules
        # The DNAT's target is listed as "[unsupported revision]": the forward
        # rule miniupnpd adds with it shows where the port leads.
        forward = subprocess.run(
            [*bed.exec_prefix(bed.ra), "iptables-legacy", "-w", "-L", "MINIUPNPD", "-n"],
            capture_output=True, text=True, timeout=30).stdout
        assert any(f" {bed.a_host_ip} " in line and "dpt:5001" in line
                   for line in forward.splitlines()), forward
        assert connect(bed, bed.pub, bed.a_public, 5001, source=bed.pub_ip2) == "connected"
        assert ha.peer() == bed.pub_ip2

        deleted = upnp(bed, "delete")
        assert "deleted True\n" in deleted
        assert "dpt:5001" not in bed.mappings()
        again = Listener(bed, bed.ha, bed.a_host_ip, 5001)
        listeners.append(again)
        assert connect(bed, bed.pub, bed.a_public, 5001, timeout=3) == "ConnectionRefusedError"
    finally:
        for listener in listeners:
            listener.stop()


NATPMP = """
import sys
from p2pshare.peer.mapping import MappingError, NATPMPGateway
gateway = NATPMPGateway()
print("opened", *gateway.open(5003, 120, "nat bed test"), flush=True)
sys.stdin.readline()
gateway.close(5003)
print("closed", flush=True)
try:
    NATPMPGateway("10.1.0.77", first_wait=0.05).open(5004, 60, "nobody there")
except MappingError as e:
    print("nobody:", e)
"""


def test_the_peers_nat_pmp_client_maps_a_port_through_a_real_gateway(
        nat_bed: NatBed) -> None:  # noqa: F811 (the fixture imported above)
    """
    p2pshare's own NAT-PMP client (peer/mapping.py), from the host behind
    router A, against miniupnpd's NAT-PMP: it finds the default router,
    learns the public address, maps the port (the router's table shows
    it) and removes it; a router that does not answer is said so.
    """
    bed = nat_bed
    proc = subprocess.Popen([*bed.exec_prefix(bed.ha), PY, "-c", NATPMP], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready
        assert proc.stdout.readline() == f"opened {bed.a_public} this host\n"
        assert "dpt:5003" in bed.mappings()
        out, err = proc.communicate("\n", timeout=60)
        assert proc.returncode == 0, err
        assert out.startswith("closed\n"), out
        assert "nobody: the gateway 10.1.0.77 did not answer by NAT-PMP" in out
        assert "dpt:5003" not in bed.mappings()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=15)
