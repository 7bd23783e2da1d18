"""
L{ReplyMatcher}: which of our requests a message answers, if any.

The wire carries no request ids (C{docs/protocol.rst}): C{P2P}, C{PLACE},
C{WHOIS}, C{SIZE}, C{TOPO}, C{VERIFY}, C{HELLO} and C{PING} are answered by
a verb of their own, and the side that answers does so in the order it was
asked.  So each request declares the verbs that answer it, and a message
is a reply only if a request waiting on this connection declared its
verb.  The one id on the wire, C{SEARCH}'s, is matched by
L{p2pshare.peer.search}, whose answers (C{RESULTS}, C{WORKING}) come over
many lines and many links rather than as one reply.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from p2pshare.wire import Message, RemoteError

_OK = frozenset({"OK"})

REPLIES: Mapping[str, frozenset[str]] = {
    # To the metadata server.
    "P2P": frozenset({"WELCOME", "OK"}),  # a registration; an observer's P2P gets OK
    "PLACE": frozenset({"ROOT", "REFER"}),
    "WHOIS": frozenset({"KNOWN"}),
    "SIZE": frozenset({"NETWORK"}),
    "CHECK": _OK,  # then a TICKET, once the dial-back has ended
    "RELAY": frozenset({"RELAYS"}),
    "TOPO": frozenset({"END"}),  # after PEER lines, which go to the asker's msg_PEER
    "BYE": _OK,  # the metadata server's "OK bye"; on an overlay link BYE is not answered
    # To a peer's port.
    "VERIFY": frozenset({"VERIFIED"}),
    "HELLO": frozenset({"ACCEPT", "REFER"}),
    # To anyone.
    "PING": frozenset({"PONG"}),
    # To a peer's control channel (ITEM, PROGRESS and NOTE lines come first).
    **{verb: _OK for verb in ("STATUS", "STOP", "FIND", "LS", "FETCH", "QUEUE", "DOWNLOADS",
                              "CANCEL", "UI")},
}
"""The verbs the protocol answers each request with, besides C{ERROR}."""

GIVEN_UP_MAX = 32  # requests given up whose late replies are still recognised


def replies_to(verb: str, answers: Iterable[str] | None = None) -> frozenset[str]:
    """
    The verbs that answer a C{verb} request: C{answers} as the caller
    declares them, else what L{REPLIES} says.

    @raise ValueError: when neither says (a request nothing could answer).
    """
    if answers is not None:
        declared = frozenset(answers)
    else:
        declared = REPLIES.get(verb, frozenset())
    if not declared or "ERROR" in declared:
        raise ValueError(f"a {verb} request must declare the verbs that answer it (ERROR always may)")
    return declared


@dataclass(eq=False)
class _Asked:
    verb: str
    answers: frozenset[str]
    waiter: Deferred[Message] | None  # None once the asker gave up


class ReplyMatcher:
    """
    The requests of one connection waiting for their replies, oldest first.

    A message whose verb an outstanding request declared answers the
    oldest such request; an C{ERROR} answers the oldest request of all
    (it carries no verb to go by, and the other side answers in order).
    Anything else is not a reply, whatever is waiting: the channel
    dispatches it, or refuses it as unexpected.

    A request whose asker gave up (its L{Deferred} was cancelled, as
    C{addTimeout} does) keeps its place, so that its late reply is
    recognised and dropped, instead of being taken for the reply to a
    later request or refused as unasked; the most recent L{GIVEN_UP_MAX}
    are kept.
    """

    def __init__(self, given_up_max: int = GIVEN_UP_MAX) -> None:
        self._asked: deque[_Asked] = deque()
        self._given_up_max = given_up_max

    def __len__(self) -> int:
        """
        How many requests still wait for a reply (given-up ones not counted).
        """
        return sum(1 for a in self._asked if a.waiter is not None)

    def expect(self, verb: str, answers: Iterable[str] | None = None) -> Deferred[Message]:
        """
        A request for C{verb} is about to be sent: a L{Deferred} that fires
        with its reply, or fails with L{RemoteError} on an C{ERROR}.
        """
        asked = _Asked(verb, replies_to(verb, answers), None)
        asked.waiter = Deferred(lambda d: self._giveUp(asked))
        self._asked.append(asked)
        return asked.waiter

    def forget(self, waiter: Deferred[Message]) -> None:
        """
        The request was never sent: nothing will answer it.
        """
        for asked in self._asked:
            if asked.waiter is waiter:
                self._asked.remove(asked)
                return

    def match(self, msg: Message) -> bool:
        """
        Deliver C{msg} to the request it answers; C{False} when it answers none.
        """
        if msg.verb == "ERROR":
            asked = self._asked[0] if self._asked else None
        else:
            asked = next((a for a in self._asked if msg.verb in a.answers), None)
        if asked is None:
            return False
        self._asked.remove(asked)
        waiter = asked.waiter
        if waiter is None:
            return True  # a late reply to a request given up: dropped
        if msg.verb == "ERROR":
            waiter.errback(RemoteError(msg.args[0], msg.text or ""))
        else:
            waiter.callback(msg)
        return True

    def fail(self, reason: BaseException | Failure) -> None:
        """
        Nothing more will be answered (the connection is lost, or the other
        side does not speak this protocol): every request fails.
        """
        asked, self._asked = self._asked, deque()
        for a in asked:
            if a.waiter is not None:
                a.waiter.errback(reason)

    def _giveUp(self, asked: _Asked) -> None:
        asked.waiter = None
        given_up = [a for a in self._asked if a.waiter is None]
        for a in given_up[: len(given_up) - self._given_up_max]:
            self._asked.remove(a)
