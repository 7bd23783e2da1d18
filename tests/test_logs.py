"""
The roles' log lines: one event per line with the role and its name;
Twisted's chatter only at --log-level debug; warn keeps only problems.
"""

from __future__ import annotations

import io

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher
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
