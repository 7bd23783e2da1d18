"""
Whole networks in one process (iosim pumps, one Clock): concurrent joins
always form a tree, and the metadata server's topo.txt matches the peers'
own views.
"""

from __future__ import annotations

import pytest

from p2pshare.simnet import SimNet, assert_tree


@pytest.mark.parametrize("max_neighbours", [2, 4])
@pytest.mark.parametrize("seed", [1, 2])
def test_200_concurrent_joins_form_a_tree(tmp_path, max_neighbours, seed):
    net = SimNet(tmp_path, seed=seed)
    meta = net.start_meta(expect=200)
    peers = [net.make_peer(max_neighbours) for _ in range(200)]
    net.rng.shuffle(peers)
    for p in peers:  # all at once, in random order
        p.startService()
    net.settle(seconds=120)

    assert all(p.joined for p in peers)
    views = net.views()
    assert len(views) == 200
    assert_tree(views, {p.peer_name: max_neighbours for p in peers})
    assert net.topo_file() == views
    assert (meta.data_dir / "NumberOfServers.txt").read_text() == "200\n"
    assert meta.complete
    assert all(p.network_complete for p in peers)
    assert sum(p.is_root for p in peers) == 1
    # Newcomers still on their way count as places to join, so even all at
    # once a join costs about one referral.
    hops = [p.join_hops for p in peers if not p.is_root]
    assert sum(hops) / len(hops) <= 1.05


def _depths(views, root):
    depth = {root: 0}
    frontier = [root]
    while frontier:
        following = []
        for name in frontier:
            for n in views[name]:
                if n not in depth:
                    depth[n] = depth[name] + 1
                    following.append(n)
        frontier = following
    return depth


def _shallowest_possible(peers, limit):
    """
    The depth of a tree of C{peers} filled level by level: the root has
    C{limit} children, every other peer C{limit - 1}.
    """
    depth, level, total = 0, 1, 1
    while total < peers:
        level = level * (limit if depth == 0 else limit - 1)
        total += level
        depth += 1
    return depth


@pytest.mark.parametrize("max_neighbours", [2, 3, 4])
def test_sequential_joins_cost_one_hop_and_fill_breadth_first(tmp_path, max_neighbours):
    net = SimNet(tmp_path)
    net.start_meta(expect=40)
    for _ in range(40):
        node = net.make_peer(max_neighbours)
        node.startService()
        net.settle()
        assert node.joined
    assert [p.join_hops for p in net.peers] == [0] + [1] * 39
    views = net.views()
    assert_tree(views, {p.peer_name: max_neighbours for p in net.peers})
    # The metadata server places each newcomer at the shallowest free slot,
    # so the tree is as shallow as the neighbour limit allows (with 2, that
    # is two chains hanging from the root: no tree of degree 2 is bushier).
    depth = _depths(views, net.peers[0].peer_name)
    assert max(depth.values()) == _shallowest_possible(40, max_neighbours)


def test_stale_placement_is_corrected_by_the_referral_chain(tmp_path):
    """
    The metadata server refers a newcomer to a peer it believes has a free
    slot; that peer is in fact full (its report has not arrived), so the
    newcomer follows the peer's referral instead.
    """
    net = SimNet(tmp_path)
    meta = net.start_meta(expect=3)
    a, b = net.make_peer(1), net.make_peer(2)
    a.startService()
    net.settle()
    b.startService()
    net.settle()
    assert a.neighbours.keys() == {b.peer_name}
    # Make the metadata server believe the root has room again.
    meta.registry.set_neighbours(a.peer_name, [])
    c = net.make_peer(2)
    c.startService()
    net.settle()
    assert c.joined
    assert c.join_hops == 2  # a referred it on to b
    assert list(b.neighbours) == [a.peer_name, c.peer_name]
    assert_tree(net.views(), {a.peer_name: 1, b.peer_name: 2, c.peer_name: 2})
    topo = net.topo_file()
    # The server was made to forget a's side of the link a-b: a link only
    # one end reports is not shown.
    assert topo[b.peer_name] == [c.peer_name] and topo[c.peer_name] == [b.peer_name]
    assert topo[a.peer_name] == []


NONCE = "ab" * 16


