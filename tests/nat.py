"""
A NAT test bed of network namespaces: a public segment on a bridge, and
three home networks behind NAT routers, one of which (A) runs a real UPnP
IGD / NAT-PMP gateway, miniupnpd (Debian's miniupnpd-iptables, whose rules
live in the legacy iptables tables: the routers are set up with
iptables-legacy, not the iptables wrapper, which may be the nftables one).

    ns sw:  bridge br0, joining the WAN sides below
    ns pub: eth0 11.0.0.10/24 and 11.0.0.11/24  the metadata server, a public peer
    ns ra:  wan0 11.0.0.21/24, lan0 10.1.0.1/24  router A: MASQUERADE + miniupnpd
    ns ha:  eth0 10.1.0.2/24, default via 10.1.0.1
    ns rb:  wan0 11.0.0.22/24, lan0 10.2.0.1/24  router B: MASQUERADE only
    ns hb:  eth0 10.2.0.2/24, default via 10.2.0.1
    ns rc:  wan0 11.0.0.23/24, lan0 10.3.0.1/24  router C: MASQUERADE only
    ns hc:  eth0 10.3.0.2/24, default via 10.3.0.1

The "public" addresses are 11.0.0.0/24 because miniupnpd refuses a WAN
address in a private, reserved or documentation range.  They exist only in
namespaces made here and deleted after: nothing links them to the host's
namespace, and neither pub nor the routers have a default route, so no
packet leaves.  Only the hosts behind the routers have one (via their
router).

Use: C{from nat import WHY_NOT, NatBed, nat_bed  # noqa: F401}, mark the
module with C{pytestmark = pytest.mark.skipif(WHY_NOT is not None,
reason=WHY_NOT or "")} and take C{nat_bed} as a fixture (C{# noqa: F811}
on that line); run a command in a namespace with
C{[*bed.exec_prefix(bed.ha), ...]}.  Outside pytest, L{nat_testbed} is the
same thing as a context manager.  Namespace names start with L{PREFIX},
made of the process's pid: test beds of concurrent processes never clash;
one process holds one test bed at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The full pid (at most 0x400000 on Linux: 6 hex digits) keeps two live
# processes, xdist workers or separate pytest runs, apart; pid % 100000
# would not.  Longest name: "p2pn" + 6 + "pub" = 13 characters.
PREFIX = f"p2pn{os.getpid():x}"
IPTABLES = "iptables-legacy"
READY_TIMEOUT = 15.0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """
    Run C{argv} in namespace C{ns}; its output, as text, in the result.
    """
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=check,
                          capture_output=True, text=True, timeout=30)


def why_not(tools: tuple[tuple[str, str], ...] = (
    ("ip", "iproute2"), (IPTABLES, "iptables"), ("miniupnpd", "miniupnpd-iptables"),
)) -> str | None:
    """
    Why network namespaces with C{tools} (command, Debian package) cannot
    be made here, or L{None}.
    """
    for tool, package in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"{PREFIX}probe"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"this machine does not allow network namespaces ({e})"
    ip("netns", "del", probe)
    return None


WHY_NOT = why_not()


@dataclass(frozen=True)
class NatBed:
    """
    The namespaces of a NAT test bed (their names) and its addresses.

    @ivar miniupnpd_log: what router A's miniupnpd has printed.
    """

    sw: str
    pub: str
    ra: str
    ha: str
    rb: str
    hb: str
    rc: str
    hc: str
    miniupnpd_log: Path
    pub_ip: str = "11.0.0.10"
    pub_ip2: str = "11.0.0.11"
    a_public: str = "11.0.0.21"
    a_router_ip: str = "10.1.0.1"
    a_host_ip: str = "10.1.0.2"
    b_public: str = "11.0.0.22"
    b_router_ip: str = "10.2.0.1"
    b_host_ip: str = "10.2.0.2"
    c_public: str = "11.0.0.23"
    c_router_ip: str = "10.3.0.1"
    c_host_ip: str = "10.3.0.2"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.sw, self.pub, self.ra, self.ha, self.rb, self.hb, self.rc, self.hc)

    def exec_prefix(self, ns: str) -> list[str]:
        """
        The start of a command line that runs the rest in namespace C{ns}.
        """
        return ["ip", "netns", "exec", ns]

    def mappings(self) -> str:
        """
        Router A's port mappings as its firewall holds them: the listing
        of its nat table's MINIUPNPD chain, one DNAT line a mapping, e.g.
        C{DNAT 6 -- 0.0.0.0/0 0.0.0.0/0 tcp dpt:5001 DNAT [unsupported
        revision]}.  (miniupnpd writes an older revision of the DNAT target
        than iptables 1.8.9 prints, so the line shows the external port but
        not the internal address; the filter table's MINIUPNPD chain has it.)
        """
        return in_ns(self.ra, IPTABLES, "-w", "-t", "nat", "-L", "MINIUPNPD", "-n").stdout


def miniupnpd_conf() -> str:
    """
    Router A's miniupnpd: UPnP IGD and NAT-PMP on the LAN side, mappings
    only for the LAN's own hosts.  No lease file: its path would be held to
    120 bytes, and without one the mappings live in the router's firewall
    only, gone with its namespace.
    """
    return "\n".join([
        "ext_ifname=wan0",
        "listening_ip=lan0",
        "port=0",
        "enable_natpmp=yes",
        "enable_upnp=yes",
        "secure_mode=yes",
        "system_uptime=yes",
        "uuid=3e5c3e5c-0000-4000-8000-000000000001",
        "allow 1024-65535 10.1.0.0/24 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
        "",
    ])


def _router(bed: NatBed, router: str, host: str, public: str, router_ip: str, host_ip: str,
            port: str) -> None:
    ip("-n", router, "link", "add", "wan0", "type", "veth", "peer", "name", port,
       "netns", bed.sw)
    ip("-n", router, "addr", "add", f"{public}/24", "dev", "wan0")
    ip("-n", router, "link", "set", "wan0", "up")
    ip("-n", bed.sw, "link", "set", port, "master", "br0")
    ip("-n", bed.sw, "link", "set", port, "up")
    ip("-n", router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
       "netns", host)
    ip("-n", router, "addr", "add", f"{router_ip}/24", "dev", "lan0")
    ip("-n", router, "link", "set", "lan0", "up")
    ip("-n", host, "addr", "add", f"{host_ip}/24", "dev", "eth0")
    ip("-n", host, "link", "set", "eth0", "up")
    ip("-n", host, "route", "add", "default", "via", router_ip)
    in_ns(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    in_ns(router, IPTABLES, "-w", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0",
          "-j", "MASQUERADE")


def _upnp_chains(ns: str) -> None:
    """
    The chains miniupnpd writes its mappings into, hooked where it expects.
    """
    for argv in (
        ("-t", "nat", "-N", "MINIUPNPD"),
        ("-t", "nat", "-I", "PREROUTING", "-i", "wan0", "-j", "MINIUPNPD"),
        ("-t", "mangle", "-N", "MINIUPNPD"),
        ("-t", "mangle", "-I", "PREROUTING", "-i", "wan0", "-j", "MINIUPNPD"),
        ("-t", "filter", "-N", "MINIUPNPD"),
        ("-t", "filter", "-I", "FORWARD", "-i", "wan0", "!", "-o", "wan0", "-j", "MINIUPNPD"),
        ("-t", "nat", "-N", "MINIUPNPD-POSTROUTING"),
        ("-t", "nat", "-I", "POSTROUTING", "-o", "wan0", "-j", "MINIUPNPD-POSTROUTING"),
    ):
        in_ns(ns, IPTABLES, "-w", *argv)


def _miniupnpd_ready(bed: NatBed) -> bool:
    """
    Whether router A's miniupnpd listens on all three of its sockets on
    the LAN side: HTTP (SOAP, TCP, on a port of its choice), SSDP (UDP
    1900) and NAT-PMP/PCP (UDP 5351).
    """
    # Its HTTP socket is an IPv6 one bound to the device: "*%lan0:PORT".
    tcp = in_ns(bed.ra, "ss", "-Hlnt", check=False).stdout
    udp = in_ns(bed.ra, "ss", "-Hlnu", check=False).stdout
    return ("%lan0:" in tcp or f"{bed.a_router_ip}:" in tcp) and ":1900 " in udp \
        and f"{bed.a_router_ip}:5351 " in udp


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def nat_testbed(workdir: Path) -> Iterator[NatBed]:
    """
    Build the test bed, with router A's miniupnpd ready (its config, pid
    file and log in C{workdir}); at the end stop it, end whatever else
    still runs in the namespaces, and delete them (their links, addresses
    and firewall rules go with them).
    """
    bed = NatBed(
        sw=f"{PREFIX}sw", pub=f"{PREFIX}pub",
        ra=f"{PREFIX}ra", ha=f"{PREFIX}ha",
        rb=f"{PREFIX}rb", hb=f"{PREFIX}hb",
        rc=f"{PREFIX}rc", hc=f"{PREFIX}hc",
        miniupnpd_log=workdir / "miniupnpd.log",
    )
    made: list[str] = []
    daemon: subprocess.Popen[bytes] | None = None
    try:
        for ns in bed.namespaces:
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", bed.sw, "link", "add", "br0", "type", "bridge")
        ip("-n", bed.sw, "link", "set", "br0", "up")

        ip("-n", bed.pub, "link", "add", "eth0", "type", "veth", "peer", "name", "pub",
           "netns", bed.sw)
        ip("-n", bed.pub, "addr", "add", f"{bed.pub_ip}/24", "dev", "eth0")
        ip("-n", bed.pub, "addr", "add", f"{bed.pub_ip2}/24", "dev", "eth0")
        ip("-n", bed.pub, "link", "set", "eth0", "up")
        ip("-n", bed.sw, "link", "set", "pub", "master", "br0")
        ip("-n", bed.sw, "link", "set", "pub", "up")

        _router(bed, bed.ra, bed.ha, bed.a_public, bed.a_router_ip, bed.a_host_ip, "ra")
        _router(bed, bed.rb, bed.hb, bed.b_public, bed.b_router_ip, bed.b_host_ip, "rb")
        _router(bed, bed.rc, bed.hc, bed.c_public, bed.c_router_ip, bed.c_host_ip, "rc")
        _upnp_chains(bed.ra)

        conf = workdir / "miniupnpd.conf"
        conf.write_text(miniupnpd_conf())
        with open(bed.miniupnpd_log, "wb") as log:
            daemon = subprocess.Popen(
                [*bed.exec_prefix(bed.ra), "miniupnpd", "-d", "-f", str(conf),
                 "-P", str(workdir / "miniupnpd.pid")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not _miniupnpd_ready(bed):
            if daemon.poll() is not None:
                raise RuntimeError(f"miniupnpd ended (exit code {daemon.returncode}): "
                                   + bed.miniupnpd_log.read_text(errors="replace"))
            if time.monotonic() > deadline:
                raise RuntimeError(f"miniupnpd not listening after {READY_TIMEOUT:g} s: "
                                   + bed.miniupnpd_log.read_text(errors="replace"))
            time.sleep(0.05)
        yield bed
    finally:
        if daemon is not None:
            _stop(daemon)
        # A process left running in a namespace would keep it (unnamed) alive.
        for ns in made:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=30).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def nat_bed(tmp_path: Path) -> Iterator[NatBed]:
    """
    The NAT test bed (L{nat_testbed}), its files in C{tmp_path}; the test
    is skipped, with the reason, where it cannot be built.
    """
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    with nat_testbed(tmp_path) as bed:
        yield bed


async def stop_all(procs: list[Any]) -> None:
    """
    SIGTERM every process (a ChildProcess) still running, SIGKILL one that
    does not end.
    """
    for p in procs:
        if p.running:
            p.signal(signal.SIGTERM)
    for p in procs:
        try:
            await p.when_ended(15)
        except Exception:
            p.signal(signal.SIGKILL)
            await p.when_ended(15)
