"""
What the metadata server keeps about one live peer: one L{Peer} record,
beside the peer's registry entry (L{PeerRecord}), so that a peer that
leaves is one removal (L{Roster.remove}) and whatever its record's own
L{Peer.leave} does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from p2pshare.meta.interfaces import Session
from p2pshare.meta.registry import PeerRecord

GOAL_TIMEOUT = 30.0  # seconds a newcomer referred to a peer has to arrive there


@dataclass(frozen=True)
class Referral:
    """
    A newcomer was sent to C{target} at C{at} and has not arrived there
    yet.  Until it arrives (both ends report the link), goes elsewhere,
    leaves, or the referral lapses, a slot of the target is promised to it.
    """

    target: str
    at: float

    @property
    def until(self) -> float:
        return self.at + GOAL_TIMEOUT

    def lapsed(self, now: float) -> bool:
        return now > self.until


@dataclass(eq=False)
class Peer:
    """
    One live peer: registered, its registration connection open.  A peer
    that registers again on a new connection keeps its record (and with
    it the referrals it is part of); only the session changes.

    @ivar record: its registry entry (where it listens, its links).
    @ivar session: its registration connection.
    @ivar source: the address its registration came from (what NAT makes
        shared; counted against C{--max-per-address}).
    @ivar reachable: whether the dial-back found it where it said it
        listens (L{None}: not known yet).  Only reachable peers are named
        to others.  Checked again at every registration.
    @ivar checking: the dial-back, while it runs: it fires with why the
        address failed, or L{None}.
    @ivar ticket_at: when its last ticket was sent.
    @ivar rechecked_at: when it last asked for its address to be checked
        again (C{CHECK}).
    @ivar relay: it offers to relay (C{relay=1}).
    @ivar referral: where it was referred, while on its way there.
    @ivar promised: the newcomers referred to it that have not arrived.
    @ivar due: the second under which L{Roster} files it to be looked at.
    """

    record: PeerRecord
    session: Session
    source: str = "local"
    reachable: bool | None = None
    checking: Deferred[str | None] | None = None
    ticket_at: float = 0.0
    rechecked_at: float = float("-inf")
    relay: bool = False  # it splices for others (--relay)
    referral: Referral | None = None
    promised: set[str] = field(default_factory=set)
    due: int | None = None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def heading_to(self) -> str | None:
        return self.referral.target if self.referral is not None else None

    def next_look(self) -> float | None:
        """
        When this peer is next worth looking at: when it would be overdue
        if nothing were heard (three of its beats and a second after it was
        last heard from), or when its referral lapses, whichever is first;
        L{None} if neither can happen.
        """
        times = []
        beat = self.session.beat
        if beat:
            times.append(self.session.heard_at + 3 * beat + 1)
        if self.referral is not None:
            times.append(self.referral.until)
        return min(times) if times else None

    def give_up_check(self) -> None:
        """
        Its dial-back, if one waits or runs, is no longer wanted (it left,
        or registered again): what it finds is not applied.
        """
        checking, self.checking = self.checking, None
        if checking is not None:
            checking.cancel()

    def leave(self) -> None:
        """
        Its session is over: give up its dial-back.  (The referrals it is
        part of are other records' business: L{Placement.left}.)
        """
        self.give_up_check()
