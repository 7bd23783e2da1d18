"""
Option values as users type them, read and checked without Twisted (the
C{p2p} command imports this at every start): endpoint descriptions,
rates and ranges.  Each reader returns the value in its canonical form or
raises L{ValueError} with what is wrong, for a usage error (exit 2).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

_PORT = re.compile(r"[0-9]{1,5}")
# What each kind needs is checked for TCP; the TLS kinds' own parsers say
# what is wrong with theirs (a missing key, a bad file).
_KINDS_LISTEN = ("tcp", "tcp6", "ssl", "tls", "mtls", "unix")
_KINDS_CONNECT = ("tcp", "tcp6", "ssl", "tls", "mtls", "unix", "mdns")


def endpoint_fields(description: str) -> list[str]:
    """
    The colon-separated fields of an endpoint description (C{\\:} is a
    colon inside a field).
    """
    return [f.replace("\0", ":") for f in description.replace("\\:", "\0").split(":")]


def _port(text: str, what: str, zero: bool = False) -> int:
    if not _PORT.fullmatch(text) or not (0 if zero else 1) <= int(text) <= 65535:
        raise ValueError(f"{what}: {text!r} is not a port number ({0 if zero else 1} to 65535)")
    return int(text)


def listen_description(text: str, what: str = "--port") -> str:
    """
    Where a role listens: a bare number C{N} (C{tcp:N}), or C{tcp:N},
    C{tcp6:N}, C{ssl:N:...}, C{tls:N:...} with options, or C{unix:PATH}.
    """
    text = text.strip()
    if _PORT.fullmatch(text):
        _port(text, what, zero=True)
        return f"tcp:{text}"
    kind, *rest = endpoint_fields(text)
    if kind not in _KINDS_LISTEN:
        raise ValueError(
            f"{what} {text!r}: not an endpoint (a port number, tcp:PORT, ssl:PORT:..., unix:PATH)"
        )
    if kind == "unix":
        if not rest or not rest[0]:
            raise ValueError(f"{what} {text!r}: unix: needs a path")
        return text
    if kind in ("tcp", "tcp6"):
        plain = [f for f in rest if "=" not in f]
        named = dict(f.split("=", 1) for f in rest if "=" in f)
        _port(named.get("port") or (plain[0] if plain else ""), what, zero=True)
    return text


def connect_description(text: str, what: str = "--meta") -> str:
    """
    Where a role is reached: C{HOST:PORT} (C{tcp:HOST:PORT}), a bare
    number (C{tcp:127.0.0.1:N}), C{auto} (the metadata server announced
    on the LAN: C{mdns:}), or a description C{tcp:HOST:PORT},
    C{ssl:HOST:PORT:...}, C{tls:HOST:PORT:...}, C{unix:PATH}.
    """
    text = text.strip()
    if _PORT.fullmatch(text):
        _port(text, what)
        return f"tcp:127.0.0.1:{text}"
    if text == "auto":
        return "mdns:"
    kind, *rest = endpoint_fields(text)
    if kind not in _KINDS_CONNECT:
        if len(rest) == 1 and kind and _PORT.fullmatch(rest[0]):  # HOST:PORT
            _port(rest[0], what)
            return f"tcp:{text}"
        raise ValueError(
            f"{what} {text!r}: not an endpoint (HOST:PORT, tcp:HOST:PORT, ssl:HOST:PORT, "
            "unix:PATH or auto)"
        )
    if kind not in ("tcp", "tcp6", "unix"):
        return text
    if kind == "unix":
        if not rest or not rest[0]:
            raise ValueError(f"{what} {text!r}: unix: needs a path")
        return text
    plain = [f for f in rest if "=" not in f]
    named = dict(f.split("=", 1) for f in rest if "=" in f)
    host = named.get("host") or (plain[0] if plain else "")
    port = named.get("port") or (plain[1] if len(plain) > 1 else "")
    if not host:
        raise ValueError(f"{what} {text!r}: {kind}: needs a host ({kind}:HOST:PORT)")
    _port(port, what)
    return text


def parse_rate(text: str) -> float:
    """
    C{16M}, C{512K}, C{1G} or a number of bytes per second (powers of 1024).
    """
    text = text.strip()
    factor = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
    number = text[:-1] if factor > 1 else text
    try:
        value = float(number) * factor
    except ValueError:
        raise ValueError(f"{text!r} is not a rate (bytes per second, with K, M or G)") from None
    if not 1024 <= value <= 2**40:
        raise ValueError("the rate is from 1K to 1024G bytes per second")
    return value


def loopback_by_default(description: str) -> str:
    """
    A TCP listening endpoint without an interface listens on loopback only:
    operator pages and consoles are not for other hosts unless asked.
    """
    if description.split(":", 1)[0] in ("tcp", "tcp6") and "interface=" not in description:
        return description + (
            ":interface=\\:\\:1" if description.startswith("tcp6") else ":interface=127.0.0.1"
        )
    return description


def _interface(description: str) -> str | None:
    """
    The C{interface=} of a listening description (C{\\:} unescaped).
    """
    fields = description.replace("\\:", "\0").split(":")[1:]
    for f in fields:
        key, eq, value = f.partition("=")
        if eq and key == "interface":
            return value.replace("\0", ":")
    return None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def control_endpoint(description: str | None, data_dir: Path) -> str:
    """
    Where a peer listens for the C{p2p} command: C{unix:DATA-DIR/control.sock}
    by default; a unix socket (mode 0600), or TCP on loopback only (a bare
    number, or C{tcp:N} without an interface, means loopback).  A TCP
    control port also asks for the token in the data dir (control.py).

    @raise ValueError: one sentence, for anything reachable from elsewhere.
    """
    if description is None:
        sock = data_dir / "control.sock"
        description = "unix:" + str(sock).replace(":", "\\:")
    description = loopback_by_default(listen_description(description, "--control"))
    kind = description.split(":", 1)[0]
    if kind == "unix":
        return description if ":mode=" in description else description + ":mode=600"
    if kind in ("tcp", "tcp6"):
        interface = _interface(description) or ""
        if is_loopback(interface):
            return description
        raise ValueError(
            f"--control {description} would be reachable from other hosts: the control "
            "channel listens only on a unix socket or on loopback (127.0.0.1, ::1)"
        )
    raise ValueError(
        f"--control {description}: the control channel is a unix: socket or a loopback tcp: port"
    )
