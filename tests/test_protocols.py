"""
Byte-exact conversations with the metadata server and with a peer, on
StringTransport: registration, the wrong flag and the retry, referral,
accept, and the error replies.
"""

from __future__ import annotations

import pytest
from placed import SIGNER, hello, placed, ticket, welcomed
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from p2pshare import wire
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaFactory, MetaServer
from p2pshare.peer.control import ControlFactory
from p2pshare.peer.node import PeerNode, PeerSettings
from p2pshare.peer.protocol import MetaClientFactory, PeerFactory


class Conn:
    """
    One connection to a protocol, from host C{host}.
    """

    def __init__(self, factory, host="127.0.0.9", port=40000):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        self.proto = factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)

    def say(self, data: bytes) -> bytes:
        self.transport.clear()
        self.proto.dataReceived(data)
        return self.transport.value()


@pytest.fixture
def meta(tmp_path):
    # Addresses are taken as said (no dial-back here: tests/test_hostile_*
    # check the real one); tickets are signed with the tests' key.
    server = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, expect=3, signer=SIGNER)
    server.startService()
    yield server
    server.stopService()


def test_registration_wrong_flag_and_retry(meta, tmp_path):
    c = Conn(MetaFactory(meta), host="127.0.0.7")
    assert c.say(b"HELLO there\r\n") == (
        b"ERROR bad-flag the first line must start with the P2P flag, e.g. P2P port=5001\r\n"
    )
    assert c.say(b"PLACE\r\n").startswith(b"ERROR bad-flag ")
    assert not c.transport.disconnecting
    assert c.say(b"p2p port=6001\r\n") == welcomed("s1", "127.0.0.7", 6001)
    assert c.say(b"PLACE\r\n") == b"ROOT\r\n"
    meta.clock.advance(meta.flush_interval)  # the files follow within it
    assert (tmp_path / "topo.txt").read_text() == "s1:\n"
    assert (tmp_path / "NumberOfServers.txt").read_text() == "1\n"


def test_referral_and_reports_make_topo_txt(meta, tmp_path):
    a = Conn(MetaFactory(meta), host="127.0.0.7")
    a.say(b"P2P port=6001\r\n")
    a.say(b"PLACE\r\n")
    b = Conn(MetaFactory(meta), host="127.0.0.8")
    assert b.say(b"P2P port=6002 name=bee max=4 host=10.9.8.7\r\n") == welcomed(
        "bee", "10.9.8.7", 6002, source="127.0.0.8", seq=2
    )
    assert b.say(b"PLACE\r\n") == b"REFER s1 127.0.0.7 6001\r\n"
    assert b.say(b"NEIGHBOURS s1 up=s1\r\n") == b""
    assert a.say(b"NEIGHBOURS bee root=1\r\n") == b""
    meta.clock.advance(meta.flush_interval)
    assert (tmp_path / "topo.txt").read_text() == "s1: bee\nbee: s1\n"
    assert (tmp_path / "NumberOfServers.txt").read_text() == "2\n"
    # s1 has one slot left: a third newcomer goes there, a fourth to bee,
    # because a referral keeps its slot until the newcomer arrives.
    c = Conn(MetaFactory(meta))
    c.say(b"P2P port=6003\r\n")
    assert c.say(b"PLACE\r\n") == b"REFER s1 127.0.0.7 6001\r\n"
    d = Conn(MetaFactory(meta))
    d.say(b"P2P port=6004\r\n")
    assert d.say(b"PLACE\r\n") == b"REFER bee 10.9.8.7 6002\r\n"


def test_network_complete_is_logged_and_told(meta):
    conns = []
    for i, host in enumerate(["127.0.0.1", "127.0.0.2", "127.0.0.3"]):
        c = Conn(MetaFactory(meta), host=host)
        c.say(b"P2P port=600%d\r\n" % i)
        conns.append(c)
    conns[0].say(b"PLACE\r\n")
    conns[1].say(b"PLACE\r\n")
    conns[2].say(b"PLACE\r\n")
    conns[1].say(b"NEIGHBOURS s1\r\n")
    conns[2].say(b"NEIGHBOURS s1\r\n")
    assert not meta.complete
    assert conns[0].say(b"NEIGHBOURS s2 s3\r\n") == b""
    assert not meta.complete  # until the next flush, within the flush interval
    conns[1].transport.clear()
    meta.clock.advance(meta.flush_interval)
    assert conns[0].transport.value() == b"COMPLETE 3\r\n"
    assert conns[1].transport.value() == b"COMPLETE 3\r\n"
    assert meta.complete


def test_live_duplicate_name_is_refused_and_the_connection_can_retry(meta):
    a = Conn(MetaFactory(meta))
    a.say(b"P2P port=6001 name=alice\r\n")
    b = Conn(MetaFactory(meta))
    assert b.say(b"P2P port=6002 name=alice\r\n") == (
        b"ERROR name-taken the name alice is already live in this network\r\n"
    )
    assert b.say(b"P2P port=6002 name=bob\r\n") == welcomed("bob", "127.0.0.9", 6002, seq=2)
    # Once alice has said goodbye, her name is free again.
    assert a.say(b"BYE\r\n") == b"OK bye\r\n"
    c = Conn(MetaFactory(meta))
    assert c.say(b"P2P port=6003 name=alice\r\n") == welcomed("alice", "127.0.0.9", 6003, seq=3)


TOKEN_A = b"a" * 32
TOKEN_B = b"b" * 32


