"""
A hypothesis state machine over a whole network in one process: peers join,
leave, crash, are cut off and come back, search, and time passes.  After
every step, once the network has settled:

* the live peers form one tree, nobody above its neighbour limit;
* topo.txt is exactly the live peers' own views;
* every file on a live peer is found from every live peer;
* no peer handled any search twice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2pshare.simnet import SimNet, assert_tree

SETTLE_LIMIT = 120.0  # simulated seconds a step may take to heal


class Network(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="p2p-state-")
        self.net = SimNet(Path(self.tmp.name), seed=1)
        self.net.start_meta(expect=1000)
        self.searches = 0

    def teardown(self) -> None:
        self.tmp.cleanup()

    def live(self):
        return [p for p in self.net.peers if p.running]

    def settle(self) -> None:
        """
        Pump and let time pass until the live peers form one tree that
        topo.txt agrees with (bounded); the invariants then check it.
        """
        net = self.net
        waited = 0.0
        while waited < SETTLE_LIMIT:
            net.flush()
            peers = self.live()
            views = {p.peer_name: list(p.neighbours) for p in peers}
            if (
                all(p.joined and not p.orphaned for p in peers)
                and _is_tree(views, {p.peer_name: p.max_neighbours for p in peers})
                and net.topo_file() == views
            ):
                return
            net.clock.advance(0.5)
            waited += 0.5

    # Rules.

    @rule(max_neighbours=st.sampled_from([2, 3]))
    @precondition(lambda self: len(self.live()) < 12)
    def join(self, max_neighbours):
        node = self.net.make_peer(max_neighbours)
        node.startService()
        self.settle()
        if node.share is not None and node.peer_name is not None:
            (node.share.directory / f"held-by-{node.peer_name}").write_bytes(b"x")
            node.refresh_share()
        self.settle()

    @rule(data=st.data())
    @precondition(lambda self: len(self.live()) > 1)
    def leave(self, data):
        node = data.draw(st.sampled_from(self.live()))
        node.stopService()
        self.settle()

    @rule(data=st.data())
    @precondition(lambda self: len(self.live()) > 1)
    def crash(self, data):
        self.net.crash(data.draw(st.sampled_from(self.live())))
        self.settle()

    @rule(data=st.data(), seconds=st.sampled_from([2.0, 20.0]))
    @precondition(lambda self: len(self.live()) > 2)
    def partition_and_heal(self, data, seconds):
        """
        A peer is cut off for a while (short: nobody notices; long: it is
        declared dead, then comes back and rejoins under its name).
        """
        node = data.draw(st.sampled_from(self.live()))
        host = node._listening.getHost().host
        before = {p.peer_name: list(p.neighbours) for p in self.live()}
        dropped = sum(p.links_dropped for p in self.net.peers)
        self.net.freeze(host)
        for _ in range(int(seconds * 2)):
            self.net.flush()
            self.net.clock.advance(0.5)
        now_dropped = sum(p.links_dropped for p in self.net.peers)
        if seconds < node.heartbeat:
            assert now_dropped == dropped  # shorter than a beat: nobody noticed
        elif before[node.peer_name]:
            assert now_dropped > dropped  # three beats of silence: declared dead
        self.net.thaw(host)
        self.settle()
        if seconds < node.heartbeat:
            assert {p.peer_name: list(p.neighbours) for p in self.live()} == before

    @rule(seconds=st.sampled_from([1.0, 7.0, 30.0]))
    def advance_time(self, seconds):
        for _ in range(int(seconds * 2)):
            self.net.flush()
            self.net.clock.advance(0.5)
        self.settle()

    @rule()
    @precondition(lambda self: self.live())
    def search(self):
        self.check_search()

    # Invariants.

    @invariant()
    def one_tree_matching_topo_txt(self):
        peers = self.live()
        if not peers:
            return
        views = {p.peer_name: list(p.neighbours) for p in peers}
        assert_tree(views, {p.peer_name: p.max_neighbours for p in peers})
        assert self.net.topo_file() == views

    @invariant()
    def every_file_found_from_every_peer(self):
        if self.live():
            self.check_search()

    @invariant()
    def every_peer_in_a_listed_state(self):
        from p2pshare.peer import membership

        for p in self.net.peers:
            state = p.membership.state
            assert state in membership.STATES
            if state not in (membership.STOPPED, membership.NEW):  # a stopped one keeps its last parent
                assert (p.uplink is not None) == (state == membership.CHILD), (p.peer_name, state, p.uplink)
        # Settled: every live peer has its place, one of them the root.
        live = [p.membership.state for p in self.live()]
        assert set(live) <= {membership.ROOT, membership.CHILD}
        assert not live or live.count(membership.ROOT) == 1

    @invariant()
    def no_search_handled_twice(self):
        for p in self.net.peers:
            assert set(p.search.handled.values()) <= {1}, p.search.handled

    def check_search(self):
        peers = self.live()
        expected = sorted(
            (f"held-by-{p.peer_name}", p.peer_name)
            for p in peers
            if p.share is not None and f"held-by-{p.peer_name}" in p.share.files
        )
        for origin in peers:
            self.searches += 1
            found = []
            origin.search.start("held-by-*", 10.0, f"q{self.searches}").addCallback(found.append)
            self.net.flush()
            assert found, f"search from {origin.peer_name} did not finish"
            assert sorted((m.name, m.holder) for m in found[0].matches) == expected


def _is_tree(views, limits):
    try:
        assert_tree(views, limits)
    except AssertionError:
        return False
    return True


Network.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_churn_state_machine = Network.TestCase
