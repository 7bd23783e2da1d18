"""
L{Members}: peers coming, reporting and going, as the metadata server
records them.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from p2pshare.meta.flushing import Flushing
from p2pshare.meta.interfaces import Session
from p2pshare.meta.names import HeldNames, token_hash
from p2pshare.meta.placement import Placement
from p2pshare.meta.registry import PeerRecord, Registry
from p2pshare.meta.roster import Roster
from p2pshare.meta.tally import Tally


class Members:
    """
    Each event of a peer's life in the network updates its record and
    tells the indexes kept over the records (the L{Tally}, the free slots,
    the held names) at one place: a registration (L{register}), a report
    of its links (L{report}), a look when its deadline comes (L{look}),
    and its leaving (L{left}), one removal from the L{Roster}.

    @ivar held: the names held for peers that vanished without a goodbye.
    """

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        peers: Roster,
        tally: Tally,
        placement: Placement,
        files: Flushing,
        clock: IReactorTime,
        event: Callable[[str, str, str], None],
        checked: bool,
    ) -> None:
        """
        @param event: tells the web page what happened to a peer.
        @param checked: whether addresses are checked (else every peer is
            taken as reachable where it says).
        """
        self.registry = registry
        self.peers = peers
        self.tally = tally
        self.placement = placement
        self.files = files
        self.clock = clock
        self.held = HeldNames(peers.max_peers)
        self._event = event
        self._checked = checked

    def register(
        self,
        session: Session,
        name: str | None,
        host: str,
        port: int,
        max_neighbours: int,
        token: str | None,
        old_token: str | None,
    ) -> PeerRecord:
        """
        See L{MetaServer.register}.
        """
        owner = token_hash(token)
        if name is None:
            name = self.registry.assign_name(lambda n: n in self.peers or n in self.held)
        else:
            known = self.registry.get(name)
            self.held.check_owner(
                name, owner, token_hash(old_token), known.token_hash if known is not None else None,
                self.peers, self.peers.unverified,
            )
        source = _source_of(session)
        self.peers.admit(name, source)
        self.held.release(name)
        back = name in self.peers.unverified
        record = self.registry.add(name, host, port, max_neighbours, owner)
        peer, replaced = self.peers.enter(record, session, source)
        if replaced is not None:
            self.log.info("peer {name} came back; its old connection is dropped", name=name)
            replaced.superseded()
        self.tally.add_member(name)
        self.files.topology_changed()
        peer.reachable = None if self._checked else True
        self.peers.watch(peer)
        if back:
            self._event("back", name, f"{name} came back after the restart")
        elif replaced is not None:
            self._event("back", name, f"{name} came back (a new connection replaced its old one)")
        else:
            self._event("join", name, f"{name} joined from {host}:{port}")
        self.placement.slots.changed(name)
        return record

    def report(
        self, name: str, neighbours: list[str], uplink: str | None, is_root: bool, shared_files: int
    ) -> bool:
        """
        C{name} says its neighbours are now C{neighbours}, in link order,
        and where it hangs from.  Whether it is a live peer.
        """
        peer = self.peers.live(name)
        if peer is None:
            return False
        record = peer.record
        if record.neighbours != neighbours:
            self.files.topology_changed()
        self.registry.set_neighbours(name, neighbours)
        self.tally.set_links(name, neighbours)
        if neighbours:
            self.tally.set_placed(name)
        record.uplink, record.is_root = uplink, is_root
        record.activity.shared_files = shared_files
        self.placement.reported(peer, is_root)
        return True

    def look(self) -> None:
        """
        Names held for vanished owners expire; and the live peers whose
        deadline has come are looked at (never all of them).  A referral
        that lapsed frees its slot (a link the newcomer claims there that
        the other end never reports places nobody); a peer that promised a
        heartbeat (C{P2P beat=N}) and has been silent for three of them is
        dropped: hung, or its host is gone.
        """
        now = self.clock.seconds()
        self.held.expire(now)
        for peer in self.peers.due(now):
            if peer.referral is not None and peer.referral.lapsed(now):
                self.placement.release(peer)
            session = peer.session
            if session.beat and now - session.heard_at > 3 * session.beat + 1:
                self.log.info("peer {name} has been silent for {s:.0f} s; dropping it",
                              name=peer.name, s=now - session.heard_at)
                session.abort()
            else:
                self.peers.watch(peer)

    def left(self, name: str, graceful: bool, running: bool) -> bool:
        """
        The registration connection of C{name} closed: it is removed from
        the live peers (its record gives up its dial-back), its referrals
        end, and unless the server is stopping (the registry outlives it)
        it leaves the registry.  Unless it said goodbye, its name stays
        held for its owner for three beats.  Whether the network changed.
        """
        peer = self.peers.remove(name)
        if peer is None:
            return False
        self.placement.left(peer)
        if not running:
            return False
        if not graceful:
            until = self.clock.seconds() + 3 * (peer.session.beat or 5)
            self.held.hold(name, peer.record.token_hash, until)
        self.registry.remove(name)
        self.tally.remove(name)
        self.files.topology_changed()
        self._event("leave", name, f"{name} left" if graceful
                    else f"{name} vanished (its connection closed without a goodbye)")
        self.log.info("peer {name} left", name=name)
        return True

    def drop(self, names: list[str]) -> None:
        """
        C{names}, known from before a restart, did not register again in
        time.
        """
        for name in names:
            self.log.info("peer {name} did not come back after the restart; dropped", name=name)
            self._event("lost", name, f"{name} did not come back after the restart; dropped")
            self.registry.remove(name)
            self.tally.remove(name)


def _source_of(session: object) -> str:
    """
    The address a registration comes from (what NAT makes shared).
    """
    peer_host = getattr(session, "peerHost", None)
    return (peer_host() if peer_host is not None else None) or "local"