def test_a_name_belongs_to_its_token(meta):
    old = Conn(MetaFactory(meta))
    old.say(b"P2P port=6001 name=alice beat=5 token=" + TOKEN_A + b"\r\n")
    thief = Conn(MetaFactory(meta))
    assert thief.say(b"P2P port=6009 name=alice token=" + TOKEN_B + b"\r\n") == (
        b"ERROR name-taken the name alice is already live in this network\r\n"
    )
    # Alice restarted before her old connection was known to be dead: she
    # takes her name back at once, and the old connection is dropped.
    new = Conn(MetaFactory(meta))
    assert new.say(b"P2P port=6002 name=alice token=" + TOKEN_A + b"\r\n") == (
        welcomed("alice", "127.0.0.9", 6002, seq=2)
    )
    assert old.transport.disconnecting
    old.proto.connectionLost(None)
    assert meta.sessions["alice"] is new.proto
    # Alice crashes: her name is held for her for three heartbeats.
    new.proto.connectionLost(None)
    assert "alice" not in meta.registry
    assert thief.say(b"P2P port=6009 name=alice token=" + TOKEN_B + b"\r\n") == (
        b"ERROR name-taken the name alice belongs to a peer that vanished recently; "
        b"it is held for its owner a while\r\n"
    )
    back = Conn(MetaFactory(meta))
    assert back.say(b"P2P port=6002 name=alice token=" + TOKEN_A + b"\r\n").startswith(b"WELCOME")
    back.proto.connectionLost(None)
    meta.clock.advance(3 * 5 + 1)
    assert thief.say(b"P2P port=6009 name=alice token=" + TOKEN_B + b"\r\n").startswith(b"WELCOME")


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"FROB\r\n", b"ERROR unknown-verb unknown verb 'FROB'\r\n"),
        (b"PLACE 1\r\n", b"ERROR bad-args PLACE takes no fields\r\n"),
        (b"\xff\xfe\xfd\r\n", b"ERROR bad-encoding a line must be UTF-8 text\r\n"),
        (b"ACCEPT s1 beat=5000\r\n", b"ERROR unexpected ACCEPT is not expected here\r\n"),
        (b"NEIGHBOURS s1 s1\r\n", b"ERROR bad-args neighbours are distinct and not yourself\r\n"),
        (b"P2P port=7\r\n", b"ERROR unexpected this connection has already said P2P\r\n"),
        (b"P2P port=7 max=0\r\n", b"ERROR unexpected this connection has already said P2P\r\n"),
        # A peer's reports of what it shares and moves:
        (b"TRANSFER sideways 1 2 3 x y\r\n",
         b"ERROR bad-args TRANSFER: a transfer's direction is up or down, not 'sideways'\r\n"),
        (b"TRANSFER up -1 2 3 x y\r\n",
         b"ERROR bad-args TRANSFER: a size is a whole number of bytes without leading zeros, "
         b"not '-1'\r\n"),
        (b"TRANSFER up 1 2 3 x\r\n",
         b"ERROR bad-args TRANSFER takes DIRECTION DONE TOTAL RATE PEER NAME\r\n"),
        (b"TRANSFER up 1 2 3 x %00\r\n",
         b"ERROR bad-args TRANSFER: a file name cannot be empty or carry control characters, "
         b"not '%00'\r\n"),
        (b"SUMMARY files=x\r\n",
         b"ERROR bad-args SUMMARY: a count is a whole number without leading zeros, not 'x'\r\n"),
    ],
)
def test_error_replies_after_registration(meta, line, reply):
    """
    A bad line from a registered peer gets its error and harms nothing:
    the link stays, a PING is answered, a summary is still recorded.
    """
    c = Conn(MetaFactory(meta))
    c.say(b"P2P port=6001\r\n")
    assert c.say(line) == reply
    assert not c.transport.disconnecting
    assert c.say(b"PING\r\n") == b"PONG\r\n"
    assert c.say(b"SUMMARY files=1 bytes=2\r\n") == b""
    assert meta.registry.get("s1").activity.shared_bytes == 2


def test_bad_registrations(meta):
    c = Conn(MetaFactory(meta))
    assert c.say(b"P2P port=6001 max=0\r\n") == b"ERROR bad-args max is from 1 to 64\r\n"
    assert c.say(b"P2P name=x\r\n") == b"ERROR bad-args a peer registers with P2P port=PORT\r\n"
    assert c.say(b"P2P port=0\r\n").startswith(b"ERROR bad-args P2P: a port is a number")
    assert c.say(b"P2P\r\n") == b"OK observer: TOPO lists the network\r\n"
    assert c.say(b"PLACE\r\n") == b"ERROR unexpected register first: P2P port=PORT\r\n"


def test_over_long_line_and_observer_topology(meta):
    a = Conn(MetaFactory(meta), host="127.0.0.5")
    a.say(b"P2P port=6001\r\n")
    a.say(b"PLACE\r\n")
    bad = Conn(MetaFactory(meta))
    assert bad.say(b"P2P port=1" + b"0" * 100_000 + b"\r\n") == (
        b"ERROR too-long lines are at most 4096 bytes\r\n"
    )
    assert bad.transport.disconnecting
    o = Conn(MetaFactory(meta))
    o.say(b"P2P\n")
    assert o.say(b"TOPO\n") == b"PEER s1 127.0.0.5 6001\r\nEND 1\r\n"


# A peer.


def joined_peer(name="s1", max_neighbours=1):
    node = PeerNode(
        clock=Clock(), listen=None, meta=None, connect=None,
        settings=PeerSettings(name=name, max_neighbours=max_neighbours),
    )
    node.port = 7001
    node.membership.state = "root"
    return placed(node)


def accept(node, extra: bytes = b"") -> bytes:
    """
    What C{node} says when it accepts a newcomer: ACCEPT with its ticket.
    """
    return b"ACCEPT %s beat=5000 ticket=%s\r\n" % (node.peer_name.encode(), node.ticket.field().encode()) + extra


