"""
How others reach this peer.  The metadata server's ticket says whether it
could dial us back (L{p2pshare.tickets}); a peer that registered from a
private address asks its gateway to forward its port (L{PortMapping}), and
once the gateway does, asks the server to check again (C{CHECK}), so that
the new ticket says the truth: a reachable peer can take children, an
unreachable one stays a leaf that files reach by reversed connections or
a relay.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pshare.peer.mapping import PortMapping, is_private

CHECK_TIMEOUT = 30.0  # seconds for the server's OK to a CHECK
CHECK_AGAIN = 31.0  # seconds before a refused CHECK is asked again (the server's limit is 30)


class Reach:
    """
    The peer's reachability: its port mapping, and asking the metadata
    server to check again once the mapping exists.
    """

    log = Logger()

    def __init__(self, node: Any, mapping: PortMapping | None) -> None:
        self.node = node
        self.mapping = mapping
        self.nonce: str | None = None  # what the server's dial-back must get back
        self._asked = False  # a CHECK was sent for this session and mapping

    def fresh_nonce(self) -> str:
        self.nonce = secrets.token_hex(16)
        return self.nonce

    def welcomed(self, proto: Any) -> None:
        """
        A new session with the metadata server: map our port if we came
        from a private address.
        """
        self._asked = False
        local: Any = proto.transport.getHost() if proto.transport is not None else None
        port = self.node.port
        if self.mapping is not None and port is not None and is_private(getattr(local, "host", None)):
            self.mapping.request(port)
        self.consider()

    def mapped(self) -> None:
        self._asked = False
        self.consider()

    def consider(self) -> None:
        """
        Ask the metadata server to dial us back again when the gateway
        forwards our port and our last ticket says we could not be reached.
        """
        node, mapping = self.node, self.mapping
        ticket = node.ticket
        if mapping is None or mapping.mapped is None or node.meta is None or self._asked:
            return
        if ticket is None or ticket.reachable:
            return  # the first check is under way, or it found us
        self._asked = True
        self.log.info("asking the metadata server to check this peer's address again: the "
                      "gateway forwards its port now")
        asking = node.meta.request("CHECK", check=self.fresh_nonce())
        asking.addTimeout(CHECK_TIMEOUT, node.clock)
        asking.addErrback(self._refused)

    def _refused(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        self.log.info("the metadata server did not check again: {why}; asking again in "
                      "{s:.0f} s", why=failure.getErrorMessage(), s=CHECK_AGAIN)
        self.node.clock.callLater(CHECK_AGAIN, self.mapped)  # (another peer behind our NAT asked)

    def status(self) -> dict[str, object]:
        """
        What C{p2p status} says of how others reach us.
        """
        ticket = self.node.ticket
        found: dict[str, object] = {
            "reachable": None if ticket is None else ticket.reachable,
            "mapped": None,
            "mapping_problem": None,
        }
        if self.mapping is not None:
            found.update(self.mapping.status())
        return found
