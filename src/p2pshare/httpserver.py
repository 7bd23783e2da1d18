"""
What every HTTP-speaking port of both roles shares (a peer's file port,
the metadata server's web page): which methods are answered, and how
long a client may take.

- C{GET} and C{HEAD} are served; another method that HTTP defines gets
  C{405} with C{Allow}, anything else (C{PROPFIND}, a lower-case C{get})
  C{501}, before any resource sees it.
- A request head must be complete within L{HEAD_TIMEOUT} seconds of the
  connection (or of the end of the previous response), counted once and
  not restarted by each byte: a client that drips its head a byte at a
  time is closed like a silent one.  Twisted's own idle timer restarts on
  every byte, which let such a client hold a connection for ever.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.basic import LineReceiver
from twisted.web import http
from twisted.web.server import Request, Site

HEAD_TIMEOUT = 30  # seconds for a whole request head
SERVED = (b"GET", b"HEAD")
# RFC 9110 section 9 and RFC 5789: methods HTTP defines.
KNOWN_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"}
)


class StrictRequest(Request):
    """
    A request whose method is checked before any resource is looked up.
    """

    served: tuple[bytes, ...] = SERVED

    def process(self) -> None:
        if self.method not in self.served:
            known = self.method in KNOWN_METHODS
            self.setResponseCode(405 if known else 501)
            allowed = b", ".join(self.served)
            if known:
                self.setHeader(b"allow", allowed)
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            names = [m.decode() for m in self.served]
            text = f"this port serves {', '.join(names[:-1])} and {names[-1]} only\n"
            self.setHeader(b"content-length", str(len(text)).encode())
            self.write(text.encode())
            self.finish()
            return
        super().process()


class StrictChannel(http.HTTPChannel):
    """
    An HTTP channel whose timer runs from the start of each request head
    to its end, and is not restarted by each byte.
    """

    def dataReceived(self, data: bytes) -> None:
        # HTTPChannel.dataReceived calls resetTimeout() first; we do not.
        LineReceiver.dataReceived(self, data)

    def lineLengthExceeded(self, line: bytes) -> None:
        # Twisted's HTTPChannel would drop the connection without a word.
        status = b"431 Request Header Fields Too Large" if self.requests else b"414 URI Too Long"
        transport: Any = self.transport
        transport.write(b"HTTP/1.1 " + status + b"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        transport.loseConnection()

    def timeoutConnection(self) -> None:
        # Abort: a client that does not read would keep a lost connection.
        transport: Any = self.transport
        self._log.info("closing {peer}: no complete request in time", peer=str(transport.getPeer()))
        transport.abortConnection()

    @property
    def engaged(self) -> bool:
        """
        Is a request being answered?  (An idle connection may be evicted.)
        """
        return bool(self.requests)


class StrictSite(Site):
    protocol = StrictChannel  # type: ignore[assignment]  # HTTP/1.1 only: no ALPN h2
    requestFactory = StrictRequest


def strict_site(root: Any, reactor: Any, kind: type[StrictSite] = StrictSite) -> Site:
    """
    A L{Site} for C{root} with the rules above, quiet, and without
    tracebacks in error pages.
    """
    site = kind(root, reactor=reactor, timeout=HEAD_TIMEOUT)
    site.displayTracebacks = False
    site.noisy = False
    return site


def http_date(seconds: float) -> bytes:
    return http.datetimeToString(int(seconds))


def parse_http_date(value: bytes | None) -> int | None:
    """
    Seconds since the epoch for an HTTP date, or L{None} if it is not one.
    """
    if value is None:
        return None
    try:
        parsed = http.stringToDatetime(value)
    except (ValueError, IndexError, KeyError, OverflowError):
        return None
    return int(parsed) if parsed is not None else None