def test_peer_accepts_then_refers_to_its_neighbour():
    node = joined_peer(max_neighbours=1)
    first = Conn(PeerFactory(node), host="127.0.0.2")
    assert first.say(hello("s2", 7002, "127.0.0.2")) == accept(node, b"UP\r\nFREE none\r\n")
    assert list(node.neighbours) == ["s2"]
    assert not first.transport.disconnecting
    second = Conn(PeerFactory(node), host="127.0.0.3")
    assert second.say(hello("s3", 7003, "127.0.0.3", "via=s0")) == b"REFER s2 127.0.0.2 7002\r\n"
    assert second.transport.disconnecting
    # The host the ticket names wins over the address seen (an advertised
    # one: the connection may come from the host's other address).
    node2 = joined_peer(max_neighbours=1)
    c = Conn(PeerFactory(node2), host="127.0.0.2")
    c.say(b"HELLO s2 7002 host=peer-two.lan ticket=%s\r\n"
          % ticket("s2", 7002, "peer-two.lan", source="127.0.0.2").encode())
    assert node2.neighbours["s2"].host == "peer-two.lan"


def test_peer_refers_toward_the_nearest_free_slot():
    node = joined_peer(max_neighbours=2)
    a = Conn(PeerFactory(node), host="127.0.0.2")
    b = Conn(PeerFactory(node), host="127.0.0.3")
    assert a.say(hello("a", 7002, "127.0.0.2")) == accept(node, b"UP\r\nFREE 0\r\n")
    a.transport.clear()
    assert b.say(hello("b", 7003, "127.0.0.3")) == accept(node, b"UP\r\nFREE none\r\n")
    b.transport.clear()
    # Now full: each neighbour learns what lies behind us, not counting itself.
    assert a.transport.value() == b"FREE none\r\n"
    a.say(b"FREE 3\r\n")
    assert b.transport.value() == b"FREE 4\r\n"
    b.say(b"FREE 1\r\n")
    for _ in range(5):
        c = Conn(PeerFactory(node))
        assert c.say(hello("c", 7004)) == b"REFER b 127.0.0.3 7003\r\n"
    # ... but never back to where the newcomer came from.
    c = Conn(PeerFactory(node))
    assert c.say(hello("c", 7004, "127.0.0.9", "via=b")) == b"REFER a 127.0.0.2 7002\r\n"


def test_peer_errors():
    node = joined_peer(max_neighbours=1)
    c = Conn(PeerFactory(node))
    assert c.say(b"FREE 1\r\n") == b"ERROR unexpected FREE is for overlay links\r\n"
    assert c.say(hello("s1", 7001)) == b"ERROR name-taken s1 is already here\r\n"
    assert c.transport.disconnecting
    lonely = joined_peer()
    lonely.membership.state = "joining"
    c = Conn(PeerFactory(lonely))
    assert c.say(hello("s2", 7002)) == (
        b"ERROR not-joined this peer has not joined the overlay yet\r\n"
    )
    full = joined_peer(max_neighbours=1)
    Conn(PeerFactory(full)).say(hello("s2", 7002))
    c = Conn(PeerFactory(full))
    assert c.say(hello("s3", 7003, "127.0.0.9", "via=s2")) == (
        b"ERROR full this peer is full and has nobody to refer you to\r\n"
    )


def test_a_hello_waits_while_the_peer_is_still_joining():
    """
    The metadata server may send a newcomer to a peer that is itself still
    joining; that peer answers once it is in.
    """
    node = joined_peer(name="s5", max_neighbours=2)
    node.membership.state = "joining"
    node.joining.pending = Deferred()  # a join in progress
    c = Conn(PeerFactory(node))
    assert c.say(hello("s6", 7006)) == b""
    gone = Conn(PeerFactory(node))
    gone.say(hello("s7", 7007))
    gone.proto.connectionLost(None)
    node._joined("s1", 1)
    assert c.transport.value() == accept(node, b"UP\r\nFREE 0\r\n")
    assert list(node.neighbours) == ["s6"]


def test_stop_asked_three_times_stops_once():
    node = joined_peer()
    stops = []
    node.on_stop = lambda: stops.append(1)
    c = Conn(ControlFactory(node))
    assert c.say(b"STOP\r\nSTOP\r\nSTOP\r\n") == b'OK {"name":"s1"}\r\n' * 3
    node.clock.advance(0)
    assert stops == [1]


def test_control_status():
    node = joined_peer(max_neighbours=2)
    Conn(PeerFactory(node), host="127.0.0.2").say(hello("s2", 7002, "127.0.0.2"))
    c = Conn(ControlFactory(node))
    reply = c.say(b"STATUS\r\n")
    first, last = reply.splitlines()[0], reply.splitlines()[-1]
    assert first == b'ITEM neighbours {"name":"s2","host":"127.0.0.2","port":7002}'
    assert last.startswith(b'OK {"name":"s1",') and last.endswith(b"}")
    assert len(reply.splitlines()) == 2
    assert c.say(b"FROB\r\n") == b"ERROR unknown-verb unknown verb 'FROB'\r\n"


def test_fetch_progress_comes_at_most_ten_times_a_second_and_at_the_end(monkeypatch):
    from pathlib import Path

    from p2pshare.peer.download.transfer import Fetched

    node = joined_peer()
    clock = node.clock
    total = 512 << 20

    async def fetch(name, path, force, progress, sources, only, note):
        for i in range(1, 513):  # a piece verified every 2 ms, for a second
            clock.advance(0.002)
            progress(i << 20, total, 1)
        return Fetched(Path("/tmp/x"), total, "0" * 64, "s2")

    monkeypatch.setattr(node, "fetch", fetch)
    lines = Conn(ControlFactory(node)).say(b"FETCH x\r\n").splitlines()
    progress = [line for line in lines if line.startswith(b"PROGRESS")]
    assert 10 <= len(progress) <= 12, progress
    assert progress[-1] == f"PROGRESS {total} {total} sources=1".encode()
    assert lines[-1].startswith(b"OK ")


