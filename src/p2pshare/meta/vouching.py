"""
L{Vouching}: what the metadata server says of each live peer.  It checks
that a registrant listens where it registered (the dial-back of
L{p2pshare.meta.checks}), then gives it a ticket that says what was found
(L{p2pshare.tickets}), and a fresh one before the last grows old.
"""

from __future__ import annotations

import math
import random

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.meta.checks import FAILED_FOR, AddressChecks
from p2pshare.meta.records import Peer
from p2pshare.meta.roster import Roster
from p2pshare.meta.slots import FreeSlots
from p2pshare.tickets import REFRESH, Ticket, TicketSigner
from p2pshare.wire import WireError

RELAYS_SHOWN = 4  # relays named in one RELAYS answer
RELAY_NAME = "p2pmeta"  # what this server's own relay ticket is made out to


class Vouching:
    """
    Only peers whose address answered are named to others (C{reachable}
    in their record, which L{FreeSlots} reads); without address checks
    (C{checks} is L{None}: unit tests) every address is taken as it is
    said.
    """

    log = Logger()

    def __init__(
        self,
        peers: Roster,
        clock: IReactorTime,
        signer: TicketSigner,
        checks: AddressChecks | None,
        slots: FreeSlots,
    ) -> None:
        self.peers = peers
        self.clock = clock
        self.signer = signer
        self.checks = checks
        self.slots = slots
        self.relaying = False  # --relay: this server splices too
        self._relay_names: set[str] = set()  # peers that registered with relay=1
        self._rechecked: dict[str, float] = {}  # source address -> its last CHECK

    def check_address(self, peer: Peer, nonce: str | None) -> None:
        """
        Check that C{peer} listens where it registered, then send it its
        ticket.  Without a nonce nothing can be checked: it may join, as a
        leaf that nobody is sent to.
        """
        peer.give_up_check()  # a check of its previous registration
        if self.checks is None or nonce is None:
            self._checked(peer, self.checks is None, "it gave no check= nonce")
            return
        record = peer.record
        checking = peer.checking = self.checks.check(
            peer.name, record.host, record.port, nonce, peer.source
        )
        # Set before the callback: a check that ended at once is applied now.
        checking.addCallback(self._ended, peer, checking)
        checking.addErrback(self._failed, peer.name)

    def offers_relay(self, name: str, relay: bool) -> None:
        peer = self.peers.live(name)
        if peer is not None:
            peer.relay = relay
            if relay:
                self._relay_names.add(name)

    def relays(self, asker: str | None, here: tuple[str, int] | None = None) -> list[str]:
        """
        Fresh tickets of at most L{RELAYS_SHOWN} live relays this server
        reached, other than C{asker}, in random order; first this server's
        own, at C{here} (where the asker reached it), when it relays.
        """
        # Only those that offered (a RELAY costs no walk over every peer);
        # names that left or stopped offering are forgotten as they are met.
        found = []
        for name in list(self._relay_names):
            peer = self.peers.live(name)
            if peer is None or not peer.relay:
                self._relay_names.discard(name)
            elif peer.reachable and name != asker:
                found.append(peer)
        chosen = random.sample(found, min(RELAYS_SHOWN, len(found)))
        tickets = [self.ticket_of(p).field() for p in chosen]
        if self.relaying and here is not None:
            host, port = here
            own = self.signer.issue(RELAY_NAME, host, port, host, True, self.clock.seconds())
            tickets.insert(0, own.field())
        return tickets

    def recheck(self, name: str, nonce: str) -> None:
        """
        Check the address of C{name} again, though it failed within
        L{FAILED_FOR}: it asks (C{CHECK}), at most once in that time.

        @raise WireError: it asked again too soon.
        """
        peer = self.peers.live(name)
        if peer is None:
            return
        now = self.clock.seconds()
        # Once per FAILED_FOR per peer, and per address registrations come
        # from: new names are free, addresses are not.
        wait = max(peer.rechecked_at, self._rechecked.get(peer.source, float("-inf"))) + FAILED_FOR - now
        if wait > 0:
            raise WireError(
                wire.E_FAILED, f"your address was checked again {FAILED_FOR - wait:.0f} s ago; "
                f"ask again in {math.ceil(wait)} s",
            )
        peer.rechecked_at = self._rechecked[peer.source] = now
        if len(self._rechecked) > 10_000:
            self._rechecked = {s: t for s, t in self._rechecked.items() if now - t < FAILED_FOR}
        peer.give_up_check()  # first: a dial it cancels is no failure to forget later
        if self.checks is not None:
            self.checks.forget(peer.record.host, peer.record.port)
        self.check_address(peer, nonce)

    def _ended(self, problem: str | None, peer: Peer, checking: Deferred[str | None]) -> str | None:
        if peer.checking is checking:  # else: given up (gone, or registered again)
            peer.checking = None
            self._checked(peer, problem is None, problem)
        return problem

    def _failed(self, failure: Failure, name: str) -> None:
        self.log.failure("checking {name} failed", failure, name=name)

    def _checked(self, peer: Peer, reachable: bool, problem: str | None) -> None:
        peer.reachable = reachable
        record = peer.record
        if not reachable:
            self.log.info(
                "peer {name} cannot be reached at {host}:{port} ({why}): a leaf, "
                "never named to newcomers", name=peer.name, host=record.host, port=record.port,
                why=problem,
            )
        self._send_ticket(peer)
        self.slots.changed(peer.name)
        self.slots.moved(peer.name)

    def when_checked(self, peer: Peer | None) -> Deferred[None]:
        """
        Fires once the check of C{peer}'s address has ended.
        """
        running = peer.checking if peer is not None else None
        if running is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            waiter.callback(None)
            return result

        running.addBoth(ended)
        return waiter

    def ticket_of(self, peer: Peer) -> Ticket:
        """
        A fresh ticket that says what was found of C{peer}.
        """
        record = peer.record
        return self.signer.issue(
            record.name, record.host, record.port, peer.source or record.host,
            bool(peer.reachable), self.clock.seconds(),
        )

    def _send_ticket(self, peer: Peer) -> None:
        peer.ticket_at = self.clock.seconds()
        peer.session.send("TICKET", self.ticket_of(peer).field())

    def refresh(self) -> None:
        """
        A fresh ticket for each peer whose ticket is getting old (tickets
        last L{tickets.LIFETIME}; peers use them while this server is away).
        """
        now = self.clock.seconds()
        for peer in list(self.peers.values()):
            if peer.reachable is not None and now - peer.ticket_at >= REFRESH:
                self._send_ticket(peer)

    def stop(self) -> None:
        """
        Give up every check: nothing found from now on is applied.
        """
        for peer in self.peers.values():
            peer.give_up_check()
        if self.checks is not None:
            self.checks.stop()
