"""
Heartbeats agreed per link: both ends of a link judge it by the larger of
their two heartbeats, so peers with different --heartbeat never think each
other dead (three peers at 1, 5 and 15 s once dropped and remade links
hundreds of times an hour), and a neighbour that does fall silent is
dropped after three agreed beats, not before.
"""

from __future__ import annotations

from p2pshare.simnet import SimNet


def mixed_network(n: int, beats: tuple[float, ...]) -> SimNet:
    net = SimNet(None)
    net.start_meta(expect=n)
    for i in range(n):
        net.make_peer(2, heartbeat=beats[i % len(beats)], shared=False).startService()
    net.settle(seconds=120)
    assert all(p.joined for p in net.peers)
    return net


def links(net: SimNet) -> set[tuple[str, str]]:
    return {tuple(sorted((p.peer_name, n))) for p in net.peers for n in p.neighbours}


def test_a_link_beats_at_the_larger_of_its_two_heartbeats():
    net = mixed_network(3, (1.0, 5.0, 15.0))
    for p in net.peers:
        for n in p.neighbours.values():
            other = next(q for q in net.peers if q.peer_name == n.name)
            assert n.proto.beat == max(p.heartbeat, other.heartbeat)


def test_an_hour_of_an_idle_network_with_heartbeats_1_5_15_drops_nothing():
    net = mixed_network(50, (1.0, 5.0, 15.0))
    before = links(net)
    net.idle(3600)
    assert sum(p.links_dropped for p in net.peers) == 0
    assert links(net) == before and len(before) == 49


def test_three_days_of_an_idle_network_with_mixed_heartbeats_drop_nothing():
    # Twenty peers: enough for links between every two of the heartbeats.
    net = mixed_network(20, (15.0, 60.0, 300.0))
    before = links(net)
    beat = {p.peer_name: p.heartbeat for p in net.peers}
    assert {tuple(sorted((beat[a], beat[b]))) for a, b in before} >= {
        (15.0, 60.0), (15.0, 300.0), (60.0, 300.0)
    }
    net.idle(3 * 24 * 3600)
    assert sum(p.links_dropped for p in net.peers) == 0
    assert links(net) == before
    assert len(net.meta.sessions) == 20


def test_a_silent_neighbour_is_dropped_after_three_agreed_beats_and_not_before():
    net = mixed_network(2, (1.0, 15.0))
    fast, slow = net.peers
    assert fast.neighbours[slow.peer_name].proto.beat == 15.0
    net.freeze(_host_of(net, slow))
    frozen_at = net.clock.seconds()
    while not fast.links_dropped:
        net.idle(0.5)
        assert net.clock.seconds() - frozen_at < 3 * 15 + 2 * 1.0 + 1, "not dropped in time"
    assert net.clock.seconds() - frozen_at > 3 * 15 - 15 / 2  # heard last at most half a beat before


def test_a_late_tick_does_not_judge_silence():
    net = mixed_network(2, (5.0, 5.0))
    a, b = net.peers
    # Everyone's clock jumps (a suspended laptop): a's first tick after it
    # is late, so nobody is declared dead on it; the links recover.
    net.clock.advance(60)
    net.flush()
    assert a.links_dropped == 0 and b.links_dropped == 0
    net.idle(60)
    assert a.links_dropped == 0 and b.links_dropped == 0
    assert links(net) == {tuple(sorted((a.peer_name, b.peer_name)))}


def _host_of(net: SimNet, node) -> str:
    return f"127.0.1.{net.peers.index(node) + 1}"


def test_a_peer_that_keeps_reporting_transfers_keeps_its_metadata_link():
    """
    A long download makes a peer send SUMMARY lines every 2 s, which the
    metadata server does not answer: the peer still pings it (it has not
    heard from it), so the link is not judged silent and dropped.
    """
    from p2pshare.peer.files import Transfer

    net = mixed_network(2, (5.0, 5.0))
    busy = net.peers[0]
    moved = iter(range(10**9))
    busy.files.transfers["download"] = Transfer("big.iso", "down", "1 holder", 0.0, total=10**9)
    busy.files.transfers["upload"] = Transfer("big.iso", "up", "127.0.0.9", 0.0, total=10**9,
                                              sent=lambda: next(moved))
    busy._activity()  # as PeerFiles says when a transfer begins
    net.idle(600)
    assert sum(p.links_dropped for p in net.peers) == 0
    assert sorted(net.meta.sessions) == sorted(p.peer_name for p in net.peers)
    record = net.meta.registry.get(busy.peer_name)
    assert record.activity.transfer_count == 2 and record.activity.transfers[1]["done"] > 100
    # Once nothing moves, the page hears so, and the peer's timer stops.
    busy.files.transfers.clear()
    busy._activity()
    net.idle(10)
    assert (record.activity.transfers, record.activity.transfer_count) == ([], 0)
    assert not busy._summarising.running
