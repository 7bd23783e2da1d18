"""
Replies of any size: no line a role sends outgrows the wire's 4096 bytes,
however long the names, hosts, neighbour lists, shares or searches; and
the metadata server shows only links that two live peers both report, so
a registrant cannot put phantom peers into topo.txt.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from p2pshare import wire
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaFactory, MetaServer
from p2pshare.peer.control import ControlFactory
from p2pshare.peer.node import PeerNode, PeerSettings
from p2pshare.peer.share import SharedFile, ShareIndex
from p2pshare.topo import parse_topo

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-"
names = st.text(NAME_CHARS, min_size=1, max_size=wire.NAME_MAX)
long_names = st.text(NAME_CHARS, min_size=wire.NAME_MAX, max_size=wire.NAME_MAX)
hosts = st.one_of(
    st.just("h" * 255), st.just("127.0.0.1"), st.text("abcdef0123456789.:-", min_size=1, max_size=255)
)


class Client:
    def __init__(self, factory, host="127.0.0.9"):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.proto = factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)

    def say(self, line: str) -> list[bytes]:
        self.transport.clear()
        self.proto.dataReceived(line.encode() + b"\r\n")
        return self.lines()

    def lines(self) -> list[bytes]:
        out = self.transport.value().split(b"\r\n")
        assert out[-1] == b""
        for line in out[:-1]:
            assert len(line) + 2 <= wire.MAX_LINE
            wire.decode(line)  # every line well-formed
        return out[:-1]


def topo_through_the_wire(server: MetaServer) -> dict[str, list[str]]:
    """
    What `p2p topo --meta` would read: PEER lines (continued with more=1)
    up to END.
    """
    observer = Client(MetaFactory(server), host="127.0.0.200")
    assert observer.say("P2P")[0].startswith(b"OK ")
    lines = observer.say("TOPO")
    assert lines[-1].startswith(b"END ")
    topo: dict[str, list[str]] = {}
    continued = False
    for line in lines[:-1]:
        msg = wire.decode(line)
        assert msg.verb == "PEER"
        name, _, _, *neighbours = msg.args
        if continued:
            assert name in topo
        else:
            assert name not in topo
        topo.setdefault(name, []).extend(neighbours)
        continued = "more" in msg.options
    assert not continued
    assert int(wire.decode(lines[-1]).args[0]) == len(topo)
    return topo


@settings(max_examples=60)
@given(
    registrants=st.lists(
        st.tuples(long_names, hosts, st.lists(names, max_size=80, unique=True)),
        min_size=1, max_size=20, unique_by=lambda r: r[0],
    ),
    links=st.lists(st.tuples(st.integers(0, 19), st.integers(0, 19)), max_size=30),
)
def test_hostile_registrants_cannot_break_topo(tmp_path_factory, registrants, links):
    data_dir = tmp_path_factory.mktemp("meta")
    server = MetaServer(Registry(":memory:"), Clock(), data_dir=data_dir, expect=100)
    server.startService()
    try:
        clients = []
        for i, (name, host, _) in enumerate(registrants):
            c = Client(MetaFactory(server), host=f"127.0.1.{i + 1}")
            welcome = c.say(f"P2P port=7000 name={name} host={host} max=1000 beat=5")
            assert welcome[0].startswith(b"WELCOME "), welcome
            clients.append(c)
        real = [r[0] for r in registrants]
        # Some links that both ends report, between real peers.
        mutual: dict[str, list[str]] = {n: [] for n in real}
        for a, b in links:
            if a < len(real) and b < len(real) and a != b:
                x, y = real[a], real[b]
                if y not in mutual[x]:
                    mutual[x].append(y)
                    mutual[y].append(x)
        # Each registrant reports its real links plus phantoms, over as many
        # lines as it takes.
        for c, (name, _, phantoms) in zip(clients, registrants, strict=True):
            claimed = mutual[name] + [p for p in phantoms if p not in mutual[name] and p != name]
            for line in wire.split_list("NEIGHBOURS", (), claimed):
                for reply in c.say(wire.encode(line).decode().rstrip()):
                    assert not reply.startswith(b"ERROR"), reply
        topo = topo_through_the_wire(server)
        assert topo == {n: mutual[n] for n in real}
        server.clock.advance(server.flush_interval)  # the files follow within it
        on_disk = {e.name: e.neighbours for e in parse_topo((data_dir / "topo.txt").read_text())}
        assert on_disk == topo
        assert (data_dir / "NumberOfServers.txt").read_text() == f"{len(real)}\n"
    finally:
        server.stopService()


def test_more_neighbours_than_registered_for_is_refused(tmp_path):
    server = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path)
    server.startService()
    c = Client(MetaFactory(server))
    c.say("P2P port=7000 name=s1 max=2")
    assert c.say("NEIGHBOURS a b more=1") == []
    assert c.say("NEIGHBOURS c") == [b"ERROR bad-args you registered with max=2 neighbours"]
    assert c.say("NEIGHBOURS a b") == []
    server.stopService()


def peer_sharing(tmp_path, count: int, length: int = 70) -> PeerNode:
    node = PeerNode(clock=Clock(), listen=None, meta=None, connect=None,
                    settings=PeerSettings(name="s1"))
    node.port, node.membership.state = 7001, "root"
    node.files.share = ShareIndex(tmp_path)
    node.files.share.files = {
        name: SharedFile(name, i, f"{i:064x}", (i, 0, 0))
        for i in range(count)
        for name in [f"{i:06d}-" + "x" * (length - 7)]
    }
    return node


def read_reply(lines: list[bytes]) -> tuple[dict, dict[str, list]]:
    items: dict[str, list] = {}
    for line in lines[:-1]:
        msg = wire.decode(line)
        assert msg.verb == "ITEM"
        items.setdefault(msg.args[0], []).append(json.loads(msg.text))
    last = wire.decode(lines[-1])
    assert last.verb == "OK"
    return json.loads(last.text), items


def test_status_and_search_of_ten_thousand_files_fit_the_wire(tmp_path):
    node = peer_sharing(tmp_path, 10_000)
    control = Client(ControlFactory(node))
    summary, items = read_reply(control.say("STATUS"))
    assert summary["shared_count"] == 10_000 and "shared" not in items  # counts only
    summary, items = read_reply(control.say("STATUS files=1"))
    assert summary["name"] == "s1" and summary["shared"] == []
    assert len(items["shared"]) == 10_000
    assert {f["name"] for f in items["shared"]} == set(node.share.files)

    lines = control.say("FIND *x*")
    summary, items = read_reply(lines)
    assert summary["count"] == 10_000 == len(items["matches"])
    assert items["matches"][0]["holder"] == "s1"


def test_results_of_ten_thousand_matches_cross_a_link_in_lines_that_fit():
    from p2pshare.peer.search import results_lines

    matches = [
        wire.Match("x" * 255 + str(i), i, f"{i:064x}", "h" * 64, "a" * 255, 65535, 999)
        for i in range(10_000)
    ]
    lines = results_lines("id", matches)
    got = []
    for i, msg in enumerate(lines):
        data = wire.encode(msg)
        assert len(data) <= wire.MAX_LINE
        parsed = wire.decode(data[:-2])
        assert ("more" in parsed.options) == (i < len(lines) - 1)
        got += [wire.Match.parse(f) for f in parsed.args[1:]]
    assert got == matches
