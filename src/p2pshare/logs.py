"""
Log observers for twistd's C{--logger} option.

C{twistd --logger p2pshare.logs.json_lines -n p2ppeer ...} writes every
event as one JSON object per line on standard output (twisted.logger's
own JSON format: C{log_format}, C{log_level}, C{log_namespace},
C{log_time} and the event's fields, such as C{name}, C{newcomer} or
C{target}), for programs to read; without it, the events are text.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_lines() -> ILogObserver:
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