def linked_peer():
    """
    A joined peer with one neighbour, s2, on the returned connection.
    """
    node = joined_peer(max_neighbours=2)
    link = Conn(PeerFactory(node), host="127.0.0.2")
    link.say(hello("s2", 7002, "127.0.0.2"))
    link.transport.clear()
    return node, link


def forwarded_search(line: bytes) -> wire.Message:
    """
    What a peer with two neighbours, s2 and s3, passes on to s3 when s2
    says C{line}: the first line s3 hears.
    """
    node, link = linked_peer()
    other = Conn(PeerFactory(node), host="127.0.0.3")
    other.say(hello("s3", 7003, "127.0.0.3"))
    other.transport.clear()
    link.say(line)
    return wire.decode(other.transport.value().split(b"\r\n")[0])


def test_a_neighbour_flooding_searches_is_throttled():
    from p2pshare.peer.search import SEARCH_BURST

    node, link = linked_peer()
    flood = b"".join(b"SEARCH id%d 1 1000 x.txt\r\n" % i for i in range(int(SEARCH_BURST) + 50))
    out = link.say(flood)
    # Each search is answered (there is nobody else to ask), and those over
    # the allowance are not even looked at.
    assert out.count(b"RESULTS ") == SEARCH_BURST + 50
    # Those over it are refused, saying when to come again: never an
    # empty answer, which would read as "nothing here".
    assert out.count(b" refused=") == node.search.throttled == 50
    assert len(node.search.handled) == SEARCH_BURST
    # Time refills the allowance.
    node.clock.advance(1.0)
    link.say(b"SEARCH later 1 1000 x.txt\r\n")
    assert "later" in node.search.handled


def test_wait_is_clamped_and_hops_count_on():
    from p2pshare.peer.search import MAX_WAIT_MS

    forwarded = forwarded_search(b"SEARCH big 1 999999999 x.txt\r\n")
    assert forwarded.verb == "SEARCH"
    assert int(forwarded.args[1]) == 2
    assert int(forwarded.args[2]) <= MAX_WAIT_MS


def test_a_child_learns_its_grandparent():
    node = joined_peer(name="s2", max_neighbours=3)
    node.membership.state, node.uplink = "child", "s1"
    up = Conn(PeerFactory(node), host="127.0.0.1")
    up.proto.link = "s1"
    from p2pshare.peer.links import Neighbour

    node.neighbours["s1"] = Neighbour("s1", "10.0.0.1", 7001, up.proto)
    child = Conn(PeerFactory(node), host="127.0.0.3")
    assert child.say(hello("s3", 7003, "127.0.0.3")).startswith(accept(node, b"UP s1 10.0.0.1 7001\r\n"))
    # And the child side keeps what its parent says.
    node.up_said("s1", ("s0", "10.0.0.9", "7000"))
    assert node.grandparent == ("s0", "10.0.0.9", "7000")
    node.up_said("s1", ())
    assert node.grandparent is None


def test_a_slot_promised_to_a_newcomer_that_vanishes_is_released(meta):
    a = Conn(MetaFactory(meta), host="127.0.0.7")
    a.say(b"P2P port=6001\r\n")
    a.say(b"PLACE\r\n")
    b = Conn(MetaFactory(meta), host="127.0.0.8")
    b.say(b"P2P port=6002\r\n")
    assert b.say(b"PLACE\r\n") == b"REFER s1 127.0.0.7 6001\r\n"
    b.say(b"NEIGHBOURS s1 up=s1\r\n")
    a.say(b"NEIGHBOURS s2 root=1\r\n")
    # s1's last slot is promised to s3 ...
    c = Conn(MetaFactory(meta), host="127.0.0.9")
    c.say(b"P2P port=6003\r\n")
    assert c.say(b"PLACE\r\n") == b"REFER s1 127.0.0.7 6001\r\n"
    # ... which vanishes mid-join: the slot is free again for s4, who would
    # otherwise have been sent one level down, to s2.
    c.proto.connectionLost(None)
    d = Conn(MetaFactory(meta), host="127.0.0.10")
    d.say(b"P2P port=6004\r\n")
    assert d.say(b"PLACE\r\n") == b"REFER s1 127.0.0.7 6001\r\n"
    e = Conn(MetaFactory(meta), host="127.0.0.11")
    e.say(b"P2P port=6005\r\n")
    assert e.say(b"PLACE\r\n") == b"REFER s2 127.0.0.8 6002\r\n"


def test_a_second_root_is_told_to_rejoin(meta):
    a = Conn(MetaFactory(meta), host="127.0.0.7")
    a.say(b"P2P port=6001\r\n")
    assert a.say(b"PLACE\r\n") == b"ROOT\r\n"
    assert a.say(b"NEIGHBOURS root=1\r\n") == b""
    # s2 was cut off and, alone, made itself a root: it must rejoin.
    b = Conn(MetaFactory(meta), host="127.0.0.8")
    b.say(b"P2P port=6002\r\n")
    assert b.say(b"NEIGHBOURS root=1\r\n") == b"REJOIN\r\n"
    assert a.say(b"NEIGHBOURS root=1\r\n") == b""  # the real root is left alone


