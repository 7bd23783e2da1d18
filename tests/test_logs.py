"""
The roles' log lines: one event per line with the role and its name;
Twisted's chatter only at --log-level debug; warn keeps only problems.
"""

from __future__ import annotations

import io

import pytest
import pytest_twisted
from twisted.logger import Logger, LogLevel, LogPublisher, formatEvent, globalLogPublisher
from twisted.python import usage

from p2pshare.logs import LEVELS, role_observer
from p2pshare.meta.tap import Options as MetaOptions
from p2pshare.peer.tap import Options as PeerOptions


def lines_at(level: str, emit) -> list[str]:
    out = io.StringIO()
    name = ["s7"]
    publisher = LogPublisher(role_observer("p2ppeer", lambda: name[0], LEVELS[level], out))
    emit(Logger(namespace="test", observer=publisher), publisher)
    return out.getvalue().splitlines()


def chatter_and_news(log: Logger, publisher: LogPublisher) -> None:
    log.info("Starting factory {factory!r}", factory=object())
    log.info("Stopping factory {factory!r}", factory=object())
    log.info("Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.",
             attempt=1, endpoint=object(), delay=0.9)
    log.info("reactor class: {reactor}.", reactor="EPollReactor")
    # Legacy messages (twisted.python.log.msg), as ports send them, in the
    # shape they reach the new logging system.
    for text in ["SniffingFactory (LimitedFactory) starting on 5001", "(TCP Port 5001 Closed)",
                 "ControlFactory starting on '/tmp/x/control.sock'", "(UNIX Port /tmp/x Closed)"]:
        publisher({"message": (text,), "isError": 0, "system": "-", "time": 0.0,
                   "log_format": "{log_text}", "log_text": text, "log_level": LogLevel.info,
                   "log_namespace": "log_legacy", "log_system": "-", "log_time": 0.0})
    log.info("sharing {file}", file="report.pdf")
    log.warn("{holder} sent a corrupt piece of {file}; dropped", holder="s4", file="report.pdf")
    log.debug("a detail")


def test_the_default_level_shows_what_happened_and_none_of_twisteds_chatter():
    lines = lines_at("info", chatter_and_news)
    assert [line.split(" ", 1)[1] for line in lines] == [
        "[p2ppeer s7] sharing report.pdf",
        "[p2ppeer s7 warn] s4 sent a corrupt piece of report.pdf; dropped",
    ]


def test_debug_brings_the_chatter_back_and_warn_keeps_only_problems():
    debug = lines_at("debug", chatter_and_news)
    assert len(debug) == 11
    assert any("Starting factory" in line for line in debug)
    assert any("(TCP Port 5001 Closed)" in line for line in debug)
    assert any("Scheduling retry 1" in line for line in debug)
    assert [line.split(" ", 1)[1] for line in lines_at("warn", chatter_and_news)] == [
        "[p2ppeer s7 warn] s4 sent a corrupt piece of report.pdf; dropped",
    ]


def test_a_failure_is_not_chatter_and_keeps_its_traceback():
    def fails(log: Logger, publisher: LogPublisher) -> None:
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("Starting factory {factory!r}", factory="x")

    lines = lines_at("info", fails)
    assert "[p2ppeer s7 critical] Starting factory 'x'" in lines[0]
    assert any("ZeroDivisionError" in line for line in lines)


@pytest.mark.parametrize("options", [PeerOptions, MetaOptions])
def test_log_level_is_an_option_of_both_roles(options):
    assert options()["log-level"] == "info"
    o = options()
    o.parseOptions(["--log-level", "debug"])
    assert o["log-level"] == "debug"
    with pytest.raises(usage.UsageError, match="--log-level is debug, info or warn"):
        options().parseOptions(["--log-level", "loud"])


def test_levels_are_ordered():
    assert set(LEVELS) == {"debug", "info", "warn"} and LEVELS["warn"] is LogLevel.warn


