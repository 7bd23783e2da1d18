"""
The metadata server keeps one record per peer, not parallel containers: a
peer that leaves leaves nothing of itself behind (its name, its record,
its connection), and no class of C{meta/} grows past the size that made
that hard to see (L{oversized_classes}, which other packages will be held
to as well).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from p2pshare.meta.records import Peer
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaFactory, MetaProtocol, MetaServer
from p2pshare.simnet import SimNet

SRC = Path(__file__).resolve().parent.parent / "src" / "p2pshare"



def history(server: MetaServer) -> list[object]:
    """
    Where a departed peer's name may stay: the page's list of what
    happened (bounded; "s3 left" is the point), and the free-slot heap,
    whose stale entries are dropped lazily when they reach the top (or at
    a rebuild).
    """
    return [server.events, server.slots._heap]


# The size of classes.


def oversized_classes(
    directory: Path, max_lines: int = 300, max_attributes: int = 15
) -> list[str]:
    """
    Each class in C{directory/*.py} longer than C{max_lines} lines, or that
    sets more than C{max_attributes} attributes: the distinct C{self.NAME}
    assigned in its C{__init__}, and the fields of a dataclass or a
    C{NamedTuple}.  As C{"FILE:LINE Class: why"}; empty when all fit.
    """
    found = []
    for path in sorted(directory.glob("*.py")):
        tree = ast.parse(path.read_text("utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            where = f"{path.name}:{node.lineno} {node.name}"
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = (node.end_lineno or node.lineno) - first + 1
            if lines > max_lines:
                found.append(f"{where}: {lines} lines (at most {max_lines})")
            attributes = _fields(node) | _set_in_init(node)
            if len(attributes) > max_attributes:
                found.append(
                    f"{where}: {len(attributes)} attributes (at most {max_attributes}): "
                    + ", ".join(sorted(attributes))
                )
    return found


def _named(node: ast.expr, *names: str) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Subscript):
        node = node.value
    return (isinstance(node, ast.Name) and node.id in names) or (
        isinstance(node, ast.Attribute) and node.attr in names
    )


def _fields(node: ast.ClassDef) -> set[str]:
    """
    The fields of a dataclass or a NamedTuple (not its ClassVars).
    """
    if not (any(_named(d, "dataclass") for d in node.decorator_list)
            or any(_named(b, "NamedTuple") for b in node.bases)):
        return set()
    return {
        item.target.id
        for item in node.body
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
        and not _named(item.annotation, "ClassVar")
    }


def _set_in_init(node: ast.ClassDef) -> set[str]:
    init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
    if init is None or not init.args.args:
        return set()
    me = init.args.args[0].arg
    names: set[str] = set()

    def targets(target: ast.expr) -> Iterable[ast.expr]:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                yield from targets(element)
        elif isinstance(target, ast.Starred):
            yield from targets(target.value)
        else:
            yield target

    for statement in ast.walk(init):
        if isinstance(statement, ast.Assign):
            assigned: list[ast.expr] = list(statement.targets)
        elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
            assigned = [statement.target]
        else:
            continue
        for target in (t for a in assigned for t in targets(a)):
            if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id == me):
                names.add(target.attr)
    return names


def test_no_class_of_the_metadata_server_is_oversized():
    assert oversized_classes(SRC / "meta") == []


def test_no_class_of_the_download_package_is_oversized():
    assert oversized_classes(SRC / "peer" / "download") == []


def test_the_size_check_finds_long_classes_and_crowded_records(tmp_path):
    body = "".join(f"        self.a{i} = {i}\n" for i in range(16))
    (tmp_path / "crowded.py").write_text(
        "from dataclasses import dataclass, field\n"
        "from typing import ClassVar, NamedTuple\n\n"
        f"class Crowded:\n    def __init__(self):\n{body}\n\n"
        "class Fits:\n    def __init__(this):\n"
        + "".join(f"        this.a{i} = this.b{i} = None\n" for i in range(7))
        + "        this.a0, (this.c, *this.b0) = 1, (2, 3)\n\n"
        "@dataclass(eq=False)\nclass Record:\n"
        + "".join(f"    f{i}: int = 0\n" for i in range(15))
        + "    shared: ClassVar[int] = 0\n"
        "    last: list[int] = field(default_factory=list)\n\n"
        "class Row(NamedTuple):\n" + "".join(f"    f{i}: int\n" for i in range(15))
    )
    (tmp_path / "long.py").write_text("class Long:\n" + "    x = 1\n" * 300)
    found = oversized_classes(tmp_path)
    assert [f.split(":", 2)[:2] + [f.split(": ")[1]] for f in found] == [
        ["crowded.py", "4 Crowded", "16 attributes (at most 15)"],
        ["crowded.py", "36 Record", "16 attributes (at most 15)"],
        ["long.py", "1 Long", "301 lines (at most 300)"],
    ]
    assert oversized_classes(tmp_path, max_lines=301, max_attributes=16) == []


# A peer that leaves leaves nothing behind.


def held(server: MetaServer, names: set[str]) -> list[str]:
    """
    Where in C{server} (its own objects and containers, not Twisted's) one
    of C{names} is held, as attribute paths (its L{history} left out):
    C{" key"} and C{" member"} end those where it is a key of a dict or a
    member of a set, a table kept per peer.  Also where the record of one
    of them is, or a connection that is no live peer's session.
    """
    sessions = {id(peer.session) for peer in server.peers.values()}
    found: list[str] = []
    seen = {id(kept) for kept in history(server)}

    def visit(obj: object, path: str) -> None:
        if isinstance(obj, str):
            if obj in names:
                found.append(path)
            return
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Peer) and obj.name in names:
            found.append(f"{path} (its record)")
        if isinstance(obj, MetaProtocol):
            if id(obj) not in sessions:
                found.append(f"{path} (a connection gone)")
            return  # the connection's own state is not the server's
        if isinstance(obj, dict):
            for key, value in list(obj.items()):
                visit(key, f"{path} key")
                visit(value, f"{path}[{key!r}]")
        elif isinstance(obj, (set, frozenset)):
            for item in list(obj):
                visit(item, f"{path} member")
        elif isinstance(obj, (list, tuple, deque)):
            for i, item in enumerate(list(obj)):
                visit(item, f"{path}[{i}]")
        elif type(obj).__module__.startswith("p2pshare.") and hasattr(obj, "__dict__"):
            for attr, value in vars(obj).items():
                visit(value, f"{path}.{attr}")

    visit(server, "server")
    return found


def tables(server: MetaServer, names: set[str]) -> list[str]:
    """
    Where L{held} finds one of C{names} as a key or a member (not as a
    value that a live peer's own report mentions), or a record.
    """
    return [p for p in held(server, names) if p.endswith((" key", " member", ")"))]


class Conn:
    def __init__(self, server: MetaServer, host: str) -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.proto = MetaFactory(server).buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)

    def say(self, data: bytes) -> bytes:
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value()


def test_peers_that_leave_every_way_leave_nothing_behind(tmp_path):
    """
    Peers register, are placed, report links and activity, one is on its
    way to a slot, one registers again on a new connection; then they
    leave, by goodbye or by vanishing.  What stays is only the names held
    for those that vanished, and only until that hold ends.
    """
    clock = Clock()
    server = MetaServer(Registry(), clock, data_dir=tmp_path, expect=3)
    server.startService()
    a, b, c, d = (Conn(server, f"127.0.0.{i}") for i in range(1, 5))
    assert a.say(b"P2P port=6001 name=a beat=5\r\nPLACE\r\n").endswith(b"ROOT\r\n")
    assert b.say(b"P2P port=6002 name=b beat=5\r\nPLACE\r\n").endswith(b"REFER a 127.0.0.1 6001\r\n")
    b.say(b"NEIGHBOURS a up=a files=2\r\nTRANSFER up 1 2 3 a f\r\nSUMMARY files=2 bytes=9\r\n")
    a.say(b"NEIGHBOURS b root=1\r\n")
    assert c.say(b"P2P port=6003 name=c beat=5\r\nPLACE\r\n").endswith(b"REFER a 127.0.0.1 6001\r\n")
    d.say(b"P2P port=6004 name=d token=" + b"d" * 32 + b"\r\n")
    again = Conn(server, "127.0.0.5")
    assert again.say(b"P2P port=6004 name=d token=" + b"d" * 32 + b"\r\n").startswith(b"WELCOME d ")
    d.proto.connectionLost(None)  # the replaced connection: changes nothing
    clock.advance(1)
    assert sorted(server.peers) == ["a", "b", "c", "d"]
    assert server.peers["a"].promised == {"c"} and server.peers["c"].heading_to == "a"

    c.proto.connectionLost(None)  # vanishes on its way
    assert server.peers["a"].promised == set()
    b.say(b"BYE\r\n")
    a.say(b"NEIGHBOURS root=1\r\n")
    again.proto.connectionLost(None)  # vanishes
    a.say(b"BYE\r\n")
    names = {"a", "b", "c", "d"}
    assert held(server, names) == ["server.members.held._held key", "server.members.held._held key"]
    assert sorted(server.held) == ["c", "d"]
    clock.advance(3 * 5 + 2)  # their holds end
    assert held(server, names) == []
    assert len(server.peers) == 0 and server.registry.peers() == []
    assert server.placement.root is None and not server.slots.depth
    assert not server.tally.members and server.tally.link_count == server.tally.one_sided == 0
    server.stopService()


def test_a_peer_that_leaves_during_its_dial_back_leaves_nothing_behind(tmp_path):
    """
    The dial-back is part of the peer's record: when the peer goes, it is
    given up, and neither the server nor its queue of checks keeps it.
    """
    dialled: list[Deferred[object]] = []

    class Hangs:
        def connect(self, factory: object) -> Deferred[object]:
            dialled.append(Deferred())
            return dialled[-1]

    clock = Clock()
    server = MetaServer(Registry(), clock, data_dir=tmp_path, connect=lambda host, port: Hangs())
    server.startService()
    late = Conn(server, "127.0.0.1")
    late.say(b"P2P port=6001 name=late check=" + b"ab" * 16 + b"\r\n")
    assert server.peers["late"].checking is not None and len(dialled) == 1
    waiting = server.when_checked("late")
    late.proto.connectionLost(None)
    assert waiting.called  # a PLACE waiting for the check goes on (and finds it gone)
    assert held(server, {"late"}) == ["server.members.held._held key"]
    clock.advance(3 * 5 + 2)
    assert held(server, {"late"}) == []
    server.stopService()


def test_in_a_network_a_departed_peer_is_no_key_of_any_table(tmp_path):
    """
    A whole network in one process, with dial-backs and tickets: a peer
    that stops and one that crashes are in no table of the server once
    the rest have re-formed (the crashed one's name is held a while); a
    peer that is still there may of course mention them in what it
    reported last.
    """
    net = SimNet.grown(tmp_path, 6)
    server = net.meta
    assert server is not None
    by_name = {p.peer_name: p for p in net.peers}
    stopping, crashing = by_name["s6"], by_name["s3"]
    stopping.stopService()
    net.crash(crashing)
    net.flush()
    gone = {"s3", "s6"}
    assert all(server.peers.live(n) is None and server.registry.get(n) is None for n in gone)
    assert tables(server, gone) == ["server.members.held._held key"]
    assert sorted(server.held) == ["s3"]
    net.settle(seconds=60)  # the others re-form; the hold of the crashed one's name ends
    assert tables(server, gone) == []
