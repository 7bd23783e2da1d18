"""
L{Roster}: the live peers of the network, one L{Peer} record each, and what
is counted over them: how many come from each address (the registration
limits), which names known from before a restart have not come back, and
when each live peer is next worth looking at.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from p2pshare import wire
from p2pshare.common import OncePerMinute
from p2pshare.meta.interfaces import Session
from p2pshare.meta.records import Peer
from p2pshare.meta.registry import PeerRecord
from p2pshare.wire import WireError


class Roster(Mapping[str, Peer]):
    """
    The live peers by name (a peer is I{live} while its registration
    connection is open), in the order they registered.

    After a restart of the server, the peers in the registry are
    I{unverified} until they register again; those that do not within the
    grace period are dropped (L{expect_back}).

    Each live peer is looked at when its deadline comes (L{watch},
    L{due}): three of its beats after it was last heard from, or when its
    referral lapses; never every peer at every tick.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, max_peers: int, max_per_address: int, grace: float
    ) -> None:
        self.clock = clock
        self.max_peers = max_peers
        self.max_per_address = max_per_address
        self.grace = grace
        self.unverified: set[str] = set()
        self._live: dict[str, Peer] = {}
        self._from: dict[str, int] = {}  # source address -> live peers from it
        self._told = OncePerMinute()  # which refused registrations to log
        self._dropping: IDelayedCall | None = None
        # Peers to look at, by the second they fall due: a heap of those
        # seconds, and who is due at each.
        self._due: dict[int, set[Peer]] = {}
        self._due_at: list[int] = []
        self._looked_at = clock.seconds()

    def __getitem__(self, name: str) -> Peer:
        return self._live[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def live(self, name: str) -> Peer | None:
        return self._live.get(name)

    @property
    def sessions(self) -> Mapping[str, Session]:
        """
        Each live peer's registration connection, by name (for the manhole).
        """
        return _Sessions(self._live)

    def size(self) -> int:
        """
        The peers of the network: those registered now, placed or not, and
        after a restart those known from before that may yet come back.
        """
        return len(self._live) + len(self.unverified)

    # Coming and going.

    def admit(self, name: str, source: str) -> None:
        """
        Raise L{WireError} (C{full}) if a new peer from C{source} would be
        over a limit; a live peer registering again keeps its place.
        """
        if name in self._live:
            return
        why = None
        if len(self._live) >= self.max_peers:
            why = f"this network is full: {self.max_peers} peers (the metadata server's --max-peers)"
        elif self._from.get(source, 0) >= self.max_per_address:
            why = (f"{self.max_per_address} peers already come from your address "
                   "(the metadata server's --max-per-address)")
        if why is not None:
            if self._told.due(source, self.clock.seconds()):  # once per source and minute
                self.log.info("refused a registration from {source}: {why}", source=source, why=why)
            raise WireError(wire.E_FULL, why)

    def enter(self, record: PeerRecord, session: Session, source: str) -> tuple[Peer, Session | None]:
        """
        C{record}'s peer registered on C{session}: its L{Peer}, and the
        session this one replaces if it was live already (it keeps its
        record; a dial-back of the old session is given up).
        """
        peer = self._live.get(record.name)
        replaced = None
        if peer is None:
            peer = self._live[record.name] = Peer(record, session)
        else:
            replaced = peer.session
            self._less(peer.source)
            peer.give_up_check()
            peer.record, peer.session = record, session
        peer.source = source
        self._from[source] = self._from.get(source, 0) + 1
        self.unverified.discard(record.name)
        return peer, replaced

    def remove(self, name: str) -> Peer | None:
        """
        C{name}'s session ended: it is no longer live, nor counted, nor
        watched.  Its record, if it was live.
        """
        peer = self._live.pop(name, None)
        if peer is None:
            return None
        self._less(peer.source)
        self._unfile(peer)
        peer.leave()
        return peer

    def _less(self, source: str) -> None:
        left = self._from.get(source, 0) - 1
        if left > 0:
            self._from[source] = left
        else:
            self._from.pop(source, None)

    def expect_back(self, names: Iterable[str], drop: Callable[[list[str]], None]) -> None:
        """
        The server restarted knowing C{names}: they are unverified until
        they register again; those that have not after the grace period
        are given to C{drop}.
        """
        self.unverified = set(names)
        if self.unverified:
            self._dropping = self.clock.callLater(self.grace, self._drop, drop)

    def _drop(self, drop: Callable[[list[str]], None]) -> None:
        self._dropping = None
        gone = sorted(self.unverified)
        self.unverified.clear()
        drop(gone)

    def start(self) -> None:
        self._looked_at = self.clock.seconds()

    def stop(self) -> None:
        if self._dropping is not None and self._dropping.active():
            self._dropping.cancel()
        self._dropping = None

    # Deadlines.

    def watch(self, peer: Peer) -> None:
        """
        Look at C{peer} when its next deadline comes (L{Peer.next_look}),
        instead of whenever it was filed before.
        """
        self._unfile(peer)
        at = peer.next_look()
        if at is None:
            return
        second = math.ceil(at) + 1
        due = self._due.get(second)
        if due is None:
            due = self._due[second] = set()
            heapq.heappush(self._due_at, second)
        due.add(peer)
        peer.due = second

    def _unfile(self, peer: Peer) -> None:
        if peer.due is None:
            return
        due = self._due.get(peer.due)
        if due is not None:
            due.discard(peer)
            if not due:
                del self._due[peer.due]  # its second stays in the heap, and is skipped
        peer.due = None

    def due(self, now: float) -> list[Peer]:
        """
        The peers whose deadline has come, no longer filed.  None after a
        stall of this process (more than three seconds since the last
        look): the silence was ours, not theirs.
        """
        late, self._looked_at = now - self._looked_at > 3.0, now
        found: list[Peer] = []
        if late:
            return found
        while self._due_at and self._due_at[0] <= now:
            for peer in self._due.pop(heapq.heappop(self._due_at), ()):
                peer.due = None
                found.append(peer)
        return found


class _Sessions(Mapping[str, Session]):
    def __init__(self, live: Mapping[str, Peer]) -> None:
        self._live = live

    def __getitem__(self, name: str) -> Session:
        return self._live[name].session

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)