def test_names_from_the_network_are_logged_escaped_never_raw():
    evil = "evil\u202egpj.exe"

    def names(log: Logger, publisher: LogPublisher) -> None:
        log.info("sharing {file}", file=evil)
        log.warn("{holder} sent a corrupt piece of {file}; dropped", holder="s4", file=evil)
        # A line break or separator in a name cannot start a line that seems to be ours.
        log.info("downloaded {name} from {holders}", name="a\n2026-01-01T00:00:00+0000 [p2ppeer s1] b",
                 holders="s2\u2028s3")
        log.info("{holder} broke off sending {name} ({why})", holder="s4", name="x",
                 why=OSError(f"cannot read {evil}"))
        # A legacy message, as Twisted's own code sends it, and its traceback's lines.
        text = f"legacy {evil}\nTraceback line \u200fhere"
        publisher({"message": (text,), "isError": 0, "system": "-", "time": 0.0,
                   "log_format": "{log_text}", "log_text": text, "log_level": LogLevel.info,
                   "log_namespace": "log_legacy", "log_system": "-", "log_time": 0.0})
        log.info("ordinary {file} stays", file="été/東京 😀.ogg")

    lines = lines_at("info", names)
    assert not any(c in "".join(lines) for c in "\u202e\u2028\u200f"), lines
    assert [line if line.startswith("\t") else line.split(" ", 1)[1] for line in lines] == [
        "[p2ppeer s7] sharing evil\\u202egpj.exe",
        "[p2ppeer s7 warn] s4 sent a corrupt piece of evil\\u202egpj.exe; dropped",
        "[p2ppeer s7] downloaded a\\x0a2026-01-01T00:00:00+0000 [p2ppeer s1] b from s2\\u2028s3",
        "[p2ppeer s7] s4 broke off sending x (cannot read evil\\u202egpj.exe)",
        "[p2ppeer s7] legacy evil\\u202egpj.exe",
        "\tTraceback line \\u200fhere",
        "[p2ppeer s7] ordinary été/東京 😀.ogg stays",
    ]


# The access line twisted.web writes for each request, as it reaches the
# log (through twisted.python.log.logfile, one "{log_io}" event a line).
ACCESS = ('"127.0.0.1" - - [07/Dec/2026:02:06:17 +0000] "GET /topology.json HTTP/1.1" 200 172 '
          '"http://127.0.0.1:8080/" "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0"')


def test_web_access_lines_are_debug_and_printed_lines_are_not():
    def emit(log: Logger, publisher: LogPublisher) -> None:
        log.info("{log_io}", log_io=ACCESS)
        log.info("{log_io}", log_io='"::1" - - [07/Dec/2026:02:06:18 +0000] "GET / HTTP/1.1" 304 - "-" "curl"')
        log.info("{log_io}", log_io="something printed")
        log.info('peer "x" - - said {what}', what="nothing")

    assert [line.split(" ", 1)[1] for line in lines_at("info", emit)] == [
        "[p2ppeer s7] something printed",
        '[p2ppeer s7] peer "x" - - said nothing',
    ]
    assert sum(ACCESS in line for line in lines_at("debug", emit)) == 1
    assert len(lines_at("debug", emit)) == 4


@pytest_twisted.ensureDeferred
async def test_the_pages_polling_is_not_in_the_log_at_the_default_level(reactor, tmp_path):
    """
    The metadata server's page asks for /topology.json every second: its
    requests are logged at debug level, not at info.
    """
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher
    from twisted.web.client import Agent, HTTPConnectionPool, readBody

    from p2pshare.meta.registry import Registry
    from p2pshare.meta.server import MetaServer
    from p2pshare.meta.web import make_site

    server = MetaServer(Registry(), Clock(), data_dir=tmp_path)
    outs = {level: io.StringIO() for level in ("info", "debug")}
    observers = [role_observer("p2pmeta", lambda: None, LEVELS[level], out)
                 for level, out in outs.items()]
    for observer in observers:
        globalLogPublisher.addObserver(observer)
    port = reactor.listenTCP(0, make_site(server, reactor), interface="127.0.0.1")
    try:
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        base = f"http://127.0.0.1:{port.getHost().port}"
        for path in ("/", "/topology.json", "/topology.json", "/topo.txt"):
            response = await agent.request(b"GET", (base + path).encode())
            await readBody(response)  # the server logged the request when it finished it
            assert response.code == 200
    finally:
        for observer in observers:
            globalLogPublisher.removeObserver(observer)
        await port.stopListening()
    assert '"GET /topology.json HTTP/1.1" 200' not in outs["info"].getvalue()
    assert '"GET / HTTP/1.1" 200' not in outs["info"].getvalue()
    debug = outs["debug"].getvalue()
    assert debug.count('"GET /topology.json HTTP/1.1" 200') == 2, debug
    assert '"GET / HTTP/1.1" 200' in debug and '"GET /topo.txt HTTP/1.1" 200' in debug