def test_a_peer_told_to_rejoin_looks_for_a_place_for_its_subtree():
    node = joined_peer(max_neighbours=2)
    node.membership.state = "root"
    node.startService = lambda: None
    node.running = True
    meta = Conn(MetaClientFactory(node), host="127.0.0.1")
    node.meta = meta.proto
    sent = meta.say(b"REJOIN\r\n")
    assert node.orphaned and not node.is_root
    assert sent.startswith(b"NEIGHBOURS files=0\r\n")  # it reports it has no parent now
    assert sent.endswith(b"PLACE rejoin=1\r\n")  # and asks where to go, with its subtree


def test_connections_are_capped_per_host_and_in_total(meta):
    from twisted.logger import globalLogPublisher

    from p2pshare.common import LimitedFactory

    logged: list[str] = []

    def observe(event):
        if "refused a connection" in event.get("log_format", ""):
            logged.append(f"{event['host']}: {event['why']}")

    globalLogPublisher.addObserver(observe)
    limited = LimitedFactory(MetaFactory(meta), total=3, per_host=2, clock=meta.clock)
    first = Conn(limited, host="127.0.0.7")
    second = Conn(limited, host="127.0.0.7")
    # Connections in use (they have said something) are not evicted.
    assert first.say(b"P2P port=6001\r\n") == welcomed("s1", "127.0.0.7", 6001)
    assert second.say(b"P2P\r\n") == b"OK observer: TOPO lists the network\r\n"
    third = Conn(limited, host="127.0.0.7")
    assert third.transport.value() == b"ERROR busy too many connections from your host (2)\r\n"
    assert third.transport.disconnecting
    assert Conn(limited, host="127.0.0.7").transport.disconnecting  # refused again ...
    other = Conn(limited, host="127.0.0.8")
    assert other.say(b"P2P\r\n") == b"OK observer: TOPO lists the network\r\n"
    fourth = Conn(limited, host="127.0.0.9")
    assert fourth.transport.value().startswith(b"ERROR busy too many connections (3)")
    # ... but logged once per source and minute.
    assert logged == ["127.0.0.7: too many connections from your host (2)",
                      "127.0.0.9: too many connections (3); try again later"]
    # The capped ones still work, and a closed connection frees its place.
    assert first.say(b"PING\r\n") == b"PONG\r\n"
    second.proto.connectionLost(None)
    again = Conn(limited, host="127.0.0.7")
    assert again.say(b"P2P\r\n") == b"OK observer: TOPO lists the network\r\n"
    # A minute later (the silent ones have timed out by then, but their
    # transports never report it: their places stay taken), the next
    # refusal is logged again.
    meta.clock.advance(60)
    Conn(limited, host="127.0.0.9")
    assert len(logged) == 3
    globalLogPublisher.removeObserver(observe)


def test_silent_connections_make_room_for_those_that_talk(meta):
    from p2pshare.common import LimitedFactory

    limited = LimitedFactory(MetaFactory(meta), total=4, per_host=2)
    silent = [Conn(limited, host="127.0.0.7") for _ in range(2)]
    # At the per-host cap, the oldest silent one goes; the newcomer is served.
    honest = Conn(limited, host="127.0.0.7")
    assert silent[0].transport.disconnecting and not silent[1].transport.disconnecting
    assert honest.say(b"P2P\r\n") == b"OK observer: TOPO lists the network\r\n"
    # Now the only silent one left is evicted next, never the one in use.
    again = Conn(limited, host="127.0.0.7")
    assert silent[1].transport.disconnecting and not honest.transport.disconnecting
    assert again.say(b"P2P\r\n") == b"OK observer: TOPO lists the network\r\n"
    assert Conn(limited, host="127.0.0.7").transport.value().startswith(b"ERROR busy")
    # The total cap makes room the same way, from any host.
    others = [Conn(limited, host=f"127.0.1.{i}") for i in range(2)]
    late = Conn(limited, host="127.0.2.1")
    assert others[0].transport.disconnecting
    assert late.say(b"P2P\r\n") == b"OK observer: TOPO lists the network\r\n"
    # A silent connection is aborted at the first-line deadline.
    meta.clock.advance(30)
    assert others[1].transport.disconnecting


def test_a_host_that_keeps_breaking_the_protocol_cools_off(meta):
    from p2pshare.common import LimitedFactory

    limited = LimitedFactory(MetaFactory(meta), clock=meta.clock, cooling_off=60)
    # One rude connection is cut, and its host's other connections (an
    # honest client behind the same address) go on; the third in ten
    # minutes gets the host refused.
    honest = Conn(limited, host="127.0.0.66")
    assert honest.say(b"P2P\r\n").startswith(b"OK")
    for strike in range(3):
        rude = Conn(limited, host="127.0.0.66")
        rude.say(b"P2P\r\n")
        out = rude.say(b"FROB\r\n" * 10)
        assert out.count(b"ERROR unknown-verb") == 10
        assert rude.transport.disconnecting
        if strike < 2:
            assert out.endswith(b"ERROR cooling-off 10 bad lines; this connection is closed\r\n")
            assert honest.say(b"TOPO\r\n") == b"END 0\r\n"
            assert Conn(limited, host="127.0.0.66").say(b"P2P\r\n").startswith(b"OK")
    assert out.endswith(b"ERROR cooling-off 10 bad lines; your host is refused for a while\r\n")
    again = Conn(limited, host="127.0.0.66")
    assert again.transport.value() == b"ERROR cooling-off your host misbehaved; refused for 60 s more\r\n"
    polite = Conn(limited, host="127.0.0.67")
    assert polite.say(b"P2P\r\n").startswith(b"OK")
    meta.clock.advance(61)
    back = Conn(limited, host="127.0.0.66")
    assert back.say(b"P2P\r\n").startswith(b"OK")


