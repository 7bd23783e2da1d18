"""
Private networks: the secret, the challenge-response typed byte by byte
against the metadata server and a peer, replays, signed URLs, and whole
simulated networks where a stranger learns nothing.
"""

from __future__ import annotations

import pytest
from placed import hello, placed
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from p2pshare import wire
from p2pshare.admission import META_IDENTITY, Secret, SecretError
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaFactory, MetaServer
from p2pshare.peer.http import SniffingFactory
from p2pshare.peer.node import PeerNode, PeerSettings
from p2pshare.peer.protocol import PeerFactory
from p2pshare.simnet import SimNet, assert_tree

KEY = Secret(b"k" * 32)
OTHER = Secret(b"o" * 32)
NONCE = "ab" * 16


class Conn:
    def __init__(self, factory, host="127.0.0.9"):
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.proto = factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)

    def say(self, data: bytes) -> list[wire.Message]:
        self.transport.clear()
        getattr(self.transport, "protocol", self.proto).dataReceived(data)
        return [wire.decode(line) for line in self.transport.value().split(b"\r\n")[:-1]]


def prove(conn: Conn, secret: Secret, responder: tuple[str, str], nonce=NONCE, name="-"):
    """
    Type the initiator's half of the handshake; return what came back and
    the lines we said (for a replay).
    """
    auth = f"AUTH peer {name} {nonce}\r\n".encode()
    [challenge] = conn.say(auth)
    assert challenge.verb == "CHALLENGE"
    mine, theirs = ("peer", name, nonce), (*responder, challenge.args[0])
    proof = f"PROOF {secret.proof('initiator', mine, theirs)}\r\n".encode()
    replies = conn.say(proof)
    return replies, mine, theirs, [auth, proof]


@pytest.fixture
def meta(tmp_path):
    server = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, expect=3, secret=KEY)
    server.startService()
    # One member in, so there is a topology a stranger must not see.
    member = Conn(MetaFactory(server), "127.0.0.2")
    prove(member, KEY, META_IDENTITY)
    assert member.say(b"P2P port=6001 name=member\r\n")[0].verb == "WELCOME"
    assert member.say(b"PLACE\r\n")[0].verb == "ROOT"
    yield server
    server.stopService()


def test_the_secret_itself(tmp_path):
    with pytest.raises(SecretError, match="at least 16 bytes"):
        Secret(b"short")
    (tmp_path / "s").write_bytes(b"  " + b"x" * 20 + b"\n")
    assert Secret.from_file(tmp_path / "s").mac("a") == Secret(b"x" * 20).mac("a")
    with pytest.raises(SecretError, match="cannot read the secret file"):
        Secret.from_file(tmp_path / "missing")
    assert "x" not in repr(Secret(b"x" * 20))
    # Each side's proof is its own, and binds every field.
    a, b = ("peer", "s1", NONCE), ("meta", "meta", "cd" * 16)
    assert KEY.proof("initiator", a, b) != KEY.proof("responder", a, b)
    assert KEY.check_proof(KEY.proof("initiator", a, b), "initiator", a, b)
    assert not KEY.check_proof(KEY.proof("initiator", a, b), "initiator", a, ("meta", "meta", "ef" * 16))
    assert not OTHER.check_proof(KEY.proof("initiator", a, b), "initiator", a, b)


def test_signed_urls():
    url = KEY.sign_path("/files/a%20b.txt", now=1000)
    path, query = url.split("?")
    args = dict(kv.split("=") for kv in query.split("&"))
    assert KEY.check_path(path, args["expires"], args["sig"], now=1000) is None
    assert "expired" in KEY.check_path(path, args["expires"], args["sig"], now=1000 + 601)
    assert "does not match" in KEY.check_path("/files/other", args["expires"], args["sig"], now=1000)
    assert "does not match" in OTHER.check_path(path, args["expires"], args["sig"], now=1000)
    assert "members only" in KEY.check_path(path, "", "", now=1000)
    far = str(1000 + 10**6)
    assert "too long" in KEY.check_path(path, far, KEY.mac("url", path, far), now=1000)


def test_a_member_registers_after_proving_itself(meta, tmp_path):
    c = Conn(MetaFactory(meta))
    replies, mine, theirs, _ = prove(c, KEY, META_IDENTITY)
    [proof] = replies
    assert proof.verb == "PROOF"
    assert KEY.check_proof(proof.args[0], "responder", mine, theirs)
    # Then the historical flag, as in an open network.
    assert c.say(b"P2P port=6002\r\n")[0].verb == "WELCOME"
    assert c.say(b"PLACE\r\n")[0].verb == "REFER"


@pytest.mark.parametrize("first", [b"P2P port=6002\r\n", b"P2P\r\n", b"TOPO\r\n", b"PING\r\n",
                                   b"PROOF " + b"0" * 64 + b"\r\n", b"\x00garbage\r\n"])
