"""
The membership state machine (peer/membership.py): every listed
transition, and every input that does not fit a state is logged and
changes nothing.
"""

from __future__ import annotations

import pytest
from twisted.logger import globalLogPublisher

from p2pshare.peer import membership
from p2pshare.peer.membership import INPUTS, STATES, TRANSITIONS, Membership


@pytest.mark.parametrize(("state", "input"), sorted(TRANSITIONS))
def test_each_listed_transition(state, input):
    m = Membership()
    m.state = state
    assert m.fire(input)
    assert m.state == TRANSITIONS[(state, input)]
    assert m.joined == (m.state in (membership.ROOT, membership.CHILD, membership.ORPHANED))
    assert m.seeking == (m.state in (membership.JOINING, membership.ORPHANED))


UNLISTED = sorted((s, i) for s in STATES for i in INPUTS if (s, i) not in TRANSITIONS)


@pytest.mark.parametrize(("state", "input"), UNLISTED)
def test_an_input_that_does_not_fit_is_logged_and_changes_nothing(state, input):
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        m = Membership(lambda: "s9")
        m.state = state
        assert not m.fire(input)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert m.state == state
    said = [e for e in seen if e.get("input") == input and e.get("state") == state]
    assert len(said) == 1 and said[0]["who"] == "s9"


def test_the_table_reaches_every_state_and_stops_from_each():
    reached = {membership.NEW} | set(TRANSITIONS.values())
    assert reached == set(STATES)
    for state in STATES:
        if state != membership.STOPPED:
            assert TRANSITIONS[(state, "stop")] == membership.STOPPED
    # Nothing leaves stopped.
    assert not [k for k in TRANSITIONS if k[0] == membership.STOPPED]


def test_a_peer_walks_the_machine_in_a_simulated_network(tmp_path):
    from p2pshare.simnet import SimNet

    net = SimNet(tmp_path)
    net.start_meta(expect=3)
    root, child, late = net.make_peer(1), net.make_peer(2), net.make_peer(1)  # a line
    assert root.membership.state == membership.NEW
    root.startService()
    assert root.membership.state == membership.REGISTERING
    net.settle()
    assert root.membership.state == membership.ROOT and root.is_root
    child.startService()
    late.startService()
    net.settle()
    assert child.membership.state == membership.CHILD and child.uplink == root.peer_name
    assert late.membership.state == membership.CHILD and late.uplink == child.peer_name
    # The middle peer leaves: its child is orphaned, then placed again
    # (under its grandparent, at once).
    states = []
    fire = late.membership.fire
    late.membership.fire = lambda input: (fire(input), states.append(late.membership.state))[0]
    child.stopService()
    assert child.membership.state == membership.STOPPED
    net.settle(seconds=30)
    assert states == [membership.ORPHANED, membership.CHILD]
    assert late.uplink == root.peer_name
