"""
Reaching a peer behind NAT, in one process: the port mapping's life on a
Clock with a scripted gateway (asked, renewed, tried again, removed), which
addresses count as private, and the metadata server's second dial-back
(C{CHECK}) for a peer whose gateway forwards its port now.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from p2pshare.peer.mapping import RETRY, MappingError, PortMapping, is_private
from p2pshare.simnet import ClientEndpoint, ServerEndpoint, SimNet
from p2pshare.tickets import answer


class ScriptedGateway:
    """
    A gateway that forwards when told to, or refuses; every call noted.
    """

    def __init__(self):
        self.calls = []
        self.refuse: str | None = None

    def open(self, port, lease, description):
        self.calls.append(("open", port, lease))
        if self.refuse:
            raise MappingError(self.refuse)
        return ("11.0.0.21", "10.1.0.2")

    def close(self, port):
        self.calls.append(("close", port))


def here(f, *args):
    try:
        return succeed(f(*args))
    except Exception as e:
        return fail(e)


def test_a_mapping_is_asked_once_renewed_at_half_its_lease_and_removed_on_stop():
    clock, gateway, told = Clock(), ScriptedGateway(), []
    mapping = PortMapping(clock, here, gateway, on_mapped=lambda: told.append(1), lease=600)
    mapping.startService()
    mapping.request(5001)
    mapping.request(5002)  # once: later requests change nothing
    assert gateway.calls == [("open", 5001, 600)] and told == [1]
    assert mapping.status() == {"mapped": "11.0.0.21:5001", "mapping_problem": None}
    clock.advance(299)
    assert len(gateway.calls) == 1
    clock.advance(1)
    assert gateway.calls[-1] == ("open", 5001, 600) and len(gateway.calls) == 2
    assert told == [1]  # a renewal is not news
    mapping.stopService()
    assert gateway.calls[-1] == ("close", 5001)
    clock.advance(10_000)
    assert gateway.calls[-1] == ("close", 5001)  # no renewal after the stop
    assert mapping.status()["mapped"] is None


def test_a_refusing_gateway_is_asked_again_later_and_nothing_is_removed():
    clock, gateway = Clock(), ScriptedGateway()
    gateway.refuse = "no UPnP gateway answered on this LAN"
    mapping = PortMapping(clock, here, gateway)
    mapping.startService()
    mapping.request(5001)
    assert mapping.status() == {"mapped": None,
                                "mapping_problem": "no UPnP gateway answered on this LAN"}
    gateway.refuse = None
    clock.advance(RETRY)
    assert mapping.status()["mapped"] == "11.0.0.21:5001"
    mapping.stopService()
    assert gateway.calls[-1] == ("close", 5001)
    # Never started: nothing asked, nothing removed.
    idle = PortMapping(clock, here, ScriptedGateway())
    idle.request(5001)
    assert idle.gateway.calls == []


@pytest.mark.parametrize("host, private", [
    ("10.1.0.2", True), ("192.168.1.20", True), ("172.16.4.4", True), ("fd00::5", True),
    ("::ffff:10.0.0.1", True), ("127.0.0.1", False), ("::1", False), ("169.254.1.1", False),
    ("11.0.0.21", False), ("8.8.8.8", False), ("0.0.0.0", False), ("", False), (None, False),
    ("example.org", False),
])
def test_only_private_lan_addresses_ask_for_a_mapping(host, private):
    assert is_private(host) is private


def test_the_server_checks_an_address_again_when_asked_once_in_a_while(tmp_path):
    """
    A registrant nobody can reach gets a ticket that says so; once
    something answers for it there (its gateway forwards now), CHECK with a
    fresh nonce gets OK and a ticket that says reachable, though that
    address failed a moment ago.  Asked again at once, CHECK is refused
    with how long to wait.
    """
    from p2pshare.channel import LineChannel

    net = SimNet(tmp_path)
    net.start_meta(expect=1)
    heard = []

    class Line(LineChannel):
        def messageReceived(self, msg):
            heard.append(msg)

    proto = Line()
    ClientEndpoint(net, "127.0.9.9", *net.meta_address).connect(
        type("F", (), {"buildProtocol": lambda self, addr: proto})()
    )
    first, second = "cd" * 16, "ef" * 16
    proto.sendLine(f"P2P port=6000 host=127.0.7.7 max=2 check={first}".encode())
    net.idle(10)
    tickets = [m.args[0].split("/") for m in heard if m.verb == "TICKET"]
    assert [t[4] for t in tickets] == ["0"]
    name = [m for m in heard if m.verb == "WELCOME"][0].args[0]

    class Answers(LineChannel):
        def messageReceived(self, msg):
            if msg.verb == "VERIFY":
                self.send("VERIFIED", answer(second, name, msg.args[1]))

    ServerEndpoint(net, "127.0.7.7", 6000).listen(
        type("F", (), {"buildProtocol": lambda self, addr: Answers()})()
    )
    proto.sendLine(f"CHECK check={second}".encode())
    net.idle(10)
    assert [m.verb for m in heard][-2:] == ["OK", "TICKET"]
    assert heard[-1].args[0].split("/")[4] == "1"
    proto.sendLine(f"CHECK check={second}".encode())
    net.idle(1)
    assert heard[-1].verb == "ERROR" and "ask again in" in heard[-1].text


# Reversed connections (reversal.py), their parts on their own.


class FakeNode:
    """
    What Reversals reads of a peer: its name, ticket, the key that checks
    tickets, its neighbours (flood) and how it dials (connect_out).
    """

    def __init__(self, name="h1", reachable=True):
        from placed import SIGNER

        from p2pshare.tickets import Ticket, TicketChecker

        self.clock = Clock()
        self.peer_name = name
        self.ticket = Ticket.parse(SIGNER.issue(name, "10.0.0.1", 5001, "10.0.0.1", reachable, 0).field())
        self.tickets = TicketChecker(SIGNER.public)
        self.flooded = []
        self.dialled = []

    def flood(self, msg, source=None):
        self.flooded.append((msg, source))

    def connect_out(self, host, port):
        from twisted.internet.defer import Deferred

        node = self

        class Endpoint:
            def connect(self, factory):
                node.dialled.append((host, port, factory))
                return Deferred()

        return Endpoint()


def push(holder, token, ticket_field):
    from p2pshare import wire

    return wire.Message("PUSH", (holder, token, ticket_field))


def test_a_push_is_passed_on_once_and_answered_only_with_a_ticket_the_server_signed():
    from placed import ticket

    from p2pshare.peer.reversal import Reversals
    from p2pshare.tickets import TicketSigner

    node = FakeNode("h1")
    reversals = Reversals(node, site=None)
    good = ticket("d1", 6001, host="10.0.0.9")
    # Not ours: passed on to the other neighbours, once per token.
    reversals.pushed("n1", push("h2", "ab" * 16, good))
    reversals.pushed("n2", push("h2", "ab" * 16, good))
    assert [(m.verb, source) for m, source in node.flooded] == [("PUSH", "n1")]
    # Ours, with a ticket another key signed: nobody is dialled.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    forged = TicketSigner(Ed25519PrivateKey.generate()).issue(
        "d1", "10.6.6.6", 80, "10.6.6.6", True, 0).field()
    reversals.pushed("n1", push("h1", "cd" * 16, forged))
    # Ours, with the ticket of a peer the server could not reach: nobody.
    reversals.pushed("n1", push("h1", "ce" * 16, ticket("d2", 6002, reachable=False)))
    assert node.dialled == []
    # Ours, with a real ticket: the address it names is dialled, once.
    reversals.pushed("n1", push("h1", "ef" * 16, good))
    reversals.pushed("n2", push("h1", "ef" * 16, good))
    assert [(h, p) for h, p, _ in node.dialled] == [("10.0.0.9", 6001)]


def test_a_holder_opens_at_most_so_many_reversed_connections_at_once():
    from placed import ticket

    from p2pshare.peer import reversal

    node = FakeNode("h1")
    reversals = reversal.Reversals(node, site=None)
    good = ticket("d1", 6001, host="10.0.0.9")
    for i in range(reversal.MAX_GIVING + 5):
        reversals.pushed("n1", push("h1", f"{i:032x}", good))
    assert len(node.dialled) == reversal.MAX_GIVING
    node.clock.advance(reversal.CONNECT_BACK)  # none connected: each gives its place back
    reversals.pushed("n1", push("h1", "f" * 32, good))
    assert len(node.dialled) == reversal.MAX_GIVING + 1


def test_a_downloader_that_nobody_reaches_either_asks_for_a_relay_and_says_when_there_is_none():
    from p2pshare import wire
    from p2pshare.peer.reversal import Reversals

    node = FakeNode("d1", reachable=False)
    node.meta = None
    failed = []
    Reversals(node, site=None).ask("h1", None).addErrback(failed.append)
    assert "the metadata server that names relays is away" in failed[0].getErrorMessage()

    class Meta:
        def request(self, verb):
            assert verb == "RELAY"
            return succeed(wire.Message("RELAYS", ()))

    node.meta = Meta()
    failed = []
    Reversals(node, site=None).ask("h1", None).addErrback(failed.append)
    assert "no relay is in the network (a reachable peer started with --relay)" in (
        failed[0].getErrorMessage())
    assert node.flooded == []


def test_a_giv_nobody_waits_for_is_closed_and_one_that_is_waited_for_gets_the_download():
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport

    from p2pshare.peer.http import Sniffer
    from p2pshare.peer.reversal import Reversals

    node = FakeNode("d1")
    reversals = Reversals(node, site=None)

    class Got(Protocol):
        def dataReceived(self, data):
            self.data = getattr(self, "data", b"") + data

    asked = reversals.ask("h1", Factory.forProtocol(Got))
    [(msg, _)] = node.flooded
    holder, token, shown = msg.args
    assert (holder, shown) == ("h1", node.ticket.field())
    stranger = StringTransport()
    sniffer = Sniffer(None, None, reversals)
    sniffer.makeConnection(stranger)
    sniffer.dataReceived(f"GIV {'0' * 32} h1\r\n".encode())
    assert stranger.disconnecting or stranger.disconnected
    wrong = StringTransport()
    sniffer = Sniffer(None, None, reversals)
    sniffer.makeConnection(wrong)
    sniffer.dataReceived(f"GIV {token} h2\r\n".encode())  # the token, from another holder
    assert not asked.called
    right = StringTransport()
    sniffer = Sniffer(None, None, reversals)
    sniffer.makeConnection(right)
    sniffer.dataReceived(f"GIV {token} h1\r\nHTTP/1.1 200".encode())
    got = []
    asked.addCallback(got.append)
    assert isinstance(got[0], Got) and got[0].data == b"HTTP/1.1 200"
    # Too late: the holder did not connect back.
    late = []
    reversals.ask("h1", Factory.forProtocol(Got)).addErrback(late.append)
    node.clock.advance(15)
    assert "did not connect back within 15 s" in late[0].getErrorMessage()


def test_a_reversed_holder_is_named_in_urls_by_its_name_and_nothing_else_is():
    from p2pshare.peer.reversal import holder_of, reversed_host

    for name in ("s1", "a@b.c-d_e", "x" * 64):
        assert holder_of(reversed_host(name)) == name
    for host in ("10.0.0.1", "zz.reversed.invalid", "2f2e2e.reversed.invalid", ".reversed.invalid",
                 "7331.reversed.invalid.example"):
        assert holder_of(host) is None


# The relay (relay.py), on StringTransports and a Clock.


def members_only(relay):
    """
    C{relay}, checking SPLICE tickets with the key of tests/placed.py.
    """
    from placed import SIGNER

    from p2pshare.tickets import TicketChecker

    relay.check = TicketChecker(SIGNER.public).check
    return relay


def splice(relay, token, transport, name="d1", source="192.168.1.1"):
    """
    A SPLICE from C{transport} (a StringTransport: it comes from
    192.168.1.1) with a ticket made out to C{source}.
    """
    from placed import ticket

    relay.splice_asked(token, ticket(name, 6001, host="10.0.0.9", source=source), transport, b"")


def spliced_pair(relay, token="ab" * 16):
    from twisted.internet.testing import StringTransport

    down, up = StringTransport(), StringTransport()
    splice(relay, token, down)
    assert relay.giv(token, "h1", up, b"")
    return down, up


def test_a_relay_splices_two_connections_by_token_and_refuses_past_its_cap():
    from twisted.internet.testing import StringTransport

    from p2pshare.relay import WAIT, Relay

    relay = members_only(Relay(Clock(), slots=4))
    down, up = spliced_pair(relay)
    assert down.value() == b"SPLICED 192.168.1.1\r\n"  # where the holder came from
    down.protocol.dataReceived(b"GET /files/x HTTP/1.1\r\n\r\n")
    assert up.value() == b"GET /files/x HTTP/1.1\r\n\r\n"
    up.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
    assert down.value().endswith(b"HTTP/1.1 200 OK\r\n")
    # A GIV for a token nobody waits for is not the relay's.
    assert not relay.giv("cd" * 16, "h2", StringTransport(), b"")
    # One waits for its holder; the next, from another address, is refused
    # with a sentence (the first address has its share).
    from twisted.internet.address import IPv4Address

    def at(host):
        return StringTransport(peerAddress=IPv4Address("TCP", host, 5))

    waiting, over, other, refused = StringTransport(), StringTransport(), at("10.1.1.2"), at("10.1.1.3")
    splice(relay, "ef" * 16, waiting)
    splice(relay, "99" * 16, over)
    assert over.value().startswith(b"ERROR busy 192.168.1.1 holds 2 of this relay's 4 slots")
    splice(relay, "34" * 16, other, source="10.1.1.2")
    splice(relay, "56" * 16, at("10.1.1.3"), source="10.1.1.3")
    splice(relay, "12" * 16, refused, source="10.1.1.3")
    assert refused.value() == (b"ERROR busy this relay splices 4 transfers at once, its most; "
                               b"try again later\r\n") and refused.disconnecting
    # The waiting one's holder never comes: told so, and its slot is free.
    relay.clock.advance(WAIT)
    assert waiting.value().startswith(b"ERROR failed ") and waiting.disconnecting
    waiting.protocol.connectionLost(None)
    # One side of the pair closes: the other goes too, and its slot is free.
    up.protocol.connectionLost(None)
    assert down.disconnecting
    assert relay.status()["splicing"] == 0 and relay.status()["refused"] == 1


def test_a_relay_splices_for_members_at_their_own_address_and_closes_a_silent_splice():
    from twisted.internet.testing import StringTransport

    from p2pshare.relay import IDLE, Relay

    relay = Relay(Clock())
    stranger = StringTransport()
    relay.splice_asked("ab" * 16, "d1/10.0.0.9/6001/x/1/1/" + "0" * 128, stranger, b"")
    assert stranger.value().startswith(b"ERROR denied this relay cannot check tickets yet")
    members_only(relay)
    for forged in ("-", "d1/10.0.0.9/6001/10.0.0.9/1/99999999999/" + "0" * 128):
        stranger = StringTransport()
        relay.splice_asked("ab" * 16, forged, stranger, b"")
        assert stranger.value().startswith(b"ERROR denied a ticket that does not hold")
    elsewhere = StringTransport()
    splice(relay, "ab" * 16, elsewhere, source="10.9.9.9")  # a member's ticket, shown from here
    assert elsewhere.value() == b"ERROR denied a ticket made out to another address\r\n"
    down, up = spliced_pair(relay)
    relay.clock.advance(IDLE - 1)
    up.protocol.dataReceived(b"more")  # bytes cross: its silence starts again
    relay.clock.advance(IDLE - 1)
    assert not down.disconnecting and not up.disconnecting
    relay.clock.advance(1)
    assert down.disconnected or down.disconnecting
    down.protocol.connectionLost(None)
    assert up.disconnecting and relay.status()["splicing"] == 0


def test_a_relay_keeps_all_its_splices_within_its_rate():
    from p2pshare.relay import Relay

    clock = Clock()
    relay = members_only(Relay(clock, rate=1000.0, slots=4))
    down, up = spliced_pair(relay)
    up.protocol.dataReceived(b"x" * 3000)  # 2000 bytes over a second's allowance
    assert up.producerState == "paused" and down.producerState == "paused"
    clock.advance(1.9)
    assert up.producerState == "paused"
    clock.advance(0.1)
    assert up.producerState == "producing" and down.producerState == "producing"


def test_a_downloader_at_a_busy_relay_is_told_why_and_one_spliced_gets_the_bytes():
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport

    from p2pshare.peer.reversal import _Splicing

    class Got(Protocol):
        def dataReceived(self, data):
            self.data = getattr(self, "data", b"") + data

    busy = _Splicing("ab" * 16, Factory.forProtocol(Got))
    busy.makeConnection(StringTransport())
    assert busy.transport.value() == b"SPLICE " + b"ab" * 16 + b" - - -\r\n"
    failed = []
    busy.spliced.addErrback(failed.append)
    busy.dataReceived(b"ERROR busy this relay splices 1 transfer at once, its most; try again later\r\n")
    assert failed[0].getErrorMessage().startswith(
        "this relay splices 1 transfer at once, its most; try again later")
    good = _Splicing("cd" * 16, Factory.forProtocol(Got))
    Factory.forProtocol(lambda: good).buildProtocol(None)  # as a connect builds it
    good.makeConnection(StringTransport())
    got = []
    good.spliced.addCallback(got.append)
    good.dataReceived(b"SPLI")
    good.dataReceived(b"CED\r\nHTTP/1.1 200 OK\r\n")
    assert got[0].data == b"HTTP/1.1 200 OK\r\n"


def test_the_default_router_is_read_from_the_kernels_table(tmp_path):
    from p2pshare.peer.mapping import default_gateway

    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
        "eth0\t00000000\t0100010A\t0003\t0\t0\t0\t00000000\n"
    )
    assert default_gateway(str(table)) == "10.1.0.1"
    table.write_text("Iface\tDestination\tGateway \tFlags\n")
    assert default_gateway(str(table)) is None
    assert default_gateway(str(tmp_path / "none")) is None


def test_either_gateway_keeps_to_the_one_that_mapped():
    from p2pshare.peer.mapping import EitherGateway

    refusing, mapping = ScriptedGateway(), ScriptedGateway()
    refusing.refuse = "no UPnP gateway answered on this LAN"
    either = EitherGateway(refusing, mapping)
    assert either.open(5001, 60, "x") == ("11.0.0.21", "10.1.0.2")
    either.open(5001, 60, "x")  # renewed where it was made
    either.close(5001)
    assert refusing.calls == [("open", 5001, 60)]
    assert mapping.calls == [("open", 5001, 60), ("open", 5001, 60), ("close", 5001)]
    both = EitherGateway(refusing, refusing)
    with pytest.raises(MappingError, match="no UPnP gateway answered on this LAN; no UPnP"):
        both.open(5001, 60, "x")


def test_a_giv_or_a_splice_from_somewhere_else_than_the_holder_is_refused():
    """
    Every member sees a PUSH's token go by: a reversed connection counts
    only from the address the holder registered from (or our own LAN),
    and a relay's SPLICED says where its holder came from.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport

    from p2pshare.peer.http import Sniffer
    from p2pshare.peer.reversal import Reversals, _Splicing

    node = FakeNode("d1")
    reversals = Reversals(node, site=None)
    reversals.holder_at("h1", "11.0.0.22")
    asked = reversals.ask("h1", Factory.forProtocol(Protocol))
    [(msg, _)] = node.flooded
    token = msg.args[1]
    for source, taken in (("11.0.0.66", False), ("11.0.0.22", True)):
        giv = StringTransport(peerAddress=IPv4Address("TCP", source, 40000))
        sniffer = Sniffer(None, None, reversals)
        sniffer.makeConnection(giv)
        sniffer.dataReceived(f"GIV {token} h1\r\n".encode())
        assert asked.called is taken and giv.disconnecting is not taken
    spliced = _Splicing("ab" * 16, Factory.forProtocol(Protocol),
                        from_holder=lambda source: reversals.from_holder("h1", source))
    spliced.makeConnection(StringTransport())
    failed = []
    spliced.spliced.addErrback(failed.append)
    spliced.dataReceived(b"SPLICED 11.0.0.66\r\n")
    assert "not where the holder is" in failed[0].getErrorMessage()


