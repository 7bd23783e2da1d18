"""
A peer's place in the overlay, as one explicit state machine.

The states and the inputs that move between them are one table, so every
combination of being joined, the root, orphaned or joining can be listed;
an input that does not fit the state is logged and changes nothing, never
silently ignored.

::

                  start              welcomed
        new ──────────────► registering ─────────► joining ◄─┐ welcomed,
                                                    │  │     │ refused
                                      placed_root   │  │ accepted
                         ┌──────────────────────────┘  └──────────┐
                         ▼                                        ▼
                       root ──── told_to_rejoin ──► orphaned ◄── child
                         ▲                          │  │     parent_lost
                         └─────── placed_root ──────┘  │
                                  accepted (to child) ─┘
        any state but stopped ── stop ──► stopped

(``docs/design.rst`` draws the same.)  The peer's join (a chain of
Deferreds following referrals) runs while the state is C{joining} or
C{orphaned}; C{orphaned} keeps the subtree, a free slot for its new
parent, and tries its grandparent first.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

NEW = "new"
REGISTERING = "registering"  # started, waiting for the metadata server's welcome
JOINING = "joining"  # following referrals to a first place
ROOT = "root"
CHILD = "child"
ORPHANED = "orphaned"  # was in, lost its parent (or was told to rejoin): rejoining with its subtree
STOPPED = "stopped"

STATES = (NEW, REGISTERING, JOINING, ROOT, CHILD, ORPHANED, STOPPED)
JOINED = frozenset({ROOT, CHILD, ORPHANED})  # in the overlay (an orphan still holds its subtree)
SEEKING = frozenset({JOINING, ORPHANED})  # a join should be running

# (state, input) -> next state.  Everything else does not fit.
TRANSITIONS: dict[tuple[str, str], str] = {
    (NEW, "start"): REGISTERING,
    (REGISTERING, "welcomed"): JOINING,
    # Welcomed again (the metadata server came back): the place stays.
    (JOINING, "welcomed"): JOINING,
    (ROOT, "welcomed"): ROOT,
    (CHILD, "welcomed"): CHILD,
    (ORPHANED, "welcomed"): ORPHANED,
    # A referral chain that ended without a place: try again.
    (JOINING, "refused"): JOINING,
    (ORPHANED, "refused"): ORPHANED,
    (JOINING, "placed_root"): ROOT,
    (ORPHANED, "placed_root"): ROOT,
    (JOINING, "accepted"): CHILD,
    (ORPHANED, "accepted"): CHILD,
    (CHILD, "parent_lost"): ORPHANED,
    (ROOT, "told_to_rejoin"): ORPHANED,
    **{(state, "stop"): STOPPED for state in STATES if state != STOPPED},
}
INPUTS = tuple(sorted({i for _, i in TRANSITIONS}))


class Membership:
    """
    The state of one peer's membership; L{fire} moves it.
    """

    log = Logger()

    def __init__(self, who: Callable[[], str] = lambda: "peer") -> None:
        self.state = NEW
        self.who = who  # names the peer in log lines

    @property
    def joined(self) -> bool:
        return self.state in JOINED

    @property
    def seeking(self) -> bool:
        return self.state in SEEKING

    def fire(self, input: str) -> bool:
        """
        Feed one input; True if it fit the state (and the state moved).
        """
        after = TRANSITIONS.get((self.state, input))
        if after is None:
            self.log.info(
                "{who}: {input} does not fit state {state}; nothing changes",
                who=self.who(), input=input, state=self.state,
            )
            return False
        self.state = after
        return True
