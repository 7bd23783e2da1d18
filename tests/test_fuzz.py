"""
Fuzzing each role's listening side with arbitrary and near-valid input,
split at random points and interleaved with the passing of time: nothing
raises, every answer is a well-formed line (or HTTP on the peer's port),
buffers stay bounded, and other connections are unaffected.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from placed import hello, placed
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from p2pshare import wire
from p2pshare.admission import Secret
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaFactory, MetaServer
from p2pshare.peer.control import ControlFactory
from p2pshare.peer.http import SniffingFactory
from p2pshare.peer.node import PeerNode, PeerSettings
from p2pshare.peer.protocol import PeerFactory

VERBS = sorted(wire.SPECS)
words = st.one_of(
    st.sampled_from(VERBS + [v.lower() for v in VERBS] + ["GET", "HEAD", "POST"]),
    st.from_regex(r"[A-Za-z0-9=._/%:-]{0,12}", fullmatch=True),
    st.sampled_from(["port=5001", "name=s1", "max=0", "token=" + "a" * 32, "rejoin=1",
                     "more=1", "*.txt", "../../etc/passwd", "%00", "\x00", "\r", "é"]),
)
near_valid_lines = st.lists(words, min_size=0, max_size=8).map(
    lambda ws: (" ".join(ws)).encode("utf-8", "surrogateescape") + b"\r\n"
)
chunks = st.lists(
    st.one_of(near_valid_lines, st.binary(max_size=200), st.just(b"x" * 5000)),
    max_size=15,
)
steps = st.lists(st.tuples(chunks, st.sampled_from([0, 0.5, 5.0, 20.0])), max_size=4)


def connect(factory, host="127.0.0.9"):
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    proto = factory.buildProtocol(transport.getPeer())
    proto.makeConnection(transport)
    return proto, transport


def well_formed(output: bytes) -> None:
    for line in output.split(b"\r\n")[:-1]:
        wire.decode(line)  # raises if the server ever sent a malformed line


def feed(proto, transport, data: bytes, clock: Clock, seconds: float) -> None:
    for i in range(0, len(data), 37):
        if transport.disconnecting:
            return
        # After the sniffer hands over, bytes go where the transport would
        # deliver them: to the protocol it chose.
        getattr(transport, "protocol", proto).dataReceived(data[i : i + 37])
    clock.advance(seconds)


SECRET = Secret(b"s" * 32)


def admitted(proto, transport) -> None:
    """
    Prove membership of the private network on a fresh connection.
    """
    nonce = "ab" * 16
    proto.dataReceived(f"AUTH peer - {nonce}\r\n".encode())
    challenge = wire.decode(transport.value().split(b"\r\n")[0])
    mine, theirs = ("peer", "-", nonce), ("meta", "meta", challenge.args[0])
    proto.dataReceived(f"PROOF {SECRET.proof('initiator', mine, theirs)}\r\n".encode())
    assert transport.value().split(b"\r\n")[1].startswith(b"PROOF ")
    transport.clear()


@settings(max_examples=150, deadline=None)
@given(steps)
def test_fuzzing_the_metadata_server(steps_):
    fuzz_meta(None, steps_)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_fuzzing_a_private_metadata_server(steps_):
    fuzz_meta(SECRET, steps_)


def fuzz_meta(secret, steps_):
    clock = Clock()
    server = MetaServer(Registry(), clock, data_dir=None, expect=2, secret=secret)
    server.startService()
    factory = MetaFactory(server)
    bystander, bystander_transport = connect(factory, "127.0.0.2")
    if secret is not None:
        admitted(bystander, bystander_transport)
    bystander.dataReceived(b"P2P port=6001 name=bystander\r\n")
    for data, seconds in steps_:
        proto, transport = connect(factory)
        feed(proto, transport, b"".join(data), clock, seconds)
        well_formed(transport.value())
        if secret is not None:
            # A stranger hears nothing about the network: only challenges
            # and errors, never a name or a topology.
            for line in transport.value().split(b"\r\n")[:-1]:
                assert line.split()[0] in (b"CHALLENGE", b"ERROR"), line
            assert b"bystander" not in transport.value()
        assert len(proto._buffer) <= proto.MAX_LENGTH + 1
        proto.connectionLost(None)
        # The bystander is never disturbed (and, speaking after every
        # step, never silent for long enough to be timed out).
        bystander_transport.clear()
        bystander.dataReceived(b"PING\r\n")
        assert bystander_transport.value() == b"PONG\r\n"
    assert server.sessions["bystander"] is bystander
    server.stopService()


def a_peer(clock):
    node = PeerNode(clock=clock, listen=None, meta=None, connect=None,
                    settings=PeerSettings(name="s1", max_neighbours=2))
    node.port = 7001
    node.membership.state = "root"
    return placed(node)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_fuzzing_a_peer_port_and_control_channel(steps_):
    clock = Clock()
    node = a_peer(clock)
    for factory in (SniffingFactory(node.site, PeerFactory(node)), ControlFactory(node)):
        for data, seconds in steps_:
            proto, transport = connect(factory)
            payload = b"".join(data)
            feed(proto, transport, payload, clock, seconds)
            out = transport.value()
            if not out.startswith(b"HTTP/"):
                well_formed(out)
            real = transport.protocol if hasattr(transport, "protocol") else proto
            buffered = getattr(real, "_buffer", b"")
            assert len(buffered) <= 4096 + 1 or out.startswith(b"HTTP/")
            real.connectionLost(None)
    # Still a working peer: a newcomer is accepted.
    proto, transport = connect(SniffingFactory(node.site, PeerFactory(node)), "127.0.0.3")
    proto.dataReceived(hello("fresh", 7009, "127.0.0.3"))
    assert transport.value().startswith(b"ACCEPT s1 beat=5000 ticket=") or transport.value().startswith(
        b"REFER "
    )
