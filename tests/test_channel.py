"""
LineChannel and its parts, in memory (StringTransport, Clock): replies
matched to the request that declared them, admission, deadlines,
back-pressure, and the count of a connection's faults.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.admission import Secret
from p2pshare.channel import LineChannel
from p2pshare.channel_admission import ADMISSION_TIMEOUT, Admission
from p2pshare.channel_conduct import MAX_BAD_LINES, Conduct
from p2pshare.channel_deadlines import FIRST_LINE_TIMEOUT, Deadline, SilenceDeadline
from p2pshare.channel_flow import BackPressure
from p2pshare.channel_replies import GIVEN_UP_MAX, REPLIES, ReplyMatcher, replies_to
from p2pshare.wire import Message, RemoteError

KEY = Secret(b"k" * 32)
OTHER = Secret(b"o" * 32)


def msg(line: str) -> Message:
    return wire.decode(line.encode())


def outcome(d: Deferred) -> object:
    """
    What a fired Deferred fired with (a failure's exception), consuming it.
    """
    got: list[object] = []
    d.addBoth(lambda r: got.append(r.value if isinstance(r, Failure) else r))
    assert got, "not fired"
    return got[0]


class Asking(LineChannel):
    """A channel with no handlers of its own: only what the base answers."""


def connected(proto: LineChannel | None = None) -> tuple[LineChannel, StringTransport]:
    proto = proto if proto is not None else Asking()
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 40000))
    proto.makeConnection(transport)
    return proto, transport


# Replies: the channel.


def test_an_unasked_message_is_not_taken_as_a_reply():
    proto, transport = connected()
    got = []
    proto.request("SIZE").addCallback(got.append)
    transport.clear()
    proto.dataReceived(b"COMPLETE 3\r\n")  # nobody asked, and nothing here handles it
    assert got == []
    assert transport.value() == b"ERROR unexpected COMPLETE is not expected here\r\n"
    proto.dataReceived(b"NETWORK 3 7\r\n")
    assert [m.verb for m in got] == ["NETWORK"]


def test_two_requests_in_flight_each_get_their_own_reply():
    proto, transport = connected()
    size, whois = [], []
    proto.request("SIZE").addCallback(size.append)
    proto.request("WHOIS", "s1").addCallback(whois.append)
    proto.dataReceived(b"KNOWN s1/127.0.0.1/7001\r\n")
    proto.dataReceived(b"NETWORK 3 7\r\n")
    assert [m.verb for m in size] == ["NETWORK"]
    assert [m.verb for m in whois] == ["KNOWN"]


def test_a_reply_goes_to_the_request_that_declared_its_verb():
    proto, transport = connected()
    d = proto.request("HELLO", "s2", 7002, answers={"ACCEPT", "REFER"})
    assert transport.value() == b"HELLO s2 7002\r\n"
    transport.clear()
    proto.dataReceived(b"PONG\r\n")  # handled (heard), not a reply to HELLO
    assert not d.called and transport.value() == b""
    proto.dataReceived(b"REFER s3 127.0.0.3 7003\r\n")
    assert outcome(d) == Message("REFER", ("s3", "127.0.0.3", "7003"))


def test_pushed_messages_go_to_their_handlers_while_a_request_waits():
    heard = []

    class Registering(LineChannel):
        def msg_TICKET(self, m: Message) -> None:
            heard.append(m.verb)

    proto, transport = connected(Registering())
    d = proto.request("PLACE", answers={"ROOT", "REFER"})
    proto.dataReceived(b"PING\r\nROOT\r\n")
    assert transport.value() == b"PLACE\r\nPONG\r\n"
    assert outcome(d).verb == "ROOT"


def test_an_error_answers_the_oldest_request():
    proto, _ = connected()
    place = proto.request("PLACE")
    size = proto.request("SIZE")
    proto.dataReceived(b"ERROR unreachable nobody reachable is in yet\r\n")
    error = outcome(place)
    assert isinstance(error, RemoteError) and error.code == "unreachable"
    assert not size.called


def test_an_error_nobody_waits_for_is_logged_not_answered():
    proto, transport = connected()
    transport.clear()
    proto.dataReceived(b"ERROR busy try later\r\n")
    assert transport.value() == b"" and not transport.disconnecting


def test_a_late_reply_to_a_request_given_up_is_dropped_quietly():
    proto, transport = connected()
    first = proto.request("SIZE")
    first.cancel()  # what addTimeout does
    assert isinstance(outcome(first), CancelledError)
    second = proto.request("SIZE")
    transport.clear()
    proto.dataReceived(b"NETWORK 1 1\r\n")  # the first one's answer, late
    assert not second.called and transport.value() == b""
    proto.dataReceived(b"NETWORK 2 2\r\n")
    assert outcome(second).args == ("2", "2")


def test_a_lost_connection_fails_every_waiting_request():
    proto, _ = connected()
    d = proto.request("SIZE")
    proto.connectionLost(Failure(ConnectionLost()))
    assert isinstance(outcome(d), ConnectionLost)


def test_unexpected_messages_count_as_bad_lines():
    proto, transport = connected()
    out = b""
    for _ in range(MAX_BAD_LINES):
        transport.clear()
        proto.dataReceived(b"WELCOME s1 127.0.0.1 7001\r\n")
        out += transport.value()
    assert out.count(b"ERROR unexpected WELCOME is not expected here\r\n") == MAX_BAD_LINES
    assert out.endswith(b"ERROR cooling-off 10 bad lines; this connection is closed\r\n")
    assert transport.disconnecting


def test_nothing_follows_the_last_word():
    # An answer that comes after the cut (a search forwarded before it)
    # would follow the ERROR on a transport that is still flushing.
    proto, transport = connected()
    for _ in range(MAX_BAD_LINES):
        proto.dataReceived(b"WELCOME s1 127.0.0.1 7001\r\n")
    assert transport.disconnecting
    proto.send("PONG")
    proto.sendError(wire.E_FAILED, "late")
    assert transport.value().endswith(b"ERROR cooling-off 10 bad lines; this connection is closed\r\n")


def test_a_request_must_say_what_answers_it():
    proto, transport = connected()
    transport.clear()
    with pytest.raises(ValueError, match="must declare"):
        proto.request("NEIGHBOURS", "s2")  # a report: nothing answers it
    assert transport.value() == b"" and len(proto.replies) == 0


# Replies: the matcher alone.


def test_the_matcher_takes_only_declared_verbs():
    replies = ReplyMatcher()
    d = replies.expect("P2P", {"WELCOME"})
    assert not replies.match(msg("OK observer"))
    assert replies.match(msg("WELCOME s1 127.0.0.1 7001"))
    assert outcome(d).verb == "WELCOME"
    assert not replies.match(msg("WELCOME s1 127.0.0.1 7001"))  # nothing waits now
    assert len(replies) == 0


def test_the_matcher_answers_one_verb_in_the_order_asked():
    replies = ReplyMatcher()
    first, second = replies.expect("SIZE"), replies.expect("SIZE")
    replies.match(msg("NETWORK 1 1"))
    assert outcome(first).args == ("1", "1") and not second.called
    replies.match(msg("NETWORK 2 2"))
    assert outcome(second).args == ("2", "2")


def test_the_matcher_keeps_a_bounded_number_of_given_up_requests():
    replies = ReplyMatcher(given_up_max=2)
    for _ in range(5):
        given_up = replies.expect("SIZE")
        given_up.addErrback(lambda f: f.trap(CancelledError))
        given_up.cancel()
    live = replies.expect("SIZE")
    for i in range(2):
        assert replies.match(msg(f"NETWORK {i} {i}"))  # the two kept take theirs
    replies.match(msg("NETWORK 9 9"))
    assert outcome(live).args == ("9", "9")
    assert GIVEN_UP_MAX >= 16  # room for the late replies of a slow but honest server


def test_the_matcher_forgets_a_request_never_sent_and_fails_the_rest():
    replies = ReplyMatcher()
    unsent, waiting, gone = replies.expect("SIZE"), replies.expect("WHOIS"), replies.expect("PING")
    gone.cancel()
    outcome(gone)
    replies.forget(unsent)
    assert len(replies) == 1
    replies.fail(RemoteError("failed", "not a metadata server"))
    assert isinstance(outcome(waiting), RemoteError)
    assert not replies.match(msg("NETWORK 1 1"))


def test_what_answers_each_request_by_default():
    assert replies_to("PLACE") == {"ROOT", "REFER"}
    assert replies_to("P2P", {"OK"}) == {"OK"}  # the caller knows better
    assert replies_to("VERIFY") == {"VERIFIED"}
    with pytest.raises(ValueError):
        replies_to("SEARCH")  # answered by RESULTS over many lines and links: search.py's
    with pytest.raises(ValueError):
        replies_to("SIZE", {"ERROR"})  # ERROR answers any request; it is no reply verb
    for verb, answers in REPLIES.items():
        assert verb in wire.SPECS and answers <= set(wire.SPECS), verb


# Admission.


class Side:
    """
    A fake host of one side of a handshake: what it said, how it ended.
    """

    def __init__(self, role_name: tuple[str, str], secret: Secret, meant, clock=None):
        self.me = role_name
        self.said: list[Message] = []
        self.ended: list[tuple] = []
        self.admission = Admission(self, clock)
        self.secret, self.meant = secret, meant

    def identity(self):
        return self.me

    def sendMessage(self, m: Message) -> None:
        wire.encode(m)  # every line said is well-formed
        self.said.append(m)

    def handshakeDone(self) -> None:
        self.ended.append(("done",))

    def handshakeRefused(self, error: RemoteError, ours: bool) -> None:
        self.ended.append(("refused", error.code, ours))

    def handshakeTimedOut(self, error: RemoteError) -> None:
        self.ended.append(("timed out", error.code))

    def start(self):
        self.admission.start(self.secret, self.meant)


def exchange(a: Side, b: Side) -> None:
    """
    Carry what each side says to the other until both are quiet.
    """
    while a.said or b.said:
        for one, other in ((a, b), (b, a)):
            said, one.said = one.said, []
            for m in said:
                other.admission.received(m)


def test_an_open_network_admits_at_once():
    side = Side(("peer", "s1"), None, None)
    side.start()
    assert side.ended == [("done",)] and side.said == []
    assert outcome(side.admission.when()) is None
    assert side.admission.proved() is None


def test_members_prove_themselves_to_each_other():
    clock = Clock()
    newcomer = Side(("peer", "s2"), KEY, ("meta", "meta"), clock)
    server = Side(("meta", "meta"), KEY, None, clock)
    waiting = newcomer.admission.when()
    server.start()
    newcomer.start()
    assert [m.verb for m in newcomer.said] == ["AUTH"]
    exchange(newcomer, server)
    assert newcomer.ended == server.ended == [("done",)]
    assert outcome(waiting) is None
    assert server.admission.proved() == ("peer", "s2")
    assert newcomer.admission.proved() == ("meta", "meta")
    clock.advance(ADMISSION_TIMEOUT * 2)
    assert newcomer.ended == [("done",)]  # no deadline left behind


def test_a_wrong_secret_is_refused_and_both_sides_learn_it():
    stranger = Side(("peer", "x"), OTHER, ("meta", "meta"))
    server = Side(("meta", "meta"), KEY, None)
    waiting = stranger.admission.when()
    server.start()
    stranger.start()
    exchange(stranger, server)
    assert server.ended == [("refused", wire.E_AUTH_FAILED, True)]
    assert stranger.ended == [("refused", wire.E_AUTH_FAILED, False)]
    assert isinstance(outcome(waiting), RemoteError)
    assert server.admission.proved() is None


def test_a_proof_meant_for_another_peer_is_refused():
    newcomer = Side(("peer", "s2"), KEY, ("peer", "s9"))  # a stale address: s1 is there now
    there = Side(("peer", "s1"), KEY, None)
    there.start()
    newcomer.start()
    exchange(newcomer, there)
    assert newcomer.ended[0][:2] == ("refused", wire.E_AUTH_FAILED)


def test_anything_but_the_handshake_is_refused_first():
    server = Side(("meta", "meta"), KEY, None)
    server.start()
    server.admission.received(msg("P2P port=6001"))
    assert [(m.verb, m.args[0]) for m in server.said] == [("ERROR", wire.E_AUTH_REQUIRED)]
    assert server.ended == [("refused", wire.E_AUTH_REQUIRED, True)]
    unreadable = Side(("meta", "meta"), KEY, None)
    unreadable.start()
    unreadable.admission.unreadable()
    assert unreadable.ended == [("refused", wire.E_AUTH_REQUIRED, True)]


def test_a_handshake_that_stalls_times_out():
    clock = Clock()
    newcomer = Side(("peer", "s2"), KEY, ("meta", "meta"), clock)
    newcomer.start()
    waiting = newcomer.admission.when()
    clock.advance(ADMISSION_TIMEOUT - 0.1)
    assert newcomer.ended == []
    clock.advance(0.2)
    assert newcomer.ended == [("timed out", wire.E_AUTH_REQUIRED)]
    assert outcome(waiting).code == wire.E_AUTH_REQUIRED


def test_a_channel_refuses_a_stranger_and_reads_nothing_more():
    class Private(LineChannel):
        secret = KEY

    proto, transport = connected(Private(Clock()))
    waiting = proto.whenAdmitted()
    proto.dataReceived(b"PING\r\nPING\r\n")
    [line] = transport.value().split(b"\r\n")[:-1]
    assert line.startswith(b"ERROR auth-required ")
    assert transport.disconnecting and not proto.admitted
    assert isinstance(outcome(waiting), RemoteError)


def test_two_channels_admit_each_other_then_talk():
    made = []

    class Member(LineChannel):
        secret = KEY

        def linkMade(self) -> None:
            made.append(self)

    clock = Clock()
    a, to_b = connected(Member(clock))
    b = Member(clock)
    b.expect = ("client", "-")
    to_a = StringTransport()
    b.makeConnection(to_a)
    for _ in range(3):  # AUTH, CHALLENGE, PROOF, PROOF
        data, _ = to_a.value(), to_a.clear()
        a.dataReceived(data)
        data, _ = to_b.value(), to_b.clear()
        b.dataReceived(data)
    assert made == [a, b] or made == [b, a]
    assert a.proved() == ("client", "-")
    d = b.request("PING")
    a.dataReceived(to_a.value())
    b.dataReceived(to_b.value())
    assert outcome(d).verb == "PONG"


# Deadlines.


def test_a_deadline_is_set_moved_and_cleared():
    clock, expired = Clock(), []
    deadline = Deadline(clock, lambda: expired.append(clock.seconds()))
    deadline.set(10)
    clock.advance(5)
    deadline.set(10)  # moved: ten from now
    clock.advance(9)
    assert expired == [] and deadline.pending
    clock.advance(1)
    assert expired == [15.0] and not deadline.pending
    deadline.set(3)
    deadline.set(None)
    clock.advance(10)
    assert expired == [15.0] and clock.getDelayedCalls() == []
    Deadline(None, lambda: None).set(1)  # no clock: no deadlines


def test_an_accepted_connection_must_speak_then_may_be_silent_a_while():
    clock, expired = Clock(), []
    silence = SilenceDeadline(clock, lambda: expired.append(clock.seconds()))
    silence.start(accepted=True)
    clock.advance(FIRST_LINE_TIMEOUT - 1)
    silence.heard(60.0)
    clock.advance(59)
    assert expired == []
    silence.heard(None)  # something else watches it now
    clock.advance(1000)
    assert expired == []
    silence.heard(5.0)
    clock.advance(5)
    assert expired == [1093.0]
    ours = SilenceDeadline(clock, lambda: expired.append(-1))
    ours.start(accepted=False)  # whoever connected bounds its own waits
    ours.heard(1.0)
    clock.advance(100)
    assert expired == [1093.0]


def test_a_silent_channel_is_aborted_and_bytes_alone_do_not_count():
    clock = Clock()
    proto, transport = connected(Asking(clock))
    clock.advance(FIRST_LINE_TIMEOUT - 1)
    proto.dataReceived(b"PIN")  # a line that never ends
    clock.advance(1)
    assert transport.disconnected  # aborted, not closed politely
    proto.connectionLost(Failure(ConnectionLost()))
    assert clock.getDelayedCalls() == []


def test_each_well_formed_line_gives_a_channel_its_idle_time_again():
    clock = Clock()
    proto, transport = connected(Asking(clock))
    for _ in range(5):
        clock.advance(FIRST_LINE_TIMEOUT - 1)
        proto.dataReceived(b"PING\r\n")
    assert not transport.disconnecting
    clock.advance(FIRST_LINE_TIMEOUT)
    assert transport.disconnected


# Back-pressure.


def test_reading_pauses_while_our_writing_piles_up():
    proto, transport = connected()
    assert transport.producer is None  # not at connection: a TLS handshake would stall
    proto.dataReceived(b"PING\r\n")
    assert transport.producer is proto and transport.streaming
    transport.clear()
    proto.pauseProducing()  # what the transport does when its buffer is full
    proto.dataReceived(b"PING\r\nPING\r\n")
    assert transport.value() == b"" and transport.producerState == "paused"
    proto.resumeProducing()  # it drained
    assert transport.value() == b"PONG\r\n" * 2 and transport.producerState == "producing"


def test_closing_lets_go_of_the_transport():
    proto, transport = connected()
    proto.dataReceived(b"PING\r\n")
    proto.close()
    assert transport.producer is None and transport.disconnecting


def test_back_pressure_registers_once_and_never_on_a_closing_transport():
    transport = StringTransport()
    watched = BackPressure(Asking())
    transport.loseConnection()
    watched.watch(transport)
    assert transport.producer is None and not watched.registered
    other = StringTransport()
    other.registerProducer(object(), True)  # somebody else's
    watched.watch(other)
    assert not watched.registered
    fresh = StringTransport()
    watched.watch(fresh)
    watched.watch(fresh)  # a second line: nothing more
    assert watched.registered
    watched.release(fresh)
    watched.release(fresh)
    assert fresh.producer is None


# Conduct.


def test_faults_are_answered_then_counted_to_a_cut():
    said, closed, strikes = [], [], []
    conduct = Conduct(lambda code, text: said.append(code), lambda: closed.append(1),
                      lambda: bool(strikes.append(1)), limit=3)
    conduct.fault("bad-line", "empty line")
    conduct.fault("unexpected", "OK is not expected here")
    assert said == ["bad-line", "unexpected"] and closed == [] and strikes == []
    conduct.fault("bad-line", "empty line")
    assert said[-1] == wire.E_COOLING_OFF and closed == [1] and strikes == [1]


def test_a_host_struck_too_often_is_told_it_is_refused():
    said = []
    conduct = Conduct(lambda code, text: said.append(text), lambda: None, lambda: True)
    conduct.misbehaved("200 searches over its allowance")
    assert said == ["200 searches over its allowance; your host is refused for a while"]
