"""
Peers leave, crash and hang in one process (iosim, one Clock); the tree
heals, topo.txt follows, and every file stays findable.
"""

from __future__ import annotations

import pytest

from p2pshare.simnet import SimNet, assert_tree


def network(tmp_path, n, max_neighbours=2, seed=5):
    return SimNet.grown(tmp_path, n, max_neighbours, seed)


def live(net, hung=()):
    return [p for p in net.peers if p.running and p not in hung]


def heal(net, seconds=60.0, hung=()):
    """
    Pump and advance time until the live peers form one tree that
    topo.txt agrees with, or C{seconds} of simulated time pass; return the
    simulated seconds it took.
    """
    started = net.clock.seconds()
    while True:
        net.flush()
        peers = live(net, hung)
        views = {p.peer_name: list(p.neighbours) for p in peers}
        try:
            assert_tree(views, {p.peer_name: p.max_neighbours for p in peers})
            if net.topo_file() == views and not any(p.orphaned for p in peers):
                return net.clock.seconds() - started
        except AssertionError:
            pass
        if net.clock.seconds() - started >= seconds:
            assert_tree(views, {p.peer_name: p.max_neighbours for p in peers})
            assert net.topo_file() == views
            return net.clock.seconds() - started
        net.clock.advance(0.25)


def find_everything(net):
    for i, p in enumerate(live(net)):
        p.share.directory.joinpath(f"file-of-{p.peer_name}").write_bytes(b"%d" % i)
        p.refresh_share()
    net.flush()
    names = sorted(f"file-of-{p.peer_name}" for p in live(net))
    for origin in live(net):
        found = []
        origin.search.start("file-of-*", 10.0).addCallback(found.append)
        net.flush()
        assert found and sorted(m.name for m in found[0].matches) == names
        assert found[0].coverage.complete, found[0].coverage.sentence()


def middle(net):
    """
    A peer with two neighbours that is not the root.
    """
    return next(p for p in net.peers[1:] if len(p.neighbours) == 2 and p.running)


@pytest.mark.parametrize("max_neighbours", [2, 3])
def test_a_middle_peer_that_leaves_is_healed_around(tmp_path, max_neighbours):
    net = network(tmp_path, 15, max_neighbours)
    gone = middle(net)
    gone.stopService()
    took = heal(net)
    assert took < 5
    assert gone.peer_name not in net.topo_file()
    assert (net.meta.data_dir / "NumberOfServers.txt").read_text() == "14\n"
    find_everything(net)


def test_the_root_leaving_leaves_one_new_root(tmp_path):
    net = network(tmp_path, 12)
    root = net.peers[0]
    assert root.is_root
    root.stopService()
    heal(net)
    assert sum(p.is_root and not p.uplink for p in live(net)) == 1
    find_everything(net)


def test_two_neighbours_leaving_at_once(tmp_path):
    net = network(tmp_path, 15, 3)
    a = middle(net)
    b = net.peers[[p.peer_name for p in net.peers].index(next(iter(a.neighbours)))]
    a.stopService()
    b.stopService()
    heal(net)
    assert len(live(net)) == 13
    find_everything(net)


def test_a_hung_peer_is_noticed_by_heartbeat_and_dropped(tmp_path):
    net = network(tmp_path, 10)
    hung = middle(net)
    net.freeze(hung._listening.getHost().host)
    hung._beating.stopService()  # a hung process does nothing at all
    took = heal(net, seconds=60, hung=[hung])
    # Three silent beats (5 s each), then a beat to notice.
    assert took <= 3 * 5 + 5 + 1
    assert hung.peer_name not in net.topo_file()
    assert len(net.topo_file()) == 9
    assert took >= 3 * 5  # not before three beats were missed


def test_an_orphan_reattaches_to_its_grandparent_while_the_metadata_server_is_away(tmp_path):
    net = network(tmp_path, 9, 2)
    victim = middle(net)
    orphan = next(p for p in net.peers if p.uplink == victim.peer_name)
    grandparent = victim.uplink
    assert orphan.grandparent is not None and orphan.grandparent[0] == grandparent
    net.freeze(net.meta_address[0])  # the metadata server hangs
    net.crash(victim)
    for _ in range(20):
        net.flush()
        net.clock.advance(0.5)
    assert orphan.uplink == grandparent and not orphan.orphaned
    peers = live(net)
    assert_tree({p.peer_name: list(p.neighbours) for p in peers},
                {p.peer_name: p.max_neighbours for p in peers})
