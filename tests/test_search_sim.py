"""
Searching whole networks in one process: every file is found from every
peer, with 2(N-1) messages per search, each peer handling it once, every
answer saying what it covered, and a bounded wait when a branch is dead.
"""

from __future__ import annotations

import pytest

from p2pshare.peer.search import QUIET, results_lines
from p2pshare.simnet import SimNet


def network(tmp_path, n, max_neighbours=2, seed=3):
    return SimNet.grown(tmp_path, n, max_neighbours, seed)


def put(net, peer, name, data: bytes):
    (peer.share.directory / name).write_bytes(data)
    peer.refresh_share()
    net.flush()


def two_branches(tmp_path, n):
    """
    A network of C{n} peers searched from its root, whose two neighbours
    head two branches: the network, the root, the two names, and the
    peers by name.
    """
    net = network(tmp_path, n, 2)
    origin = net.peers[0]
    left, right = list(origin.neighbours)
    return net, origin, left, right, {p.peer_name: p for p in net.peers}


def run_search(net, origin, pattern, search_id, timeout=10.0):
    before = sum(sum(p.messages[v] for v in ("SEARCH", "RESULTS")) for p in net.peers)
    result = []
    origin.search.start(pattern, timeout, search_id).addCallback(result.append)
    net.flush()
    assert result, "the search did not finish with every peer alive"
    after = sum(sum(p.messages[v] for v in ("SEARCH", "RESULTS")) for p in net.peers)
    for p in net.peers:
        assert p.search.handled.get(search_id) == 1, f"{p.peer_name} handled it {p.search.handled.get(search_id)} times"
    coverage = result[0].coverage
    assert coverage.complete, coverage.sentence()
    assert (coverage.answered, coverage.total) == (len(net.peers), len(net.peers))
    return result[0].matches, after - before


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


def test_a_silent_branch_is_named_and_asked_again_until_the_timeout(tmp_path):
    net, origin, left, right, by_name = two_branches(tmp_path, 20)
    put(net, by_name[left], "left.txt", b"l")
    put(net, by_name[right], "right.txt", b"r")
    below_right = _subtree(net, right, origin.peer_name)
    # The whole right branch hangs (its first peer stops answering).
    net.freeze(_host_of(net, by_name[right]))
    result, ended = [], []
    started = net.clock.seconds()
    timeout = 3 * QUIET
    d = origin.search.start("*.txt", timeout, "dead").addCallback(result.append)
    d.addCallback(lambda _: ended.append(net.clock.seconds()))
    net.idle(QUIET * 1.5)
    assert not result, "a silent branch ended the search before its time"
    assert origin.search.rounds >= 2, "what was missed is not asked again"
    net.idle(timeout)
    assert result and ended[0] - started <= timeout
    found = result[0]
    assert [m.name for m in found.matches] == ["left.txt"]
    assert not found.coverage.complete
    assert found.coverage.missed == ((right, "silent"),)
    assert found.coverage.total == 20
    assert found.coverage.answered == 20 - len(below_right)
    assert found.coverage.sentence() == (
        f"searched {20 - len(below_right)} of 20 peers; no answer from {right} "
        f"(and the {len(below_right) - 1} peers below it)"
    )


def test_a_branch_that_answers_again_is_found_within_the_search(tmp_path):
    net, origin, left, right, by_name = two_branches(tmp_path, 20)
    put(net, by_name[right], "right.txt", b"r")
    net.freeze(_host_of(net, by_name[right]))
    result = []
    origin.search.start("*.txt", 3 * QUIET, "back").addCallback(result.append)
    net.idle(QUIET * 1.5)
    assert not result
    net.thaw(_host_of(net, by_name[right]))
    net.idle(3 * QUIET)
    assert result
    assert [m.name for m in result[0].matches] == ["right.txt"]
    assert result[0].coverage.complete, result[0].coverage.sentence()


def test_a_dropped_branch_is_named_at_once_and_found_once_repaired(tmp_path):
    net, origin, left, right, by_name = two_branches(tmp_path, 10)
    put(net, by_name[left], "left.txt", b"l")
    put(net, by_name[right], "right.txt", b"r")
    result = []
    origin.search.start("*.txt", 10.0, "drop").addCallback(result.append)
    # The right neighbour's link resets before it can answer.
    origin.neighbours[right].proto.transport.loseConnection()
    net.flush()
    assert not result, "a search that missed a branch gave up before its time"
    assert origin.search.rounds == 1
    net.idle(10.0)
    assert result
    assert sorted(m.name for m in result[0].matches) == ["left.txt", "right.txt"]
    assert result[0].coverage.complete, result[0].coverage.sentence()
    assert origin.search.rounds >= 2


