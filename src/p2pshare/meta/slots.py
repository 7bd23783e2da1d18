"""
L{FreeSlots}: where a newcomer should join, in O(log N).

The metadata server refers a newcomer to the shallowest live peer with a
free slot (the earliest to join among equals), counting slots it already
promised, and counting newcomers still on their way as places one level
below their target.  Instead of computing every peer's depth and slots at
each join, this keeps each peer's depth (from the parent it reports,
updated down its subtree when it moves) and a heap of C{(depth, joined,
name)} entries, pushed whenever a peer's depth or slots may have changed
and checked lazily: an entry that no longer matches the peer is dropped
when it reaches the top.  The heap is rebuilt when stale entries
outnumber the peers.
"""

from __future__ import annotations

import heapq

from p2pshare.meta.interfaces import LivePeers, SlotHolder
from p2pshare.meta.registry import PeerRecord

Entry = tuple[int, int, str]


class FreeSlots:
    """
    Free slots by depth, over the live peers.  Only what L{LivePeers} and
    L{SlotHolder} declare is read of them, never changed; the owner tells
    this index what may have changed (L{changed}, L{moved}, L{referred},
    L{forget}).
    """

    def __init__(self, peers: LivePeers) -> None:
        self.peers = peers
        self.depth: dict[str, int] = {}
        self._parent: dict[str, str] = {}
        self._children: dict[str, set[str]] = {}
        self._heap: list[Entry] = []

    def _entry(self, name: str) -> Entry | None:
        """
        The heap entry C{name} deserves now, or None if it has no free slot
        (or is not a live, verified peer of known depth).
        """
        peer = self.peers.live(name)
        if peer is None or not peer.reachable:  # never name a peer whose address did not answer
            return None
        record = peer.record
        promised = len(peer.promised)
        if record.placed:
            free = record.max_neighbours - len(record.neighbours) - promised
        elif peer.heading_to is not None:  # on its way: its link there takes a slot
            free = record.max_neighbours - 1 - promised
        else:
            return None
        depth = self.depth.get(name)
        if depth is None or free <= 0:
            return None
        return (depth, record.joined, name)

    def changed(self, name: str) -> None:
        """
        C{name}'s free slots may have changed.
        """
        entry = self._entry(name)
        if entry is not None:
            heapq.heappush(self._heap, entry)
            if len(self._heap) > 2 * len(self.peers) + 1000:
                self._rebuild()

    def _rebuild(self) -> None:
        entries = (self._entry(name) for name in self.peers)
        self._heap = [e for e in entries if e is not None]
        heapq.heapify(self._heap)

    def referred(self, newcomer: str, target: str) -> None:
        self.changed(target)
        self.moved(newcomer)  # a place-to-be below its target

    def moved(self, name: str) -> None:
        """
        C{name} reported its place (its parent, or that it is the root)
        and its links: its depth and its subtree's may have changed.
        """
        peer = self.peers.live(name)
        if peer is None:
            self.forget(name)
            return
        self._set_parent(name, _parent(peer))
        self._set_depth(name, self._own_depth(peer))

    def forget(self, name: str) -> None:
        """
        C{name} left: its subtree has no known depth until it reports again.
        """
        self._set_parent(name, None)
        self._set_depth(name, None)
        self._children.pop(name, None)

    def best(self, newcomer: str) -> PeerRecord | None:
        """
        The shallowest free slot for C{newcomer}, or None if none is known.

        Only peers whose chain of parents reaches the root have a depth,
        so a subtree looking for a place (its top lost its parent) offers
        none of its slots; and a slot below C{newcomer} itself (it is
        rejoining with its subtree) is passed over, checked by walking up
        the candidate's parents.
        """
        aside: list[Entry] = []
        found = None
        # Depths only run down from the root: if the newcomer has none, no
        # peer with one is below it, and nothing need be walked.
        placed_itself = newcomer in self.depth
        while self._heap:
            entry = self._heap[0]
            if self._entry(entry[2]) != entry:
                heapq.heappop(self._heap)  # stale
            elif entry[2] == newcomer or (placed_itself and self._below(entry[2], newcomer)):
                aside.append(heapq.heappop(self._heap))
            else:
                holder = self.peers.live(entry[2])
                found = holder.record if holder is not None else None
                break
        for entry in aside:
            heapq.heappush(self._heap, entry)
        return found

    def _below(self, name: str, ancestor: str) -> bool:
        """
        Is C{ancestor} on C{name}'s chain of parents?  (The chain is as long
        as C{name}'s depth; a loop ends the walk.)
        """
        node: str | None = name
        for _ in range(self.depth.get(name, 0) + 1):
            node = self._parent.get(node) if node is not None else None
            if node is None:
                return False
            if node == ancestor:
                return True
        return False

    def _own_depth(self, peer: SlotHolder) -> int | None:
        """
        The root's depth is 0; another peer's is one more than its parent's,
        if the parent reports the link too, or this server has just sent it
        there (until L{GOAL_TIMEOUT}): a link that one side claims on its
        own places nobody.  A newcomer not placed yet that is on its way
        to a peer is a place-to-be one level below it (so a newcomer sent
        to it is two below, and so on: concurrent joins cost one hop).
        """
        record = peer.record
        if record.is_root and not record.uplink:
            return 0
        parent_name = _parent(peer)
        if parent_name is None:
            return None
        parent = self.peers.live(parent_name)
        arriving = peer.heading_to == parent_name  # sent there, just now
        if parent is None or (record.name not in parent.record.neighbours and not arriving):
            return None
        above = self.depth.get(parent_name)
        return None if above is None else above + 1

    def _set_parent(self, name: str, parent: str | None) -> None:
        old = self._parent.get(name)
        if old == parent:
            return
        if old is not None:
            siblings = self._children.get(old)
            if siblings is not None:
                siblings.discard(name)
                if not siblings:
                    del self._children[old]
            del self._parent[name]
        if parent is not None:
            self._parent[name] = parent
            self._children.setdefault(parent, set()).add(name)

    def _set_depth(self, name: str, depth: int | None) -> None:
        """
        Set C{name}'s depth and its subtree's (which follow it), visiting
        below only where a depth changes.
        """
        todo = [(name, depth)]
        seen = set()
        while todo:
            n, d = todo.pop()
            if n in seen:
                continue  # reported parents that form a loop, for a moment
            seen.add(n)
            if n != name and self.depth.get(n) == d:
                continue
            if d is None:
                self.depth.pop(n, None)
            else:
                self.depth[n] = d
            self.changed(n)
            for c in self._children.get(n, ()):
                child = self.peers.live(c)
                todo.append((c, None if d is None or child is None else self._own_depth(child)))


def _parent(peer: SlotHolder) -> str | None:
    """
    The peer C{peer} hangs from: the one it reports, else, while it is not
    placed, the one it is on its way to.
    """
    if peer.record.uplink:
        return peer.record.uplink
    return peer.heading_to if not peer.record.placed else None
