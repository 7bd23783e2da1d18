"""
L{BackPressure}: nobody can make us buffer without bound by not reading.

When what we write to a connection piles up because the other side does
not read it, its transport pauses its producer; a line channel is that
producer (L{LineReceiver} is one), so it stops reading from that side
until the pile drains, and nobody else waits.  Kept apart because when to
register, and when to let go, each have a catch (below).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import ITransport


class PushProducer(Protocol):
    """What a transport pauses and resumes (C{IPushProducer})."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


class BackPressure:
    """
    Registers C{producer} (the channel) on its transport, once.

    It is done when the first line arrives, not at connection: a TLS
    transport pauses its producer while its handshake is unfinished, and
    a paused reader would never finish it.  And it is undone before a
    close: a paused producer would keep a closing transport open once its
    buffer drained (the transport resumes it instead of closing).
    """

    def __init__(self, producer: PushProducer) -> None:
        self.producer = producer
        self.registered = False

    def watch(self, transport: ITransport | None) -> None:
        """
        A line arrived: from now on, writing that piles up pauses reading
        (unless the transport is closing, or has a producer already).
        """
        target: Any = transport
        if (
            not self.registered
            and target is not None
            and not getattr(target, "disconnecting", False)
            and getattr(target, "producer", None) is None
        ):
            target.registerProducer(self.producer, True)
            self.registered = True

    def release(self, transport: ITransport | None) -> None:
        """
        The connection is about to close: stop being its producer.
        """
        target: Any = transport
        if self.registered and target is not None:
            self.registered = False
            target.unregisterProducer()