def test_a_dropped_branch_that_never_comes_back_is_named_as_lost(tmp_path):
    net, origin, left, right, by_name = two_branches(tmp_path, 10)
    put(net, by_name[left], "left.txt", b"l")
    result = []
    origin.search.start("*.txt", 3.0, "lost").addCallback(result.append)
    for peer in [by_name[right], *(by_name[n] for n in _subtree(net, right, origin.peer_name))]:
        if peer.running:
            net.crash(peer)
    net.idle(3.0)
    found = result[0]
    assert [m.name for m in found.matches] == ["left.txt"]
    # Once the metadata server knows they are gone, the rest is complete.
    assert found.coverage.complete, found.coverage.sentence()
    assert found.coverage.total == found.coverage.answered < 10


def test_a_neighbour_over_its_allowance_is_named_as_refusing_and_asked_again(tmp_path):
    net = network(tmp_path, 3, 2)
    a, b, c = net.peers
    put(net, c, "far.txt", b"f")
    # Everything the origin's neighbours allow it is spent.
    for p in net.peers:
        for n in p.neighbours.values():
            if n.name == a.peer_name:
                n.proto.search_allowance.tokens = 0
                n.proto.search_allowance.at = net.clock.seconds()
    result = []
    a.search.start("far.txt", 5.0, "busy").addCallback(result.append)
    net.flush()
    assert not result, "a refused search counted as an empty answer"
    assert sum(p.search.throttled for p in net.peers) >= 1
    net.idle(5.0)
    assert [m.holder for m in result[0].matches] == [c.peer_name]
    assert result[0].coverage.complete


def test_a_refusal_for_the_whole_time_is_said_not_found_definitively(tmp_path):
    net = network(tmp_path, 3, 2)
    a = net.peers[0]
    result = []
    for p in net.peers:
        for n in p.neighbours.values():
            if n.name == a.peer_name:
                n.proto.search_allowance.rate = 0.0001
                n.proto.search_allowance.tokens = 0
    a.search.start("far.txt", 1.0, "busy").addCallback(result.append)
    net.idle(2.0)
    coverage = result[0].coverage
    assert result[0].matches == [] and not coverage.complete
    assert all(why == "refused" for _, why in coverage.missed) and coverage.missed
    assert "over its search allowance" in coverage.sentence()


def test_a_newcomer_does_not_stand_in_for_a_peer_that_did_not_answer(tmp_path):
    net = network(tmp_path, 6, 2)
    origin = net.peers[0]
    # Counted: registered up to the latest registration the starter was told of.
    upto = max(p.registration_seq for p in net.peers)
    assert origin.search._counted(upto)
    late = net.peers[-1]
    assert not late.search._counted(late.registration_seq - 1)
    assert not late.search._counted(upto - 1) or late.registration_seq < upto


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


def _subtree(net, top, above):
    """
    The names of the peers in C{top}'s branch, seen from its neighbour
    C{above}, C{top} included.
    """
    views = net.views()
    seen, todo = {top}, [top]
    while todo:
        for n in views[todo.pop()]:
            if n != above and n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


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
    for (i, pattern), searched in results.items():
        assert searched.coverage.complete, searched.coverage.sentence()
        found = searched.matches
        if pattern == "absent":
            assert found == []
        elif pattern == "file-*.dat":
            assert sorted(m.name for m in found) == [f"file-{j}.dat" for j in range(5)]
        else:
            assert [m.holder for m in found] == [holders[i % 5].peer_name]
    for p in net.peers:
        assert set(p.search.handled.values()) == {1}


def behind_a_hung_peer(tmp_path):
    """
    Ten peers; the root's right neighbour hangs, and the peer below it
    holds C{below.txt}.
    """
    net, origin, _, right, by_name = two_branches(tmp_path, 10)
    below = next(n for n in by_name[right].neighbours if n != origin.peer_name)
    put(net, by_name[below], "below.txt", b"b")
    net.freeze(_host_of(net, by_name[right]))
    return net, origin, right, below


