"""
A relay for two peers that cannot reach each other (both behind NAT
without a mapping), as the magic-wormhole transit relay does: a reachable
peer, or the metadata server, started with C{--relay} splices two
connections that both dialled it.

The downloader connects to the relay and says C{SPLICE TOKEN TICKET
HOLDER HOST} (its own ticket: the relay splices for members only; the
holder it waits for and where that holder registered from); it asks the
holder over the tree (C{PUSH ... relay=1}, with the relay's ticket) to
dial the relay and say C{GIV TOKEN NAME}, as for a reversed connection.
The relay pairs the two by token (the named holder, from its address),
tells the downloader C{SPLICED HOST}, and from then on copies bytes both
ways without reading them: the download's pieces are verified end to end,
as from anyone.  It splices at most C{--relay-slots} pairs at once, half
of them for one address (a further C{SPLICE} is answered C{ERROR busy}
with a sentence, and the download tries another relay or waits), within
C{--relay-rate} bytes a second for all of them together, and closes a
splice silent for L{IDLE} seconds.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin
from twisted.python.failure import Failure

from p2pshare.disk import human_size
from p2pshare.options import parse_rate
from p2pshare.peer.mapping import is_private

# TOKEN TICKET HOLDER HOST: the downloader's ticket, the holder it waits
# for and where that holder registered from ("-": not known).
SPLICE = re.compile(
    rb"SPLICE ([0-9a-f]{32,128}) (\S{1,1000}) ([A-Za-z0-9_.@-]{1,64}) ([0-9A-Za-z.:%_-]{1,255})\r?"
)
GIV = re.compile(rb"GIV ([0-9a-f]{32,128}) ([A-Za-z0-9_.@-]{1,64})\r?")
SLOTS = 8  # pairs spliced at once (--relay-slots)
WAIT = 15.0  # seconds a downloader's side waits for its holder
MAX_EARLY = 64 * 1024  # bytes a side may send before it is spliced
FIRST_LINE_TIMEOUT = 30  # seconds to finish a first line that may be SPLICE or GIV
MAX_FIRST_LINE = 1100  # bytes: such a line is shorter
IDLE = 30.0  # seconds a splice may carry nothing either way before it is closed


# The options of both roles' --relay (twistd's optParameters).
RELAY_OPTIONS = [
    ["relay-rate", None, None,
     "With --relay: cap on all splices together, bytes/s (K, M, G suffixes)."],
    ["relay-slots", None, SLOTS, "With --relay: transfers spliced at once.", int],
]


def relay_settings(options: Any) -> None:
    """
    Check C{options}' relay values in place (the rate parsed).

    @raise ValueError: one sentence.
    """
    if options["relay-rate"] is not None:
        try:
            options["relay-rate"] = parse_rate(options["relay-rate"])
        except ValueError as e:
            raise ValueError(f"--relay-rate: {e}") from None
    if not 1 <= options["relay-slots"] <= 1000:
        raise ValueError("--relay-slots is from 1 to 1000")


def same_host(one: str, other: str | None) -> bool:
    """
    Are C{one} and C{other} the same IP address, however written (an
    IPv4 address seen through a dual-stack socket as C{::ffff:a.b.c.d})?
    """
    if other is None:
        return False
    try:
        a, b = ipaddress.ip_address(one), ipaddress.ip_address(other)
    except ValueError:
        return one == other
    a = getattr(a, "ipv4_mapped", None) or a
    b = getattr(b, "ipv4_mapped", None) or b
    return a == b


def hand_over(transport: Any, proto: Any, buffered: bytes = b"") -> None:
    """
    Give an open connection to C{proto}, with what was read already.
    """
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = proto  # a LimitedFactory's count, or TLS
    else:
        transport.protocol = proto
    proto.makeConnection(transport)
    if buffered:
        proto.dataReceived(buffered)


class _Half(Protocol):
    """
    One side of a splice: what it reads is written to the other side.
    """

    def __init__(self, relay: Relay, source: str = "") -> None:
        self.relay = relay
        self.source = source  # the address it came from
        self.other: _Half | None = None
        self.holder = ("-", "-")  # a downloader's: the holder it waits for, and where it is
        self.early = b""
        self.idle: IDelayedCall | None = None  # the splice's silence timer (the downloader's half)

    def dataReceived(self, data: bytes) -> None:
        if self.other is None or self.other.transport is None:
            self.early += data
            if len(self.early) > MAX_EARLY:
                self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.other.transport.write(data)
        self.relay.spent(len(data))
        self.relay.heard(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.relay.ended(self)


class Relay:
    """
    The splices of one relaying peer.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, rate: float | None = None, slots: int = SLOTS) -> None:
        self.clock = clock
        self.rate = rate
        self.slots = slots
        self._waiting: dict[str, tuple[_Half, IDelayedCall]] = {}
        self._pairs: set[tuple[_Half, _Half]] = set()
        self._tokens = rate or 0.0  # bytes the rate allows now (up to a second's worth)
        self._at = clock.seconds()
        self._paused: IDelayedCall | None = None
        self.spliced = 0  # pairs spliced since start
        self.refused = 0  # SPLICEs refused at the cap
        # Checks a SPLICE's ticket (TicketChecker.check): set by the role
        # once it knows the metadata server's key.
        self.check: Any = None

    def status(self) -> dict[str, object]:
        return {"splicing": len(self._pairs), "waiting": len(self._waiting),
                "slots": self.slots, "rate": self.rate, "spliced": self.spliced,
                "refused": self.refused}

    def splice_asked(
        self, token: str, ticket: str, transport: Any, rest: bytes, holder: str = "-",
        holder_host: str = "-",
    ) -> None:
        """
        A downloader said C{SPLICE TOKEN TICKET}: it waits here for its
        holder, if its ticket is one the metadata server signed for the
        address it comes from, and that address has not its share of the
        slots already.
        """
        source = str(getattr(transport.getPeer(), "host", ""))
        why = self._refusal(ticket, source)
        if why is not None:
            transport.write(f"ERROR denied {why}\r\n".encode("ascii", "replace"))
            transport.loseConnection()
            return
        share = max(1, self.slots // 2)
        held = sum(1 for half in self._downloaders() if same_host(half.source, source))
        if held >= share:
            transport.write(f"ERROR busy {source} holds {held} of this relay's {self.slots} "
                            "slots, its share; try again later\r\n".encode("ascii", "replace"))
            transport.loseConnection()
            return
        if len(self._pairs) + len(self._waiting) >= self.slots:
            self.refused += 1
            most = f"{self.slots} transfer{'' if self.slots == 1 else 's'} at once"
            self.log.info("refused a splice: this relay splices {most}, its most", most=most)
            transport.write(
                f"ERROR busy this relay splices {most}, its most; try again later\r\n".encode(
                    "ascii")
            )
            transport.loseConnection()
            return
        if token in self._waiting:
            transport.abortConnection()
            return
        half = _Half(self, source)
        half.holder = (holder, holder_host)
        hand_over(transport, half, rest)
        self._waiting[token] = (half, self.clock.callLater(WAIT, self._expired, token))

    def splice_line(self, found: re.Match[bytes], transport: Any, rest: bytes) -> None:
        """
        A first line that L{SPLICE} matched (C{found}): L{splice_asked}.
        """
        token, ticket, holder, host = (g.decode("ascii", "replace") for g in found.groups())
        self.splice_asked(token, ticket, transport, rest, holder, host)

    def _refusal(self, ticket: str, source: str) -> str | None:
        """
        Why a SPLICE with C{ticket} from C{source} is refused, or L{None}.
        """
        if self.check is None:
            return "this relay cannot check tickets yet; try again in a moment"
        try:
            shown = self.check(ticket, self.clock.seconds())
        except Exception as e:
            return f"a ticket that does not hold ({e})"
        if not same_host(shown.source, source):
            return "a ticket made out to another address"
        return None

    def _downloaders(self) -> list[_Half]:
        return [h for h, _ in self._waiting.values()] + [down for down, _ in self._pairs]

    def _expired(self, token: str) -> None:
        half, _ = self._waiting.pop(token)
        if half.transport is not None:
            half.transport.write(b"ERROR failed the holder did not come to the relay in time\r\n")
            half.transport.loseConnection()

    def giv(self, token: str, name: str, transport: Any, rest: bytes) -> bool:
        """
        A holder said C{GIV TOKEN NAME}: splice it to the downloader that
        waits with that token, if one does.
        """
        waiting = self._waiting.get(token)
        if waiting is None:
            return False
        down, timer = waiting
        holder, host = down.holder
        source = str(getattr(transport.getPeer(), "host", ""))
        if holder not in ("-", name) or (
            host != "-" and not same_host(source, host) and not is_private(source)
        ):
            return False  # not the holder it waits for: it goes on waiting
        del self._waiting[token]
        timer.cancel()
        up = _Half(self)
        hand_over(transport, up)
        down.other, up.other = up, down
        self._pairs.add((down, up))
        self.spliced += 1
        down.idle = self.clock.callLater(IDLE, self._silent, down)
        there: Any = down.transport
        back: Any = up.transport
        # Where the holder came from: the downloader checks it is the
        # holder's own address (every member sees a PUSH's token go by).
        there.write(f"SPLICED {getattr(back.getPeer(), 'host', '-')}\r\n".encode("ascii"))
        # Each side reads only as fast as the other takes its bytes.
        there.registerProducer(back, True)
        back.registerProducer(there, True)
        for half, data in ((down, down.early), (up, rest + up.early)):
            half.early = b""
            if data:
                half.dataReceived(data)
        self.log.debug("splicing a transfer from {name}", name=name)
        return True

    def heard(self, half: _Half) -> None:
        """
        Bytes crossed the splice of C{half}: its silence starts again.
        """
        down = half if half.idle is not None else half.other
        if down is not None and down.idle is not None and down.idle.active():
            down.idle.reset(IDLE)

    def _silent(self, down: _Half) -> None:
        down.idle = None
        transport: Any = down.transport
        if transport is not None:
            transport.abortConnection()  # its pair goes with it (ended)

    def ended(self, half: _Half) -> None:
        """
        One side closed: the other goes too, and the slot is free.
        """
        for token, (waiting, timer) in list(self._waiting.items()):
            if waiting is half:
                del self._waiting[token]
                timer.cancel()
        for pair in [p for p in self._pairs if half in p]:
            self._pairs.discard(pair)
            silence = pair[0].idle
            if silence is not None and silence.active():
                silence.cancel()
            for side in pair:
                if side is not half and side.transport is not None:
                    side.transport.loseConnection()

    # The rate cap, for all splices together.

    def spent(self, n: int) -> None:
        if self.rate is None:
            return
        now = self.clock.seconds()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate) - n
        self._at = now
        if self._tokens < 0 and self._paused is None:
            self._pause(True)
            self._paused = self.clock.callLater(-self._tokens / self.rate, self._resume)

    def _resume(self) -> None:
        self._paused = None
        self._pause(False)

    def _pause(self, pause: bool) -> None:
        for pair in self._pairs:
            for half in pair:
                transport: Any = half.transport
                if transport is not None:
                    (transport.pauseProducing if pause else transport.resumeProducing)()

    def described(self) -> str:
        cap = f"{human_size(int(self.rate))}/s" if self.rate else "no rate cap"
        return f"relays for peers that cannot reach each other: {self.slots} at once, {cap}"


