"""
Small helpers shared by both roles: endpoint strings and atomic files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure

from p2pshare.options import (  # noqa: F401 (used here, and imported from here)
    connect_description,
    control_endpoint,
    is_loopback,
    listen_description,
    loopback_by_default,
)


def server_endpoint_string(description: str) -> str:
    """
    A listening endpoint description; a bare number C{N} means C{tcp:N}.

    @raise ValueError: one sentence, for what is no endpoint.
    """
    return listen_description(description)


def client_endpoint_string(description: str) -> str:
    """
    A connecting endpoint description; a bare number C{N} means
    C{tcp:127.0.0.1:N} (a client needs a host), C{HOST:PORT} means
    C{tcp:HOST:PORT}, C{auto} the metadata server that announces itself
    on the LAN (C{mdns:}, see p2pshare.lan).

    @raise ValueError: one sentence, for what is no endpoint.
    """
    return connect_description(description)


def tcp_client_endpoint(reactor: Any, host: str, port: int) -> IStreamClientEndpoint:
    """
    A TCP client endpoint: straight to an IP address (no resolver thread
    involved), through the resolver for a host name.
    """
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=10)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=10)
    return HostnameEndpoint(reactor, host, port, timeout=10)


class InOrder(MultiService):
    """
    A service whose children start in the order they were added and stop
    one at a time in the reverse order, each once the one added after it
    has stopped (L{MultiService} stops them all at once): the tree says
    what depends on what.
    """

    log = Logger()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                stopping = child.stopService()
                if stopping is not None:
                    await stopping
            except Exception:
                self.log.failure("{child} did not stop cleanly", child=child)


class ListenService(Service):
    """
    Listen on an endpoint while running, like Twisted's
    C{StreamServerEndpointService}, and call C{on_listening} with the bound
    port once it is up.  A listen that fails at once raises
    L{p2pshare.startup.StartupError} from C{startService}, naming C{what}.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        on_listening: Callable[[IListeningPort], None] | None = None,
        what: str = "an endpoint",
        on_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.on_listening = on_listening
        self.on_failed = on_failed  # a listen that failed later than at once
        self.what = what
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        from p2pshare.startup import listen_now

        self._listening = listen_now(self.endpoint, self.factory, self.what)
        super().startService()
        self._listening.addCallback(self._listened)
        self._listening.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if isinstance(failure.value, CancelledError):
            return
        if self.on_failed is not None:
            self.on_failed(failure.value)
        else:
            self.log.failure("could not listen on {what}", failure, what=self.what)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        if self.on_listening is not None:
            self.on_listening(port)
        return port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._listening is not None and not self._listening.called:
            self._listening.cancel()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class _Busy(Protocol):
    def __init__(self, why: str, code: str = "busy") -> None:
        self.why = why
        self.code = code

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(f"ERROR {self.code} {self.why}\r\n".encode())
        self.transport.loseConnection()


STRIKES = 3  # misbehaving connections from one host before the host is refused
STRIKE_WINDOW = 600.0  # seconds they count for


class OncePerMinute:
    """
    Says whether something about a source (a refusal) is worth logging
    now: the first time, then at most once a minute per source.  Sources
    not seen for a minute are forgotten when many have piled up.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def due(self, source: str, now: float) -> bool:
        if now - self._last.get(source, float("-inf")) < 60:
            return False
        if len(self._last) > 10_000:
            self._last = {s: t for s, t in self._last.items() if now - t < 60}
        self._last[source] = now
        return True


class LimitedFactory(WrappingFactory):
    """
    Caps the connections a listening factory serves, in total and per
    remote host (Twisted's C{LimitConnectionsByPeer} fails on IPv4
    addresses, so the count is kept here).  At a cap, the oldest connection
    that has said nothing useful yet (its protocol's C{engaged} is false)
    is closed to make room; when every one is in use, the newcomer is told
    C{ERROR busy ...} and closed at once, and nobody else notices; the
    log says so once per source and minute.
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        wrapped: Any,
        total: int = 1000,
        per_host: int = 200,
        clock: Any = None,
        cooling_off: float = 60.0,
    ) -> None:
        super().__init__(wrapped)
        self.total = total
        self.per_host = per_host
        self.by_host: dict[str, int] = {}
        self.clock = clock
        self.cooling_off = cooling_off
        self.cooling: dict[str, float] = {}  # host -> refused until
        self.strikes: dict[str, list[float]] = {}  # host -> when its connections misbehaved
        self._told = OncePerMinute()  # which refusals to log

    def cool_off(self, host: str) -> None:
        """
        Refuse C{host} for the cooling-off period (it misbehaved).
        """
        if self.clock is not None:
            self.cooling[host] = self.clock.seconds() + self.cooling_off

    def misbehaved(self, host: str) -> bool:
        """
        A connection from C{host} broke the rules (it is cut).  The host
        itself is refused only once L{STRIKES} of its connections have, in
        L{STRIKE_WINDOW}: one bad client behind a NAT does not shut out
        everyone else there, nor the same user's honest download.  True if
        the host is refused now.
        """
        now = self.clock.seconds() if self.clock is not None else 0.0
        recent = [t for t in self.strikes.get(host, ()) if now - t < STRIKE_WINDOW] + [now]
        if len(recent) >= STRIKES:
            self.strikes.pop(host, None)
            self.cool_off(host)
            return True
        self.strikes[host] = recent
        if len(self.strikes) > 10_000:  # forget hosts whose strikes are old
            self.strikes = {
                h: ts for h, ts in self.strikes.items() if now - ts[-1] < STRIKE_WINDOW
            }
        return False

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", "local"))
        until = self.cooling.get(host)
        if until is not None and self.clock is not None:
            left = until - self.clock.seconds()
            if left > 0:
                return _Busy(f"your host misbehaved; refused for {left:.0f} s more", "cooling-off")
            del self.cooling[host]
        if len(self.protocols) >= self.total and not self._evict_idle(None):
            return self._refuse(host, f"too many connections ({self.total}); try again later")
        if self.by_host.get(host, 0) >= self.per_host and not self._evict_idle(host):
            return self._refuse(host, f"too many connections from your host ({self.per_host})")
        proto: Any = super().buildProtocol(addr)
        if proto is not None:
            proto._limited_host = host
        return proto

    def _refuse(self, host: str, why: str) -> _Busy:
        now = self.clock.seconds() if self.clock is not None else 0.0
        if self._told.due(host, now):
            self.log.warn("refused a connection from {host}: {why}", host=host, why=why)
        return _Busy(why)

    def _evict_idle(self, host: str | None) -> bool:
        """
        Make room by closing the oldest connection (from C{host}, or from
        anywhere) that has not said anything useful yet; so silent sockets
        never keep an honest client out.  False if every one is in use.
        """
        for p in self.protocols:
            if getattr(p.wrappedProtocol, "engaged", True):
                continue
            if host is not None and getattr(p, "_limited_host", "local") != host:
                continue
            self.log.info("closing an idle connection from {host} to make room",
                          host=getattr(p, "_limited_host", "?"))
            self.unregisterProtocol(p)  # counted out now; its close comes later
            p.transport.abortConnection()
            return True
        return False

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        host = getattr(p, "_limited_host", "local")
        self.by_host[host] = self.by_host.get(host, 0) + 1

    def unregisterProtocol(self, p: Any) -> None:
        if p not in self.protocols:
            return  # evicted: counted out already
        super().unregisterProtocol(p)
        host = getattr(p, "_limited_host", "local")
        left = self.by_host.get(host, 1) - 1
        if left:
            self.by_host[host] = left
        else:
            self.by_host.pop(host, None)
