"""
The metadata server's read-only web side (C{--web}): a page that draws the
live tree, C{/topology.json} (its data) and C{/topo.txt}.

The page is one HTML file with a small script of its own (no framework, no
download at run time): it polls C{/topology.json} every second and draws the
tree as SVG, root at the top.  Every string that comes from a peer is put
into the page with C{textContent} / C{setAttribute}, never as markup, and
the JSON is served as C{application/json}, so a peer or file named
C{<script>} shows as text.  The page's C{shown()} writes what would not
show as itself (a bidi control, a zero-width or control character) as an
escape, by the rule of L{p2pshare.display.shown}: a file named
C{"evil\\u202egpj.exe"} shows so, not as C{evilexe.jpg}.

The page shows an expected network size only when the operator set one
(C{--expect}); a transfer's other end by its peer name where the server
can tell it (L{who}).  Its requests are logged at debug level only
(L{p2pshare.logs}): it asks for C{/topology.json} every second.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from importlib import resources
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from p2pshare.httpserver import strict_site
from p2pshare.topo import topo_text

if TYPE_CHECKING:
    from p2pshare.meta.registry import PeerRecord
    from p2pshare.meta.server import MetaServer


def topology(server: MetaServer) -> dict[str, object]:
    """
    The network as C{/topology.json} shows it (see docs/operations.rst).
    C{expect} is L{None} unless the operator set it (C{--expect}).
    """
    peers = server.verified()
    name_of = who(peers, {name: peer.source for name, peer in server.peers.items()})
    shown = {e.name: e.neighbours for e in server.topology(peers)}  # links both ends report
    links = sorted({tuple(sorted((name, n))) for name, ns in shown.items() for n in ns})
    return {
        "peers": [
            {
                "name": p.name,
                "host": p.host,
                "port": p.port,
                "neighbours": shown[p.name],
                "neighbour_count": len(shown[p.name]),
                "max_neighbours": p.max_neighbours,
                "shared_files": p.activity.shared_files,
                "shared_bytes": p.activity.shared_bytes,
                "transfers": [{**t, "peer": name_of(str(t["peer"]))} for t in p.activity.transfers],
                "transfer_count": p.activity.transfer_count,
                "root": p.is_root and not p.uplink,
                "parent": p.uplink,
                "live": p.name in server.peers,
            }
            for p in peers
        ],
        "links": [list(link) for link in links],
        "count": len(peers),
        "expect": server.planned,
        "complete": server.complete,
        "events": [
            {"time": e.time, "event": e.kind, "peer": e.peer, "text": e.text}
            for e in server.events
        ],
    }


def who(peers: list[PeerRecord], sources: Mapping[str, str]) -> Callable[[str], str]:
    """
    What a transfer's other end is called on the page.  A peer says who
    it sends to by the address it sees (C{127.0.0.1}, or C{HOST:PORT}):
    that is a peer's name when exactly one of C{peers} is there (by its
    advertised address, or where its registration comes from, C{sources},
    with the port if one is said); otherwise, and for what is not an
    address at all (C{"2 holders"}, a name), what the peer said.
    """
    names = {p.name for p in peers}
    at_host: dict[str, set[str]] = {}
    at_port: dict[tuple[str, int], set[str]] = {}
    for p in peers:
        for host in {p.host, sources.get(p.name, "")} - {"", "local"}:
            at_host.setdefault(host, set()).add(p.name)
        at_port.setdefault((p.host, p.port), set()).add(p.name)

    def name(said: str) -> str:
        if said in names:
            return said
        found = at_host.get(said)
        if found is None:
            host, _, port = said.rpartition(":")
            if host and port.isdigit():
                found = at_port.get((host.removeprefix("[").removesuffix("]"), int(port)))
        return next(iter(found)) if found is not None and len(found) == 1 else said

    return name


def _cached(server: MetaServer, render: Callable[[], bytes]) -> Callable[[], bytes]:
    """
    C{render}, made again only when the server's revision moved: many
    pages polling a large network cost one rendering per change.
    """
    kept: list[tuple[int, bytes]] = []

    def body() -> bytes:
        if not kept or kept[0][0] != server.revision:
            kept[:] = [(server.revision, render())]
        return kept[0][1]

    return body


class _Rendered(Resource):
    """
    A read-only leaf: fixed headers, and a body made afresh for each GET.
    """

    isLeaf = True

    def __init__(self, headers: dict[bytes, bytes], body: Callable[[], bytes]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.headers = headers
        self.body = body

    def render_GET(self, request: Request) -> bytes:
        for name, value in self.headers.items():
            request.responseHeaders.setRawHeaders(name, [value])
        return self.body()


class _Root(Resource):
    def __init__(self, server: MetaServer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        page = resources.files("p2pshare.meta").joinpath("page.html").read_bytes().replace(
            b"// text.js\n", resources.files("p2pshare").joinpath("text.js").read_bytes(), 1)
        self.page = _Rendered(
            {
                b"content-type": b"text/html; charset=utf-8",
                b"content-security-policy": b"default-src 'self' 'unsafe-inline'",
            },
            lambda: page,
        )
        self.putChild(b"topology.json", _Rendered(
            {b"content-type": b"application/json", b"cache-control": b"no-store"},
            _cached(server, lambda: json.dumps(topology(server), separators=(",", ":")).encode()),
        ))
        self.putChild(b"topo.txt", _Rendered(
            {b"content-type": b"text/plain; charset=utf-8"},
            lambda: topo_text(server.topology()).encode("utf-8"),
        ))

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"" and not request.postpath:
            return self.page
        return notFound()


def make_site(server: MetaServer, reactor: IReactorTime) -> Site:
    return strict_site(_Root(server), reactor)