# A peer that leaves says goodbye: its neighbours and the metadata server
# log a goodbye, not a lost link; one that crashes is a lost link.


class _Logged:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event) -> None:
        self.lines.append(formatEvent(event))

    def __enter__(self) -> _Logged:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc) -> None:
        globalLogPublisher.removeObserver(self)


def _leaf_and_neighbour(tmp_path):
    from p2pshare.simnet import SimNet

    net = SimNet.grown(tmp_path, 3, 2, 5)
    leaf = next(p for p in net.peers if len(p.neighbours) == 1)
    [neighbour] = leaf.neighbours
    return net, leaf, neighbour


def test_the_metadata_server_logs_a_goodbye_as_a_goodbye(tmp_path):
    net, leaf, _ = _leaf_and_neighbour(tmp_path)
    with _Logged() as logged:
        leaf.stopService()
        net.flush()
    assert f"peer {leaf.peer_name} says goodbye" in logged.lines
    assert f"peer {leaf.peer_name} left" in logged.lines
    assert not any("vanished" in line or "silent" in line for line in logged.lines), logged.lines
    assert [e.text for e in net.meta.events][-1] == f"{leaf.peer_name} left"


def test_a_neighbour_logs_a_goodbye_as_a_goodbye_not_a_lost_link(tmp_path):
    net, leaf, neighbour = _leaf_and_neighbour(tmp_path)
    with _Logged() as logged:
        leaf.stopService()
        net.flush()
    assert f"peer {neighbour}: {leaf.peer_name} said goodbye" in logged.lines
    assert not any("lost its link" in line for line in logged.lines), logged.lines


def test_a_neighbour_that_crashes_is_a_lost_link_not_a_goodbye(tmp_path):
    net, leaf, neighbour = _leaf_and_neighbour(tmp_path)
    with _Logged() as logged:
        net.crash(leaf)
        net.flush()
    assert f"peer {neighbour} lost its link to {leaf.peer_name}" in logged.lines
    assert not any("goodbye" in line for line in logged.lines), logged.lines


def test_links_tell_a_goodbye_from_a_lost_link():
    import random

    from twisted.internet.task import Clock

    from p2pshare.peer.links import Links

    class Link:
        link = None

        def send(self, *args, **kwargs) -> None:
            pass

    links = Links(clock=Clock(), heartbeat=5, max_neighbours=2, rng=random.Random(1),
                  me=lambda: "s1", orphaned=lambda: False, on_change=lambda: None)
    leaving, failing, stranger = Link(), Link(), Link()
    links.add("s2", "127.0.0.1", 6002, leaving)
    links.add("s3", "127.0.0.1", 6003, failing)
    with _Logged() as logged:
        links.goodbye("s2", stranger)  # not its link: nothing
        links.goodbye("s2", leaving)
        links.goodbye("s2", leaving)  # said once, logged once
    assert logged.lines == ["peer s1: s2 said goodbye"]
    assert links.remove("s2", stranger) is None
    gone = links.remove("s2", leaving)
    assert gone is not None and gone.said_goodbye
    gone = links.remove("s3", failing)
    assert gone is not None and not gone.said_goodbye
    assert links.remove("s3", failing) is None
