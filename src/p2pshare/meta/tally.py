"""
L{Tally}: whether the network is one consistent tree, known in constant
time after each event instead of by walking every peer.

It mirrors what each peer last reported (its neighbours) and keeps three
counts over the I{members} (the verified peers: after a restart of the
metadata server, those that have registered again): reported links,
members not yet placed, and I{one-sided} links (a member reports a
neighbour that is not a member or does not report it back).  The network
is settled when every member is placed, no link is one-sided and there
are two reports per tree edge: C{2 * (members - 1)}.  An event costs work
in proportion to the links of the peer it concerns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from p2pshare.meta.interfaces import Reported


class Tally:
    """
    Told each event (L{set_links}, L{set_placed}, L{add_member},
    L{remove}); reads nothing of the server.  Its own index of who
    reports whom is what lets an event cost only the links it touches.
    """

    def __init__(self) -> None:
        self.members: set[str] = set()
        self._placed: set[str] = set()
        self._links: dict[str, list[str]] = {}
        self._reporters: defaultdict[str, set[str]] = defaultdict(set)  # who reports me
        self.link_count = 0  # reports by members
        self.unplaced = 0  # members not placed
        self.one_sided = 0

    def _one_sided(self, a: str, b: str) -> bool:
        if a not in self.members or b not in self._links.get(a, ()):
            return False
        return not (b in self.members and a in self._links.get(b, ()))

    def _pairs(self, name: str) -> set[tuple[str, str]]:
        return {(name, n) for n in self._links.get(name, ())} | {
            (n, name) for n in self._reporters.get(name, ())
        }

    def _around(self, name: str, change: Callable[[], None]) -> None:
        """
        Apply C{change} (to C{name}'s links or membership) and update the
        one-sided count over every link that touches C{name}.
        """
        before = self._pairs(name)
        self.one_sided -= sum(self._one_sided(a, b) for a, b in before)
        change()
        self.one_sided += sum(self._one_sided(a, b) for a, b in before | self._pairs(name))

    def seed(self, peers: Iterable[Reported]) -> None:
        """
        Start from what the registry kept: each peer's links, and whether
        it was placed (none of them a member until it registers again).
        """
        for p in peers:
            self.set_links(p.name, p.neighbours)
            if p.placed:
                self.set_placed(p.name)

    def set_links(self, name: str, neighbours: Iterable[str]) -> None:
        new = list(neighbours)

        def change() -> None:
            old = self._links.pop(name, [])
            for n in old:
                self._reporters[n].discard(name)
                if not self._reporters[n]:
                    del self._reporters[n]
            if new:
                self._links[name] = new
            for n in new:
                self._reporters[n].add(name)
            if name in self.members:
                self.link_count += len(new) - len(old)

        self._around(name, change)

    def set_placed(self, name: str) -> None:
        if name not in self._placed:
            self._placed.add(name)
            if name in self.members:
                self.unplaced -= 1

    def add_member(self, name: str) -> None:
        if name in self.members:
            return

        def change() -> None:
            self.members.add(name)
            self.link_count += len(self._links.get(name, ()))
            self.unplaced += name not in self._placed

        self._around(name, change)

    def remove(self, name: str) -> None:
        """
        C{name} is gone: it is no member, and reports nothing any more.
        """
        self.set_links(name, [])
        if name in self.members:

            def change() -> None:
                self.members.discard(name)
                self.unplaced -= name not in self._placed

            self._around(name, change)
        self._placed.discard(name)

    def placed_members(self) -> int:
        return len(self.members) - self.unplaced

    def settled(self) -> bool:
        """
        Is every member placed, and do the members' reports form one
        consistent tree (each link reported by both ends, one fewer
        links than members)?
        """
        n = len(self.members)
        return bool(n) and not self.unplaced and not self.one_sided and (
            self.link_count == 2 * (n - 1)
        )
