"""
Zero-config on a LAN: the metadata server announces itself by multicast
DNS (DNS-SD service C{_p2pshare._tcp}, with the C{zeroconf} library) when
started with C{--announce}, and C{--meta auto} (the C{mdns:} client
endpoint) finds it, so people on one LAN need no address at all.

What an announcement reveals to everyone on the LAN (docs/operations.rst):
that a p2pshare metadata server runs on this host, its addresses and
port, the host's name, and whether the network is private (C{private=1}:
it asks for the secret) or encrypted (C{tls=1}).  Nothing about the peers
or their files.

The C{zeroconf} library runs its own thread and asyncio loop; everything
here that talks to it runs in a reactor thread (L{deferToThread}), so the
reactor never waits on multicast.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from p2pshare.common import tcp_client_endpoint

SERVICE_TYPE = "_p2pshare._tcp.local."
FIND_TIMEOUT = 3.0  # seconds to wait for an announcement

log = Logger()


class NotFound(ConnectError):
    """
    No (usable) metadata server announced itself on the LAN in time.
    """

    def __init__(self, text: str) -> None:
        super().__init__(string=text)
        self.text = text


@dataclass(frozen=True)
class Found:
    """
    An announced metadata server: its instance name, addresses and port,
    and what its TXT record says (C{private}, C{tls}).
    """

    name: str
    addresses: tuple[str, ...]
    port: int
    properties: dict[str, str]

    @property
    def host(self) -> str:
        return self.addresses[0]

    def describe(self) -> str:
        return f"{self.name.removesuffix('.' + SERVICE_TYPE)} at {self.host}:{self.port}"


def find_meta(timeout: float = FIND_TIMEOUT, name: str | None = None) -> Found:
    """
    Blocking: the first metadata server that announces itself on the LAN
    (the one whose instance name starts with C{name}, if given).

    @raise NotFound: if none does within C{timeout} seconds.
    """
    from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

    zc = Zeroconf()
    seen: list[str] = []
    ready = threading.Event()

    def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change is ServiceStateChange.Added:
            seen.append(name)
            ready.set()

    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        try:
            deadline = time.monotonic() + timeout
            tried = 0
            while time.monotonic() < deadline:
                ready.wait(max(0.0, min(0.25, deadline - time.monotonic())))
                ready.clear()
                for instance in seen[tried:]:
                    tried += 1
                    if name is not None and not instance.startswith(name):
                        continue
                    info = zc.get_service_info(SERVICE_TYPE, instance, timeout=1000)
                    if info is not None and info.port and info.parsed_addresses():
                        props = {
                            k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
                            for k, v in info.properties.items()
                        }
                        return Found(instance, tuple(info.parsed_addresses()), info.port, props)
        finally:
            browser.cancel()
    finally:
        zc.close()
    which = f" named {name}" if name else ""
    raise NotFound(
        f"no metadata server{which} announced itself on this LAN within {timeout:g} s "
        f"(start one with --announce, or give --meta ENDPOINT)"
    )


@implementer(IStreamClientEndpoint)
class MDNSClientEndpoint:
    """
    Connect to the metadata server that the LAN announces, looked up anew
    at every connection (so a peer follows a server that moved or came
    back on another port).
    """

    def __init__(self, reactor: Any, timeout: float = FIND_TIMEOUT, name: str | None = None):
        self.reactor = reactor
        self.timeout = timeout
        self.name = name

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        def found(meta: Found) -> Deferred[Any]:
            if meta.properties.get("tls") == "1":
                raise NotFound(
                    f"the metadata server {meta.describe()} uses TLS: give --meta "
                    f"tls:{meta.host}:{meta.port}:... with the network's certificates"
                )
            log.info("found the metadata server {meta} on the LAN", meta=meta.describe())
            return tcp_client_endpoint(self.reactor, meta.host, meta.port).connect(factory)

        d: Deferred[Found] = deferToThread(find_meta, self.timeout, self.name)
        return d.addCallback(found)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class MDNSClientParser:
    """
    C{mdns:} (C{timeout=SECONDS}, C{name=INSTANCE} optional): connect to a
    metadata server found by multicast DNS.  C{--meta auto} means C{mdns:}.
    """

    prefix = "mdns"

    def parseStreamClient(  # type: ignore[override]  # as in tls.py
        self, reactor: Any, *args: str, **kwargs: str
    ) -> MDNSClientEndpoint:
        args = tuple(a for a in args if a)  # "mdns:" has one empty field
        unknown = sorted(set(kwargs) - {"timeout", "name"})
        if args or unknown:
            raise ValueError(f"an mdns: endpoint takes only timeout= and name=, not {args or unknown}")
        try:
            timeout = float(kwargs.get("timeout", FIND_TIMEOUT))
        except ValueError:
            raise ValueError("mdns: timeout= is a number of seconds") from None
        if not 0 < timeout <= 60:
            raise ValueError("mdns: timeout= is from 0 to 60 seconds")
        return MDNSClientEndpoint(reactor, timeout, kwargs.get("name"))


def endpoint_interface(description: str) -> str | None:
    """
    The C{interface=} of a listening endpoint description, if it has one.
    """
    for field in description.split(":")[1:]:
        key, eq, value = field.partition("=")
        if eq and key == "interface":
            return value
    return None


def lan_addresses(interface: str | None) -> list[str]:
    """
    The addresses to announce: the one the server listens on if it names
    one, else every IPv4 address of this host but loopback.
    """
    if interface and interface not in ("0.0.0.0", "::"):
        return [interface]
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(ip.ip)
    return found


class Announcer(Service):
    """
    Announce the metadata server on the LAN while it runs: L{announce} once
    its port is known; stopping withdraws the announcement.
    """

    def __init__(self, interface: str | None, properties: dict[str, str]) -> None:
        self.interface = interface
        self.properties = properties
        self._zc: Any = None
        self._info: Any = None
        self._announcing: Deferred[None] | None = None

    def announce(self, port: int) -> Deferred[None]:
        self._announcing = deferToThread(self._register, port)
        self._announcing.addErrback(
            lambda f: log.failure("could not announce the metadata server on the LAN", f)
        )
        return self._announcing

    def _register(self, port: int) -> None:
        from zeroconf import ServiceInfo, Zeroconf

        addresses = lan_addresses(self.interface)
        if not addresses:
            log.warn("no LAN address to announce the metadata server on")
            return
        host = socket.gethostname().split(".")[0] or "p2pmeta"
        info = ServiceInfo(
            SERVICE_TYPE,
            f"p2pmeta on {host}.{SERVICE_TYPE}",
            port=port,
            parsed_addresses=addresses,
            properties={"version": "1", **self.properties},
            server=f"{host}.local.",
        )
        zc = Zeroconf()
        zc.register_service(info, allow_name_change=True)
        self._zc, self._info = zc, info
        log.info(
            "announced on the LAN by multicast DNS as {name} ({addresses} port {port})",
            name=info.name.removesuffix("." + SERVICE_TYPE),
            addresses=" ".join(addresses), port=port,
        )

    def _withdraw(self) -> None:
        zc, self._zc = self._zc, None
        if zc is not None:
            try:
                zc.unregister_service(self._info)
            finally:
                zc.close()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        super().stopService()
        announcing = self._announcing or succeed(None)
        return announcing.addBoth(lambda _: deferToThread(self._withdraw))