def test_a_neighbour_that_floods_searches_is_cut_off():
    from p2pshare.peer.search import FLOOD_LIMIT, SEARCH_BURST

    node, link = linked_peer()
    flood = b"".join(b"SEARCH f%d 1 1000 x.txt\r\n" % i
                     for i in range(int(SEARCH_BURST) + FLOOD_LIMIT + 5))
    out = link.say(flood)
    assert b"ERROR cooling-off " in out
    assert link.transport.disconnecting


def test_a_neighbour_that_claims_its_searches_come_from_further_away_is_bounded_too():
    """
    Searches a neighbour passes on from its subtree are bounded by their
    own allowance; over it they are refused (never an empty answer), but the link is not cut
    (the neighbour may be honest, relaying a liar below it), and a claim
    of 0 hops counts as the neighbour's own search.
    """
    from p2pshare.peer.search import FLOOD_LIMIT, FORWARD_BURST, SEARCH_BURST

    node, link = linked_peer()
    flood = b"".join(b"SEARCH far%d 7 1000 x.txt\r\n" % i
                     for i in range(int(FORWARD_BURST) + FLOOD_LIMIT + 5))
    out = link.say(flood)
    assert len(node.search.handled) == FORWARD_BURST
    assert out.count(b"RESULTS ") == FORWARD_BURST + FLOOD_LIMIT + 5
    assert b"ERROR" not in out and not link.transport.disconnecting
    node, link = linked_peer()
    zero = b"".join(b"SEARCH zero%d 0 1000 x.txt\r\n" % i
                    for i in range(int(SEARCH_BURST) + FLOOD_LIMIT + 5))
    out = link.say(zero)
    assert len(node.search.handled) == SEARCH_BURST  # its own allowance, not the larger one
    assert b"ERROR cooling-off " in out and link.transport.disconnecting
    # What such a search claims does not carry on: it goes on as coming
    # from two hops away, so the next peer counts it against the sender's
    # subtree, not against this peer's own searches.
    forwarded = forwarded_search(b"SEARCH claims-zero 0 1000 x.txt\r\n")
    assert (forwarded.verb, forwarded.args[1]) == ("SEARCH", "2")


def test_results_kept_per_search_are_bounded():
    from p2pshare.peer.search import MAX_RESULTS

    node, link = linked_peer()
    found = []
    node.search.start("*.txt", 5.0, "big").addCallback(lambda f: found.extend(f.matches))
    matches = [wire.Match(f"a{i}.txt", 1, "0" * 64, "s2", "127.0.0.2", 7002, 1).field()
               for i in range(MAX_RESULTS + 2500)]  # 2,500 too many
    for i in range(0, len(matches), 25):
        link.say(b"RESULTS big more=1 " + " ".join(matches[i:i + 25]).encode() + b"\r\n")
    link.say(b"RESULTS big\r\n")
    assert len(found) == MAX_RESULTS


def test_a_request_that_breaks_the_grammar_is_refused_here_and_leaves_no_waiter():
    """
    A request whose own line cannot be encoded (an option the grammar does
    not know) raises at once, sends nothing, and leaves nothing waiting to
    fail unheard when the connection closes.
    """
    from twisted.python.failure import Failure

    from p2pshare.client import _Client

    proto = _Client()
    transport = StringTransport()
    proto.makeConnection(transport)
    with pytest.raises(wire.WireError, match="no option 'bogus'"):
        proto.request("FETCH", "x", answers={"OK"}, bogus=1)
    assert transport.value() == b"" and len(proto.replies) == 0
    proto.connectionLost(Failure(ConnectionDone()))


# What a peer tells the metadata server it is doing (for the web page).


def test_a_summary_reaches_the_peers_record(meta):
    c = Conn(MetaFactory(meta))
    c.say(b"P2P port=6001\r\n")
    longest = "%C3%A9" * 333 + "ab"  # 2000 characters, the longest path field
    assert c.say(b"TRANSFER down 10 100 5 3%20holders music/a%20b.ogg\r\n"
                 + f"TRANSFER up 7 9 0 127.0.0.1 {longest}\r\n".encode()
                 + b"SUMMARY files=2 bytes=300 transfers=5\r\n") == b""
    record = meta.registry.get("s1")
    activity = record.activity
    assert (activity.shared_files, activity.shared_bytes, activity.transfer_count) == (2, 300, 5)
    assert activity.transfers == [
        {"direction": "down", "done": 10, "total": 100, "rate": 5, "peer": "3 holders",
         "name": "music/a b.ogg"},
        {"direction": "up", "done": 7, "total": 9, "rate": 0, "peer": "127.0.0.1",
         "name": "\u00e9" * 333 + "ab"},
    ]
    # The next summary replaces the last; none in progress is none.
    assert c.say(b"SUMMARY files=2 bytes=300 transfers=0\r\n") == b""
    assert (record.activity.transfers, record.activity.transfer_count) == ([], 0)


def test_a_summary_holds_a_bounded_number_of_transfers(meta):
    observer = Conn(MetaFactory(meta))
    observer.say(b"P2P\r\n")
    assert observer.say(b"TRANSFER up 1 2 3 x y\r\n") == (
        b"ERROR unexpected register first: P2P port=PORT\r\n"
    )
    c = Conn(MetaFactory(meta))
    c.say(b"P2P port=6001\r\n")
    line = b"TRANSFER up 1 2 3 x y\r\n"
    assert c.say(line * wire.MAX_REPORTED) == b""
    assert c.say(line) == (
        f"ERROR bad-args a summary holds at most {wire.MAX_REPORTED} transfers\r\n".encode()
    )
    c.say(b"SUMMARY transfers=9\r\n")
    assert meta.registry.get("s1").activity.transfers == []  # what came before the error is dropped