class Silent:
    """
    A listener that accepts connections and never says a word, but for the
    metadata server's dial-back (so that the server takes it for a peer).
    """

    def __init__(self):
        self.protocols = []

    def buildProtocol(self, addr):
        from twisted.protocols.basic import LineReceiver

        from p2pshare.tickets import answer

        class Mute(LineReceiver):
            def lineReceived(self, line):
                words = line.decode().split()
                if words[:1] == ["VERIFY"]:
                    self.sendLine(f"VERIFIED {answer(NONCE, words[1], words[2])}".encode())
                else:
                    self.protocols.append(self)

        proto = Mute()
        proto.protocols = self.protocols
        return proto


def silent_root(net):
    """
    Register a 'peer' whose port accepts and stays silent, and make it the
    root; return its registration connection and its listener.
    """
    from p2pshare.channel import LineChannel
    from p2pshare.simnet import ClientEndpoint, ServerEndpoint

    class Registration(LineChannel):
        def msg_WELCOME(self, msg):
            pass

        def msg_ROOT(self, msg):
            pass

        def msg_TICKET(self, msg):
            pass

    silent = Silent()
    ServerEndpoint(net, "127.0.9.9", 6000).listen(silent)
    registration = Registration()
    ClientEndpoint(net, "127.0.9.9", *net.meta_address).connect(
        type("F", (), {"buildProtocol": lambda self, addr: registration})()
    )
    registration.sendLine(f"P2P port=6000 name=mute check={NONCE}".encode())
    registration.sendLine(b"PLACE")
    net.flush()
    return registration, silent


def test_a_silent_peer_costs_one_hop_timeout_then_the_join_is_retried(tmp_path):
    net = SimNet(tmp_path)
    meta = net.start_meta(expect=2)
    registration, silent = silent_root(net)
    node = net.make_peer()
    node.startService()
    net.flush()
    assert not node.joined and len(silent.protocols) == 1
    net.clock.advance(node.hop_timeout)
    net.flush()
    # The hop timed out: its connection is aborted, and the failure logged.
    assert silent.protocols[0].transport.disconnecting
    assert not node.joined
    # While the silent root stays, every retry fails the same way; once it
    # is gone, the next retry makes the newcomer the root.
    registration.transport.loseConnection()
    net.flush()
    assert "mute" not in meta.registry
    net.settle(seconds=120)
    assert node.joined and node.is_root
    assert net.topo_file() == {node.peer_name: []}


def test_stopping_a_peer_cancels_its_join(tmp_path):
    net = SimNet(tmp_path)
    net.start_meta(expect=2)
    _, silent = silent_root(net)
    node = net.make_peer()
    node.startService()
    net.flush()
    assert node.joining.pending is not None and not node.joining.pending.called
    node.stopService()
    net.flush()
    assert node.joining.pending is None or node.joining.pending.called
    assert silent.protocols[0].transport.disconnecting
    # Nothing of the peer's is left scheduled (the metadata server's
    # watch over its sessions, and its connections' idle deadlines, are
    # its own).
    from p2pshare.meta.server import MetaProtocol

    left = [
        c for c in net.clock.getDelayedCalls()
        if not any(part in repr(c) for part in ("MetaServer", "Members", "Flushing", "Vouching"))
        and not isinstance(getattr(c.func, "__self__", None), MetaProtocol)
    ]
    assert left == []


def test_stopping_every_role_leaves_no_timer_no_connection_and_closes_the_registry(tmp_path):
    import sqlite3

    net = SimNet.grown(tmp_path, 5)
    # A search in flight, waiting on a peer that does not answer.
    net.freeze("127.0.1.5")
    found = net.peers[0].search.start("*")
    net.flush()
    assert not found.called
    for p in net.peers:
        p.stopService()
    net.thaw("127.0.1.5")
    net.flush()
    assert found.called  # it ended with what it had
    stopped = net.meta.stopService()
    net.flush()
    assert stopped.called
    assert net.clock.getDelayedCalls() == []
    assert all(p.clientIO.disconnected and p.serverIO.disconnected for p in net.pumps)
    with pytest.raises(sqlite3.ProgrammingError):
        net.meta.registry._db.execute("SELECT 1")
