"""
Clients of the line protocols, for the C{p2p} command: the peer's control
channel and the metadata server's observer session.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.endpoints import clientFromString, connectProtocol

from p2pshare import wire
from p2pshare.admission import META_IDENTITY, Secret
from p2pshare.channel import LineChannel, RemoteError
from p2pshare.common import client_endpoint_string
from p2pshare.topo import TopoEntry
from p2pshare.wire import Message, WireError

TIMEOUT = 10.0


class NotAControlChannel(Exception):
    """
    The other side does not speak the control protocol: C{what} it seems
    to be instead, and a C{hint} for the user.
    """

    wanted = "a peer's control socket"

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint


CONTROL_HINT = ": give --peer unix:DATA-DIR/control.sock"


class _Client(LineChannel):
    pushed = frozenset({"PEER", "PROGRESS", "ITEM"})

    def __init__(self, on_progress: Callable[..., None] | None = None) -> None:
        super().__init__()
        self.entries: list[TopoEntry] = []
        self.items: dict[str, list[Any]] = {}
        self.on_progress = on_progress
        self._continued = False  # the last PEER line said more=1

    def badLine(self, error: WireError) -> None:
        # Something that is not our protocol at all (an HTTP server's
        # answer, say): whoever waits for a reply learns so at once.
        self._mismatch(NotAControlChannel("something else (it does not speak p2pshare)", CONTROL_HINT))

    def _mismatch(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(error)
        self.abort()

    def msg_ITEM(self, msg: Message) -> None:
        self.items.setdefault(msg.args[0], []).append(json.loads(msg.text or "null"))

    def msg_PROGRESS(self, msg: Message) -> None:
        if self.on_progress is not None:
            self.on_progress(
                int(msg.args[0]), int(msg.args[1]), int(msg.options.get("sources", 0))
            )

    def msg_PEER(self, msg: Message) -> None:
        name, host, port, *neighbours = msg.args
        if self._continued and self.entries and self.entries[-1].name == name:
            self.entries[-1].neighbours.extend(neighbours)
        else:
            self.entries.append(TopoEntry(name, neighbours, host, int(port)))
        self._continued = "more" in msg.options


async def _connect(
    reactor: Any,
    description: str,
    on_progress: Callable[..., None] | None = None,
    secret: Secret | None = None,
    expect: tuple[str, str] | None = None,
) -> _Client:
    endpoint = clientFromString(reactor, client_endpoint_string(description))
    proto = _Client(on_progress)
    proto.secret, proto.expect = secret, expect
    await connectProtocol(endpoint, proto).addTimeout(TIMEOUT, reactor)
    await proto.whenAdmitted().addTimeout(TIMEOUT, reactor)
    return proto


async def control_request(
    reactor: Any,
    description: str,
    verb: str,
    *args: object,
    timeout: float = TIMEOUT,
    on_progress: Callable[..., None] | None = None,
    **options: Any,
) -> Any:
    """
    Send C{verb} to a peer's control channel; return the decoded JSON of
    its C{OK} reply, with each list sent before it as C{ITEM} lines under
    its name.  C{timeout} bounds the wait for the reply, counted
    afresh at every C{PROGRESS} line (a long download is not cut short
    while it moves; one that stalls is).
    """
    idle: list[Any] = []

    def progressed(done: int, total: int, sources: int = 0) -> None:
        if idle and idle[0].active():
            idle[0].reset(timeout)
        if on_progress is not None:
            on_progress(done, total, sources)

    proto = await _connect(reactor, description, progressed)
    timed_out: list[bool] = []

    def too_late() -> None:
        timed_out.append(True)
        reply.cancel()

    try:
        reply = proto.request(verb, *args, **options)
        idle.append(reactor.callLater(timeout, too_late))
        try:
            answer = await reply
        except CancelledError:
            if timed_out:
                raise TimeoutError(timeout, "no reply") from None
            raise  # cancelled by our caller (Ctrl-C)
        except RemoteError as e:
            raise _not_control(e) or e from None
        finally:
            if idle[0].active():
                idle[0].cancel()
        result = json.loads(answer.text or "null")
        if isinstance(result, dict):
            result.update(proto.items)
        return result
    finally:
        proto.close()


def _not_control(e: RemoteError) -> NotAControlChannel | None:
    """
    A refusal that shows we reached another kind of port.
    """
    if e.code == wire.E_BAD_FLAG:
        return NotAControlChannel("a metadata server's port", CONTROL_HINT)
    if e.code in (wire.E_UNEXPECTED, wire.E_UNKNOWN_VERB) and "not expected here" in e.text:
        return NotAControlChannel("a peer's overlay port", CONTROL_HINT)
    return None


async def meta_topology(
    reactor: Any, description: str, secret: Secret | None = None
) -> list[TopoEntry]:
    """
    Ask a metadata server for every peer and its neighbours (proving
    membership first in a private network).
    """
    proto = await _connect(reactor, description, secret=secret, expect=META_IDENTITY)
    try:
        await proto.request("P2P").addTimeout(TIMEOUT, reactor)
        await proto.request("TOPO").addTimeout(TIMEOUT, reactor)
        return proto.entries
    finally:
        proto.close()
