"""
L{Conduct}: a connection that keeps breaking the rules is let go.

Each line that breaks the protocol (one that does not parse, or a message
nothing asked for and nothing here handles) is answered with C{ERROR} and
the connection goes on: one mistake, or a client typing by hand, costs
nothing.  Many are misbehaviour: the connection is told C{ERROR
cooling-off} and closed, and when the port counts connections per host
(L{p2pshare.common.LimitedFactory}) the host is struck, so that one that
keeps misbehaving is refused for a while.  The connection pays before its
address does.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from p2pshare import wire

MAX_BAD_LINES = 10  # bad lines on one connection before it is cut


class Conduct:
    """
    The faults of one connection, counted.

    @param say_error: sends C{ERROR code text} on the connection.
    @param close: closes it once what was said has been sent.
    @param strike: counts a misbehaving connection against its host, and
        says whether the host is now refused for a while.
    @param peer: who is on the other side, for the log.
    """

    log = Logger()

    def __init__(
        self,
        say_error: Callable[[str, str], None],
        close: Callable[[], None],
        strike: Callable[[], bool],
        peer: Callable[[], str] = lambda: "?",
        limit: int = MAX_BAD_LINES,
    ) -> None:
        self.say_error = say_error
        self.close = close
        self.strike = strike
        self.peer = peer
        self.limit = limit
        self.faults = 0

    def fault(self, code: str, text: str) -> None:
        """
        One line broke the protocol: say so, and cut the connection at the limit.
        """
        self.say_error(code, text)
        self.faults += 1
        if self.faults >= self.limit:
            self.misbehaved(f"{self.faults} bad lines")

    def misbehaved(self, why: str) -> None:
        """
        Enough: say why, strike the host, close.
        """
        self.log.info("closing {peer}: {why}", peer=self.peer(), why=why)
        if self.strike():
            self.say_error(wire.E_COOLING_OFF, f"{why}; your host is refused for a while")
        else:
            self.say_error(wire.E_COOLING_OFF, f"{why}; this connection is closed")
        self.close()