def test_a_full_relay_met_during_a_run_is_a_busy_holder_and_the_user_is_told():
    from twisted.internet.defer import Deferred, fail

    from p2pshare.peer.download.agent import RELAY_BUSY_WAIT, AgentFetcher
    from p2pshare.peer.download.holders import Source, judge
    from p2pshare.peer.download.outcomes import Busy
    from p2pshare.peer.reversal import RelayBusy

    sentence = "the relay P at 11.0.0.10:5001: this relay splices 1 transfer at once, its most"

    class Agent:
        def request(self, method, url, headers=None):
            return fail(RelayBusy(sentence))

    failed = []
    asked = AgentFetcher(Agent(), Clock())._head(b"http://x.reversed.invalid:0/files/a")
    Deferred.fromCoroutine(asked).addErrback(failed.append)
    busy = failed[0].value
    assert isinstance(busy, Busy) and busy.retry_after == RELAY_BUSY_WAIT and busy.why == sentence
    verdict = judge(Source("B", lambda: b""), busy, trusted=True)
    assert (verdict.input, verdict.wait, verdict.why) == ("busy", RELAY_BUSY_WAIT, sentence)


def test_a_relay_splices_only_the_holder_its_downloader_waits_for():
    """
    A member that saw the PUSH and says GIV first, from elsewhere or under
    another name, is not spliced; the downloader goes on waiting and gets
    its holder.
    """
    from placed import ticket
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from p2pshare.relay import Relay

    relay = members_only(Relay(Clock()))
    down = StringTransport()
    relay.splice_asked("ab" * 16, ticket("d1", 6001, host="10.0.0.9", source="192.168.1.1"),
                       down, b"", "h1", "11.0.0.22")

    def giv(name, source):
        return relay.giv("ab" * 16, name, StringTransport(
            peerAddress=IPv4Address("TCP", source, 40000)), b"")

    assert not giv("h1", "11.0.0.66")  # not where h1 registered from
    assert not giv("h2", "11.0.0.22")  # not the holder it waits for
    assert down.value() == b""
    assert giv("h1", "11.0.0.22")
    assert down.value() == b"SPLICED 11.0.0.22\r\n"