def test_a_stranger_is_refused_and_learns_nothing(meta, tmp_path, first):
    c = Conn(MetaFactory(meta))
    [reply] = c.say(first)
    assert (reply.verb, reply.args[0]) == ("ERROR", wire.E_AUTH_REQUIRED)
    assert "member" not in c.transport.value().decode()
    assert c.transport.disconnecting
    assert "member" in meta.sessions and len(meta.sessions) == 1


def test_a_wrong_secret_is_refused(meta):
    c = Conn(MetaFactory(meta))
    replies, *_ = prove(c, OTHER, META_IDENTITY)
    assert [(m.verb, m.args[0]) for m in replies] == [("ERROR", wire.E_AUTH_FAILED)]
    assert c.transport.disconnecting
    assert "member" not in c.transport.value().decode()


def test_a_recorded_exchange_replayed_is_refused(meta):
    honest = Conn(MetaFactory(meta))
    replies, _, _, said = prove(honest, KEY, META_IDENTITY)
    assert replies[0].verb == "PROOF"
    # An eavesdropper plays the same lines again: a fresh challenge, and
    # the old proof does not fit it.
    thief = Conn(MetaFactory(meta))
    assert thief.say(said[0])[0].verb == "CHALLENGE"
    assert [(m.verb, m.args[0]) for m in thief.say(said[1])] == [("ERROR", wire.E_AUTH_FAILED)]
    assert thief.transport.disconnecting


def test_a_handshake_that_stalls_is_cut(tmp_path):
    clock = Clock()
    server = MetaServer(Registry(":memory:"), clock, data_dir=tmp_path, expect=1, secret=KEY)
    c = Conn(MetaFactory(server))
    c.say(f"AUTH peer - {NONCE}\r\n".encode())
    clock.advance(11)
    assert c.transport.disconnecting


def test_a_peer_port_asks_for_proof_too():
    node = PeerNode(clock=Clock(), listen=None, meta=None, connect=None,
                    settings=PeerSettings(name="s1"), secret=KEY)
    node.port, node.membership.state = 7001, "root"
    placed(node)
    stranger = Conn(SniffingFactory(node.site, PeerFactory(node)))
    [reply] = stranger.say(hello("fresh", 7009))
    assert (reply.verb, reply.args[0]) == ("ERROR", wire.E_AUTH_REQUIRED)
    # A member who meant to reach s1 is accepted; one who meant another
    # peer (a stale address) is not.
    member = Conn(SniffingFactory(node.site, PeerFactory(node)))
    replies, *_ = prove(member, KEY, ("peer", "s1"), name="s2")
    assert replies[0].verb == "PROOF"
    # It is accepted under the name it proved the secret as, and no other.
    [refused] = member.say(hello("s3", 7009))
    assert (refused.verb, refused.args[0]) == ("ERROR", wire.E_BAD_TICKET)
    assert "you proved the network secret as s2, not as s3" in refused.text
    member = Conn(SniffingFactory(node.site, PeerFactory(node)))
    prove(member, KEY, ("peer", "s1"), name="s2")
    assert member.say(hello("s2", 7009))[0].verb == "ACCEPT"
    lost = Conn(SniffingFactory(node.site, PeerFactory(node)))
    replies, *_ = prove(lost, KEY, ("peer", "s9"), name="s3")
    assert replies[0].args[0] == wire.E_AUTH_FAILED


def test_an_open_network_says_so_to_a_private_peer(tmp_path):
    server = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, expect=1)
    c = Conn(MetaFactory(server))
    [reply] = c.say(f"AUTH peer - {NONCE}\r\n".encode())
    assert (reply.verb, reply.args[0], reply.text) == ("ERROR", "unexpected", "this network is open: it has no secret")


def test_a_private_network_forms_searches_and_keeps_strangers_out(tmp_path):
    net = SimNet(tmp_path, secret=KEY)
    net.start_meta(expect=5)
    for _ in range(5):
        net.make_peer().startService()
    net.settle(60)
    assert all(p.joined for p in net.peers)
    assert_tree(net.views(), {n: 2 for n in net.views()})
    (net.share_dir(4) / "song.ogg").write_bytes(b"la" * 100)
    net.peers[4].refresh_share()
    net.settle(3)
    found = []
    net.peers[0].search.start("song.ogg").addCallback(lambda f: found.extend(f.matches))
    net.settle(30)
    assert [m.holder for m in found] == [net.peers[4].peer_name]

    for secret in (None, OTHER):
        stranger = net.make_peer(stranger=True, own_secret=secret)
        stranger.startService()
        net.settle(30)
        assert not stranger.joined and stranger.peer_name is None
        assert stranger.neighbours == {}
        stranger.stopService()
    assert sorted(net.meta.sessions) == sorted(p.peer_name for p in net.peers[:5])
    assert_tree(net.views(), {n: 2 for n in net.views()})
