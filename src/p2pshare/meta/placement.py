"""
L{Placement}: where a newcomer joins, by one rule, and the referrals under
way.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from p2pshare import wire
from p2pshare.meta.records import Peer, Referral
from p2pshare.meta.registry import PeerRecord, Registry
from p2pshare.meta.roster import Roster
from p2pshare.meta.slots import FreeSlots
from p2pshare.meta.tally import Tally
from p2pshare.topo import walk
from p2pshare.wire import WireError


class Placement:
    """
    A newcomer is referred to the shallowest live peer with a free slot
    that L{FreeSlots} knows (counting slots promised to newcomers still on
    their way, and newcomers on their way as places one level below their
    target), the earliest to join among equals; when it knows none, to the
    root, which refers the newcomer on to one of its neighbours; when
    there is no root, the newcomer becomes it.

    A referral (L{Referral}, in the newcomer's record; the slot it takes
    in the target's) lasts until the newcomer arrives (both ends report
    the link), goes elsewhere, leaves, or it lapses.

    @ivar root: the root of the tree.  Another peer that says it is a
        root (it was cut off while the rest chose a new one) is told to
        rejoin.
    """

    log = Logger()

    def __init__(self, registry: Registry, peers: Roster, tally: Tally, clock: IReactorTime) -> None:
        self.registry = registry
        self.peers = peers
        self.tally = tally
        self.clock = clock
        self.slots = FreeSlots(peers)
        self.root: str | None = None

    def place(self, newcomer: Peer, rejoin: bool = False) -> PeerRecord | None:
        """
        Where should C{newcomer} join?  L{None}: be the root.  A peer
        rejoining (C{rejoin}) brings its subtree: the free slots below it
        are passed over (L{FreeSlots.best}), and so is the root if its
        reported links put it in that subtree.
        """
        self.release(newcomer)
        target = self.slots.best(newcomer.name)
        if target is None:
            target = self._root_for(newcomer, rejoin)
        if target is None:
            self._make_root(newcomer)
            return None
        newcomer.referral = Referral(target.name, self.clock.seconds())
        self.peers[target.name].promised.add(newcomer.name)
        self.slots.referred(newcomer.name, target.name)
        self.peers.watch(newcomer)  # the referral may lapse
        self.log.info("referring {newcomer} to {target}", newcomer=newcomer.name, target=target.name)
        return target

    def _root_for(self, newcomer: Peer, rejoin: bool) -> PeerRecord | None:
        """
        The root, if the newcomer may be sent there; raise L{WireError} if
        there is a live root it may not be sent to.
        """
        root = self.peers.live(self.root) if self.root is not None else None
        if root is None or root is newcomer:
            return None
        if not root.reachable or (rejoin and root.name in self._component(newcomer.name)):
            raise WireError(
                wire.E_FAILED, "no peer in the network can take you just now; try again in a moment"
            )
        return root.record

    def _make_root(self, newcomer: Peer) -> None:
        """
        Make C{newcomer} the root: there is none, and the network is not
        waiting for peers known from before a restart of this server.
        """
        if self.peers.unverified:
            raise WireError(
                wire.E_FAILED,
                "the network is re-forming after a restart of the metadata server; "
                "try again in a moment",
            )
        record = newcomer.record
        if not newcomer.reachable:
            raise WireError(
                wire.E_UNREACHABLE,
                f"this server cannot reach you at {record.host}:{record.port} "
                "(check --advertise and the firewall), and no peer that others can reach is in "
                "the network yet for you to hang from",
            )
        self.registry.set_placed(record.name)
        self.tally.set_placed(record.name)
        record.is_root, record.uplink = True, None
        self.slots.moved(record.name)
        self.root = record.name
        self.log.info("peer {name} is the root", name=record.name)

    def _component(self, name: str) -> set[str]:
        """
        The live peers reachable from C{name} over reported links.
        """
        def live_neighbours(n: str) -> list[str]:
            peer = self.peers.live(n)
            return [m for m in peer.record.neighbours if m in self.peers] if peer else []

        return set(walk(name, live_neighbours))

    def release(self, newcomer: Peer) -> None:
        """
        C{newcomer} is no longer on its way to the target it was referred to.
        """
        referral, newcomer.referral = newcomer.referral, None
        if referral is None:
            return
        target = self.peers.live(referral.target)
        if target is not None:
            target.promised.discard(newcomer.name)
        self.slots.changed(referral.target)  # a slot there is free again
        self.slots.moved(newcomer.name)  # its depth now rests on its parent's report alone

    def reported(self, peer: Peer, is_root: bool) -> None:
        """
        C{peer} reported its links and where it hangs from (its record
        says them now): a second root is told to rejoin; its depth may
        have moved; and a newcomer's referral ends once both ends of its
        link report it (until then it is a place to refer others to, one
        level below its target), or once it went elsewhere.
        """
        name, record = peer.name, peer.record
        if is_root:
            if self.root is None or self.root not in self.peers:
                self.root = name
            elif self.root != name:
                self.log.info("peer {name} says it is a root, but {root} is: it must rejoin",
                              name=name, root=self.root)
                record.is_root = False
                peer.session.send("REJOIN")
        self.slots.moved(name)
        for n in record.neighbours:
            newcomer = self.peers.live(n)
            if newcomer is not None and newcomer.heading_to == name and self._reports(n, name):
                self.release(newcomer)  # it arrived here
        goal = peer.heading_to
        if record.neighbours and goal is not None and (
            goal not in record.neighbours or self._reports(goal, name)
        ):
            self.release(peer)  # it went elsewhere, or arrived and both ends say so

    def _reports(self, name: str, neighbour: str) -> bool:
        record = self.registry.get(name)
        return record is not None and neighbour in record.neighbours

    def left(self, peer: Peer) -> None:
        """
        C{peer} is no longer live: the slot it was promised is free again,
        the newcomers on their way to it are on their way nowhere, and it
        is no longer the root.
        """
        self.release(peer)
        for name in peer.promised:
            newcomer = self.peers.live(name)
            if newcomer is not None and newcomer.heading_to == peer.name:
                newcomer.referral = None
        peer.promised.clear()
        if self.root == peer.name:
            self.root = None
        self.slots.forget(peer.name)
