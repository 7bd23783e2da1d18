"""
Deadlines of a line connection, on the clock its role was given.

A connection that stays silent, or never finishes its first line, must be
closed within 30 s, so that idle sockets cannot hold the slots honest
clients need; and a private network's handshake has its own, shorter,
bound.  L{Deadline} is one such bound; L{SilenceDeadline} is the policy
for silence.  Both take the clock they run on (a L{Clock} in tests), never
the global reactor, and both only call back: what expiry does (abort, say
why) is the channel's.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

FIRST_LINE_TIMEOUT = 30.0  # seconds an accepted connection has to say its first line
IDLE_TIMEOUT = 30.0  # seconds it may then stay silent (unless a heartbeat watches it)


class Deadline:
    """
    One bound in time that can be set, moved and cleared, calling
    C{expired} if it passes.  Without a clock there are no deadlines (a
    client that bounds its own waits).
    """

    def __init__(self, clock: IReactorTime | None, expired: Callable[[], None]) -> None:
        self.clock = clock
        self.expired = expired
        self._call: IDelayedCall | None = None

    @property
    def pending(self) -> bool:
        return self._call is not None and self._call.active()

    def set(self, seconds: float | None) -> None:
        """
        Expire C{seconds} from now, instead of whenever was set before;
        L{None} clears it.
        """
        if seconds is None or self.clock is None:
            self.clear()
        elif self.pending:
            assert self._call is not None
            self._call.reset(seconds)
        else:
            # The callback itself, not a wrapper: a delayed call shows whose it is.
            self._call = self.clock.callLater(seconds, self.expired)

    def clear(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class SilenceDeadline:
    """
    How long a connection we accepted may say nothing: L{FIRST_LINE_TIMEOUT}
    to finish its first line, then what its role allows after each
    well-formed line (bytes alone, or a line that never ends, restart
    nothing).  A role returns L{None} where something else watches the
    connection (a heartbeat, a control command waiting for a download).
    A connection we made is not watched: whoever made it bounds its waits.
    """

    def __init__(self, clock: IReactorTime | None, expired: Callable[[], None]) -> None:
        self._deadline = Deadline(clock, expired)
        self.watched = False

    @property
    def pending(self) -> bool:
        return self._deadline.pending

    def start(self, accepted: bool) -> None:
        """
        The connection is made (by the other side, if C{accepted}).
        """
        self.watched = accepted and self._deadline.clock is not None
        if self.watched:
            self._deadline.set(FIRST_LINE_TIMEOUT)

    def heard(self, allowed: float | None) -> None:
        """
        A well-formed line was handled: it may now be silent C{allowed}
        seconds (L{None}: for as long as it likes).
        """
        if self.watched:
            self._deadline.set(allowed)

    def stop(self) -> None:
        self.watched = False
        self._deadline.clear()