def test_a_peer_reports_its_transfers_only_when_something_changed():
    from p2pshare.peer.files import Transfer

    node = joined_peer()
    meta_link = Conn(MetaClientFactory(node), host="127.0.0.1")
    node.meta = meta_link.proto
    meta_link.transport.clear()
    node._report_summary()
    assert meta_link.transport.value() == b"SUMMARY bytes=0 files=0 transfers=0\r\n"
    meta_link.transport.clear()
    node._report_summary()
    assert meta_link.transport.value() == b""  # nothing new
    for i in range(wire.MAX_REPORTED + 2):
        node.files.transfers[i] = Transfer(f"dir/f {i}" + "\u00e9" * 990, "up", "127.0.0.2", 0.0,
                                           total=10, sent=lambda: 4)
    node._report_summary()
    lines = meta_link.transport.value().split(b"\r\n")[:-1]
    assert len(lines) == wire.MAX_REPORTED + 1
    assert lines[-1] == f"SUMMARY bytes=0 files=0 transfers={wire.MAX_REPORTED + 2}".encode()
    for line in lines[:-1]:
        msg = wire.decode(line)  # every line is valid, the long names shortened
        assert msg.verb == "TRANSFER" and msg.args[:3] == ("up", "4", "10")
        name = wire.unquote_name(msg.args[5])
        assert name.startswith("dir/f ") and name.endswith("\u2026")


def test_lines_that_arrive_while_the_server_stops_are_ignored(tmp_path):
    """
    A report that arrives after the metadata server stopped (its registry
    is closed) is dropped, not an unhandled error.
    """
    server = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, expect=2)
    server.startService()
    c = Conn(MetaFactory(server))
    c.say(b"P2P port=6001\r\n")
    server.stopService()
    assert c.say(b"NEIGHBOURS s2 up=s2\r\nSUMMARY files=1\r\n") == b""


def test_registrations_are_capped_in_all_and_per_address_but_observers_get_in(tmp_path):
    from twisted.logger import globalLogPublisher

    logged: list[str] = []

    def observe(event):
        if "refused a registration" in event.get("log_format", ""):
            logged.append(event["source"])

    globalLogPublisher.addObserver(observe)
    server = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, expect=9,
                        max_peers=3, max_per_address=2)
    server.startService()
    a = Conn(MetaFactory(server), host="10.0.0.1")
    assert a.say(b"P2P port=6001 token=" + b"a" * 32 + b"\r\n").startswith(b"WELCOME s1 ")
    Conn(MetaFactory(server), host="10.0.0.1").say(b"P2P port=6002\r\n")
    nat = Conn(MetaFactory(server), host="10.0.0.1")
    assert nat.say(b"P2P port=6003\r\n") == (
        b"ERROR full 2 peers already come from your address "
        b"(the metadata server's --max-per-address)\r\n"
    )
    assert not nat.transport.disconnecting  # it may still observe
    assert nat.say(b"P2P\r\n") == b"OK observer: TOPO lists the network\r\n"
    Conn(MetaFactory(server), host="10.0.0.2").say(b"P2P port=6004\r\n")
    late = Conn(MetaFactory(server), host="10.0.0.3")
    assert late.say(b"P2P port=6005\r\n") == (
        b"ERROR full this network is full: 3 peers (the metadata server's --max-peers)\r\n"
    )
    # A full network still lets its own peers come back, and answers TOPO.
    back = Conn(MetaFactory(server), host="10.0.0.1")
    assert back.say(b"P2P port=6001 name=s1 token=" + b"a" * 32 + b"\r\n").startswith(b"WELCOME s1 ")
    observer = Conn(MetaFactory(server), host="10.0.0.9")
    observer.say(b"P2P\r\n")
    assert observer.say(b"TOPO\r\n").endswith(b"END 3\r\n")
    # A peer that leaves makes room.
    a.proto.connectionLost(None)  # the replaced connection: nothing changes
    back.say(b"BYE\r\n")
    assert late.say(b"P2P port=6005\r\n").startswith(b"WELCOME ")  # the refused one retries
    # Each refused source is logged once a minute, however often it tries.
    for _ in range(5):
        Conn(MetaFactory(server), host="10.0.0.1").say(b"P2P port=6006\r\n")
    assert logged == ["10.0.0.1", "10.0.0.3"]
    globalLogPublisher.removeObserver(observe)
    server.stopService()


def test_a_silent_session_is_dropped_after_three_beats_without_looking_at_all(tmp_path):
    """
    The metadata server looks at a session when its deadline comes (three
    of its beats after it was last heard from, and a second), not at every
    session every second.
    """
    clock = Clock()
    server = MetaServer(Registry(":memory:"), clock, data_dir=tmp_path, expect=9)
    server.startService()
    talker = Conn(MetaFactory(server), host="10.0.0.1")
    talker.say(b"P2P port=6001 beat=5\r\n")
    silent = Conn(MetaFactory(server), host="10.0.0.2")
    silent.say(b"P2P port=6002 beat=5\r\n")
    quiet = [Conn(MetaFactory(server), host="10.0.0.3") for _ in range(50)]
    for i, c in enumerate(quiet):
        c.say(b"P2P port=%d beat=600\r\n" % (7000 + i))
    looked = []
    alive = server.peers.watch

    def watch(peer):
        looked.append(peer.name)
        alive(peer)

    server.peers.watch = watch
    for _ in range(17):
        clock.advance(1)
        talker.say(b"PING\r\n")
    assert not talker.transport.disconnecting
    assert silent.transport.disconnecting  # 16 s > 3 beats of 5 s, and a second
    # Only the two 5 s sessions were looked at; the 50 others not once.
    assert set(looked) == {"s1"}
    assert not any(c.transport.disconnecting for c in quiet)
    server.stopService()