def test_ls_of_a_hung_peer_says_it_did_not_answer(tmp_path):
    from twisted.internet.defer import Deferred

    from p2pshare import wire
    from p2pshare.peer.download.transfer import FetchError

    net, origin, right, _ = behind_a_hung_peer(tmp_path)
    listed = []
    Deferred.fromCoroutine(origin.files.listing(right, 1.5 * QUIET)).addErrback(listed.append)
    net.idle(1.5 * QUIET)
    assert listed and listed[0].check(FetchError)
    assert listed[0].value.code == wire.E_INCOMPLETE  # not "shares nothing, or is not there"
    assert f"no answer from {right}" in listed[0].value.text


def test_get_of_a_file_behind_a_hung_peer_waits_for_the_repair(tmp_path):
    """
    p2p get of a file held below a hung peer says what it waits for, and
    finds the file once the tree is repaired around the hung peer (three
    heartbeats).
    """
    from twisted.internet.defer import Deferred

    net, origin, right, below = behind_a_hung_peer(tmp_path)
    notes, holders = [], []
    d = Deferred.fromCoroutine(origin.files._holders("below.txt", 1.5 * QUIET, notes.append))
    d.addBoth(holders.append)
    net.idle(1.5 * QUIET)
    assert not holders, "it gave up before the repair"
    assert len(notes) == 1 and f"no answer from {right}" in notes[0]
    assert "waiting up to 20 s for the network to repair" in notes[0]
    net.idle(origin.files.repair_time)
    assert [m.holder for m in holders[0]] == [below]


def test_a_member_that_overstates_its_subtree_cannot_make_a_search_definitive(tmp_path):
    net, origin, liar, _, by_name = two_branches(tmp_path, 10)
    honest_finish = by_name[liar].search._finish

    def overstating(search):
        search.answered += 1000  # "my subtree is huge, and all of it answered"
        honest_finish(search)

    by_name[liar].search._finish = overstating
    result = []
    origin.search.start("nobody-has-this", 3.0).addCallback(result.append)
    net.idle(3.0)
    coverage = result[0].coverage
    assert result[0].matches == [] and not coverage.complete
    assert coverage.sentence().startswith("searched 1,010 of 10 peers: more than the metadata")


def test_get_waits_for_a_repair_only_when_something_is_known_to_be_missing():
    """
    With the network's size unknown (the metadata server never said) and
    nobody named as silent, there is no repair to wait for: p2p get says
    what it covered at once, and promises no wait.  With one named, it
    waits, saying so, in spells that each end in a line.
    """
    from twisted.internet.defer import Deferred, maybeDeferred, succeed
    from twisted.internet.task import Clock

    from p2pshare import wire
    from p2pshare.peer.coverage import Coverage, Found
    from p2pshare.peer.download.transfer import FetchError
    from p2pshare.peer.files import NOTE_EVERY, PeerFiles

    def files(coverage, clock):
        def find(pattern, timeout, exact, enough):
            asked.append(timeout)
            return succeed(Found([], coverage))

        asked: list[float] = []
        return PeerFiles(clock=clock, run_blocking=maybeDeferred, find=find, me=lambda: "s1",
                         on_files_changed=lambda: None, repair_time=70.0), asked

    clock = Clock()
    peer, asked = files(Coverage(3, None), clock)
    notes, failed = [], []
    Deferred.fromCoroutine(peer._holders("x.txt", 10.0, notes.append)).addErrback(failed.append)
    assert failed[0].check(FetchError) and failed[0].value.code == wire.E_INCOMPLETE
    assert "the network's size is not known now" in failed[0].value.text
    assert (notes, asked) == ([], [10.0])

    peer, asked = files(Coverage(3, 5, (("s4", "silent"),)), clock)
    notes, failed = [], []
    Deferred.fromCoroutine(peer._holders("x.txt", 10.0, notes.append)).addErrback(failed.append)
    assert failed[0].value.code == wire.E_INCOMPLETE
    assert asked == [10.0, NOTE_EVERY, NOTE_EVERY, 70.0 - 2 * NOTE_EVERY]
    assert len(notes) == 3 and "waiting up to 70 s" in notes[0]
    assert all("still waiting for the network to repair" in n for n in notes[1:])
