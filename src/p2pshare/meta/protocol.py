"""
L{MetaProtocol}: one connection to the metadata server (a peer's
registration link, or an observer such as C{p2p topo}); it parses and
answers, and leaves every decision to the server (L{MetaService}).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.admission import META_IDENTITY
from p2pshare.channel import ChannelFactory, LineChannel
from p2pshare.meta.interfaces import MetaService
from p2pshare.wire import Message, WireError

DEFAULT_MAX_NEIGHBOURS = 2
MAX_QUEUED = 32  # requests one connection may have waiting for their answers


RELAYS_PER_SECOND = 10  # RELAY requests answered per second on one connection

class MetaProtocol(LineChannel):
    """
    One connection to the metadata server: a peer's registration link, or
    an observer (C{p2p topo}).  The first line must start with the C{P2P}
    flag; anything else is answered with C{ERROR bad-flag} and the
    connection stays open for a corrected try.
    """

    def __init__(self, server: MetaService) -> None:
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

    def superseded(self) -> None:
        """
        The peer registered again on a new connection: this one no longer
        speaks for it (its close removes nobody), and is dropped.
        """
        self.name = None
        self.abort()

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
            seq=self.server.last_seq, web=self._web_port(),
        )
        self.server.vouching.offers_relay(record.name, opts.get("relay") == "1")
        self.server.check_address(record.name, opts.get("check"))

    def msg_CHECK(self, msg: Message) -> None:
        """
        Dial me back again (my gateway forwards my port now): C{OK} in
        turn, then a new C{TICKET} once the check has ended.
        """
        if not self._registered():
            return
        nonce = msg.options.get("check")
        name = self.name
        assert name is not None

        def check() -> None:
            if nonce is None:
                self.sendError(wire.E_BAD_ARGS, "CHECK check=NONCE")
                return
            try:
                self.server.vouching.recheck(name, nonce)
            except WireError as e:
                self.sendError(e.code, e.text)
                return
            self.send("OK", text="checking your address again")

        self._in_turn(check)

    def msg_RELAY(self, msg: Message) -> None:
        """
        Which peers relay for others: C{RELAYS} with a fresh ticket of each
        (at most four, in random order; none: there is no relay).
        """
        if not self._registered():
            return
        now = int(self.server.clock.seconds())
        if now != self._relays_second:
            self._relays_second, self._relays_asked = now, 0
        self._relays_asked += 1
        over = self._relays_asked > RELAYS_PER_SECOND
        name = self.name
        local: Any = self.transport.getHost() if self.transport is not None else None
        here = (local.host, local.port) if hasattr(local, "port") else None

        def answer() -> None:
            if over:
                self.sendError(wire.E_FAILED, "too many RELAY requests; ask again in a second")
            else:
                self.send("RELAYS", *self.server.vouching.relays(name, here))

        self._in_turn(answer)

    def _web_port(self) -> int | None:
        """
        The topology page's port, if this peer can reach it there: the
        page listens on every interface, or on the one it came in by.
        """
        web = self.server.web
        here = getattr(self.transport.getHost(), "host", None) if self.transport else None
        if web is None or web[0] not in ("0.0.0.0", "::", here):
            return None
        return web[1]

    def msg_PLACE(self, msg: Message) -> None:
        if not self._registered():
            return
        assert self.name is not None
        name = self.name
        # Where it listens is known first (a moment, while it is checked).
        self._in_turn(lambda: self.server.when_checked(name).addCallback(
            lambda _: self._place(name, msg)
        ))

    # RELAY requests in the current second (at most RELAYS_PER_SECOND).
    _relays_second = 0
    _relays_asked = 0

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
                self.send("KNOWN", *(f"{n}/{h}/{p}" for n, h, p in self.server.whois(names)))

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
        limit = self.server.neighbour_limit(self.name)
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
        opts = msg.options
        files = opts.get("files")
        self.server.summary(
            self.name, int(files) if files is not None else None, int(opts.get("bytes", 0)),
            transfers, max(len(transfers), int(opts.get("transfers", 0))),
        )

    def msg_TOPO(self, msg: Message) -> None:
        peers = self.server.topology()
        for p in peers:
            for line in wire.split_list("PEER", (p.name, p.host, p.port), p.neighbours):
                self.sendMessage(line)
        self.send("END", len(peers))

    def msg_BYE(self, msg: Message) -> None:
        if self.name is not None:
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

    def __init__(self, server: MetaService) -> None:
        super().__init__(server)
