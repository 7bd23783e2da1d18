"""
Who may use the peer's web page: the rules, without HTTP.

A person gets in through a login address that C{p2p ui} prints (as
Jupyter does): it carries a one-time token, good for
L{LOGIN_LIFETIME} seconds.  Opening it trades the token for a session
of two halves.  A cookie (C{HttpOnly}, C{SameSite=Strict}: the page's
script cannot read it, and no other site's page makes the browser send
it) opens the page itself.  A secret, handed to the page once (in the
fragment of the address it moves to, which no request carries) and
kept in its origin's storage, goes with every API call in a header.
Browsers send a cookie to every port of a host, so a program listening
on another port of 127.0.0.1 may be sent the cookie; it never sees the
secret, which no other origin can read, and without it the API answers
nothing.  The header also stops a form or a script of another site:
neither can send it.

Every request must also name the page's own address in its C{Host}
header (the address it listens on, or C{localhost} with its port): a
DNS-rebinding page (a stranger's name that resolves to 127.0.0.1) sends
its own name there and is refused (Transmission's CVE-2018-5702).

Sessions end after L{SESSION_IDLE} seconds unused, or when the peer
stops; at most L{MAX_SESSIONS} live at once (the oldest goes first).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from p2pshare.admission import authority

LOGIN_LIFETIME = 600.0  # seconds a login address printed by p2p ui stays good
SESSION_IDLE = 7 * 24 * 3600.0  # seconds a session may stay unused
MAX_SESSIONS = 64
MAX_LOGINS = 64  # login tokens handed out and not yet used
COOKIE = "p2pshare-session"


def _token() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class Session:
    cookie: str  # opens the page
    secret: str  # opens the API, said in a header
    used: float


class Guard:
    """
    The login tokens and sessions of one page, on C{clock}.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._logins: dict[str, float] = {}  # token -> when it expires
        self._sessions: dict[str, Session] = {}

    def new_login(self) -> str:
        """
        A one-time login token (for the address that C{p2p ui} prints).
        """
        now = self.clock.seconds()
        self._logins = {t: end for t, end in self._logins.items() if end > now}
        while len(self._logins) >= MAX_LOGINS:
            del self._logins[min(self._logins, key=self._logins.__getitem__)]
        token = _token()
        self._logins[token] = now + LOGIN_LIFETIME
        return token

    def log_in(self, token: str) -> Session | None:
        """
        Trade a login token for a new session; L{None} if the token is not
        one (unknown, used already, or too old).
        """
        now = self.clock.seconds()
        match = next((t for t in self._logins if same(t, token)), None)
        if match is None:
            return None
        expires = self._logins.pop(match)
        if expires <= now:
            return None
        self._forget_idle(now)
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.used)
            del self._sessions[oldest.cookie]
        session = Session(_token(), _token(), now)
        self._sessions[session.cookie] = session
        return session

    def session(self, cookie: str | None) -> Session | None:
        """
        The live session whose cookie is C{cookie}, marked as used now.
        """
        if not cookie:
            return None
        now = self.clock.seconds()
        self._forget_idle(now)
        found = self._sessions.get(cookie)
        if found is not None:
            found.used = now
        return found

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if now - s.used > SESSION_IDLE]:
            del self._sessions[key]

    def end_all(self) -> None:
        self._logins.clear()
        self._sessions.clear()


def same(ours: str, given: str) -> bool:
    """
    Is C{given} our secret C{ours}?  In constant time; anything at all
    may be given (C{hmac.compare_digest} refuses text that is not ASCII).
    """
    return hmac.compare_digest(ours.encode("utf-8"), given.encode("utf-8", "surrogatepass"))


def key_ok(session: Session, given: str | None) -> bool:
    return given is not None and same(session.secret, given)


def own_hosts(host: str, port: int) -> frozenset[str]:
    """
    The C{Host} headers that name a page listening on C{host}:C{port}:
    that address (an IPv6 one in brackets), and C{localhost} when it is
    a loopback address.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return frozenset({f"{host}:{port}".lower()})
    names = {authority(address.compressed, port)}
    if address.is_loopback:
        names.add(f"localhost:{port}")
    if address.is_unspecified:  # every interface: its loopback names at least
        names |= {f"127.0.0.1:{port}", f"[::1]:{port}", f"localhost:{port}"}
    return frozenset(names)


def origin_ok(origin: str | None, hosts: frozenset[str]) -> bool:
    """
    Is a request's C{Origin} (when the browser sent one) the page itself?
    """
    if origin is None:
        return True
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme == "http" and rest.lower() in hosts
