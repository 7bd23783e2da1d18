"""
docs/protocol.rst against the code.  The session typed with nc, run: each
line after ``>`` is sent to a real metadata server and peer, and what
comes back must be what the page shows (ports as they are here; ``...``
in the page stands for what differs from run to run: keys, signatures,
expiry times).  And the message reference, read: every verb the code
speaks is on the page, every option the page names is one the code
takes for that verb and every option the code takes is named, and every
message the page spells out whole is one the code parses.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest_twisted
from twisted.internet.threads import deferToThread

from p2pshare import wire

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.rst"


def templates() -> list[tuple[str, list[str]]]:
    """
    Every message the page shows as a literal (``VERB ...``) or in a block
    (the handshake's ``I -> R   AUTH ROLE NAME NONCE``): (verb, words).
    """
    text = DOC.read_text()
    found = [lit.split() for lit in re.findall(r"``([A-Z][A-Z0-9]+(?:\s[^`]*)?)``", text)]
    found += [line.split()[3:] for line in text.splitlines() if re.match(r"    [IR] -> [IR]   ", line)]
    return [(words[0], words[1:]) for words in found if words and words[0] in wire.SPECS]


def test_every_verb_the_code_speaks_is_on_the_page():
    assert sorted(set(wire.SPECS) - {verb for verb, _ in templates()}) == []


def test_the_options_on_the_page_are_the_codes():
    named: dict[str, set[str]] = {}
    for verb, words in templates():
        for word in words:
            key = word.strip("[]").split("=")[0] if "=" in word else None
            if key:
                assert key in wire.SPECS[verb].keys, f"{verb} takes no {key}= (the page says it does)"
                named.setdefault(verb, set()).add(key)
    for verb, spec in wire.SPECS.items():
        missing = set(spec.keys) - named.get(verb, set())
        assert not missing, f"{verb}'s options {sorted(missing)} are not on the page"


def test_every_message_the_page_spells_out_whole_parses():
    """
    A literal of concrete words only (no placeholder in capitals, no
    ellipsis, no brackets), as ``ERROR full`` or ``PLACE rejoin=1`` (a
    verb alone, as ``PEER``, names the verb: it is no message).
    """
    whole = [
        " ".join([verb, *words]) for verb, words in templates()
        if words and not any(w.isupper() or "..." in w or w.startswith(("[", "{")) or w.endswith("]")
                   or "=" in w and w.split("=", 1)[1].isupper() for w in words)
    ]
    assert len(whole) >= 10, whole  # the page has that many; fewer means this reads it wrong
    codes = {v for k, v in vars(wire).items() if k.startswith("E_") and isinstance(v, str)}
    for line in whole:
        verb, _, rest = line.partition(" ")
        if verb == "ERROR" and " " not in rest:
            # ``ERROR CODE`` names an error by its code (the text varies).
            assert rest in codes, f"the page names an error code the code has not: {rest}"
        else:
            wire.decode(line.encode())  # raises WireError if the code refuses it


def session() -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """
    The page's session: a list of (connection, [(line sent, lines expected)]).
    """
    text = DOC.read_text()
    text = text[text.index("A session typed with nc"):text.index("``STATUS``'s fields")]
    conversations: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for raw in text.splitlines():
        if not raw.startswith("    "):
            continue
        line = raw[4:]
        if line.startswith("$ "):
            conversations.append((line[2:], []))
        elif line.startswith("> "):
            conversations[-1][1].append((line[2:], []))
        else:
            conversations[-1][1][-1][1].append(line)
    return conversations


def expected(line: str, ports: dict[str, int]) -> re.Pattern[str]:
    """
    A line of the page as a pattern: its ports made ours, and what differs
    from run to run left open.
    """
    line = re.sub(r"[0-9a-f]*\.\.\.", "ANYTHING", mine(line, ports))  # "0f1c...": elided
    pattern = re.escape(line).replace("ANYTHING", ".*")
    pattern = re.sub(r"/\d{10}/", r"/\\d+/", pattern)  # ticket expiry times
    return re.compile(pattern)


def mine(line: str, ports: dict[str, int]) -> str:
    for page, here in ports.items():
        line = re.sub(rf"(127\.0\.0\.1[ /:]){page}\b", rf"\g<1>{here}", line)
        line = line.replace(f'"port":{page}', f'"port":{here}')
    return line


def connect(where: str, ports: dict[str, int], control: str) -> socket.socket:
    if where.startswith("nc -U"):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(control)
        return sock
    return socket.create_connection(("127.0.0.1", ports[where.split()[-1]]))


def converse(sock: socket.socket, exchanges, ports: dict[str, int], ticket: list[str]) -> None:
    """
    One connection of the session, in a thread: every line sent, every
    reply checked; the ticket the metadata server gives is kept, and
    pasted where the page pastes it.
    """
    sock.settimeout(20)
    reader = sock.makefile("rb")
    try:
        for sent, replies in exchanges:
            sent = mine(sent, ports)
            if "ticket=" in sent and "..." in sent:
                sent = re.sub(r"ticket=\S+", f"ticket={ticket[0]}", sent)
            sock.sendall(sent.encode() + b"\r\n")
            for want in replies:
                got = reader.readline().decode().rstrip("\r\n")
                assert expected(want, ports).fullmatch(got), (sent, want, got)
                if got.startswith("TICKET "):
                    ticket.append(got.split()[1])
    finally:
        reader.close()


@pytest_twisted.ensureDeferred
async def test_the_session_typed_with_nc_in_the_protocol_page(net):
    meta = await net.start_meta(5)  # the default --expect: the network is not complete
    key, peer = await net.start_peer()
    (net.root / key / "shared" / "docs").mkdir()
    (net.root / key / "shared" / "docs" / "notes.txt").write_text("hello\n")
    await peer.wait_for("sharing docs/notes.txt", 30)
    page = await peer.wait_for("web page at http://127.0.0.1:", 30)
    ports = {"5000": net.meta_port, "5001": int((net.root / key / "port").read_text()),
             "8300": int(re.search(r"127\.0\.0\.1:(\d+)/", page).group(1))}
    control = str(net.root / key / "control.sock")
    conversations = session()
    assert [where for where, _ in conversations] == [
        "nc -C 127.0.0.1 5000", "nc -C 127.0.0.1 5001", "nc -C 127.0.0.1 5001",
        "nc -U p2ppeer-data/control.sock",
    ]
    ticket: list[str] = []
    # The registration stays open while the peer is asked (nc-peer is live).
    socks = [connect(where, ports, control) for where, _ in conversations[:3]]
    try:
        for sock, (_, exchanges) in zip(socks, conversations[:3], strict=True):
            await deferToThread(converse, sock, exchanges, ports, ticket)
        socks[2].close()  # the HELLO link: the peer notices, then its control is asked
        await peer.wait_for("lost its link to nc-peer", 30)
        status = connect(conversations[3][0], ports, control)
        try:
            await deferToThread(converse, status, conversations[3][1], ports, ticket)
        finally:
            status.close()
    finally:
        for sock in socks:
            sock.close()
    assert meta.running and peer.running
