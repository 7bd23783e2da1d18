"""
The p2pshare wire format: one message per line, shared by every role.

This module is pure: bytes in, L{Message} out, and back.  It knows no
reactor and no role.  The grammar (see C{docs/protocol.rst})::

    line    = verb *(SP field) [SP text] CRLF      ; at most MAX_LINE bytes
    field   = token / key "=" token
    token   = 1*(any character but space, "=" and control characters)

The verb is case-insensitive on input and upper case on output.  Each verb
has a L{Spec} in L{SPECS}: its positional fields, the C{key=value} options
it allows, and whether a free-text tail follows.  No field can carry CR, LF,
NUL or any other control character, and L{encode} checks every message it
is asked to send, so a name taken from the network can never smuggle a
second command onto a line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

MAX_LINE = 4096
"""The longest line, in bytes, including the CRLF that ends it."""

NAME_MAX = 64

MAX_REPORTED = 8
"""The most transfers a peer reports to the metadata server at once."""

WHOIS_MAX = 12
"""The most names one WHOIS asks about: the KNOWN answer fits one line
whatever the names and hosts (64 + 255 + 5 characters and two slashes
each)."""

# What a peer may claim of itself, on every side: its neighbour limit
# (P2P max=) and its heartbeat (P2P beat=, HELLO and ACCEPT beat=) are
# clamped into these ranges wherever they are heard.
NEIGHBOURS_MAX = 64
BEAT_MIN = 0.5  # seconds
BEAT_MAX = 300.0


def clamp_beat(seconds: float) -> float:
    """
    A heartbeat claimed by someone else, within L{BEAT_MIN} .. L{BEAT_MAX}.
    """
    return min(max(seconds, BEAT_MIN), BEAT_MAX)


def clamp_neighbours(count: int) -> int:
    return min(max(count, 1), NEIGHBOURS_MAX)


class WireError(ValueError):
    """
    A line or message that breaks the grammar.

    @ivar code: one of the C{E_*} codes, sent as the first field of C{ERROR}.
    @ivar text: one sentence for a human.
    """

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


# Error codes sent in ERROR lines.  docs/protocol.rst lists them all.
class RemoteError(Exception):
    """
    The other side answered a request with C{ERROR code text}.
    """

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


E_BAD_FLAG = "bad-flag"
E_BAD_LINE = "bad-line"
E_BAD_ENCODING = "bad-encoding"
E_TOO_LONG = "too-long"
E_UNKNOWN_VERB = "unknown-verb"
E_BAD_ARGS = "bad-args"
E_UNEXPECTED = "unexpected"
E_NAME_TAKEN = "name-taken"
E_NOT_JOINED = "not-joined"
E_FULL = "full"
E_FAILED = "failed"
E_NOT_FOUND = "not-found"
E_EXISTS = "exists"
E_BUSY = "busy"
E_COOLING_OFF = "cooling-off"
E_AUTH_REQUIRED = "auth-required"
E_AUTH_FAILED = "auth-failed"
E_BAD_TICKET = "bad-ticket"
E_UNREACHABLE = "unreachable"
E_TLS_REQUIRED = "tls-required"
# Nothing found among the peers that answered, while some did not.
E_INCOMPLETE = "incomplete"
# A name that means several files (paths, or versions of one): p2p get lists them.
E_AMBIGUOUS = "ambiguous"

ERROR_CODES = (
    E_BAD_FLAG,
    E_BAD_LINE,
    E_BAD_ENCODING,
    E_TOO_LONG,
    E_UNKNOWN_VERB,
    E_BAD_ARGS,
    E_UNEXPECTED,
    E_NAME_TAKEN,
    E_NOT_JOINED,
    E_FULL,
    E_FAILED,
    E_NOT_FOUND,
    E_EXISTS,
    E_BUSY,
    E_COOLING_OFF,
    E_AUTH_REQUIRED,
    E_AUTH_FAILED,
    E_BAD_TICKET,
    E_UNREACHABLE,
    E_TLS_REQUIRED,
    E_INCOMPLETE,
    E_AMBIGUOUS,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TOKEN = re.compile(r"[^\s=\x00-\x1f\x7f-\x9f]+")
_NAME = re.compile(rf"[A-Za-z0-9_.@-]{{1,{NAME_MAX}}}")
_HOST = re.compile(r"[A-Za-z0-9.:%_-]{1,255}")
_COUNT = re.compile(r"0|[1-9][0-9]{0,8}")
_SIZE = re.compile(r"0|[1-9][0-9]{0,17}")


def is_name(value: str) -> bool:
    """
    Is C{value} a valid peer name: letters, digits, C{_ - . @}, 1 to 64?
    """
    return _NAME.fullmatch(value) is not None


Check = Callable[[str], "str | None"]
"""A field check: L{None} when the value is fine, else what is wrong."""


def _matching(pattern: re.Pattern[str], problem: str) -> Check:
    return lambda value: None if pattern.fullmatch(value) else problem


def _check_port(value: str) -> str | None:
    if _COUNT.fullmatch(value) and 1 <= int(value) <= 65535:
        return None
    return "a port is a number from 1 to 65535"


def _check_port_or_none(value: str) -> str | None:
    if _COUNT.fullmatch(value) and int(value) <= 65535:
        return None
    return "a port is a number from 0 (none: reach it over the overlay) to 65535"


# Where a peer that nobody can dial listens: port 0 (reversal.py).
PORT_OR_NONE: Check = _check_port_or_none


def _check_hops(value: str) -> str | None:
    if value == "none" or _COUNT.fullmatch(value):
        return None
    return "hops is a whole number or 'none'"


TOKEN = _matching(_TOKEN, "a field is one or more characters without spaces, = or controls")
NAME = _matching(_NAME, f"a name is 1 to {NAME_MAX} letters, digits or _ - . @")
HOST = _matching(_HOST, "a host is a name or an IPv4 or IPv6 address")
COUNT = _matching(_COUNT, "a count is a whole number without leading zeros")
SIZE = _matching(_SIZE, "a size is a whole number of bytes without leading zeros")
PORT: Check = _check_port
HOPS: Check = _check_hops

# File names and paths travel percent-encoded (UTF-8), so that spaces, "="
# and anything else a file system allows fit in one field; the glob
# characters stay readable.
_NAME_SAFE = "!$&'()*+,;:@[]?"
QUOTED_MAX = 1000  # characters of a percent-encoded name or pattern
_QUOTED = re.compile(rf"[A-Za-z0-9_.~!$&'()*+,;:@\[\]?%-]{{1,{QUOTED_MAX}}}")
_QUOTED_PATH = re.compile(r"[A-Za-z0-9_.~!$&'()*+,;:@\[\]?%/-]{1,2000}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def quote_name(name: str) -> str:
    """
    A file name (or pattern) as a field: percent-encoded UTF-8.
    """
    return quote(name, safe=_NAME_SAFE, errors="strict")


def quote_path(path: str) -> str:
    return quote(path, safe=_NAME_SAFE + "/", errors="strict")


def url_path(name: str) -> str:
    """
    A name in the share as a URL path: each segment percent-encoded, every
    character but letters, digits and C{-._~} (so C{?}, C{#}, C{%}, C{[]}
    and the other reserved ones too), with C{/} between the segments.
    """
    return quote(name, safe="/", errors="strict")


def unquote_name(field: str) -> str:
    """
    The file name in a field; raises L{WireError} if it does not decode to
    text without control characters.
    """
    try:
        name = unquote(field, errors="strict")
    except UnicodeDecodeError:
        raise WireError(E_BAD_ARGS, "a file name must be UTF-8") from None
    if not name or _CONTROL.search(name):
        raise WireError(E_BAD_ARGS, "a file name cannot be empty or carry control characters")
    return name


def _check_quoted(pattern: re.Pattern[str], what: str) -> Check:
    def check(value: str) -> str | None:
        if not pattern.fullmatch(value):
            return f"{what} is percent-encoded"
        try:
            unquote_name(value)
        except WireError as e:
            return e.text
        return None

    return check


FILE = _check_quoted(_QUOTED, "a file name")
PATH = _check_quoted(_QUOTED_PATH, "a path")


@dataclass(frozen=True)
class Match:
    """
    One search result: a file, who holds it, and how far away.  C{root} is
    the root of the file's piece list (pieces.py), empty if not known;
    C{have} is how many pieces a holder still downloading the file has
    verified (None: it holds the whole file).
    """

    name: str
    size: int
    sha256: str
    holder: str
    host: str
    port: int
    hops: int
    root: str = ""
    have: int | None = None

    def field(self) -> str:
        pieces = self.root or "-"
        if self.have is not None:
            pieces += f"+{self.have}"
        return "/".join(
            [str(self.hops), self.holder, self.host, str(self.port), str(self.size),
             self.sha256, pieces, quote_name(self.name)]
        )

    @classmethod
    def parse(cls, field: str) -> Match:
        problem = _check_match(field)
        if problem is not None:
            raise WireError(E_BAD_ARGS, problem)
        hops, holder, host, port, size, sha, pieces, name = field.split("/")
        root, plus, have = pieces.partition("+")
        return cls(
            unquote_name(name), int(size), sha, holder, host, int(port), int(hops),
            "" if root == "-" else root, int(have) if plus else None,
        )


_PIECES = re.compile(r"(?:[0-9a-f]{64}|-)(?:\+[0-9]{1,6})?")


def _check_match(value: str) -> str | None:
    parts = value.split("/")
    if len(parts) != 8:
        return "a match is HOPS/HOLDER/HOST/PORT/SIZE/SHA256/ROOT[+HAVE]/NAME"
    hops, holder, host, port, size, sha, pieces, name = parts
    if not _SHA256.fullmatch(sha):
        return "a match's SHA-256 is 64 lower-case hex digits"
    if not _PIECES.fullmatch(pieces):
        return "a match's piece root is 64 lower-case hex digits or -, then +HAVE if partial"
    return (COUNT(hops) or NAME(holder) or HOST(host) or PORT_OR_NONE(port) or SIZE(size)
            or FILE(name))


MATCH: Check = _check_match
TOKEN_HEX = _matching(re.compile(r"[0-9a-f]{32,128}"), "a token is 32 to 128 hex digits")
# A ticket (p2pshare.tickets): NAME/HOST/PORT/SOURCE/REACHABLE/EXPIRES/SIGNATURE.
TICKET_FIELD = re.compile(
    r"([A-Za-z0-9_.@-]{1,64})/([A-Za-z0-9.:%_-]{1,255})/([0-9]{1,5})/"
    r"([A-Za-z0-9.:%_-]{1,255})/([01])/([0-9]{1,12})/([0-9a-f]{128})"
)
TICKET = _matching(TICKET_FIELD, "a ticket is NAME/HOST/PORT/SOURCE/REACHABLE/EXPIRES/SIGNATURE")
ROLES = ("meta", "peer", "client")
ROLE = _matching(re.compile("|".join(ROLES)), "a role is meta, peer or client")
DIRECTION = _matching(re.compile("up|down"), "a transfer's direction is up or down")


def _check_known(value: str) -> str | None:
    name, _, rest = value.partition("/")
    host, _, port = rest.rpartition("/")
    return NAME(name) or HOST(host) or PORT_OR_NONE(port)


KNOWN: Check = _check_known  # NAME/HOST/PORT: a live peer, where it listens

# Why a peer is named as missing from a search's answer.
MISSED_REASONS = ("silent", "lost", "refused")
MISSED_MAX = 16  # peers one RESULTS names as missing; more are only counted


def _check_missed(value: str) -> str | None:
    items = value.split(",")
    if len(items) > MISSED_MAX:
        return f"missed names at most {MISSED_MAX} peers"
    for item in items:
        name, _, why = item.partition(":")
        if NAME(name) is not None or why not in MISSED_REASONS:
            return "missed is NAME:REASON,... with a reason of " + ", ".join(MISSED_REASONS)
    return None


MISSED: Check = _check_missed


@dataclass(frozen=True)
class Spec:
    """
    The shape of one verb.

    @ivar args: the required positional fields, as C{(name, check)}.
    @ivar rest: the check for any number of further positional fields, or
        L{None} when no more are allowed.
    @ivar keys: the allowed C{key=value} options, as C{key: check}.
    @ivar text: L{None} when no free-text tail is allowed, C{"optional"} or
        C{"required"}.
    """

    args: tuple[tuple[str, Check], ...] = ()
    rest: Check | None = None
    keys: Mapping[str, Check] = field(default_factory=dict)
    text: str | None = None


SPECS: dict[str, Spec] = {
    # Registration with the metadata server; the historical flag.
    # check=NONCE: what the peer answers the server's dial-back with (VERIFY);
    # old=TOKEN: the token a --reset-token replaced, once.
    "P2P": Spec(
        keys={"port": PORT, "name": NAME, "host": HOST, "max": COUNT, "beat": COUNT,
              "token": TOKEN_HEX, "check": TOKEN_HEX, "old": TOKEN_HEX, "relay": COUNT}
    ),
    # Admission to a private network (before anything else; see
    # p2pshare.admission).
    "AUTH": Spec(args=(("role", ROLE), ("name", NAME), ("nonce", TOKEN_HEX))),
    "CHALLENGE": Spec(args=(("nonce", TOKEN_HEX),)),
    "PROOF": Spec(args=(("mac", TOKEN_HEX),)),
    # key=HEX: the metadata server's public key, which signs tickets.
    # seq=N: the registration's number, increasing (searches count the
    # peers registered up to a number, see SIZE).  web=PORT: the server's
    # topology page, where the peer can reach it (the peer's page links it).
    "WELCOME": Spec(
        args=(("name", NAME), ("host", HOST), ("port", PORT)),
        keys={"key": TOKEN_HEX, "seq": SIZE, "web": PORT},
    ),
    # The metadata server's word on a peer (p2pshare.tickets), pushed to it.
    "TICKET": Spec(args=(("ticket", TICKET),)),
    # The metadata server's dial-back: prove you are who registered.
    "VERIFY": Spec(args=(("name", NAME), ("challenge", TOKEN_HEX))),
    "VERIFIED": Spec(args=(("mac", TOKEN_HEX),)),
    # A registered peer asks to be dialled back again (its gateway now
    # forwards its port): a fresh nonce; OK, then a new TICKET.
    "CHECK": Spec(keys={"check": TOKEN_HEX}),
    # Relays for two peers that cannot reach each other (peers registered
    # with relay=1 that the server reached): fresh tickets, at most four.
    "RELAY": Spec(),
    "RELAYS": Spec(rest=TICKET),
    # Which of these peers are live, and where (search results are checked).
    "WHOIS": Spec(rest=NAME),
    "KNOWN": Spec(rest=KNOWN),
    "PLACE": Spec(keys={"rejoin": COUNT}),
    # How many peers are registered (placed or not) and the number of the
    # latest registration: what a search's coverage is measured against.
    "SIZE": Spec(),
    "NETWORK": Spec(args=(("peers", COUNT), ("last", SIZE))),
    "ROOT": Spec(),
    "REJOIN": Spec(),
    "REFER": Spec(args=(("name", NAME), ("host", HOST), ("port", PORT))),
    # A list too long for one line continues on the next: every line but
    # the last says more=1 (NEIGHBOURS, PEER, RESULTS).
    "NEIGHBOURS": Spec(rest=NAME, keys={"up": NAME, "root": COUNT, "files": COUNT, "more": COUNT}),
    "COMPLETE": Spec(args=(("peers", COUNT),)),
    # What a peer is doing, for the web page: a TRANSFER line for each of
    # (at most MAX_REPORTED) transfers in progress, then SUMMARY.  PEER and
    # NAME are percent-encoded; PEER is "-" while nobody is sending.
    "TRANSFER": Spec(args=(("direction", DIRECTION), ("done", SIZE), ("total", SIZE),
                           ("rate", SIZE), ("peer", FILE), ("name", PATH))),
    "SUMMARY": Spec(keys={"files": COUNT, "bytes": SIZE, "transfers": COUNT}),
    "TOPO": Spec(),
    "PEER": Spec(
        args=(("name", NAME), ("host", HOST), ("port", PORT)), rest=NAME, keys={"more": COUNT}
    ),
    "END": Spec(args=(("count", COUNT),)),
    "BYE": Spec(),
    "PING": Spec(),
    "PONG": Spec(),
    # Between peers.
    # beat=MS: the sender's heartbeat; a link beats at the larger of two.
    "HELLO": Spec(
        args=(("name", NAME), ("port", PORT)),
        keys={"host": HOST, "via": NAME, "beat": COUNT, "ticket": TICKET},
    ),
    "ACCEPT": Spec(args=(("name", NAME),), keys={"beat": COUNT, "ticket": TICKET}),
    "FREE": Spec(args=(("hops", HOPS),)),
    # Parent to child: where the parent hangs from (nothing: it is the root).
    "UP": Spec(rest=TOKEN),
    # Searching: a convergecast over the overlay tree.
    # upto=N: count only peers registered up to N (see SIZE).
    "SEARCH": Spec(
        args=(("id", NAME), ("hops", COUNT), ("wait", COUNT), ("pattern", FILE)),
        keys={"exact": COUNT, "upto": SIZE},
    ),
    # The last line says who the sender's subtree covered: peers=N answered,
    # missed=NAME:REASON,... did not (and unnamed=N more); retry=MS: a peer
    # refused it, over its allowance, and may take it again after MS;
    # refused=MS: this sender itself refused it.
    "RESULTS": Spec(
        args=(("id", NAME),), rest=MATCH,
        keys={"more": COUNT, "peers": COUNT, "missed": MISSED, "unnamed": COUNT,
              "retry": COUNT, "refused": COUNT},
    ),
    # Still collecting answers for this search from further away.
    "WORKING": Spec(args=(("id", NAME),)),
    # Connect out to the ticket's peer and serve it (reversal.py): passed
    # along the tree to HOLDER, who answers by dialling and saying GIV
    # TOKEN NAME as that connection's first line.
    # relay=1: the ticket is a relay's, which splices it to the downloader.
    "PUSH": Spec(args=(("holder", NAME), ("token", TOKEN_HEX), ("ticket", TICKET)),
                 keys={"relay": COUNT}),
    # The local control channel.
    "STATUS": Spec(keys={"files": COUNT}),
    "STOP": Spec(),
    "FIND": Spec(args=(("pattern", FILE),), keys={"exact": COUNT}),
    "LS": Spec(args=(("holder", NAME),)),
    "FETCH": Spec(args=(("name", FILE),), keys={"dir": PATH, "force": COUNT, "sources": COUNT, "from": NAME}),
    # FETCH's download put in the peer's queue (p2p get --background).
    "QUEUE": Spec(args=(("name", FILE),), keys={"dir": PATH, "force": COUNT, "sources": COUNT, "from": NAME}),
    "DOWNLOADS": Spec(),
    # A login address for the peer's web page (p2p ui).
    "UI": Spec(),
    "CANCEL": Spec(args=(("name", FILE),)),
    "PROGRESS": Spec(args=(("done", SIZE), ("total", SIZE)), keys={"sources": COUNT}),
    # A line for the person waiting on a request (what a download waits for).
    "NOTE": Spec(text="required"),
    # One entry of a reply's list (a shared file, a match, a neighbour), as
    # JSON: a reply of any size is ITEM lines, then OK.
    "ITEM": Spec(args=(("list", NAME),), text="required"),
    # Replies.
    "OK": Spec(text="optional"),
    "ERROR": Spec(args=(("code", TOKEN),), text="required"),
}


@dataclass(frozen=True)
class Message:
    """
    One line of the protocol, parsed.

    @ivar verb: upper case, a key of L{SPECS}.
    @ivar args: the positional fields, in order.
    @ivar options: the C{key=value} options.
    @ivar text: the free-text tail, or L{None}.
    """

    verb: str
    args: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    text: str | None = None

    def __repr__(self) -> str:
        return f"<Message {encode(self)[:-2].decode('utf-8')!r}>"


def message(verb: str, *args: object, text: str | None = None, **options: object) -> Message:
    """
    Build a message from Python values; L{None} options are left out.
    """
    return Message(
        verb,
        tuple(str(a) for a in args),
        {k: str(v) for k, v in options.items() if v is not None},
        text,
    )


ERROR_TEXT_MAX = 3800  # bytes of an error's sentence: the line keeps its room


def error(code: str, text: str) -> Message:
    """
    An C{ERROR} message; control characters in C{text} become C{?}, and a
    sentence too long for one line is cut (ending in an ellipsis).
    """
    text = _CONTROL.sub("?", text).strip() or code
    if len(text.encode("utf-8")) > ERROR_TEXT_MAX:
        text = text.encode("utf-8")[: ERROR_TEXT_MAX - 3].decode("utf-8", "ignore") + "\u2026"
    return Message("ERROR", (code,), {}, text)


def validate(msg: Message) -> None:
    """
    Raise L{WireError} unless C{msg} is a well-formed message.
    """
    spec = SPECS.get(msg.verb)
    if spec is None:
        raise WireError(E_UNKNOWN_VERB, f"unknown verb {_show(msg.verb)}")
    need = len(spec.args)
    if len(msg.args) < need or (spec.rest is None and len(msg.args) > need):
        names = " ".join(n.upper() for n, _ in spec.args) or "no fields"
        more = " ..." if spec.rest is not None else ""
        raise WireError(E_BAD_ARGS, f"{msg.verb} takes {names}{more}")
    checks = [c for _, c in spec.args]
    if spec.rest is not None:
        checks += [spec.rest] * (len(msg.args) - need)
    for value, check in zip(msg.args, checks, strict=True):
        _apply(check, value, msg.verb)
    for key, value in msg.options.items():
        if key not in spec.keys:
            raise WireError(E_BAD_ARGS, f"{msg.verb} has no option {_show(key)}")
        _apply(spec.keys[key], value, msg.verb)
    if msg.text is None:
        if spec.text == "required":
            raise WireError(E_BAD_ARGS, f"{msg.verb} needs a text")
    else:
        if spec.text is None:
            raise WireError(E_BAD_ARGS, f"{msg.verb} takes no text")
        if _CONTROL.search(msg.text):
            raise WireError(E_BAD_LINE, "a text cannot carry control characters")
        if not msg.text or msg.text != msg.text.strip():
            raise WireError(E_BAD_ARGS, "a text is not empty and has no space at either end")


def _apply(check: Check, value: str, verb: str) -> None:
    if _CONTROL.search(value):
        raise WireError(E_BAD_LINE, "a field cannot carry control characters")
    problem = TOKEN(value) or check(value)
    if problem is not None:
        raise WireError(E_BAD_ARGS, f"{verb}: {problem}, not {_show(value)}")


def _show(value: str, limit: int = 40) -> str:
    """
    Quote a piece of someone else's input for an error text.
    """
    shown = _CONTROL.sub("?", value)
    if len(shown) > limit:
        shown = shown[:limit] + "..."
    return repr(shown)


def encode(msg: Message) -> bytes:
    """
    The line for C{msg}, CRLF included.

    @raise WireError: if C{msg} is not well-formed or too long.
    """
    validate(msg)
    parts = [msg.verb, *msg.args]
    parts += [f"{k}={v}" for k, v in sorted(msg.options.items())]
    if msg.text:
        parts.append(msg.text)
    data = " ".join(parts).encode("utf-8") + b"\r\n"
    if len(data) > MAX_LINE:
        raise WireError(E_TOO_LONG, f"lines are at most {MAX_LINE} bytes")
    return data


def split_list(
    verb: str, head: tuple[object, ...], items: list[str], **options: object
) -> list[Message]:
    """
    C{verb} with the fixed fields C{head} and then C{items}, on as many
    lines as it takes: every line but the last says C{more=1}, and each
    holds as many items as fit in L{MAX_LINE}.
    """
    fixed = [str(h) for h in head]
    opts = {k: str(v) for k, v in options.items() if v is not None}
    base = len(encode(Message(verb, tuple(fixed), {**opts, "more": "1"})))
    lines: list[list[str]] = [[]]
    used = base
    for item in items:
        cost = 1 + len(item.encode("utf-8"))
        if lines[-1] and used + cost > MAX_LINE:
            lines.append([])
            used = base
        lines[-1].append(item)
        used += cost
    return [
        Message(verb, (*fixed, *chunk), {**opts, "more": "1"} if i < len(lines) - 1 else opts)
        for i, chunk in enumerate(lines)
    ]


def decode(line: bytes) -> Message:
    """
    Parse one line, without its LF (a CR before it is allowed).

    @raise WireError: with the code to answer.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) + 2 > MAX_LINE:
        raise WireError(E_TOO_LONG, f"lines are at most {MAX_LINE} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(E_BAD_ENCODING, "a line must be UTF-8 text") from None
    if _CONTROL.search(text):
        raise WireError(E_BAD_LINE, "a line cannot carry control characters")
    words = text.split(None, 1)
    if not words:
        raise WireError(E_BAD_LINE, "empty line")
    verb = words[0].upper()
    spec = SPECS.get(verb)
    if spec is None:
        raise WireError(E_UNKNOWN_VERB, f"unknown verb {_show(words[0])}")
    rest = words[1] if len(words) > 1 else ""
    tail: str | None = None
    if spec.text is not None:
        fields = rest.split(None, len(spec.args))
        if len(fields) > len(spec.args):
            tail = fields.pop()
    else:
        fields = rest.split()
    args: list[str] = []
    options: dict[str, str] = {}
    for word in fields:
        key, eq, value = word.partition("=")
        if not eq:
            args.append(word)
        elif key in options:
            raise WireError(E_BAD_ARGS, f"option {_show(key)} given twice")
        else:
            options[key] = value
    msg = Message(verb, tuple(args), options, tail)
    validate(msg)
    return msg
