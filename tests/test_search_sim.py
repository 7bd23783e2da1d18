"""
Searching whole networks in one process: every file is found from every
peer, with 2(N-1) messages per search, each peer handling it once, and a
bounded wait when a branch is dead.
"""

from __future__ import annotations

import pytest

from p2pshare.peer.search import DEFAULT_TTL, margin_for, results_lines
from p2pshare.simnet import SimNet


def network(tmp_path, n, max_neighbours=2, seed=3):
    return SimNet.grown(tmp_path, n, max_neighbours, seed)


def put(net, peer, name, data: bytes):
    (peer.share.directory / name).write_bytes(data)
    peer.refresh_share()
    net.flush()


def run_search(net, origin, pattern, search_id, timeout=10.0):
    before = sum(sum(p.messages[v] for v in ("SEARCH", "RESULTS")) for p in net.peers)
    result = []
    origin.search.start(pattern, timeout, search_id).addCallback(result.append)
    net.flush()
    assert result, "the search did not finish with every peer alive"
    after = sum(sum(p.messages[v] for v in ("SEARCH", "RESULTS")) for p in net.peers)
    for p in net.peers:
        assert p.search.handled.get(search_id) == 1, f"{p.peer_name} handled it {p.search.handled.get(search_id)} times"
    return result[0], after - before


@pytest.mark.parametrize("max_neighbours", [2, 4])
def test_fifty_peers_find_everything_with_2n_minus_2_messages(tmp_path, max_neighbours):
    net = network(tmp_path, 50, max_neighbours)
    n = len(net.peers)
    holder = net.peers[net.rng.randrange(n)]
    put(net, holder, "needle.bin", b"x" * 1000)
    txt_holders = net.rng.sample(net.peers, 3)
    for i, p in enumerate(txt_holders):
        put(net, p, f"notes-{i}.txt", b"note %d" % i)

    for i, origin in enumerate(net.peers):
        found, messages = run_search(net, origin, "needle.bin", f"exact{i}")
        assert [(m.name, m.holder, m.size) for m in found] == [("needle.bin", holder.peer_name, 1000)]
        assert found[0].sha256 == holder.share.files["needle.bin"].sha256
        assert (found[0].host, found[0].port) == (holder.host, holder.port)
        assert messages == 2 * (n - 1)

        found, messages = run_search(net, origin, "*.txt", f"glob{i}")
        assert sorted((m.name, m.holder) for m in found) == sorted(
            (f"notes-{j}.txt", p.peer_name) for j, p in enumerate(txt_holders)
        )
        assert found == sorted(found, key=lambda m: (m.hops, m.name, m.holder))
        assert messages == 2 * (n - 1)

        found, messages = run_search(net, origin, "missing.bin", f"none{i}")
        assert found == []
        assert messages == 2 * (n - 1)


def test_results_that_do_not_fit_one_line_cost_one_message_per_extra_line(tmp_path):
    net = network(tmp_path, 12, 2)
    origin, holder = net.peers[0], net.peers[-1]
    for i in range(200):
        put(net, holder, f"a-rather-long-file-name-to-fill-lines-{i:04d}.dat", b"%d" % i)
    found, messages = run_search(net, origin, "*.dat", "many")
    assert len(found) == 200
    distance = found[0].hops
    extra = len(results_lines("many", found)) - 1
    assert extra >= 5
    assert messages == 2 * (len(net.peers) - 1) + distance * extra


def test_a_silent_branch_delays_the_answer_by_at_most_the_timeout(tmp_path):
    net = network(tmp_path, 20, 2)
    origin = net.peers[0]  # the root: two branches
    left, right = list(origin.neighbours)
    by_name = {p.peer_name: p for p in net.peers}
    put(net, by_name[left], "left.txt", b"l")
    put(net, by_name[right], "right.txt", b"r")
    # The whole right branch hangs (its first peer stops answering).
    net.freeze(_host_of(net, by_name[right]))
    result = []
    started = net.clock.seconds()
    origin.search.start("*.txt", 2.0, "dead").addCallback(result.append)
    net.flush()
    assert not result
    net.clock.advance(2.0 - margin_for(2000, DEFAULT_TTL) / 1000 - 0.001)
    net.flush()
    assert not result
    net.clock.advance(0.002)
    net.flush()
    assert result and net.clock.seconds() - started <= 2.0
    assert [m.name for m in result[0]] == ["left.txt"]


def test_a_dropped_branch_answers_at_once(tmp_path):
    net = network(tmp_path, 10, 2)
    origin = net.peers[0]
    left, right = list(origin.neighbours)
    by_name = {p.peer_name: p for p in net.peers}
    put(net, by_name[left], "left.txt", b"l")
    result = []
    started = net.clock.seconds()
    origin.search.start("*.txt", 5.0, "drop").addCallback(result.append)
    # The right neighbour's link resets before it can answer.
    origin.neighbours[right].proto.transport.loseConnection()
    net.flush()
    assert result and [m.name for m in result[0]] == ["left.txt"]
    assert net.clock.seconds() == started


def test_new_and_removed_files_are_noticed_without_a_restart(tmp_path):
    net = network(tmp_path, 3, 2)
    a, c = net.peers[0], net.peers[2]
    found, _ = run_search(net, a, "late.txt", "before")
    assert found == []
    (c.share.directory / "late.txt").write_bytes(b"hello")
    net.clock.advance(c.files.rescan_interval)
    net.flush()
    found, _ = run_search(net, a, "late.txt", "after")
    assert [m.holder for m in found] == [c.peer_name]
    (c.share.directory / "late.txt").unlink()
    net.clock.advance(c.files.rescan_interval)
    net.flush()
    found, _ = run_search(net, a, "late.txt", "gone")
    assert found == []


def _host_of(net, node):
    return node._listening.getHost().host


def test_many_searches_at_once_from_every_peer(tmp_path):
    net = network(tmp_path, 30, 3)
    holders = net.rng.sample(net.peers, 5)
    for i, p in enumerate(holders):
        put(net, p, f"file-{i}.dat", b"%d" % i)
    results = {}
    for i, origin in enumerate(net.peers):
        for k, pattern in enumerate(("file-*.dat", f"file-{i % 5}.dat", "absent")):
            origin.search.start(pattern, 10.0, f"s{i}-{k}").addCallback(
                lambda found, key=(i, pattern): results.__setitem__(key, found)
            )
    net.flush()
    assert len(results) == 30 * 3
    for (i, pattern), found in results.items():
        if pattern == "absent":
            assert found == []
        elif pattern == "file-*.dat":
            assert sorted(m.name for m in found) == [f"file-{j}.dat" for j in range(5)]
        else:
            assert [m.holder for m in found] == [holders[i % 5].peer_name]
    for p in net.peers:
        assert set(p.search.handled.values()) == {1}