def test_a_rejoining_subtree_is_placed_outside_itself(meta):
    """
    s1 (root, max 2) has s2 and s5 (max 1); s2 has s3, s3 has s4 (free
    slots).  s2 leaves, and a newcomer (max 1) takes s1's freed slot.  Then
    s3 rejoins with its subtree: the only free slots left are below s3
    itself, so it must be sent into the tree (to s1 or s5, which refer
    onward), never to s4.
    """
    conns = {}
    for i, most in ((1, 2), (2, 4), (3, 4), (4, 4), (5, 1)):
        c = Conn(MetaFactory(meta), host=f"10.0.0.{i}")
        c.say(b"P2P port=%d name=s%d max=%d\r\n" % (6000 + i, i, most))
        conns[f"s{i}"] = c
    tree = {"s1": (["s2", "s5"], None), "s2": (["s1", "s3"], "s1"), "s5": (["s1"], "s1"),
            "s3": (["s2", "s4"], "s2"), "s4": (["s3"], "s3")}
    conns["s1"].say(b"PLACE\r\n")
    for name, (links, up) in tree.items():
        where = f"up={up}" if up else "root=1"
        conns[name].say(f"NEIGHBOURS {' '.join(links)} {where}\r\n".encode())
    meta.clock.advance(meta.flush_interval)
    assert meta.tally.settled()
    conns["s2"].say(b"BYE\r\n")
    conns["s1"].say(b"NEIGHBOURS s5 root=1\r\n")
    conns["s3"].say(b"NEIGHBOURS s4\r\n")  # it lost its parent
    new = Conn(MetaFactory(meta), host="10.0.0.9")
    new.say(b"P2P port=6009 name=x max=1\r\n")
    assert new.say(b"PLACE\r\n") == b"REFER s1 10.0.0.1 6001\r\n"  # not into s3's subtree
    reply = conns["s3"].say(b"PLACE rejoin=1\r\n")
    assert reply.split()[:2] in ([b"REFER", b"s1"], [b"REFER", b"s5"]), reply


def test_requests_piled_up_behind_a_slow_dial_back_close_the_connection(meta, monkeypatch):
    """
    A peer waits for each answer before its next request; one that piles
    up requests behind a PLACE still waiting for its dial-back (SIZE is
    the cheapest) is closed, not held in memory without bound.
    """
    from twisted.internet.defer import Deferred

    from p2pshare.meta.server import MAX_QUEUED

    c = Conn(MetaFactory(meta), host="127.0.0.7")
    c.say(b"P2P port=6001\r\n")
    monkeypatch.setattr(meta, "when_checked", lambda name: Deferred())  # a dial-back that hangs
    assert c.say(b"PLACE\r\n" + b"SIZE\r\n" * (MAX_QUEUED - 2)) == b""
    assert not c.transport.disconnecting
    out = c.say(b"SIZE\r\n" * 5)
    assert out.startswith(b"ERROR cooling-off ") and c.transport.disconnecting


def test_the_size_of_the_network_counts_every_registered_peer(meta):
    a = Conn(MetaFactory(meta), host="127.0.0.7")
    a.say(b"P2P port=6001\r\n")
    assert a.say(b"SIZE\r\n") == b"NETWORK 1 1\r\n"
    b = Conn(MetaFactory(meta), host="127.0.0.8")
    b.say(b"P2P port=6002\r\n")  # registered, not placed: still part of the network
    assert a.say(b"SIZE\r\n") == b"NETWORK 2 2\r\n"
    assert b.say(b"BYE\r\n") == b"OK bye\r\n"
    assert a.say(b"SIZE\r\n") == b"NETWORK 1 2\r\n"  # numbers are never given again
    assert Conn(MetaFactory(meta)).say(b"SIZE\r\n").startswith(b"ERROR bad-flag ")


def test_a_hop_count_at_the_limit_is_clamped_not_a_crash():
    from p2pshare.peer.search import MAX_HOPS

    forwarded = forwarded_search(b"SEARCH deep 999999999 1000 x.txt\r\n")
    assert (forwarded.verb, forwarded.args[1]) == ("SEARCH", str(MAX_HOPS + 1))


def test_a_handler_that_fails_answers_error_and_the_link_goes_on(monkeypatch, no_unhandled_failures):
    node, link = linked_peer()

    def broken(proto, msg):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(node.search, "received", broken)
    out = link.say(b"SEARCH x 1 1000 x.txt\r\n")
    assert out == b"ERROR failed SEARCH could not be handled here\r\n"
    assert not link.transport.disconnecting
    assert link.say(b"PING\r\n") == b"PONG\r\n"
    # The bug is logged, with its traceback, for whoever fixes it.
    assert [e["log_failure"].value.args for e in no_unhandled_failures] == [("a bug of ours",)]
    no_unhandled_failures.clear()


@pytest.mark.parametrize(("web", "reached_at", "told"), [
    (None, "127.0.0.1", None),
    (("127.0.0.1", 8080), "127.0.0.1", "8080"),
    (("0.0.0.0", 8080), "192.168.1.5", "8080"),
    (("127.0.0.1", 8080), "192.168.1.5", None),  # a loopback page is no use to another host
])
def test_welcome_names_the_topology_page_where_the_peer_can_reach_it(meta, web, reached_at, told):
    meta.web = web
    transport = StringTransport(hostAddress=IPv4Address("TCP", reached_at, 5000),
                                peerAddress=IPv4Address("TCP", "127.0.0.7", 40000))
    proto = MetaFactory(meta).buildProtocol(transport.getPeer())
    proto.makeConnection(transport)
    proto.dataReceived(b"P2P port=6001\r\n")
    welcome = wire.decode(transport.value().split(b"\r\n")[0])
    assert welcome.verb == "WELCOME" and welcome.options.get("web") == told
