"""
The C{p2p} command's side of a peer's control channel: one request and
its reply over a plain blocking socket.

Twisted is not imported here on purpose.  Importing it costs the command a
quarter of a second before it says anything (more than the rest of
C{p2p status} together), and a client that sends one line and reads lines
until the reply needs nothing of it.  The lines themselves are
L{p2pshare.wire}'s, as on every other connection.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from p2pshare import wire
from p2pshare.admission import CONTROL_IDENTITY, CONTROL_TOKEN, Secret, SecretError, new_nonce
from p2pshare.topo import TopoEntry
from p2pshare.wire import RemoteError, WireError

TIMEOUT = 10.0  # seconds to connect, and to wait for each line


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


class Closed(Exception):
    """
    The peer closed the connection before it answered.
    """


CONTROL_HINT = ": give --peer unix:DATA-DIR/control.sock"
TOKEN_ENV = "P2P_CONTROL_TOKEN"  # the token file of a peer's TCP control port


class NoToken(Exception):
    """
    A TCP control port needs the token in the peer's data dir, and it
    could not be read; the text says where it was looked for.
    """


def token_for(environ: dict[str, str] | None = None) -> Secret:
    """
    The token a TCP control port asks for: the file named by
    C{$P2P_CONTROL_TOKEN}, else C{./p2ppeer-data/control.token}.
    """
    env = os.environ if environ is None else environ
    path = Path(env.get(TOKEN_ENV) or Path("p2ppeer-data") / CONTROL_TOKEN)
    try:
        return Secret.from_file(path)
    except SecretError:
        raise NoToken(
            f"a peer's TCP control port wants the token in its data dir: set "
            f"{TOKEN_ENV}=DATA-DIR/{CONTROL_TOKEN} (looked in {path})"
        ) from None


def address_of(description: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """
    Where to connect for a control endpoint: C{unix:PATH} (C{\\:} for a
    colon in it), C{tcp:HOST:PORT}, C{tcp:host=HOST:port=PORT}, or a bare
    port number (on 127.0.0.1).

    @raise ValueError: for anything else.
    """
    description = description.strip()
    if description.isdigit():
        return socket.AF_INET, ("127.0.0.1", _port(description))
    kind, *fields = _split(description)
    named = dict(f.split("=", 1) for f in fields if "=" in f)
    plain = [f for f in fields if "=" not in f]
    if kind == "unix":
        path = named.get("path") or (plain[0] if plain else "")
        if not path:
            raise ValueError("unix: needs a path")
        return socket.AF_UNIX, path
    if kind in ("tcp", "tcp6"):
        host = named.get("host") or (plain[0] if plain else "")
        port = named.get("port") or (plain[1] if len(plain) > 1 else "")
        if not host or not port:
            raise ValueError("tcp: needs a host and a port (tcp:HOST:PORT)")
        family = socket.AF_INET6 if kind == "tcp6" or ":" in host else socket.AF_INET
        return family, (host, _port(port))
    raise ValueError(f"unknown endpoint type {kind!r} (unix:PATH or tcp:HOST:PORT)")


def _split(description: str) -> list[str]:
    """
    Fields separated by C{:}, where C{\\:} is a colon inside a field.
    """
    fields, current, chars = [], [], iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(c)
    fields.append("".join(current))
    return fields


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port number")
    return int(text)


def control_request(
    description: str,
    verb: str,
    *args: object,
    timeout: float = TIMEOUT,
    on_progress: Callable[[int, int, int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    **options: Any,
) -> Any:
    """
    Send C{verb} to a peer's control channel; return the decoded JSON of
    its C{OK} reply, with each list sent before it as C{ITEM} lines under
    its name.  C{timeout} bounds the wait for each line (a long download
    that keeps sending C{PROGRESS} is not cut short; one that stalls is).

    @raise WireError: the request itself breaks the grammar (nothing sent).
    @raise RemoteError: the peer answered C{ERROR}.
    @raise NotAControlChannel: something else answered.
    @raise Closed: the connection ended before the reply.
    @raise OSError: cannot connect (L{TimeoutError} when it is too slow).
    """
    request = wire.encode(wire.message(verb, *args, **options))
    family, address = address_of(description)
    token = token_for() if family != socket.AF_UNIX else None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(min(timeout, TIMEOUT))
        sock.connect(address)
        lines = _lines(sock)
        if token is not None:
            _prove(sock, lines, token)
        sock.settimeout(timeout)
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once: its reason may be waiting to be read
        items: dict[str, list[object]] = {}
        for line in lines:
            try:
                msg = wire.decode(line)
            except WireError:
                raise NotAControlChannel(
                    "something else (it does not speak p2pshare)", CONTROL_HINT
                ) from None
            if msg.verb == "ITEM":
                items.setdefault(msg.args[0], []).append(json.loads(msg.text or "null"))
            elif msg.verb == "PROGRESS":
                if on_progress is not None:
                    on_progress(
                        int(msg.args[0]), int(msg.args[1]), int(msg.options.get("sources", 0))
                    )
            elif msg.verb == "NOTE":
                if on_note is not None:
                    on_note(msg.text or "")
            elif msg.verb == "ERROR":
                error = RemoteError(msg.args[0], msg.text or "")
                raise _not_control(error) or error
            else:
                result = json.loads(msg.text or "null")
                if isinstance(result, dict):
                    result.update(items)
                return result
    raise Closed()


def _prove(sock: socket.socket, lines: Iterator[bytes], token: Secret) -> None:
    """
    The challenge-response of private networks, with the control token as
    the secret (the token itself never crosses the connection).
    """
    mine = ("client", "-", new_nonce())
    sock.sendall(wire.encode(wire.message("AUTH", *mine)))
    challenge = _next(lines)
    if challenge.verb != "CHALLENGE":
        _refused(challenge)
    theirs = (*CONTROL_IDENTITY, challenge.args[0])
    sock.sendall(wire.encode(wire.message("PROOF", token.proof("initiator", mine, theirs))))
    proof = _next(lines)
    if proof.verb != "PROOF":
        _refused(proof)
    if not token.check_proof(proof.args[0], "responder", mine, theirs):
        raise NotAControlChannel("a port that does not hold this peer's control token", "")


def _next(lines: Iterator[bytes]) -> wire.Message:
    for line in lines:
        try:
            return wire.decode(line)
        except WireError:
            break
    raise NotAControlChannel("something else (it does not speak p2pshare)", CONTROL_HINT)


def _refused(msg: wire.Message) -> None:
    if msg.verb == "ERROR":
        if msg.args[0] in (wire.E_AUTH_FAILED, wire.E_AUTH_REQUIRED):
            raise RemoteError(msg.args[0], "the peer refused this control token: is "
                              f"{TOKEN_ENV} the token of that peer?")
        error = RemoteError(msg.args[0], msg.text or "")
        raise _not_control(error) or error
    raise NotAControlChannel("something else (it does not speak p2pshare)", CONTROL_HINT)


def _lines(sock: socket.socket) -> Iterator[bytes]:
    """
    The lines the other side sends, without their LF, until it closes.
    A line longer than the wire allows is not our protocol.
    """
    buffered = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buffered += data
        *lines, buffered = buffered.split(b"\n")
        yield from lines
        if len(buffered) > wire.MAX_LINE:
            raise NotAControlChannel("something else (it does not speak p2pshare)", CONTROL_HINT)


def _not_control(e: RemoteError) -> NotAControlChannel | None:
    """
    A refusal that shows we reached another kind of port.
    """
    if e.code == wire.E_BAD_FLAG:
        return NotAControlChannel("a metadata server's port", CONTROL_HINT)
    if e.code in (wire.E_UNEXPECTED, wire.E_UNKNOWN_VERB) and "not expected here" in e.text:
        return NotAControlChannel("a peer's overlay port", CONTROL_HINT)
    return None


class NotAMetaServer(NotAControlChannel):
    wanted = "a metadata server"


def meta_topology(description: str, timeout: float = TIMEOUT) -> list[TopoEntry]:
    """
    Every peer of an open network and its neighbours, as the metadata
    server at C{description} (C{tcp:HOST:PORT} or C{unix:PATH}) says: an
    observer's session (C{P2P}, then C{TOPO}) over a plain socket, so
    that C{p2p topo} needs no Twisted (a private network's, with TLS, is
    in L{p2pshare.client}).

    @raise RemoteError: the server answered C{ERROR}.
    @raise NotAMetaServer: something else answered.
    @raise Closed: the connection ended before the answer.
    @raise OSError: cannot connect.
    """
    family, address = address_of(description)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        lines = _lines(sock)
        try:
            sock.sendall(b"P2P\r\n")
            _meta_reply(lines, "OK")
            sock.sendall(b"TOPO\r\n")
            entries: list[TopoEntry] = []
            continued = False
            while True:
                msg = _meta_reply(lines, "PEER", "END")
                if msg.verb == "END":
                    return entries
                name, host, port, *neighbours = msg.args
                if continued and entries and entries[-1].name == name:
                    entries[-1].neighbours.extend(neighbours)
                else:
                    entries.append(TopoEntry(name, list(neighbours), host, int(port)))
                continued = "more" in msg.options
        except NotAMetaServer:
            raise
        except NotAControlChannel:
            raise NotAMetaServer("something else (it does not speak p2pshare)") from None


def _meta_reply(lines: Iterator[bytes], *verbs: str) -> wire.Message:
    for line in lines:
        try:
            msg = wire.decode(line)
        except WireError:
            break
        if msg.verb == "ERROR":
            if msg.args[0] in (wire.E_UNEXPECTED, wire.E_UNKNOWN_VERB):
                raise NotAMetaServer("a peer's port (or another p2pshare role)")
            raise RemoteError(msg.args[0], msg.text or "")
        if msg.verb in verbs:
            return msg
        if msg.verb != "PING":
            break
    else:
        raise Closed()
    raise NotAMetaServer("something else (it does not speak p2pshare)")
