"""
C{twistd p2pmeta}: options and service assembly for the metadata server.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python import usage

from p2pshare.admission import SecretError, describe, load_secret
from p2pshare.common import (
    LimitedFactory,
    ListenService,
    server_endpoint_string,
    tcp_client_endpoint,
)
from p2pshare.disk import atomic_write
from p2pshare.lan import Announcer, endpoint_interface
from p2pshare.logs import RoleLog
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import (
    DEFAULT_EXPECT,
    FLUSH_INTERVAL,
    MAX_PEERS,
    MAX_PER_ADDRESS,
    OBSERVER_RESERVE,
    MetaFactory,
    MetaServer,
)
from p2pshare.meta.web import make_site
from p2pshare.options import loopback_by_default
from p2pshare.relay import RELAY_OPTIONS, Relay, RelayFirst, relay_settings
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
from p2pshare.tickets import TicketChecker, TicketSigner
from p2pshare.tls import (
    TLSConfigError,
    TLSServerEndpoint,
    endpoint,
    local_addresses,
    mixed_security,
    network_tls,
    peer_tls,
)

log = Logger()
FD_RESERVE = 128  # descriptors kept for the registry, logs, files and dial-backs


class Options(RoleOptions):
    role = "p2pmeta"
    synopsis = "[options]"
    longdesc = "The p2pshare metadata server: registers peers and keeps topo.txt."
    optParameters = [
        ["port", None, "tcp:5000", "Endpoint where peers register (a bare N means tcp:N)."],
        ["data-dir", None, "./p2pmeta-data", "Registry, topo.txt and NumberOfServers.txt."],
        ["expect", None, None,
         f"Planned network size: log 'network complete' at N peers [default: {DEFAULT_EXPECT}]; "
         "the web page shows it only when given.", int],
        ["portfile", None, None, "Write the bound port number here once listening."],
        ["web", None, None, "Serve the topology page here (loopback unless an interface is given)."],
        ["manhole", None, None, "SSH manhole here (loopback unless an interface is given)."],
        ["secret-file", None, None, "The network secret: admit only peers that hold it."],
        ["max-peers", None, MAX_PEERS, "Most peers registered at once (sizes the connection limits).", int],
        ["max-per-address", None, MAX_PER_ADDRESS,
         "Most of them from one source address (peers behind one NAT share one).", int],
        *RELAY_OPTIONS,
        ["flush-interval", None, FLUSH_INTERVAL,
         "Seconds: topo.txt, NumberOfServers.txt and the registry lag the network by at most this.",
         float],
    ]
    optFlags = [
        ["reset", None, "Start a new network: empty the registry and the files."],
        ["announce", None, "Announce this server on the LAN by multicast DNS (peers use --meta auto)."],
        ["relay", None, "Splice transfers between peers that cannot reach each other, on --port."],
    ]

    def postOptions(self) -> None:
        # Whether the operator planned a size: the web page shows one only then.
        self["expect-given"] = self["expect"] is not None
        if self["expect"] is None:
            self["expect"] = DEFAULT_EXPECT
        if self["expect"] < 1:
            raise usage.UsageError("--expect must be at least 1")
        if not 1 <= self["max-peers"] <= 1_000_000:
            raise usage.UsageError("--max-peers is from 1 to 1000000")
        if not 1 <= self["max-per-address"]:
            raise usage.UsageError("--max-per-address is at least 1")
        if not 0 <= self["flush-interval"] <= 60:
            raise usage.UsageError("--flush-interval is from 0 to 60 seconds")
        try:
            relay_settings(self)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["port"] = server_endpoint_string(self["port"])
        if self["announce"]:
            if self["port"].split(":", 1)[0] not in ("tcp", "tcp6", "mtls"):
                raise usage.UsageError("--announce needs a TCP --port (tcp:PORT or mtls:PORT:...)")
            interface = endpoint_interface(self["port"]) or ""
            if interface.startswith("127.") or interface == "::1":
                raise usage.UsageError(
                    "--announce with a --port on loopback: nobody else on the LAN could reach it"
                )
        for key in ("web", "manhole"):
            if self[key] is not None:
                self[key] = loopback_by_default(server_endpoint_string(self[key]))
        try:
            self["secret"] = load_secret(self["secret-file"])
            self["tls"] = peer_tls(self["port"])  # a tls: port names a readable CA
        except (SecretError, TLSConfigError) as e:
            raise usage.UsageError(str(e)) from None
        problem = mixed_security(self["port"], None, self["tls"] is not None)
        if problem is not None:
            raise usage.UsageError(problem)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    options["fds"] = raise_fd_limit()
    try:
        return _assemble(options, reactor)
    except StartupError as e:
        cannot_start("p2pmeta", e)


def open_registry(path: Path, reset: bool) -> Registry:
    """
    The registry at C{path}.  One that cannot be read is refused (the
    network it holds may still be wanted), unless C{reset} asks for a new
    network: then it is moved aside, and the log says where.
    """
    try:
        registry = Registry(str(path))
    except (sqlite3.DatabaseError, RuntimeError) as e:
        if not reset:
            raise StartupError(
                f"the registry {path} cannot be read ({e}); move it aside, "
                f"or start a new network with --reset"
            ) from None
        aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        log.warn("the registry {path} could not be read ({why}); moved to {aside}",
                 path=str(path), why=str(e), aside=str(aside))
        registry = Registry(str(path))
    if reset:
        registry.clear()
    return registry


def _assemble(options: Options, reactor: Any) -> IService:
    data_dir = Path(options["data-dir"]).absolute()
    lock = prepare_data_dir(data_dir, "p2pmeta")
    check_writable(Path(options["portfile"]) if options["portfile"] else None, "--portfile")
    registry = open_registry(data_dir / "registry.sqlite", options["reset"])
    tls = options["tls"]
    listen = endpoint(reactor, "--port", options["port"])
    if tls is None and options["secret"] is not None:
        # A private network is mutual TLS too, made from the secret.
        interface = endpoint_interface(options["port"])
        hosts = ([interface] if interface else []) + local_addresses()
        tls = network_tls(options["secret"], hosts, data_dir / "tls")
        listen = TLSServerEndpoint(listen, tls, reactor)

    def connect(host: str, port: int) -> IStreamClientEndpoint:
        # The dial-back to a registrant: as a peer would reach it.
        ep = tcp_client_endpoint(reactor, host, port)
        return tls.client(ep) if tls is not None else ep

    server = MetaServer(
        registry, reactor, data_dir=data_dir,
        expect=options["expect"] if options["expect-given"] else None, secret=options["secret"],
        flush_interval=options["flush-interval"], max_peers=options["max-peers"],
        max_per_address=options["max-per-address"], connect=connect,
        signer=TicketSigner.in_directory(data_dir),
    )
    log.info("p2pmeta: {admission}", admission=describe(options["secret"], options["secret-file"]))
    portfile = options["portfile"]

    announcer = None
    if options["announce"]:
        announcer = Announcer(
            endpoint_interface(options["port"]),
            {"private": "1" if options["secret"] is not None else "0",
             "tls": "1" if options["tls"] is not None else "0"},
        )

    def listening(port: IListeningPort) -> None:
        number = getattr(port.getHost(), "port", None)
        if portfile is not None and number is not None:
            atomic_write(portfile, f"{number}\n".encode())
        if announcer is not None and number is not None:
            announcer.announce(number)
        log.info(
            "p2pmeta ready on {where} with {n} peer(s) in the registry",
            where=number if number is not None else options["port"],
            n=len(registry),
        )

    # Room for every peer, and a reserve for observers (p2p topo) and the
    # operator beyond it: a full network still answers them; all within
    # the descriptors this process may open.
    wanted = options["max-peers"] + OBSERVER_RESERVE
    total, per_host = fit_caps(
        options.get("fds", FD_CEILING), wanted,
        min(options["max-per-address"], options["max-peers"]) + OBSERVER_RESERVE, FD_RESERVE,
    )
    if total < wanted:
        log.warn(
            "only {fds} file descriptors (ulimit -n): at most {total} connections, {per_host} "
            "from one address; --max-peers {peers} needs {need}",
            fds=options.get("fds"), total=total, per_host=per_host, peers=options["max-peers"],
            need=wanted + FD_RESERVE,
        )
    top = RoleService("p2pmeta", RoleLog("p2pmeta", lambda: None, options))
    top.data_dir_lock = lock  # type: ignore[attr-defined]
    registrations: Any = MetaFactory(server)
    if options["relay"]:
        relay = Relay(reactor, options["relay-rate"], options["relay-slots"])
        relay.check = TicketChecker(server.vouching.signer.public).check  # members only
        server.vouching.relaying = True
        registrations = RelayFirst(registrations, relay)
        log.info("p2pmeta {what}", what=relay.described())
    children: list[IService] = [server, ListenService(
        listen,
        LimitedFactory(registrations, clock=reactor, total=total, per_host=per_host),
        listening,
        what=f"--port {options['port']}",
    )]
    if announcer is not None:
        children.append(announcer)
    if options["web"] is not None:

        def web_listening(port: IListeningPort) -> None:
            bound = port.getHost()
            number = getattr(bound, "port", None)
            if number is not None:
                server.web = (getattr(bound, "host", ""), number)
            log.info("p2pmeta web page on port {port}", port=number)

        children.append(ListenService(
            endpoint(reactor, "--web", options["web"]),
            make_site(server, reactor),
            web_listening,
            what=f"--web {options['web']}",
        ))
    if options["manhole"] is not None:
        from p2pshare.manhole import manhole_service  # conch: only when asked

        namespace = {"service": top, "server": server, "registry": registry}
        children.append(manhole_service(options["manhole"], data_dir, namespace))
    for child in children:
        child.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
