"""
C{twistd p2ppeer}: options and service assembly for a peer.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from p2pshare import wire
from p2pshare.admission import CONTROL_TOKEN, SecretError, describe, load_secret
from p2pshare.common import (
    ListenService,
    client_endpoint_string,
    control_endpoint,
    loopback_by_default,
    server_endpoint_string,
    tcp_client_endpoint,
)
from p2pshare.logs import RoleLog
from p2pshare.options import parse_rate
from p2pshare.peer.control import ControlFactory, control_token
from p2pshare.peer.download.storing import return_buffers_to_the_system
from p2pshare.peer.identity import Identity
from p2pshare.peer.mapping import EitherGateway, NATPMPGateway, PortMapping, UPnPGateway
from p2pshare.peer.node import PeerNode, PeerSettings
from p2pshare.peer.reversal import holder_of
from p2pshare.peer.share import SETTLE_TIME
from p2pshare.peer.ui.api import Api
from p2pshare.peer.ui.guard import Guard
from p2pshare.peer.ui.site import Page, UIService
from p2pshare.relay import RELAY_OPTIONS, Relay, relay_settings
from p2pshare.startup import (
    FD_CEILING,
    RoleOptions,
    RoleService,
    StartupError,
    cannot_start,
    check_writable,
    fit_caps,
    prepare_data_dir,
    raise_fd_limit,
)
from p2pshare.tls import (
    PeerTLS,
    TLSConfigError,
    TLSServerEndpoint,
    endpoint,
    endpoint_problem,
    local_addresses,
    mixed_security,
    network_tls,
    peer_tls,
)

log = Logger()
FD_RESERVE = 128  # descriptors kept for logs, the share's scans, links and downloads


class Options(RoleOptions):
    role = "p2ppeer"
    synopsis = "[options]"
    longdesc = "A p2pshare peer: joins the overlay and shares files."
    optParameters = [
        ["port", None, "tcp:5001", "Endpoint where other peers connect (a bare N means tcp:N)."],
        ["meta", None, "tcp:127.0.0.1:5000", "The metadata server (client endpoint), or auto: the one announced on the LAN."],
        ["name", None, None, "This peer's name (default: assigned, s1, s2, ...)."],
        ["data-dir", None, "./p2ppeer-data", "The peer's own state."],
        ["max-neighbours", None, 2, "Neighbours to accept before referring newcomers on.", int],
        ["control", None, None, "Control endpoint for p2p (default unix:DATA-DIR/control.sock)."],
        ["portfile", None, None, "Write the port number here once joined."],
        ["advertise", None, None, "Host other peers should use to reach this one."],
        ["shared", None, None, "Files this peer offers (default DATA-DIR/shared)."],
        ["downloads", None, None, "Where downloads land (default: the shared directory)."],
        ["heartbeat", None, 5.0, "Seconds between heartbeats; 3 silent ones mean dead.", float],
        ["manhole", None, None, "SSH manhole here (loopback unless an interface is given)."],
        ["secret-file", None, None, "The network secret: admit only peers that hold it."],
        ["max-uploads", None, 16, "Files served at once; more requests get 503.", int],
        ["upload-rate", None, None, "Cap on all uploads together, bytes/s (K, M, G suffixes)."],
        *RELAY_OPTIONS,
        ["ui", None, "tcp:0:interface=127.0.0.1",
         "The web page for people (loopback unless an interface is given), or off."],
    ]
    optFlags = [
        ["reset-token", None,
         "Replace the token that proves this peer's name (after a leak; see docs/security.rst)."],
        ["reset-manhole", None, "Replace the manhole's password and SSH host key."],
        ["relay", None,
         "Splice transfers between peers that cannot reach each other (a reachable peer)."],
        ["no-port-mapping", None,
         "Do not ask the gateway (UPnP) to forward --port when this peer's address is private."],
    ]

    def postOptions(self) -> None:
        if self["name"] is not None and not wire.is_name(self["name"]):
            raise usage.UsageError(
                "--name is 1 to 64 letters, digits or _ - . @"
            )
        if not wire.BEAT_MIN <= self["heartbeat"] <= wire.BEAT_MAX:
            raise usage.UsageError(
                f"--heartbeat is from {wire.BEAT_MIN} to {wire.BEAT_MAX:.0f} seconds"
            )
        if not 1 <= self["max-neighbours"] <= wire.NEIGHBOURS_MAX:
            raise usage.UsageError(f"--max-neighbours is from 1 to {wire.NEIGHBOURS_MAX}")
        if not 1 <= self["max-uploads"] <= 10000:
            raise usage.UsageError("--max-uploads is from 1 to 10000")
        if self["upload-rate"] is not None:
            try:
                self["upload-rate"] = parse_rate(self["upload-rate"])
            except ValueError as e:
                raise usage.UsageError(f"--upload-rate: {e}") from None
        if self["advertise"] is not None and wire.HOST(self["advertise"]) is not None:
            raise usage.UsageError("--advertise is a host name or an IP address")
        try:
            relay_settings(self)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self["port"] = server_endpoint_string(self["port"])
            self["meta"] = client_endpoint_string(self["meta"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self["control"] = control_endpoint(self["control"], Path(self["data-dir"]).absolute())
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["manhole"] is not None:
            self["manhole"] = loopback_by_default(server_endpoint_string(self["manhole"]))
        if self["ui"] == "off":
            self["ui"] = None
        else:
            try:
                self["ui"] = loopback_by_default(server_endpoint_string(self["ui"]))
            except ValueError as e:
                raise usage.UsageError(f"--ui: {e}") from None
        try:
            self["secret"] = load_secret(self["secret-file"])
            self["tls"] = peer_tls(self["port"])
        except (SecretError, TLSConfigError) as e:
            raise usage.UsageError(str(e)) from None
        problem = mixed_security(self["port"], self["meta"], self["tls"] is not None)
        if problem is not None:
            raise usage.UsageError(problem)
        data_dir = Path(self["data-dir"]).absolute()
        self["shared"] = Path(self["shared"]).absolute() if self["shared"] else data_dir / "shared"
        self["downloads"] = (
            Path(self["downloads"]).absolute() if self["downloads"] else self["shared"]
        )


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    Where downloads connect: holders are named by address, so no resolver.
    """

    def __init__(self, reactor: Any, tls: PeerTLS | None) -> None:
        self.reactor = reactor
        self.tls = tls
        self.reversed: Callable[[str], Any] | None = None  # Reversals.endpoint

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("ascii").strip("[]")
        holder = holder_of(host)
        if holder is not None and self.reversed is not None:
            return self.reversed(holder)  # it connects to us
        return connect_to(self.reactor, self.tls, host, uri.port)


