"""
Tickets: the metadata server's word on who a peer is and where.

The metadata server checks each registrant's advertised address by dialling
back (p2pshare.meta.checks), then gives it a ticket: its name, the host and
port it advertised, the address its registration came from, whether that
address answered the check (C{reachable}), and until when all this holds,
signed with the server's Ed25519 key.  The key's public half goes to every
peer in C{WELCOME}.  A peer admits a newcomer as a neighbour only on a
ticket it can check itself, even while the metadata server is away: a
valid signature, not expired, for the name the newcomer says, from the
address the connection comes from.  So nobody takes a name that is not
theirs, nor sends others to an address that is not theirs.

This module is pure: no reactor; time is passed in.  The field on the
wire (C{HELLO ... ticket=T}, C{ACCEPT ... ticket=T}, C{TICKET T})::

    NAME/HOST/PORT/SOURCE/REACHABLE/EXPIRES/SIGNATURE

with C{REACHABLE} 1 or 0, C{EXPIRES} in whole seconds of the server's
clock, and the signature (128 hex digits) over the fields before it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from p2pshare.disk import private_write
from p2pshare.wire import TICKET_FIELD

LIFETIME = 3600  # seconds a ticket holds; peers get a fresh one well before
REFRESH = 1200  # seconds after which the server sends a fresh ticket
SKEW = 300  # seconds two hosts' clocks may disagree
KEY_FILE = "ticket.key"  # in the metadata server's data dir, mode 0600

_FIELD = TICKET_FIELD


def answer(nonce: str, name: str, challenge: str) -> str:
    """
    What a registrant answers the server's dial-back (C{VERIFY NAME
    CHALLENGE}) with: the HMAC of both, keyed with the nonce of its
    registration (p2pshare.meta.checks).
    """
    data = f"p2pshare-verify-1\n{name}\n{challenge}".encode()
    return hmac.new(nonce.encode("ascii"), data, hashlib.sha256).hexdigest()


class TicketError(ValueError):
    """
    A ticket that does not hold; the text says why in a few words.
    """


@dataclass(frozen=True)
class Ticket:
    name: str
    host: str
    port: int
    source: str
    reachable: bool
    expires: int
    signature: str = ""

    def body(self) -> bytes:
        return "\n".join([
            "p2pshare-ticket-1", self.name, self.host, str(self.port), self.source,
            "1" if self.reachable else "0", str(self.expires),
        ]).encode("utf-8")

    def field(self) -> str:
        return "/".join([
            self.name, self.host, str(self.port), self.source,
            "1" if self.reachable else "0", str(self.expires), self.signature,
        ])

    @classmethod
    def parse(cls, value: str) -> Ticket:
        m = _FIELD.fullmatch(value)
        if m is None:
            raise TicketError("not a ticket")
        name, host, port, source, reachable, expires, signature = m.groups()
        return cls(name, host, int(port), source, reachable == "1", int(expires), signature)

    def lets_in(self, name: str, port: int, seen_from: str | None) -> str | None:
        """
        What is wrong with admitting C{name} (listening on C{port}, its
        connection coming from C{seen_from}) on this ticket, or L{None}.
        """
        if self.name != name:
            return f"the ticket is {self.name}'s, not {name}'s"
        if self.port != port:
            return f"the ticket is for port {self.port}, not {port}"
        if seen_from is not None and _same_host(seen_from) not in {
            _same_host(self.host), _same_host(self.source)
        }:
            return f"the ticket is for {self.host}, and this connection comes from {seen_from}"
        return None


def _same_host(host: str) -> str:
    """
    One spelling per address (an IPv4 address as IPv6 sees it is IPv4).
    """
    host = host.strip("[]").lower()
    return host[7:] if host.startswith("::ffff:") and "." in host else host


class TicketSigner:
    """
    The metadata server's side: it issues tickets.
    """

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self._key = key or Ed25519PrivateKey.generate()

    def __repr__(self) -> str:
        return "<TicketSigner (key hidden)>"

    @classmethod
    def in_directory(cls, directory: Path) -> TicketSigner:
        """
        The key kept in C{directory} (made on first use, mode 0600), so that
        tickets stay good across restarts of the server.
        """
        path = directory / KEY_FILE
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), None)
            except (ValueError, TypeError):
                key = None
            if isinstance(key, Ed25519PrivateKey):
                os.chmod(path, 0o600)
                return cls(key)
        signer = cls()
        private_write(path, signer._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        return signer

    @property
    def public(self) -> str:
        """
        The public key, as 64 hex digits (C{WELCOME ... key=}).
        """
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ).hex()

    def issue(
        self, name: str, host: str, port: int, source: str, reachable: bool, now: float
    ) -> Ticket:
        unsigned = Ticket(name, host, port, source, reachable, int(now) + LIFETIME)
        signature = self._key.sign(unsigned.body()).hex()
        return Ticket(name, host, port, source, reachable, unsigned.expires, signature)


class TicketChecker:
    """
    A peer's side: it checks tickets against the server's public key.
    """

    def __init__(self, public: str) -> None:
        try:
            self._key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public))
        except ValueError:
            raise TicketError("not a public key") from None
        self.public = public

    def check(self, value: str, now: float) -> Ticket:
        """
        The ticket in C{value}, if the metadata server signed it and it has
        not expired; else L{TicketError}.
        """
        ticket = Ticket.parse(value)
        try:
            self._key.verify(bytes.fromhex(ticket.signature), ticket.body())
        except (InvalidSignature, ValueError):
            raise TicketError("the ticket is not signed by this network's metadata server") from None
        if ticket.expires + SKEW < now:
            raise TicketError("the ticket has expired")
        return ticket
