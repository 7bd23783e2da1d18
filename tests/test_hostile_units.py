"""
The parts that hold against a hostile participant, each on its own or in a
network in one process (SimNet, a Clock): tickets, the dial-back, clamps
and the held names, placement that trusts only what was proved, search
results checked against the metadata server, shares that keep secrets
home, limits that fit the descriptors, and options that refuse what would
open a hole.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from placed import SIGNER
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage

from p2pshare import wire
from p2pshare.meta.registry import Registry
from p2pshare.meta.server import MetaFactory, MetaServer
from p2pshare.peer.search import MAX_RESULTS, fair_share
from p2pshare.peer.share import ShareIndex
from p2pshare.simnet import ClientEndpoint, ServerEndpoint, SimNet, assert_tree
from p2pshare.startup import fit_caps
from p2pshare.tickets import (
    LIFETIME,
    SKEW,
    Ticket,
    TicketChecker,
    TicketError,
    TicketSigner,
    answer,
)
from p2pshare.wire import Match

# Tickets.


def test_a_ticket_holds_for_its_name_port_and_addresses_only():
    checker = TicketChecker(SIGNER.public)
    field = SIGNER.issue("alice", "10.0.0.5", 5001, "192.168.1.9", True, 1000).field()
    ticket = checker.check(field, 1000)
    assert ticket.lets_in("alice", 5001, "10.0.0.5") is None
    assert ticket.lets_in("alice", 5001, "192.168.1.9") is None  # where it registered from
    assert ticket.lets_in("alice", 5001, "::ffff:10.0.0.5") is None
    assert "not bob's" in ticket.lets_in("bob", 5001, "10.0.0.5")
    assert "port 5001" in ticket.lets_in("alice", 5002, "10.0.0.5")
    assert "comes from 10.0.0.66" in ticket.lets_in("alice", 5001, "10.0.0.66")
    # Expired (beyond the clock skew allowed), forged, or from another server.
    assert checker.check(field, 1000 + LIFETIME + SKEW).name == "alice"
    with pytest.raises(TicketError, match="expired"):
        checker.check(field, 1000 + LIFETIME + SKEW + 1)
    bent = field.replace("/10.0.0.5/", "/10.0.0.6/")
    with pytest.raises(TicketError, match="not signed"):
        checker.check(bent, 1000)
    with pytest.raises(TicketError, match="not signed"):
        TicketChecker(TicketSigner().public).check(field, 1000)
    with pytest.raises(TicketError):
        checker.check("alice/x", 1000)
    assert Ticket.parse(field).reachable


def test_the_ticket_key_is_kept_private_across_restarts(tmp_path):
    first = TicketSigner.in_directory(tmp_path)
    assert oct((tmp_path / "ticket.key").stat().st_mode & 0o777) == "0o600"
    assert TicketSigner.in_directory(tmp_path).public == first.public
    assert "key" not in repr(first).replace("key hidden", "")


# The metadata server: clamps, held names, the dial-back, placement.


def conn(factory, host="127.0.0.9"):
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    proto = factory.buildProtocol(transport.getPeer())
    proto.makeConnection(transport)
    return proto, transport


def test_beats_and_neighbour_limits_claimed_are_clamped(tmp_path):
    meta = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, signer=SIGNER)
    meta.startService()
    proto, transport = conn(MetaFactory(meta))
    proto.dataReceived(b"P2P port=6000 name=slow beat=999999999 max=1000\r\n")
    assert transport.value().startswith(b"WELCOME slow ")
    assert proto.beat == wire.BEAT_MAX
    assert meta.registry.get("slow").max_neighbours == wire.NEIGHBOURS_MAX
    # Gone without a goodbye: its name is held three clamped beats at most.
    proto.connectionLost(None)
    owner, until = meta.held["slow"]
    assert until - meta.clock.seconds() == 3 * wire.BEAT_MAX
    meta.clock.advance(3 * wire.BEAT_MAX + 1)
    assert "slow" not in meta.held
    meta.stopService()


def test_the_held_names_table_is_bounded(tmp_path):
    meta = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, signer=SIGNER,
                      max_peers=5)
    meta.startService()
    for i in range(12):
        proto, _ = conn(MetaFactory(meta), host=f"127.0.0.{i + 1}")
        proto.dataReceived(f"P2P port=6000 name=n{i} beat={i + 1}\r\n".encode())
        proto.connectionLost(None)
    assert len(meta.held) == 5
    # The ones soonest to expire gave way.
    assert sorted(meta.held) == ["n10", "n11", "n7", "n8", "n9"]
    meta.stopService()


def test_the_dial_back_finds_only_the_registrant(tmp_path):
    """
    In one process: a registrant that names another peer's address, one
    that names an address where nobody listens, and one that does not
    answer, are unreachable and never named to a newcomer; an honest
    registrant is.
    """
    net = SimNet(tmp_path)
    meta = net.start_meta(expect=1)
    honest = net.make_peer(3)
    honest.startService()
    net.settle()
    assert honest.ticket is not None and honest.ticket.reachable

    class Liar:
        """A registration line, scripted: the answers it gets, and where it claims to be."""

        def __init__(self, host, port, check="cd" * 16):
            from p2pshare.channel import LineChannel

            self.heard = []
            liar = self

            class Line(LineChannel):
                def messageReceived(self, msg):
                    liar.heard.append(msg)

            self.proto = Line()
            ClientEndpoint(net, "127.0.9.9", *net.meta_address).connect(
                type("F", (), {"buildProtocol": lambda self, addr: liar.proto})()
            )
            options = f"P2P port={port} host={host} max=64"
            if check:
                options += f" check={check}"
            self.proto.sendLine(options.encode())
            net.flush()

    at_honest = Liar(honest.host, honest.port)  # another's address: it answers for itself only
    nowhere = Liar("127.0.7.7", 6000)  # nobody listens there
    no_check = Liar("127.0.9.9", 6000, check=None)  # cannot be checked
    net.idle(10)
    for liar in (at_honest, nowhere, no_check):
        [ticket] = [m for m in liar.heard if m.verb == "TICKET"]
        assert ticket.args[0].split("/")[4] == "0", liar.heard
    assert meta.peers["s1"].reachable
    assert not any(meta.peers[n].reachable for n in ("s2", "s3", "s4"))
    # Newcomers all go to the honest peer (or each other), never to a liar.
    for _ in range(6):
        net.make_peer(2).startService()
    net.settle()
    liars = {"s2", "s3", "s4"}
    views = {k: v for k, v in net.views().items() if k not in liars}
    assert_tree(views, {n: 3 if n == "s1" else 2 for n in views})
    assert not any(liars & set(v) for v in views.values())


def test_a_link_only_one_side_reports_places_nobody_below_it(tmp_path):
    """
    A registrant that answers its dial-back but claims a link to the root
    that the root never reports gets no depth, so no newcomer is sent to
    it however many slots it claims.
    """
    net = SimNet(tmp_path)
    meta = net.start_meta(expect=1)
    root = net.make_peer(2)
    root.startService()
    net.settle()
    from p2pshare.channel import LineChannel

    heard = []

    class Claims(LineChannel):
        def messageReceived(self, msg):
            heard.append(msg)

    class Answers(LineChannel):
        def msg_VERIFY(self, msg):
            self.send("VERIFIED", answer("ef" * 16, *msg.args))

    ServerEndpoint(net, "127.0.8.8", 6000).listen(
        type("F", (), {"buildProtocol": lambda self, addr: Answers()})()
    )
    claims = Claims()
    ClientEndpoint(net, "127.0.8.8", *net.meta_address).connect(
        type("F", (), {"buildProtocol": lambda self, addr: claims})()
    )
    claims.sendLine(f"P2P port=6000 max=64 check={'ef' * 16}".encode())
    net.idle(5)
    assert meta.peers["s2"].reachable  # it really listens there
    claims.sendLine(b"NEIGHBOURS s1 up=s1")
    net.idle(5)
    assert meta.slots.depth.get("s2") is None
    for _ in range(4):
        net.make_peer(2).startService()
    net.settle()
    assert all(m.verb != "REFER" or m.args[0] != "s2" for m in heard)
    assert not any("s2" in v for k, v in net.views().items() if k != "s2")


# Search results.


def test_each_branch_gets_a_fair_share_of_the_results():
    def ms(holder, n):
        return [Match(f"f{i}", 1, "0" * 64, holder, "h", 1, 1) for i in range(n)]

    flood, honest, mine = ms("liar", MAX_RESULTS), ms("s2", 300), ms("me", 5)
    kept = fair_share([flood, honest, mine], MAX_RESULTS)
    assert len(kept) == MAX_RESULTS
    assert sum(m.holder == "s2" for m in kept) == 300 and sum(m.holder == "me" for m in kept) == 5
    assert fair_share([ms("a", 3), ms("b", 4)], MAX_RESULTS) == ms("a", 3) + ms("b", 4)
    even = fair_share([ms("a", 9000), ms("b", 9000)], MAX_RESULTS)
    assert sum(m.holder == "a" for m in even) == MAX_RESULTS // 2


def test_matches_for_holders_not_live_at_that_address_are_dropped(tmp_path):
    """
    A neighbour that answers searches with matches naming a real holder at
    another address, and holders nobody knows: the starter keeps only the
    real ones, and says which branch sent the rest.
    """
    net = SimNet.grown(tmp_path, 3)
    a, b, c = net.peers
    (net.share_dir(2) / "real.txt").write_text("real")
    c.refresh_share()
    net.flush()
    liar_host, liar_port = "127.0.6.6", 6000
    forged = [Match("real.txt", 4, "1" * 64, c.peer_name, liar_host, liar_port, 0),
              Match("real.txt", 4, "2" * 64, "ghost", liar_host, liar_port, 0)]
    original = b.local_matches
    b.local_matches = lambda pattern, hops, exact=False: original(pattern, hops, exact) + forged
    found = []
    a.search.start("real.txt").addCallback(lambda f: found.extend(f.matches))
    net.idle(15)
    assert [(m.holder, m.host, m.port) for m in found] == [(c.peer_name, c.host, c.port)]


# Shares keep secrets home.


def test_the_data_dir_and_secret_files_are_never_shared(tmp_path):
    share = tmp_path / "share"
    data = share / "p2ppeer-data"
    data.mkdir(parents=True)
    (data / "token").write_text("t" * 32)
    (share / "ok.txt").write_text("ok")
    secret = share / "network.secret"
    secret.write_text("s" * 64)
    os.symlink(data / "token", share / "link-to-token")
    os.link(data / "token", share / "hard-token")
    os.symlink(data, share / "link-to-data")
    index = ShareIndex(share, (data, secret))
    index.refresh()
    assert sorted(index.files) == ["ok.txt"]
    assert index.withheld >= {"p2ppeer-data/", "hard-token", "network.secret"}
    for name in ("p2ppeer-data/token", "link-to-token", "hard-token", "network.secret",
                 "link-to-data/token"):
        assert index.resolve(name) is None, name
    # A share that is the data dir itself shares nothing.
    inside = ShareIndex(data, (data,))
    inside.refresh()
    assert inside.files == {} and inside.withheld == {"./"}


# Limits fit the descriptors.


def test_connection_caps_fit_the_descriptors():
    assert fit_caps(1 << 20, 10064, 1064, 128) == (10064, 1064)
    assert fit_caps(1024, 10064, 1064, 128) == (896, 448)  # one address: half at most
    assert fit_caps(1024, 500, 200, 128) == (500, 200)
    assert fit_caps(100, 1000, 200, 128) == (16, 8)


# Options that would open a hole are refused.


@pytest.mark.parametrize("argv, said", [
    (["--control", "tcp:5005:interface=0.0.0.0"], "reachable from other hosts"),
    (["--control", "tcp:5005:interface=10.0.0.5"], "reachable from other hosts"),
    (["--control", "ssl:5005"], "a unix: socket or a loopback tcp: port"),
    (["--heartbeat", "0.1"], "--heartbeat is from 0.5 to 300 seconds"),
    (["--heartbeat", "3600"], "--heartbeat is from 0.5 to 300 seconds"),
    (["--max-neighbours", "65"], "--max-neighbours is from 1 to 64"),
    (["--port", "tls:5001:privateKey=k.pem"], "tls: listens without asking clients"),
    (["--meta", "tls:127.0.0.1:5000"], "--meta is TLS but --port tcp:5001 is not"),
])
def test_peer_options_that_would_open_a_hole(tmp_path, argv, said):
    from p2pshare.peer.tap import Options

    with pytest.raises(usage.UsageError, match=said.replace("(", r"\(").replace(")", r"\)")):
        Options().parseOptions(["--data-dir", str(tmp_path), *argv])


def test_control_defaults_to_loopback_and_a_meta_tls_port_without_certificates_is_refused(tmp_path):
    from p2pshare.meta.tap import Options as MetaOptions
    from p2pshare.peer.tap import Options

    o = Options()
    o.parseOptions(["--data-dir", str(tmp_path), "--control", "5005"])
    assert o["control"] == "tcp:5005:interface=127.0.0.1"
    with pytest.raises(usage.UsageError, match="tls: listens without asking clients"):
        MetaOptions().parseOptions(["--port", "tls:5000:privateKey=x.pem"])


def test_a_private_networks_tls_is_the_same_for_every_holder_of_its_secret(tmp_path):
    """
    Members derive one CA from the secret, each its own certificate: a
    member's certificate verifies against another member's copy of the CA,
    and not against another network's.
    """
    from OpenSSL import crypto

    from p2pshare.admission import Secret
    from p2pshare.tls import network_tls

    one = network_tls(Secret(b"a" * 32), ("10.0.0.5",), tmp_path / "one")
    two = network_tls(Secret(b"a" * 32), (), tmp_path / "two")
    other = network_tls(Secret(b"b" * 32), (), tmp_path / "other")

    def verifies(member, ca) -> bool:
        store = crypto.X509Store()
        store.add_cert(ca.authorities[0].original)
        try:
            crypto.X509StoreContext(store, member.certificate.original).verify_certificate()
            return True
        except crypto.X509StoreContextError:
            return False

    assert verifies(one, two) and verifies(two, one)
    assert not verifies(one, other) and not verifies(other, two)
    assert oct((tmp_path / "one" / "member.pem").stat().st_mode & 0o777) == "0o600"
    assert Path(tmp_path / "one" / "trust" / "ca.pem").exists()


def test_the_manhole_credentials_can_be_replaced(tmp_path):
    from p2pshare.manhole import HOST_KEY, PASSWD, credentials, host_key, reset_manhole

    _, before = credentials(tmp_path)
    print_before = host_key(tmp_path)
    reset_manhole(tmp_path)
    _, after = credentials(tmp_path)
    assert after != before and host_key(tmp_path) != print_before
    for name in (PASSWD, HOST_KEY):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == "0o600"


def test_a_name_moves_to_a_new_token_once_the_old_one_is_shown(tmp_path):
    meta = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, signer=SIGNER)
    meta.startService()
    old, new = "a" * 32, "b" * 32
    proto, _ = conn(MetaFactory(meta))
    proto.dataReceived(f"P2P port=6000 name=alice token={old} beat=5\r\n".encode())
    proto.connectionLost(None)  # gone; the name is held for the old token
    thief, out = conn(MetaFactory(meta), host="127.0.0.66")
    thief.dataReceived(f"P2P port=6000 name=alice token={new}\r\n".encode())
    assert out.value().startswith(b"ERROR name-taken")
    owner, out = conn(MetaFactory(meta))
    owner.dataReceived(f"P2P port=6000 name=alice token={new} old={old}\r\n".encode())
    assert out.value().startswith(b"WELCOME alice ")
    owner.connectionLost(None)
    thief, out = conn(MetaFactory(meta), host="127.0.0.66")
    thief.dataReceived(f"P2P port=6000 name=alice token={old}\r\n".encode())
    assert out.value().startswith(b"ERROR name-taken")  # the old token is worthless now
    meta.stopService()


def test_a_whois_asked_while_a_place_waits_is_answered_after_it(tmp_path):
    """
    A peer's requests are matched to replies by their order: a WHOIS sent
    while its PLACE waits for the dial-back must not be answered first.
    """
    from twisted.internet.defer import Deferred

    meta = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, signer=SIGNER)
    meta.startService()
    proto, transport = conn(MetaFactory(meta))
    proto.dataReceived(b"P2P port=6000 name=alice\r\n")
    checking: Deferred[None] = Deferred()
    meta.peers["alice"].checking = checking  # its dial-back runs
    transport.clear()
    proto.dataReceived(b"PLACE\r\nWHOIS alice bob\r\n")
    assert transport.value() == b""
    checking.callback(None)
    meta.peers["alice"].checking = None
    lines = transport.value().split(b"\r\n")
    assert lines[0] == b"ROOT" and lines[1] == b"KNOWN alice/127.0.0.9/6000"
    meta.stopService()


def test_any_roles_data_dir_in_a_share_is_never_shared(tmp_path):
    """
    The metadata server's data dir (its ticket key, its registry), or
    another peer's, inside a peer's share: each holds the mark every role
    puts in its data dir, and is passed over, by any path.
    """
    from p2pshare.disk import mark_data_dir

    share = tmp_path / "share"
    meta = share / "p2pmeta-data"
    meta.mkdir(parents=True)
    (meta / "ticket.key").write_text("-----BEGIN PRIVATE KEY-----")
    mark_data_dir(meta)
    (share / "ok.txt").write_text("ok")
    os.symlink(meta, share / "via-link")
    index = ShareIndex(share)
    index.refresh()
    assert sorted(index.files) == ["ok.txt"]
    assert "p2pmeta-data/" in index.withheld
    for name in ("p2pmeta-data/ticket.key", "via-link/ticket.key"):
        assert index.resolve(name) is None, name


def test_whois_of_the_longest_names_and_hosts_fits_one_line(tmp_path):
    """
    Twelve holders with 64-character names and 255-character hosts: the
    answer still fits one line (a longer one could not be sent, and the
    starter would have had no answer at all).
    """
    from p2pshare.wire import WHOIS_MAX

    meta = MetaServer(Registry(":memory:"), Clock(), data_dir=tmp_path, signer=SIGNER)
    meta.startService()
    names = []
    for i in range(WHOIS_MAX):
        name = f"{i:02d}" + "n" * 62
        host = "h" * 250 + f"{i:05d}"
        proto, _ = conn(MetaFactory(meta), host=f"127.0.0.{i + 1}")
        proto.dataReceived(f"P2P port=65535 name={name} host={host}\r\n".encode())
        names.append(name)
    asker, out = conn(MetaFactory(meta), host="127.0.1.1")
    asker.dataReceived(b"P2P port=6000 name=asker\r\n")
    out.clear()
    asker.dataReceived(("WHOIS " + " ".join(names) + "\r\n").encode())
    [line] = out.value().split(b"\r\n")[:-1]
    assert line.startswith(b"KNOWN ") and len(line) + 2 <= wire.MAX_LINE
    assert len(line.split()) == WHOIS_MAX + 1
    out.clear()
    asker.dataReceived(("WHOIS " + " ".join(names + ["one-more"]) + "\r\n").encode())
    assert out.value().startswith(b"ERROR bad-args WHOIS takes at most 12 names")
    meta.stopService()


class _Dials:
    """
    Where the metadata server's dial-backs go, in one process: every
    target accepts nothing and says nothing (a victim, or a hung host),
    and each dial is remembered, with whether it was cancelled.
    """

    def __init__(self):
        self.dials = []

    def __call__(self, host, port):
        from twisted.internet.defer import Deferred

        dials = self.dials

        class Endpoint:
            def connect(self, factory):
                d = Deferred()
                dials.append([(host, port), d])
                return d

        return Endpoint()


def test_dial_backs_are_taken_in_turn_one_per_target_and_failures_remembered(monkeypatch):
    import p2pshare.meta.checks as checks

    monkeypatch.setattr(checks, "AT_ONCE", 2)
    clock = Clock()
    dials = _Dials()
    c = checks.AddressChecks(dials, clock, None)
    # One address registers eight times, naming eight victims; then an
    # honest newcomer from another address.
    flood = [c.check(f"f{i}", "10.9.9.9", 7000 + i, "ab" * 16, "10.6.6.6") for i in range(8)]
    refused = []
    c.check("f9", "10.9.9.9", 7100, "ab" * 16, "10.6.6.6").addCallback(refused.append)
    assert refused == ["8 checks are under way for registrations from 10.6.6.6"]
    honest = []
    c.check("s7", "10.0.0.7", 5001, "cd" * 16, "10.0.0.7").addCallback(honest.append)
    assert [t for t, _ in dials.dials] == [("10.9.9.9", 7000), ("10.9.9.9", 7001)]
    clock.advance(checks.CHECK_TIMEOUT)  # the two victims never answer
    # The honest newcomer goes next, before the flood's six others.
    assert [t for t, _ in dials.dials][2:4] == [("10.0.0.7", 5001), ("10.9.9.9", 7002)]
    # A registration naming a victim that just failed is not dialled again.
    again = []
    c.check("f10", "10.9.9.9", 7000, "ab" * 16, "10.5.5.5").addCallback(again.append)
    assert again and "did not answer a check" in again[0]
    # Two registrations naming one target: one dial at a time.
    c2 = checks.AddressChecks(dials, clock, None)
    before = len(dials.dials)
    c2.check("x", "10.1.1.1", 9, "ab" * 16, "10.2.2.2")
    c2.check("y", "10.1.1.1", 9, "ab" * 16, "10.3.3.3")
    assert len(dials.dials) == before + 1
    assert all(isinstance(d, checks.Deferred) for d in flood)


def test_a_check_whose_registrant_has_gone_is_given_up(monkeypatch):
    import p2pshare.meta.checks as checks

    monkeypatch.setattr(checks, "AT_ONCE", 1)
    clock = Clock()
    dials = _Dials()
    c = checks.AddressChecks(dials, clock, None)
    first = c.check("a", "10.1.1.1", 1, "ab" * 16, "10.6.6.6")
    waiting = c.check("b", "10.1.1.2", 2, "ab" * 16, "10.6.6.6")
    got = []
    waiting.addCallback(got.append)
    waiting.cancel()  # gone before its turn: it never dials
    assert got == ["cancelled"] and len(dials.dials) == 1
    first.cancel()  # gone while its dial runs: the dial is stopped
    assert dials.dials[0][1].called  # the connect was cancelled
    assert c._counts == {} and c._running == set()
    # And the address it named is not remembered as failed.
    c.check("c", "10.1.1.1", 1, "ab" * 16, "10.6.6.6")
    assert len(dials.dials) == 2