def _stdlib_client(tls: PeerTLS | None) -> ssl.SSLContext | None:
    """
    Our TLS client side for Python's ssl, for downloads read in threads;
    None (they go through Twisted, slower) if it cannot be made.
    """
    if tls is None:
        return None
    try:
        return tls.stdlib_client()
    except (ssl.SSLError, OSError) as e:
        log.warn("downloads over TLS go through Twisted's client: {why}", why=e)
        return None


def connect_to(reactor: Any, tls: PeerTLS | None, host: str, port: int) -> Any:
    """
    How a peer reaches another: TCP, inside TLS with our certificate when
    our own port is TLS (then the whole network is).
    """
    endpoint = tcp_client_endpoint(reactor, host, port)
    return tls.client(endpoint) if tls is not None else endpoint


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    return_buffers_to_the_system()  # memory stays flat through long downloads
    options["fds"] = raise_fd_limit()
    try:
        return _assemble(options, reactor)
    except StartupError as e:
        cannot_start("p2ppeer", e)


def _assemble(options: Options, reactor: Any) -> IService:
    data_dir = Path(options["data-dir"]).absolute()
    lock = prepare_data_dir(data_dir, "p2ppeer")
    check_writable(Path(options["portfile"]) if options["portfile"] else None, "--portfile")
    for flag in ("shared", "downloads"):
        try:
            options[flag].mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StartupError(f"cannot make --{flag} {options[flag]}: {(e.strerror or str(e)).lower()}") from None

    def fatal(why: str) -> None:
        # twistd has no exit status of its own: leave with 1 after shutdown,
        # whether or not the reactor runs yet.
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    try:
        meta = clientFromString(reactor, options["meta"])
    except Exception as e:
        raise StartupError(
            f"--meta {options['meta']} is not a usable endpoint: {endpoint_problem(e)}"
        ) from None
    tls = options["tls"]
    listen = endpoint(reactor, "--port", options["port"])
    if tls is None and options["secret"] is not None:
        # A private network is mutual TLS too, with an identity made from
        # the secret: nobody without it can read or relay a connection.
        hosts = [h for h in (options["advertise"],) if h] + local_addresses()
        tls = network_tls(options["secret"], hosts, data_dir / "tls")
        listen = TLSServerEndpoint(listen, tls, reactor)
        meta = tls.client(meta)
    if options["reset-token"]:
        Identity.reset(data_dir)
    if options["reset-manhole"]:
        from p2pshare.manhole import reset_manhole  # conch: only when asked (see below)

        reset_manhole(data_dir)
    # Never shared, wherever they lie: the data dir (PeerSettings.state_dir)
    # and the files that hold the network's secrets.
    private = tuple(
        Path(f).absolute()
        for f in (options["secret-file"], tls and tls.key_path, tls and tls.cert_path)
        if f
    )
    # Connection caps within the descriptors this process may open, with
    # room for the files it serves and writes, and its own connections.
    reserve = FD_RESERVE + 2 * options["max-uploads"]
    total, per_host = fit_caps(options.get("fds", FD_CEILING), 1000, 200, reserve)
    if total < 1000:
        log.warn("only {fds} file descriptors (ulimit -n): this peer takes at most {total} "
                 "connections, {per_host} from one address", fds=options.get("fds"),
                 total=total, per_host=per_host)
    endpoints = _Endpoints(reactor, tls)
    mapping = None
    if not options["no-port-mapping"]:
        mapping = PortMapping(reactor, deferToThread, EitherGateway(UPnPGateway(), NATPMPGateway()))
    node = PeerNode(
        clock=reactor,
        listen=listen,
        meta=meta,
        connect=lambda host, port: connect_to(reactor, tls, host, port),
        settings=PeerSettings(
            name=options["name"],
            max_neighbours=options["max-neighbours"],
            advertise=options["advertise"],
            portfile=Path(options["portfile"]) if options["portfile"] else None,
            shared=options["shared"],
            downloads=options["downloads"],
            state_dir=data_dir,
            heartbeat=options["heartbeat"],
            settle_time=SETTLE_TIME,
            max_uploads=options["max-uploads"],
            upload_rate=options["upload-rate"],
            url_scheme="https" if tls is not None else "http",
            listen_description=f"--port {options['port']}",
            private=private,
            connections=total,
            connections_per_host=per_host,
        ),
        agent=Agent.usingEndpointFactory(
            reactor, endpoints, pool=HTTPConnectionPool(reactor, persistent=False)
        ),
        client_tls=_stdlib_client(tls),
        run_blocking=deferToThread,
        secret=options["secret"],
        on_fatal=fatal,
        on_stop=reactor.stop,
        mapping=mapping,
        relay=Relay(reactor, options["relay-rate"], options["relay-slots"]) if options["relay"] else None,
    )
    if node.relay is not None:
        log.info("p2ppeer {what}", what=node.relay.described())
    endpoints.reversed = node.reversals.endpoint
    node.reversals.tls = tls
    log.info("p2ppeer: {admission}", admission=describe(options["secret"], options["secret-file"]))
    top = RoleService("p2ppeer", RoleLog("p2ppeer", lambda: node.peer_name, options))
    top.data_dir_lock = lock  # type: ignore[attr-defined]
    # The control socket first: a second peer on this data dir is told so
    # before it touches the network.
    # A TCP control port (loopback only) asks for a token from the data dir.
    token = control_token(data_dir) if not options["control"].startswith("unix:") else None
    def control_listening(port: Any) -> None:
        number = getattr(port.getHost(), "port", None)
        if number is not None:  # a unix socket's path is in the options
            log.info("control channel on loopback port {port}; it asks for the token in "
                     "{path}", port=number, path=str(data_dir / CONTROL_TOKEN))

    ui = None
    if options["ui"] is not None:
        api = Api(node, node.files, shared=options["shared"], downloads=options["downloads"],
                  meta_web=lambda: node.meta_web)
        page = Page(api, Guard(reactor), reactor)
        ui = UIService(endpoint(reactor, "--ui", options["ui"]), page, reactor,
                       what=f"--ui {options['ui']}")
    ListenService(
        endpoint(reactor, "--control", options["control"]),
        ControlFactory(node, token, ui),
        control_listening,
        what=f"--control {options['control']}",
    ).setServiceParent(top)
    if mapping is not None:  # stops after the peer has said goodbye
        mapping.setServiceParent(top)
    node.setServiceParent(top)
    if ui is not None:
        ui.setServiceParent(top)
    if options["manhole"] is not None:
        # Conch is some sixty modules: a start without a manhole (every
        # start of a test's network) does not load it.
        from p2pshare.manhole import manhole_service

        namespace = {"service": top, "peer": node}
        manhole_service(options["manhole"], data_dir, namespace).setServiceParent(top)
    return top
