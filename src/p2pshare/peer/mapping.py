"""
Port mapping: a peer behind NAT asks its LAN's gateway (UPnP IGD, through
C{miniupnpc}) to forward its port from the gateway's public address, so
that others can reach it and it can take children.  The metadata server's
dial-back then says whether that worked (L{p2pshare.meta.checks}): the
mapping is only a request, what is reachable is what answers.

The client library blocks (a discovery waits about two seconds for
answers), so every call to the gateway runs in a thread; the lease is
renewed halfway through, a failed attempt is tried again later, and the
mapping is removed when the peer stops.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

LEASE = 3600  # seconds a mapping is asked for; renewed at half
RETRY = 600.0  # seconds before a failed attempt is made again
DISCOVER_MS = 2000  # how long discovery waits for gateways to answer


class MappingError(Exception):
    """
    The gateway would not forward the port; the text says why.
    """


class Gateway(Protocol):
    """
    What L{PortMapping} asks of a gateway; every call blocks.
    """

    def open(self, port: int, lease: int, description: str) -> tuple[str, str]:
        """
        Forward TCP C{port} of the gateway's public address to the same
        port here, for C{lease} seconds; return the public address and the
        LAN address the gateway forwards to.

        @raise MappingError: no gateway, or it refused.
        """

    def close(self, port: int) -> None:
        """
        Stop forwarding C{port}.
        """


class UPnPGateway:
    """
    The LAN's UPnP Internet Gateway Device, found by SSDP discovery.
    """

    def __init__(self) -> None:
        self._upnp: Any = None

    def _found(self) -> Any:
        if self._upnp is None:
            import miniupnpc  # a C extension: loaded only by a peer that maps

            upnp = miniupnpc.UPnP()
            upnp.discoverdelay = DISCOVER_MS
            try:
                found = upnp.discover()
            except Exception:  # miniupnpc says "Success" when nothing answered
                found = 0
            if found == 0:
                raise MappingError("no UPnP gateway answered on this LAN")
            try:
                upnp.selectigd()
            except Exception as e:
                raise MappingError(f"no gateway that forwards ports answered ({e})") from None
            self._upnp = upnp
        return self._upnp

    def open(self, port: int, lease: int, description: str) -> tuple[str, str]:
        upnp = self._found()
        try:
            taken = upnp.getspecificportmapping(port, "TCP")
            if taken and (taken[0], int(taken[1])) != (upnp.lanaddr, port):
                raise MappingError(
                    f"the gateway forwards port {port} to {taken[0]}:{taken[1]} already"
                )
            upnp.addportmapping(port, "TCP", upnp.lanaddr, port, description, "", lease)
            return str(upnp.externalipaddress()), str(upnp.lanaddr)
        except MappingError:
            raise
        except Exception as e:
            raise MappingError(f"the gateway refused to forward port {port} ({e})") from None

    def close(self, port: int) -> None:
        if self._upnp is not None:
            self._upnp.deleteportmapping(port, "TCP")


NATPMP_PORT = 5351
NATPMP_TRIES = 4  # RFC 6886 waits 250 ms, then twice as long each time: 3.75 s in all
NATPMP_RESULTS = {1: "it does not speak NAT-PMP version 0", 2: "it is not allowed to",
                  3: "its own network is down", 4: "it has no mappings left",
                  5: "it does not map ports"}


class NATPMPGateway:
    """
    The default router, asked by NAT-PMP (RFC 6886; what PCP gateways
    also answer): a request and its answer are one UDP datagram each.
    Written here because the NAT-PMP package needs C{netifaces}, which
    has no wheels and no maintainer.
    """

    def __init__(self, gateway: str | None = None, first_wait: float = 0.25) -> None:
        self.gateway = gateway
        self.first_wait = first_wait
        self.public: str | None = None

    def _ask(self, request: bytes, opcode: int, size: int) -> bytes:
        import socket

        gateway = self.gateway or default_gateway()
        if gateway is None:
            raise MappingError("no default route: no gateway to ask by NAT-PMP")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((gateway, NATPMP_PORT))
            wait = self.first_wait
            for _ in range(NATPMP_TRIES):
                s.send(request)
                s.settimeout(wait)
                try:
                    while True:
                        answer = s.recv(64)
                        if len(answer) >= size and answer[0] == 0 and answer[1] == 128 + opcode:
                            break
                except (TimeoutError, ConnectionRefusedError):
                    wait *= 2
                    continue
                result = int.from_bytes(answer[2:4], "big")
                if result:
                    why = NATPMP_RESULTS.get(result, f"result {result}")
                    raise MappingError(f"the gateway {gateway} refused by NAT-PMP: {why}")
                return answer
        raise MappingError(f"the gateway {gateway} did not answer by NAT-PMP")

    def open(self, port: int, lease: int, description: str) -> tuple[str, str]:
        if self.public is None:
            answer = self._ask(bytes([0, 0]), 0, 12)
            self.public = ".".join(str(b) for b in answer[8:12])
        request = bytes([0, 2, 0, 0]) + port.to_bytes(2, "big") * 2 + lease.to_bytes(4, "big")
        answer = self._ask(request, 2, 16)
        mapped = int.from_bytes(answer[10:12], "big")
        if mapped != port:
            self.close(port)
            raise MappingError(f"the gateway offered port {mapped} instead of {port} by NAT-PMP")
        return self.public, "this host"

    def close(self, port: int) -> None:
        self._ask(bytes([0, 2, 0, 0]) + port.to_bytes(2, "big") + bytes(6), 2, 16)


def default_gateway(routes: str = "/proc/net/route") -> str | None:
    """
    The IPv4 default router, from the kernel's routing table (Linux).
    """
    try:
        with open(routes, encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 2:
            return ".".join(str(b) for b in reversed(bytes.fromhex(fields[2])))
    return None


class EitherGateway:
    """
    UPnP IGD first, then NAT-PMP: whichever maps the port is the one
    renewed and asked to remove it.
    """

    def __init__(self, *gateways: Gateway) -> None:
        self.gateways = gateways
        self.used: Gateway | None = None

    def open(self, port: int, lease: int, description: str) -> tuple[str, str]:
        problems = []
        for gateway in ([self.used] if self.used is not None else list(self.gateways)):
            try:
                found = gateway.open(port, lease, description)
            except MappingError as e:
                problems.append(str(e))
                continue
            self.used = gateway
            return found
        raise MappingError("; ".join(problems))

    def close(self, port: int) -> None:
        if self.used is not None:
            self.used.close(port)


def is_private(host: str | None) -> bool:
    """
    Is C{host} an address of a private network (one a gateway may map
    for): not loopback, link-local or public.
    """
    try:
        ip = ipaddress.ip_address((host or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_private and not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)


class PortMapping(Service):
    """
    One TCP port forwarded by the gateway while this service runs.

    @ivar mapped: the gateway's public address and the LAN address it
        forwards to, while the mapping holds; L{None} otherwise.
    @ivar problem: why the last attempt failed, if it did.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        run_blocking: Callable[..., Deferred[Any]],
        gateway: Gateway,
        on_mapped: Callable[[], None] = lambda: None,
        lease: int = LEASE,
    ) -> None:
        self.clock = clock
        self.run_blocking = run_blocking
        self.gateway = gateway
        self.on_mapped = on_mapped
        self.lease = lease
        self.port: int | None = None
        self.mapped: tuple[str, str] | None = None
        self.problem: str | None = None
        self._next: IDelayedCall | None = None
        self._asking: Deferred[Any] | None = None

    def request(self, port: int) -> None:
        """
        Ask for C{port} to be forwarded (once; later calls change nothing).
        """
        if self.port is not None or not self.running:
            return
        self.port = port
        self.log.info("asking the gateway to forward port {port} (--no-port-mapping turns "
                      "this off)", port=port)
        self._open()

    def _open(self) -> None:
        self._next = None
        assert self.port is not None
        asking = self._asking = self.run_blocking(
            self.gateway.open, self.port, self.lease, f"p2pshare peer port {self.port}"
        )
        asking.addCallbacks(self._opened, self._failed)

    def _opened(self, result: tuple[str, str]) -> None:
        self._asking = None
        if not self.running:  # stopped meanwhile: the mapping goes too
            self.run_blocking(self.gateway.close, self.port).addErrback(lambda f: None)
            return
        first = self.mapped is None
        self.mapped, self.problem = result, None
        if first:
            self.log.info(
                "the gateway forwards {public}:{port} to {lan}:{port} (renewed every {renew} "
                "min)", public=result[0], lan=result[1], port=self.port,
                renew=self.lease // 120,
            )
        self._next = self.clock.callLater(self.lease / 2, self._open)
        if first:
            self.on_mapped()

    def _failed(self, failure: Failure) -> None:
        self._asking = None
        if not self.running:
            return
        why = failure.getErrorMessage() if failure.check(MappingError) else (
            f"asking the gateway failed ({failure.getErrorMessage() or failure.type.__name__})"
        )
        if why != self.problem or self.mapped is not None:
            self.log.info("no port mapping: {why}; asking again in {minutes:.0f} min",
                          why=why, minutes=RETRY / 60)
        self.mapped, self.problem = None, why
        self._next = self.clock.callLater(RETRY, self._open)

    def status(self) -> dict[str, object]:
        return {
            "mapped": f"{self.mapped[0]}:{self.port}" if self.mapped else None,
            "mapping_problem": self.problem,
        }

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self.mapped is None:
            return None
        self.mapped = None
        self.log.info("asking the gateway to stop forwarding port {port}", port=self.port)
        closing = self.run_blocking(self.gateway.close, self.port)

        def failed(f: Failure) -> None:
            self.log.warn("the gateway did not remove the mapping of port {port}: {why}",
                          port=self.port, why=f.getErrorMessage())

        return closing.addCallbacks(lambda _: None, failed)
