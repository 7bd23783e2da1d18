"""
Tickets for tests that speak to a metadata server or a peer byte by byte:
one fixed signing key, as if one metadata server had placed everyone.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pshare.tickets import TicketChecker, TicketSigner

SIGNER = TicketSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def ticket(name: str, port: int, host: str = "127.0.0.9", reachable: bool = True,
           source: str | None = None, now: float = 0.0) -> str:
    """
    The ticket field the metadata server would give C{name} at C{host}.
    """
    return SIGNER.issue(name, host, port, source or host, reachable, now).field()


def welcomed(name: str, host: str, port: int, source: str | None = None,
             reachable: bool = True, now: float = 0.0, seq: int = 1) -> bytes:
    """
    What a metadata server signing with L{SIGNER} (and not checking
    addresses) answers a registration: C{WELCOME} (C{seq}: the how-manyth
    registration since it started), then the ticket.
    """
    return (
        f"WELCOME {name} {host} {port} key={SIGNER.public} seq={seq}\r\n"
        f"TICKET {ticket(name, port, host, reachable, source, now)}\r\n"
    ).encode()


def placed(node: Any, host: str = "127.0.0.1") -> Any:
    """
    C{node} has heard from the metadata server: its key, and its own ticket.
    """
    node.tickets = TicketChecker(SIGNER.public)
    node.host = node.host or host
    node.ticket = SIGNER.issue(node.peer_name, host, node.port, host, True, node.clock.seconds())
    return node


def hello(name: str, port: int, host: str = "127.0.0.9", *extra: str) -> bytes:
    """
    A newcomer's HELLO line, with its ticket.
    """
    words = ["HELLO", name, str(port), *extra, f"ticket={ticket(name, port, host)}"]
    return (" ".join(words) + "\r\n").encode()
