"""
The metadata server: L{MetaProtocol} (one connection), L{MetaFactory}, and
L{MetaServer} (the service that owns the registry, placement and the
topology files).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.admission import META_IDENTITY, Secret
from p2pshare.channel import ChannelFactory, LineChannel
from p2pshare.common import OncePerMinute
from p2pshare.disk import atomic_write
from p2pshare.meta.checks import AddressChecks, Connect
from p2pshare.meta.registry import PeerRecord, Registry, topology_files
from p2pshare.meta.slots import FreeSlots
from p2pshare.meta.tally import Tally
from p2pshare.tickets import REFRESH, TicketSigner
from p2pshare.topo import TopoEntry, count_text, topo_text, walk
from p2pshare.wire import Message, WireError

DEFAULT_MAX_NEIGHBOURS = 2
FLUSH_INTERVAL = 0.2  # seconds: the longest topo.txt lags behind the network
MAX_PEERS = 10_000  # registered peers at once (--max-peers)
MAX_PER_ADDRESS = 1_000  # of them from one source address (--max-per-address)
OBSERVER_RESERVE = 64  # connections beyond those, for p2p topo and the operator
GOAL_TIMEOUT = 30.0  # seconds a newcomer referred to a peer has to arrive there
MAX_QUEUED = 32  # requests one connection may have waiting for their answers
DEFAULT_EXPECT = 5  # "network complete" at this many peers when --expect is not given


class MetaServer(MultiService):
    """
    The state of the network as the metadata server sees it.

    A peer is I{live} while its registration connection is open.  Peers are
    placed breadth-first: a newcomer is referred to the shallowest live peer
    with a free neighbour slot (counting slots promised to newcomers still
    on their way), else to the root, so a join normally costs one hop and
    the tree stays bushy rather than growing into a line.
    """

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        clock: IReactorTime,
        data_dir: Path | None = None,
        expect: int | None = None,
        grace: float = 15.0,
        secret: Secret | None = None,
        flush_interval: float = FLUSH_INTERVAL,
        max_peers: int = MAX_PEERS,
        max_per_address: int = MAX_PER_ADDRESS,
        connect: Connect | None = None,
        signer: TicketSigner | None = None,
    ) -> None:
        """
        @param connect: how to reach a registrant's advertised address, to
            check it (L{AddressChecks}); without it (unit tests) every
            address is taken as it is said.
        @param signer: the key that signs tickets (a fresh one by default).
        @param expect: the planned network size (C{--expect}): C{network
            complete} is logged when it is reached.  L{None}: nobody set
            one; it is logged at L{DEFAULT_EXPECT} all the same, but no
            plan is shown (C{planned} stays L{None}).
        """
        super().__init__()
        # Bumped by every change the web page shows (it caches by it).
        self.revision = 0
        self.max_peers = max_peers
        self.max_per_address = max_per_address
        self._sources: dict[str, int] = {}  # source address -> live peers from it
        self._source: dict[str, str] = {}  # live peer -> its source address
        self._told = OncePerMinute()  # which refused registrations to log
        self.registry = registry
        self.clock = clock
        self.secret = secret
        self.data_dir = data_dir
        self.expect = expect if expect is not None else DEFAULT_EXPECT
        self.planned = expect
        self.sessions: dict[str, MetaProtocol] = {}
        # Each registration's number: increasing, across restarts too.
        self.last_seq = int(clock.seconds() * 1000)
        self.complete = False
        self.stopped = False  # once stopped, its registry is closed
        # target name -> newcomers referred there that have not arrived yet,
        # and each such newcomer -> its target
        self._reserved: dict[str, set[str]] = {}
        self._goal: dict[str, str] = {}
        self._goal_at: dict[str, float] = {}  # when each was referred (a promise expires)
        self._written: tuple[str, str] | None = None
        # Whether the verified peers form one tree, kept per event; and
        # where the free slots are, by depth.
        self.tally = Tally()
        self.slots = FreeSlots(self)
        self._version = 0  # bumped when the topology changes
        self._settled_version = -1
        # Files, registry commits and the checks that log are coalesced:
        # at most one flush per flush_interval, never later than that
        # after a change (see changed()).
        self.flush_interval = flush_interval
        self._flushing: IDelayedCall | None = None
        self._flushed_at = float("-inf")
        # The periodic job is a child service, started and stopped with us.
        watch = TimerService(1.0, self._check_sessions)
        watch.clock = clock
        watch.setServiceParent(self)
        self._checked_at = 0.0  # when the sessions were last checked
        # Sessions to look at, by the second when they would be overdue if
        # nothing were heard (a heap of those seconds, and who is due):
        # each session is looked at about once per three of its beats,
        # never all at every tick.
        self._due: dict[int, set[str]] = {}
        self._due_at: list[int] = []
        # After a restart, the peers in the registry are unverified until
        # they register again; those that do not within the grace period
        # are dropped.
        self.grace = grace
        self.unverified: set[str] = set()
        self._dropping: IDelayedCall | None = None
        # Names of peers that vanished without a goodbye: name -> (the
        # owner's token hash, until when it is held), at most max_peers.
        self._held_names: dict[str, tuple[str | None, float]] = {}
        # Registrants' addresses are checked by dialling back; tickets
        # say what was found.
        self.signer = signer or TicketSigner()
        self.checks = AddressChecks(connect, clock, secret) if connect is not None else None
        self._checked: dict[str, Deferred[None]] = {}  # name -> its check, while it runs
        refresh = TimerService(60.0, self._refresh_tickets)
        refresh.clock = clock
        refresh.setServiceParent(self)
        # The root of the tree; another peer that says it is a root (it was
        # cut off while the rest chose a new one) is told to rejoin.
        self.root: str | None = None
        # What happened lately, for the web page (L{event}).
        self.events: deque[Event] = deque(maxlen=50)

    def startService(self) -> None:
        super().startService()
        for p in self.registry.peers():
            self.tally.set_links(p.name, p.neighbours)
            if p.placed:
                self.tally.set_placed(p.name)
        self.unverified = {p.name for p in self.registry.peers()}
        if self.unverified:
            self._dropping = self.clock.callLater(self.grace, self._drop_unverified)
            self.event("restart", "", (
                f"metadata server restarted: {len(self.unverified)} peers known from before; "
                f"those that do not come back within {self.grace:.0f} s are dropped"
            ))
        else:
            self.event("start", "", "metadata server started with no peers")
        self._flush()
        self._checked_at = self.clock.seconds()

    def stopService(self) -> Deferred[None]:
        """
        Stop every timer and close the registry (what it holds was written
        through at each change).
        """
        timers = super().stopService()  # the children: every periodic job
        if self.checks is not None:
            self.checks.stop()
        if self._dropping is not None and self._dropping.active():
            self._dropping.cancel()
        if self._flushing is not None:
            self._flushing.cancel()
            self._flush()  # the files and the registry as the network is now
        self.stopped = True
        self.registry.close()
        return timers.addCallback(lambda _: None)

    def topology(self, peers: list[PeerRecord] | None = None) -> list[TopoEntry]:
        """
        The network as C{topo.txt} shows it: the verified peers in join
        order, each with the links that both of its ends report (a name
        that is not a live peer, or a link only one side claims, is not
        shown).
        """
        if peers is None:
            peers = self.verified()
        # Each list has a few names: looking in it beats building 10,000
        # sets at every flush (14 ms against 19 at 10,000 peers).
        by_name = {p.name: p.neighbours for p in peers}
        return [
            TopoEntry(
                p.name,
                [n for n in p.neighbours if p.name in by_name.get(n, ())],
                p.host,
                p.port,
            )
            for p in peers
        ]

    def size(self) -> int:
        """
        The peers of the network: those registered now, placed or not, and
        after a restart those known from before that may yet come back.
        """
        return len(self.sessions) + len(self.unverified)

    def verified(self) -> list[PeerRecord]:
        """
        The peers known to be in the network (all, except after a restart
        those that have not registered again yet), in join order.
        """
        return [p for p in self.registry.peers() if p.name not in self.unverified]

    def _drop_unverified(self) -> None:
        self._dropping = None
        for name in sorted(self.unverified):
            self.log.info("peer {name} did not come back after the restart; dropped", name=name)
            self.event("lost", name, f"{name} did not come back after the restart; dropped")
            self.registry.remove(name)
            self.tally.remove(name)
            self.slots.forget(name)
        self.unverified.clear()
        self.changed()

    def _check_sessions(self) -> None:
        """
        Drop peers that promised a heartbeat (P2P beat=N) and have been
        silent for three of them: hung, or their host is gone.  Only the
        sessions whose deadline has come are looked at; one heard from
        since is looked at again at its new deadline.
        """
        now = self.clock.seconds()
        late, self._checked_at = now - self._checked_at > 3.0, now
        for name, (_, until) in list(self._held_names.items()):
            if now >= until:
                del self._held_names[name]
        if late:
            return  # this process was stalled: the silence is ours, not theirs
        # A newcomer referred somewhere has GOAL_TIMEOUT to get there: then
        # the slot it was promised is free again, and a link it claims
        # there that the other end never reports places nobody.
        for newcomer, at in list(self._goal_at.items()):
            if now - at > GOAL_TIMEOUT:
                self._release(newcomer)
        while self._due_at and self._due_at[0] <= now:
            for name in self._due.pop(heapq.heappop(self._due_at), ()):
                proto = self.sessions.get(name)
                if proto is None or not proto.beat:
                    continue
                if now - proto.heard_at > 3 * proto.beat + 1:
                    self.log.info("peer {name} has been silent for {s:.0f} s; dropping it",
                                  name=name, s=now - proto.heard_at)
                    proto.abort()
                else:
                    self._watch(name, proto)

    def _refused(self, source: str, why: str) -> None:
        """
        Log a refused registration, once per source and minute.
        """
        if self._told.due(source, self.clock.seconds()):
            self.log.info("refused a registration from {source}: {why}", source=source, why=why)

    def _left(self, name: str) -> None:
        """
        The session of C{name} ended: one peer fewer from its address.
        """
        source = self._source.pop(name, "local")
        left = self._sources.get(source, 0) - 1
        if left > 0:
            self._sources[source] = left
        else:
            self._sources.pop(source, None)

    def _watch(self, name: str, proto: MetaProtocol) -> None:
        """
        Look at C{name}'s session when it would be overdue.
        """
        if not proto.beat:
            return
        second = math.ceil(proto.heard_at + 3 * proto.beat + 1) + 1
        due = self._due.get(second)
        if due is None:
            due = self._due[second] = set()
            heapq.heappush(self._due_at, second)
        due.add(name)

    # Registration.

    def register(
        self,
        proto: MetaProtocol,
        name: str | None,
        host: str,
        port: int,
        max_neighbours: int,
        token: str | None = None,
        old_token: str | None = None,
    ) -> PeerRecord:
        """
        Register a peer.  A name is owned by whoever holds its token: the
        owner takes it back at once (a restarted peer whose old connection
        is not yet known to be dead), anyone else is refused (C{name-taken})
        while the name is live, unverified after a restart, or held for a
        peer that vanished without saying goodbye.
        """
        token_hash = _hash(token)
        if name is None:
            name = self.registry.assign_name(
                lambda n: n in self.sessions or n in self._held_names
            )
        else:
            # A peer that replaced its token (--reset-token) proves the old one once.
            self._check_owner(name, token_hash, _hash(old_token))
        source = _source_of(proto)
        if name not in self.sessions:  # one coming back keeps its place
            why = None
            if len(self.sessions) >= self.max_peers:
                why = f"this network is full: {self.max_peers} peers (the metadata server's --max-peers)"
            elif self._sources.get(source, 0) >= self.max_per_address:
                why = (f"{self.max_per_address} peers already come from your address "
                       "(the metadata server's --max-per-address)")
            if why is not None:
                self._refused(source, why)
                raise WireError(wire.E_FULL, why)
        old = self.sessions.pop(name, None)
        if old is not None:
            self._left(name)
            self.log.info("peer {name} came back; its old connection is dropped", name=name)
            old.name = None  # its close must not remove the peer again
            old.abort()
        self._held_names.pop(name, None)
        record = self.registry.add(name, host, port, max_neighbours, token_hash)
        self.tally.add_member(name)
        self._version += 1
        self.last_seq += 1
        self.sessions[name] = proto
        self._sources[source] = self._sources.get(source, 0) + 1
        self._source[name] = source
        self._watch(name, proto)
        if name in self.unverified:
            self.unverified.discard(name)
            self.event("back", name, f"{name} came back after the restart")
        elif old is not None:
            self.event("back", name, f"{name} came back (a new connection replaced its old one)")
        else:
            self.event("join", name, f"{name} joined from {host}:{port}")
        record.source = source
        record.reachable = None if self.checks is not None else True
        self.log.info(
            "peer {name} registered from {host}:{port}", name=name, host=host, port=port
        )
        self.slots.changed(name)
        self.changed()
        return record

    # Checking where a registrant listens, and its tickets.

    def check_address(self, name: str, nonce: str | None) -> None:
        """
        Check that C{name} listens where it registered (L{AddressChecks}),
        then send it its ticket.  Without a nonce nothing can be checked:
        it may join, as a leaf that nobody is sent to.
        """
        record = self.registry.get(name)
        if record is None:
            return
        earlier = self._checked.pop(name, None)
        if earlier is not None:
            earlier.cancel()  # a check of its previous registration
        if self.checks is None or nonce is None:
            self._checked_as(name, record, self.checks is None, "it gave no check= nonce")
            return
        d = self._checked[name] = Deferred.fromCoroutine(self._check(name, record, nonce))
        d.addErrback(lambda f: self.log.failure("checking {name} failed", f, name=name))

        def ended(result: object) -> object:
            if self._checked.get(name) is d:
                del self._checked[name]
            return result

        d.addBoth(ended)

    async def _check(self, name: str, record: PeerRecord, nonce: str) -> None:
        assert self.checks is not None
        problem = await self.checks.check(name, record.host, record.port, nonce, record.source)
        if self.running and self.registry.get(name) is record and name in self.sessions:
            self._checked_as(name, record, problem is None, problem)
        # else: gone, or registered again meanwhile (that registration is checked)

    def _checked_as(
        self, name: str, record: PeerRecord, reachable: bool, problem: str | None
    ) -> None:
        record.reachable = reachable
        if not reachable:
            self.log.info(
                "peer {name} cannot be reached at {host}:{port} ({why}): a leaf, "
                "never named to newcomers", name=name, host=record.host, port=record.port,
                why=problem,
            )
        self._send_ticket(name, record)
        self.slots.changed(name)
        self.slots.moved(name)

    def when_checked(self, name: str) -> Deferred[None]:
        """
        Fires once the check of C{name}'s address has ended.
        """
        running = self._checked.get(name)
        if running is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            waiter.callback(None)
            return result

        running.addBoth(ended)
        return waiter

    def _send_ticket(self, name: str, record: PeerRecord) -> None:
        proto = self.sessions.get(name)
        if proto is None:
            return
        ticket = self.signer.issue(
            name, record.host, record.port, record.source or record.host,
            bool(record.reachable), self.clock.seconds(),
        )
        record.ticket_at = self.clock.seconds()
        proto.send("TICKET", ticket.field())

    def _refresh_tickets(self) -> None:
        """
        A fresh ticket for each peer whose ticket is getting old (tickets
        last L{tickets.LIFETIME}; peers use them while this server is away).
        """
        now = self.clock.seconds()
        for name in list(self.sessions):
            record = self.registry.get(name)
            if record is not None and record.reachable is not None \
                    and now - record.ticket_at >= REFRESH:
                self._send_ticket(name, record)

    def whois(self, names: list[str]) -> list[PeerRecord]:
        """
        Those of C{names} that are live peers this server reached where
        they said they listen.
        """
        found = []
        for name in names:
            record = self.registry.get(name)
            if record is not None and name in self.sessions and record.reachable:
                found.append(record)
        return found

    def place(self, newcomer: str, rejoin: bool = False) -> PeerRecord | None:
        """
        Where should C{newcomer} join?  L{None} means: be the root.

        Newcomers already referred somewhere and still on their way count
        as peers-to-be one level below their target: when many join at
        once, a newcomer may be referred to one of them, which answers as
        soon as it has joined itself.  So concurrent joins cost one hop too.
        """
        self._release(newcomer)
        target = self.slots.best(newcomer)
        if target is not None:
            return self._refer(newcomer, target)
        # No free slot known in the tree hanging from the root: look at
        # every peer.  A peer rejoining brings its subtree: it must not
        # land inside it, nor inside another subtree that is itself
        # looking for a place.
        excluded = {newcomer}
        if rejoin:
            excluded |= self._component(newcomer)
            for p in self.registry.peers():
                lost = p.uplink not in self.sessions if p.uplink else not p.is_root
                if p.name in self.sessions and p.placed and lost:
                    excluded |= self._component(p.name)
        placed = [
            p
            for p in self.registry.peers()
            if p.placed and p.name in self.sessions and p.name not in excluded and p.reachable
        ]
        if not placed and any(self.registry.get(n) for n in self.unverified):
            raise WireError(
                wire.E_FAILED,
                "the network is re-forming after a restart of the metadata server; "
                "try again in a moment",
            )
        newcomer_record = self.registry.get(newcomer)
        if not placed and newcomer_record is not None and not newcomer_record.reachable:
            raise WireError(
                wire.E_UNREACHABLE,
                f"this server cannot reach you at {newcomer_record.host}:{newcomer_record.port} "
                "(check --advertise and the firewall), and no peer that others can reach is in "
                "the network yet for you to hang from",
            )
        if not placed:
            self.registry.set_placed(newcomer)
            self.tally.set_placed(newcomer)
            record = self.registry.get(newcomer)
            if record is not None:
                record.is_root, record.uplink = True, None
                self.slots.moved(newcomer)
            self.root = newcomer
            self.log.info("peer {name} is the root", name=newcomer)
            self.changed()
            return None
        depth = _depths(placed, self.sessions)
        slots = {
            p.name: p.max_neighbours - len(p.neighbours) - len(self._reserved.get(p.name, ()))
            for p in placed
        }
        candidates = {p.name: p for p in placed}
        on_the_way = [(t, n) for n, t in self._goal.items()]
        grew = True
        while grew:
            grew = False
            for goal, name in on_the_way:
                record = self.registry.get(name)
                if (
                    name not in candidates
                    and goal in candidates
                    and name in self.sessions
                    and record is not None
                    and not record.placed
                ):
                    depth[name] = depth[goal] + 1
                    slots[name] = record.max_neighbours - 1 - len(self._reserved.get(name, ()))
                    candidates[name] = record
                    grew = True
        free = [p for p in candidates.values() if slots[p.name] > 0]
        if free:
            target = min(free, key=lambda p: (depth[p.name], p.joined))
        else:
            target = placed[0]
        return self._refer(newcomer, target)

    def _refer(self, newcomer: str, target: PeerRecord) -> PeerRecord:
        self._reserved.setdefault(target.name, set()).add(newcomer)
        self._goal[newcomer] = target.name
        self._goal_at[newcomer] = self.clock.seconds()
        self.slots.referred(newcomer, target.name)
        self.log.info("referring {newcomer} to {target}", newcomer=newcomer, target=target.name)
        return target

    def _component(self, name: str) -> set[str]:
        """
        The live peers reachable from C{name} over reported links.
        """
        def live_neighbours(n: str) -> list[str]:
            record = self.registry.get(n)
            return [m for m in record.neighbours if m in self.sessions] if record else []

        return set(walk(name, live_neighbours))

    def report(
        self,
        name: str,
        neighbours: list[str],
        uplink: str | None = None,
        is_root: bool = False,
        shared_files: int = 0,
    ) -> None:
        """
        C{name} says its neighbours are now C{neighbours}, in link order,
        and where it hangs from.
        """
        record = self.registry.get(name)
        if record is not None and record.neighbours != neighbours:
            self._version += 1
        self.registry.set_neighbours(name, neighbours)
        self.tally.set_links(name, neighbours)
        if neighbours:
            self.tally.set_placed(name)
        if record is not None:
            record.uplink, record.is_root = uplink, is_root
            record.shared_files = shared_files
        if is_root:
            if self.root is None or self.root not in self.sessions:
                self.root = name
            elif self.root != name:
                self.log.info("peer {name} says it is a root, but {root} is: it must rejoin",
                              name=name, root=self.root)
                if record is not None:
                    record.is_root = False
                self.sessions[name].send("REJOIN")
        self.slots.moved(name)
        # A newcomer sent here stays "on its way" (a place to refer others
        # to, one level below) until both ends of its link report it.
        for n in neighbours:
            if self._goal.get(n) == name and self._reports(n, name):
                self._release(n)  # it arrived here
        goal = self._goal.get(name)
        if neighbours and goal is not None and (
            goal not in neighbours or self._reports(goal, name)
        ):
            self._release(name)  # it went elsewhere, or arrived and both ends say so
        self.changed()

    def _reports(self, name: str, neighbour: str) -> bool:
        record = self.registry.get(name)
        return record is not None and neighbour in record.neighbours

    def _check_owner(self, name: str, token_hash: str | None, old_hash: str | None = None) -> None:
        record = self.registry.get(name)
        owner = record.token_hash if record is not None else None
        held = self._held_names.get(name)
        if held is not None:
            owner = held[0]
        claimed = name in self.sessions or name in self.unverified or held is not None
        if not claimed or (owner is not None and owner in (token_hash, old_hash)):
            return
        if name in self.sessions:
            why = "is already live in this network"
        elif name in self.unverified:
            why = "belongs to a peer that has not come back since the restart yet"
        else:
            why = "belongs to a peer that vanished recently; it is held for its owner a while"
        raise WireError(wire.E_NAME_TAKEN, f"the name {name} {why}")

    def disconnected(self, name: str, graceful: bool = False) -> None:
        """
        The registration connection of C{name} closed.  Unless the peer said
        goodbye, its name stays held for its owner for three heartbeats.
        A check of where it listens, if one waits or runs, is given up.
        """
        checking = self._checked.pop(name, None)
        if checking is not None:
            checking.cancel()
        proto = self.sessions.pop(name, None)
        if proto is not None:
            self._left(name)
        if name == self.root:
            self.root = None
        if not graceful and self.running:
            record = self.registry.get(name)
            beat = proto.beat if proto is not None and proto.beat else 5
            if record is not None:
                self._hold(name, record.token_hash, self.clock.seconds() + 3 * beat)
        self._release(name)
        for newcomer in self._reserved.pop(name, ()):
            self._goal.pop(newcomer, None)
            self._goal_at.pop(newcomer, None)
        if not self.running:
            # Shutting down: the registry outlives this process.
            return
        self.registry.remove(name)
        self.tally.remove(name)
        self.slots.forget(name)
        self._version += 1
        self.event("leave", name, f"{name} left" if graceful
                   else f"{name} vanished (its connection closed without a goodbye)")
        self.log.info("peer {name} left", name=name)
        self.changed()

    def _hold(self, name: str, token_hash: str | None, until: float) -> None:
        """
        Keep C{name} for its owner until C{until} (at most three of its
        beats, which are clamped); the table holds at most C{max_peers}
        names, the one soonest to expire giving way.
        """
        self._held_names[name] = (token_hash, until)
        if len(self._held_names) > self.max_peers:
            first = min(self._held_names, key=lambda n: self._held_names[n][1])
            del self._held_names[first]

    def event(self, kind: str, name: str, text: str) -> None:
        """
        Remember for the web page that C{kind} happened to peer C{name}
        (empty: to this server), said in one sentence.
        """
        self.events.append(Event(self.clock.seconds(), kind, name, text))
        self.revision += 1

    def _release(self, newcomer: str) -> None:
        """
        C{newcomer} is no longer on its way to the target it was referred to.
        """
        self._goal_at.pop(newcomer, None)
        target = self._goal.pop(newcomer, None)
        if target is None:
            return
        waiting = self._reserved.get(target, set())
        waiting.discard(newcomer)
        if not waiting:
            self._reserved.pop(target, None)
        self.slots.changed(target)  # a slot there is free again
        if self.registry.get(newcomer) is not None:
            self.slots.moved(newcomer)  # its depth now rests on its parent's report alone

    # The topology files and network completion.

    def changed(self) -> None:
        """
        Something changed: flush now if the last flush is at least
        C{flush_interval} old, else once it is (one pending at most).
        """
        self.revision += 1
        if self._flushing is not None:
            return
        wait = self._flushed_at + self.flush_interval - self.clock.seconds()
        if wait <= 0:
            self._flush()
        else:
            self._flushing = self.clock.callLater(wait, self._flush)

    def pending_flush(self) -> float | None:
        """
        When the next flush is due, if one is.
        """
        return self._flushing.getTime() if self._flushing is not None else None

    def _flush(self) -> None:
        """
        Commit the registry, write the topology files, and log (and tell
        the peers) what the network has become.
        """
        self._flushing = None
        self._flushed_at = self.clock.seconds()
        self.registry.commit()
        self.write_files()
        self._check_settled()
        self._check_complete()

    def _check_settled(self) -> None:
        """
        Log once for each new topology in which every peer is placed and
        the reported links form one tree (what operators and tests wait
        for, rather than polling topo.txt).
        """
        if self.tally.settled() and self._version != self._settled_version:
            self._settled_version = self._version
            self.log.info("topology settled: {n} peers in one tree", n=len(self.tally.members))

    def write_files(self) -> None:
        if self.data_dir is None:
            return
        peers = self.verified()
        texts = (topo_text(self.topology(peers)), count_text(peers))
        if texts == self._written:
            return
        for path, text in zip(topology_files(self.data_dir), texts, strict=True):
            atomic_write(path, text.encode("utf-8"))
        self._written = texts

    def _check_complete(self) -> None:
        if self.complete:
            return
        live = self.tally.placed_members()
        if live < self.expect or self.tally.one_sided:
            return
        self.complete = True
        self.log.info("network complete: {n} peers", n=live)
        for proto in self.sessions.values():
            proto.send("COMPLETE", live)


class Event(NamedTuple):
    """
    Something the web page lists: C{kind} is C{start}, C{restart} (of this
    server), C{join}, C{back} (a peer registered again), C{leave} or
    C{lost} (did not come back after a restart); C{text} says it to a human.
    """

    time: float
    kind: str
    peer: str
    text: str


def _hash(token: str | None) -> str | None:
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def _source_of(proto: object) -> str:
    """
    The address a registration comes from (what NAT makes shared).
    """
    peer_host = getattr(proto, "peerHost", None)
    return (peer_host() if peer_host is not None else None) or "local"


def _depths(live: list[PeerRecord], sessions: object = ()) -> dict[str, float]:
    """
    Hops from the root (the earliest live peer) along the links that both
    ends report; peers not reached count as infinitely deep.
    """
    names = {p.name: p for p in live}
    depth: dict[str, float] = {name: float("inf") for name in names}
    depth.update(walk(live[0].name, lambda n: [
        m for m in names[n].neighbours if m in names and n in names[m].neighbours
    ]))
    return depth


class MetaProtocol(LineChannel):
    """
    One connection to the metadata server: a peer's registration link, or
    an observer (C{p2p topo}).  The first line must start with the C{P2P}
    flag; anything else is answered with C{ERROR bad-flag} and the
    connection stays open for a corrected try.
    """

    def __init__(self, server: MetaServer) -> None:
        super().__init__(server.clock)
        self.server = server
        self.secret = server.secret
        self.greeted = False
        self.name: str | None = None
        self.beat = 0
        self._neighbours: list[str] = []  # a NEIGHBOURS report arriving over lines
        self._transfers: list[dict[str, object]] = []  # TRANSFER lines before a SUMMARY

    def identity(self) -> tuple[str, str]:
        return META_IDENTITY

    def idle_deadline(self) -> float | None:
        # A registered peer that promised heartbeats is watched by them.
        return None if self.name is not None and self.beat else super().idle_deadline()

    def lineReceived(self, line: bytes) -> None:
        words = line.split(None, 1)
        # In a private network the handshake comes first, then the flag.
        first = words[0].upper() if words else b""
        if self.server.stopped:
            return  # shutting down: the registry is closed, nothing more is recorded
        if self.admitted and not self.greeted and first not in (b"P2P", b"AUTH"):
            self.badLine(_bad_flag())
            return
        super().lineReceived(line)

    def _registered(self) -> bool:
        if self.name is None:
            self.sendError(wire.E_UNEXPECTED, "register first: P2P port=PORT")
            return False
        return True

    def msg_P2P(self, msg: Message) -> None:
        if self.greeted:
            self.sendError(wire.E_UNEXPECTED, "this connection has already said P2P")
            return
        opts = msg.options
        if "port" not in opts:
            if opts:
                self.sendError(wire.E_BAD_ARGS, "a peer registers with P2P port=PORT")
                return
            self.greeted = True
            self.send("OK", text="observer: TOPO lists the network")
            return
        max_neighbours = int(opts.get("max", DEFAULT_MAX_NEIGHBOURS))
        if max_neighbours < 1:
            self.sendError(wire.E_BAD_ARGS, f"max is from 1 to {wire.NEIGHBOURS_MAX}")
            return
        max_neighbours = wire.clamp_neighbours(max_neighbours)
        host = opts.get("host") or self.peerHost()
        if host is None or wire.HOST(host) is not None:
            self.sendError(wire.E_BAD_ARGS, "say host=HOST: this transport has no IP address")
            return
        # The server watches it from now, by a heartbeat within the clamp.
        beat = int(opts.get("beat", 0))
        self.beat = math.ceil(wire.clamp_beat(beat)) if beat else 0
        try:
            record = self.server.register(
                self, opts.get("name"), host, int(opts["port"]), max_neighbours, opts.get("token"),
                opts.get("old"),
            )
        except WireError as e:
            self.beat = 0
            self.sendError(e.code, e.text)
            return
        self.greeted = True
        self.name = record.name
        self.send(
            "WELCOME", record.name, record.host, record.port, key=self.server.signer.public,
            seq=self.server.last_seq,
        )
        self.server.check_address(record.name, opts.get("check"))

    def msg_PLACE(self, msg: Message) -> None:
        if not self._registered():
            return
        assert self.name is not None
        name = self.name
        # Where it listens is known first (a moment, while it is checked).
        self._in_turn(lambda: self.server.when_checked(name).addCallback(
            lambda _: self._place(name, msg)
        ))

    # Requests answered in the order they came, though a PLACE waits for the
    # dial-back: its client matches replies to requests by order.  Made on
    # first use: a registered peer's connection stays small.
    _turn: Deferred[None] | None = None
    _queued = 0  # requests waiting for their turn

    def _in_turn(self, answer: Callable[[], Deferred[None] | None]) -> None:
        """
        Answer once every earlier request of this connection is answered.
        A peer waits for each answer before its next request (a few at
        once at most): one that piles them up behind a slow dial-back is
        closed, rather than held in memory without bound.
        """
        if self._queued >= MAX_QUEUED:
            self.misbehaved(f"{self._queued} requests waiting for their answers")
            return
        if self._turn is None:
            self._turn = succeed(None)
        self._queued += 1

        def answered(_: object) -> Deferred[None] | None:
            self._queued -= 1
            return answer()

        self._turn.addCallback(answered)
        self._turn.addErrback(lambda f: self.log.failure("answering a request failed", f))

    def _place(self, name: str, msg: Message) -> None:
        if self.name != name or not self.connected:
            return
        try:
            target = self.server.place(name, rejoin=msg.options.get("rejoin") == "1")
        except WireError as e:
            self.sendError(e.code, e.text)
            return
        if target is None:
            self.send("ROOT")
        else:
            self.send("REFER", target.name, target.host, target.port)

    def msg_WHOIS(self, msg: Message) -> None:
        """
        Which of these names are live peers, reached where they listen: one
        C{KNOWN NAME/HOST/PORT ...} line (search results are checked by it).
        """
        if not self._registered():
            return
        names = list(msg.args)

        def known() -> None:
            if len(names) > wire.WHOIS_MAX:
                self.sendError(wire.E_BAD_ARGS, f"WHOIS takes at most {wire.WHOIS_MAX} names")
            else:
                self.send("KNOWN", *(f"{p.name}/{p.host}/{p.port}" for p in self.server.whois(names)))

        self._in_turn(known)

    def msg_SIZE(self, msg: Message) -> None:
        """
        How many peers are registered (placed or re-attaching alike), and
        the latest registration's number: what a search's coverage is
        measured against.
        """
        if not self._registered():
            return
        self._in_turn(lambda: self.send("NETWORK", self.server.size(), self.server.last_seq))

    def msg_NEIGHBOURS(self, msg: Message) -> None:
        if not self._registered():
            return
        assert self.name is not None
        names, self._neighbours = self._neighbours + list(msg.args), []
        record = self.server.registry.get(self.name)
        limit = record.max_neighbours if record is not None else wire.NEIGHBOURS_MAX
        if len(names) > limit:
            self.sendError(wire.E_BAD_ARGS, f"you registered with max={limit} neighbours")
            return
        if "more" in msg.options:
            self._neighbours = names  # the list goes on in the next line
            return
        if self.name in names or len(set(names)) != len(names):
            self.sendError(wire.E_BAD_ARGS, "neighbours are distinct and not yourself")
            return
        self.server.report(
            self.name, names, msg.options.get("up"), msg.options.get("root") == "1",
            int(msg.options.get("files", 0)),
        )

    def msg_TRANSFER(self, msg: Message) -> None:
        if not self._registered():
            return
        if len(self._transfers) == wire.MAX_REPORTED:
            self._transfers = []
            self.sendError(wire.E_BAD_ARGS, f"a summary holds at most {wire.MAX_REPORTED} transfers")
            return
        direction, done, total, rate, peer, name = msg.args
        self._transfers.append({
            "direction": direction, "done": int(done), "total": int(total), "rate": int(rate),
            "peer": wire.unquote_name(peer), "name": wire.unquote_name(name),
        })

    def msg_SUMMARY(self, msg: Message) -> None:
        if not self._registered():
            return
        assert self.name is not None
        transfers, self._transfers = self._transfers, []
        record = self.server.registry.get(self.name)
        if record is not None:
            opts = msg.options
            record.shared_files = int(opts.get("files", record.shared_files))
            record.shared_bytes = int(opts.get("bytes", 0))
            record.transfers = transfers
            record.transfer_count = max(len(transfers), int(opts.get("transfers", 0)))
            self.server.revision += 1

    def msg_TOPO(self, msg: Message) -> None:
        peers = self.server.topology()
        for p in peers:
            for line in wire.split_list("PEER", (p.name, p.host, p.port), p.neighbours):
                self.sendMessage(line)
        self.send("END", len(peers))

    def msg_BYE(self, msg: Message) -> None:
        if self.name is not None:
            self.server.log.info("peer {name} says goodbye", name=self.name)
            self.server.disconnected(self.name, graceful=True)
            self.name = None
        self.send("OK", text="bye")
        self.close()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.name is not None:
            self.server.disconnected(self.name)
            self.name = None
        super().connectionLost(reason)


def _bad_flag() -> WireError:
    return WireError(wire.E_BAD_FLAG, "the first line must start with the P2P flag, e.g. P2P port=5001")


class MetaFactory(ChannelFactory):
    protocol = MetaProtocol