def test_relays_are_the_live_reachable_peers_that_offered_and_nobody_else(tmp_path):
    from p2pshare.channel import LineChannel

    net = SimNet(tmp_path)
    meta = net.start_meta(expect=3)

    class Line(LineChannel):
        def __init__(self):
            super().__init__()
            self.heard = []

        def messageReceived(self, msg):
            self.heard.append(msg)

    def register(source, options):
        proto = Line()
        ClientEndpoint(net, source, *net.meta_address).connect(
            type("F", (), {"buildProtocol": lambda self, addr: proto})()
        )
        proto.sendLine(f"P2P port=6000 max=2 {options}".encode())
        net.idle(1)
        return proto

    class Answers(LineChannel):  # the offering relay's port: it answers the dial-back
        def messageReceived(self, msg):
            if msg.verb == "VERIFY":
                self.send("VERIFIED", answer("ab" * 16, *msg.args))

    ServerEndpoint(net, "127.0.9.1", 6000).listen(
        type("F", (), {"buildProtocol": lambda self, addr: Answers()})()
    )
    offering = register("127.0.9.1", "relay=1 check=" + "ab" * 16)
    register("127.0.9.2", "relay=1 host=127.0.7.7 check=" + "cd" * 16)  # nobody answers there
    register("127.0.9.3", "")
    asker = register("127.0.9.4", "")
    net.idle(10)
    assert meta.peers[offering.heard[0].args[0]].reachable

    def relays():
        asker.sendLine(b"RELAY")
        net.idle(1)
        return [t.split("/")[0] for t in asker.heard[-1].args]

    assert relays() == [offering.heard[0].args[0]]
    offering.transport.loseConnection()
    net.idle(1)
    assert relays() == []
