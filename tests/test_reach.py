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