class _FirstLine(Protocol, TimeoutMixin):
    """
    The first protocol on a port that relays besides its own protocol (the
    metadata server's with C{--relay}): a first line C{SPLICE} or C{GIV}
    goes to the relay, anything else, as soon as it cannot be one of
    those, to the port's own protocol with what was read.
    """

    engaged = False  # nothing useful said yet: evicted first when full

    def __init__(self, relay: Relay, lines: Any, addr: Any) -> None:
        self.relay = relay
        self.lines = lines
        self.addr = addr
        self.buffer = b""

    def connectionMade(self) -> None:
        self.setTimeout(FIRST_LINE_TIMEOUT)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head = self.buffer
        ours = b"SPLICE ".startswith(head[:7]) or b"GIV ".startswith(head[:4])
        line, newline, rest = head.partition(b"\n")
        if ours and not newline and len(head) < MAX_FIRST_LINE:
            return  # it may be one of ours: the whole line first
        self.setTimeout(None)
        transport: Any = self.transport
        splice = SPLICE.fullmatch(line) if ours and newline else None
        giv = GIV.fullmatch(line) if ours and newline else None
        if splice is not None:
            self.relay.splice_line(splice, transport, rest)
        elif giv is not None:
            token, name = (g.decode("ascii") for g in giv.groups())
            if not self.relay.giv(token, name, transport, rest):
                transport.abortConnection()  # nobody waits for it here
        else:
            hand_over(transport, self.lines.buildProtocol(self.addr), head)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)


class RelayFirst(Factory):
    """
    C{lines}, with C{SPLICE} and C{GIV} first lines taken by C{relay}.
    """

    noisy = False

    def __init__(self, lines: Any, relay: Relay) -> None:
        self.lines = lines
        self.relay = relay

    def buildProtocol(self, addr: Any) -> _FirstLine:
        return _FirstLine(self.relay, self.lines, addr)

    def doStart(self) -> None:
        self.lines.doStart()

    def doStop(self) -> None:
        self.lines.doStop()
