"""
What a role writes to its log: one event per line, the time, the role and
its name, then what happened::

    2026-11-30T19:46:18+0000 [p2ppeer s2] sharing report.pdf (48213 bytes, ...)
    2026-11-30T19:46:19+0000 [p2ppeer s2 warn] s4 sent a corrupt piece ...

The text an event carries (a file name from the network, most often) is
written as L{p2pshare.display.shown} shows it: a control, bidi or other
invisible character as an escape such as C{\\u202e}, never raw.

Twisted's own chatter -- factories starting and stopping (one pair per
HTTP connection), ports opening and closing, connection retries being
scheduled, twistd's start-up banner -- is shown only at C{--log-level
debug}, and so is the access line of each request to a role's web side
(the metadata server's page asks for C{/topology.json} every second).
C{--log-level warn} keeps warnings and errors alone.

The observer replaces twistd's default one through the application's
L{ILogObserver} component (how twistd lets an application choose its
observer), and writes where twistd would: standard output with C{-n} and
no C{--logfile}, else C{--logfile} (C{twistd.log} by default), rotated as
twistd rotates it.

For programs, C{twistd --logger p2pshare.logs.json_lines -n p2ppeer ...}
writes every event as one JSON object per line on standard output
(twisted.logger's own JSON format: C{log_format}, C{log_level},
C{log_namespace}, C{log_time} and the event's fields, such as C{name},
C{newcomer} or C{target}); twistd's C{--logger} comes before the role's
own observer.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO, cast

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEventAsClassicLogText,
    jsonFileLogObserver,
)
from twisted.python import logfile
from zope.interface import implementer

from p2pshare.display import shown

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn}
_RANK = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3,
         LogLevel.critical: 4}

# Twisted's messages that say nothing to a user at the default level, by
# their format (new-style events) or their text (legacy ones).
_CHATTER_FORMATS = frozenset({
    "Starting factory {factory!r}",
    "Stopping factory {factory!r}",
    "Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.",
    "twistd {version} ({exe} {pyVersion}) starting up.",
    "reactor class: {reactor}.",
    "Server Shut Down.",
    "Main loop terminated.",
})
# A port's "SniffingFactory (LimitedFactory) starting on 5001" and
# "(TCP Port 5001 Closed)": the role says itself where it listens.
_PORT_CHATTER = re.compile(r".* starting on \S+|\((TCP |UNIX |)Port \S+ Closed\)")
# A web site's access line, as twisted.web writes it (combinedLogFormatter)
# to the log: '"127.0.0.1" - - [07/Dec/2026:02:06:17 +0000] "GET /topology.json
# HTTP/1.1" 200 172 "-" "Mozilla/5.0 ..."'.
_ACCESS_LINE = re.compile(r'"[^"]*" - - \[[^\]]*\] ".*" \d{3} (\d+|-) ".*" ".*"')


def is_chatter(event: Mapping[str, object]) -> bool:
    """
    Is this one of Twisted's routine messages (debug level here)?
    """
    if event.get("isError") or event.get("log_failure") is not None:
        return False
    if event.get("log_format") in _CHATTER_FORMATS:
        return True
    if event.get("log_format") == "{log_io}" and _ACCESS_LINE.fullmatch(str(event.get("log_io"))):
        return True
    message = tuple(cast("Iterable[object]", event.get("message") or ()))
    return len(message) == 1 and _PORT_CHATTER.fullmatch(str(message[0])) is not None


def level_of(event: Mapping[str, object]) -> LogLevel:
    """
    The level a line is shown at: chatter is debug, whatever Twisted said.
    """
    if is_chatter(event):
        return LogLevel.debug
    level = event.get("log_level")
    if level is None:  # a legacy event
        return LogLevel.error if event.get("isError") else LogLevel.info
    return cast(LogLevel, level)


# Of Twisted's own fields (its format, time, level, failure ...) these two
# carry text that is shown as it is: a legacy message (with the traceback
# of a legacy error, on several lines) and what was printed.
_TEXT_FIELDS = frozenset({"log_text", "log_io"})


def shown_fields(event: Mapping[str, object]) -> dict[str, object]:
    """
    C{event} with every string field the readable line shows passed
    through L{shown} (an exception, as its message), so that a name from
    the network is never written raw: a bidi control in it cannot turn the
    line around, nor a line break or separator start a line that seems to
    be ours.  A legacy message keeps its own line breaks (the line goes on
    indented, as Twisted writes every line after the first).
    """
    kept: dict[str, object] = {}
    for key, value in event.items():
        if key in _TEXT_FIELDS and isinstance(value, str):
            value = "\n".join(shown(line) for line in value.split("\n"))
        elif not key.startswith("log_"):
            value = _shown_value(value)
        kept[key] = value
    return kept


def _shown_value(value: object) -> object:
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, BaseException):
        return shown(str(value))
    return value


def role_observer(
    role: str, name: Callable[[], str | None], threshold: LogLevel, out: TextIO
) -> ILogObserver:
    """
    Lines for C{role} (its C{name} as it is when each event happens) at
    C{threshold} and above, written to C{out}.
    """
    def line(event: Mapping[str, object]) -> str | None:
        level = level_of(event)
        named = name()  # a peer has none until the metadata server gives it one
        system = f"{role} {named}" if named else role
        if _RANK.get(level, 1) >= _RANK[LogLevel.warn]:
            system += f" {level.name}"
        return formatEventAsClassicLogText({**shown_fields(event), "log_system": system})

    return FilteringLogObserver(FileLogObserver(out, line), [_AtLeast(threshold)])


@implementer(ILogFilterPredicate)
class _AtLeast:
    def __init__(self, threshold: LogLevel) -> None:
        self.threshold = threshold

    def __call__(self, event: Mapping[str, object]) -> PredicateResult:
        ok = _RANK.get(level_of(event), 1) >= _RANK[self.threshold]
        return PredicateResult.yes if ok else PredicateResult.no


def twistd_output(parent: Mapping[str, object] | None) -> TextIO:
    """
    Where twistd would have written the log, from its own options.
    """
    if parent is None:
        return sys.stdout
    path = parent.get("logfile")
    if path == "-" or (parent.get("nodaemon") and not path):
        return sys.stdout
    # As twistd opens it: rotated every 1 MB.
    return logfile.LogFile.fromFullPath(path or "twistd.log")  # type: ignore[return-value]


@implementer(ILogObserver)
class RoleLog:
    """
    The observer a role gives twistd; it opens its file when twistd starts
    logging (after the options, the data dir and the ports are checked),
    not when the role's services are assembled.
    """

    def __init__(self, role: str, name: Callable[[], str | None], options: Mapping[str, Any]):
        self.role = role
        self.name = name
        self.threshold = LEVELS[options.get("log-level") or "info"]
        self.parent = getattr(options, "parent", None)
        self._observer: ILogObserver | None = None

    def __call__(self, event: dict[str, object]) -> None:
        if self._observer is None:
            self._observer = role_observer(
                self.role, self.name, self.threshold, twistd_output(self.parent)
            )
        self._observer(event)


def json_lines() -> ILogObserver:
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
