"""
What a person is shown of a name that came from the network (or from a
share): the name itself, except for what would not show as itself.

Any member may share a file under any name, and a name read from a
holder's C{/index.json} may carry anything.  Printed raw, the bidi controls
reorder what follows them (C{"evil\\u202egpj.exe"} shows as
C{evilexe.jpg}), format and control characters vanish or move the
cursor, and a line separator starts a new line that seems to be ours.
L{shown} makes each of them a visible escape instead, so that what is
printed, logged or put in a page cannot lie about the name.

Pure, and without Twisted: the C{p2p} command imports it.
"""

from __future__ import annotations

import html
import json
import unicodedata
from typing import Any

HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""The Unicode categories escaped: controls, format characters (the bidi
controls, zero-width characters), lone surrogates, private use, unassigned
code points, and the line and paragraph separators."""


def _escape(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def shown(name: str) -> str:
    r"""
    C{name} as it may be shown to a person.

    Every character of category Cc, Cf, Cs, Co, Cn, Zl or Zp becomes an
    escape in Python's spelling, in lower-case hex: C{\xNN} below U+0100
    (C{"\x07"} -> C{\x07}, a newline -> C{\x0a}), C{\uNNNN} up to U+FFFF
    (U+202E -> C{\u202e}), C{\UNNNNNNNN} beyond (U+E0001 ->
    C{\U000e0001}).  A backslash is doubled, so that an escape shown is
    never a name's own text: C{a\u202eb} on screen is the name with the
    control, C{a\\u202eb} the name spelt with a backslash.  Everything
    else is kept as it is: accents, CJK, emoji, spaces of every kind.  (The
    zero-width joiner and the soft hyphen are format characters too: an
    emoji sequence joined by U+200D shows its parts and C{\u200d}.)
    """
    # Printable text holds none of the categories above (nor Zs other
    # than the space): the common case costs one scan in C.
    if name.isprintable() and "\\" not in name:
        return name
    return "".join(
        "\\\\" if c == "\\" else _escape(c) if unicodedata.category(c) in HIDDEN else c
        for c in name
    )


def json_text(value: Any) -> str:
    r"""
    C{value} as JSON on one line, for output that programs read: exactly
    C{json.dumps(value, ensure_ascii=False)} for a program, except that
    every character L{shown} would escape is written as a JSON escape
    (C{\u202e}; a UTF-16 pair beyond U+FFFF), so that a terminal showing
    the line cannot be fooled either.  Other text (accents, CJK) stays
    readable; backslashes are JSON's own and left alone.
    """
    text = json.dumps(value, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(
        _json_escape(c) if unicodedata.category(c) in HIDDEN else c for c in text
    )


def _json_escape(c: str) -> str:
    units = c.encode("utf-16-be", "surrogatepass")
    return "".join(
        f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2)
    )


def leading_page(target: str) -> bytes:
    """
    A small HTML page that moves on to C{target} at once (and links it,
    for a browser that does not move): what C{p2p ui --open} hands the
    browser instead of the login address, and what the login address
    answers with, so that the move to the page is the page's own.
    """
    shown_target = html.escape(target, quote=True)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0;url={shown_target}"><title>p2pshare</title>'
            f'</head><body><p><a href="{shown_target}">Open the page</a></p></body></html>'
            ).encode()
