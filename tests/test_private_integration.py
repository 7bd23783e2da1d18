"""
Real processes in private and encrypted networks.

With C{--secret-file}: members join, search and download; a peer with no
secret or a wrong one is refused by the metadata server and by every peer
it tries, learning nothing; curl without a signed URL gets 403 everywhere
and with one (C{p2p url}) gets the file; a recorded exchange replayed is
refused.  With TLS endpoints and a CA from C{p2p certs}: the same join,
search and verified download, while a peer whose certificate another CA
signed is refused, and plain TCP gets nothing readable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from p2pshare import wire
from p2pshare.admission import META_IDENTITY, Secret
from p2pshare.disk import atomic_write
from p2pshare.launch import LocalNetwork
from p2pshare.simnet import assert_tree
from p2pshare.topo import parse_topo

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
CURL = shutil.which("curl") or "curl"  # .ci/run installs it; missing, the test fails
DATA = os.urandom(300_000)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


class LineClient:
    """
    A plain socket speaking lines, as nc would.
    """

    def __init__(self, port: int, wrap=None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = wrap(raw) if wrap else raw
        self.file = self.sock.makefile("rb")

    def say(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def hear(self) -> bytes:
        return self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def handshake(
    port: int, secret: Secret, responder: tuple[str, str], wrap=None
) -> tuple[LineClient, list[str], bytes]:
    """
    Prove membership the way a peer does; return the client, the lines we
    said, and the answer to our proof.
    """
    c = LineClient(port, wrap)
    nonce = os.urandom(16).hex()
    said = [f"AUTH peer - {nonce}"]
    c.say(said[0])
    challenge = wire.decode(c.hear().rstrip(b"\r\n"))
    assert challenge.verb == "CHALLENGE"
    proof = secret.proof("initiator", ("peer", "-", nonce), (*responder, challenge.args[0]))
    said.append(f"PROOF {proof}")
    c.say(said[1])
    return c, said, c.hear()


async def members(net: LocalNetwork, n: int) -> dict[str, str]:
    """
    A metadata server and C{n} peers; returns name -> key once settled.
    """
    await net.start_network(n)
    topo = {e.name: e.neighbours for e in parse_topo((net.meta_dir / "topo.txt").read_text())}
    assert_tree(topo, {name: 2 for name in topo})
    return await net.names()


async def fetch_across(net: LocalNetwork, names: dict[str, str]) -> None:
    holder, requester = names["s3"], names["s2"]
    atomic_write(net.root / holder / "shared" / "notes.bin", DATA)
    await net.peers[holder].wait_for("sharing notes.bin", 30)
    found = await deferToThread(run, *P2P, "search", "notes.*", "--peer", net.control(requester))
    assert found.returncode == 0, found.stderr
    assert found.stdout == f"notes.bin\t{len(DATA)}\t{hashlib.sha256(DATA).hexdigest()[:12]}\t1\ts3\n"
    # Browsing a member: its index is fetched with a signed URL.
    listed = await deferToThread(run, *P2P, "ls", "s3", "--json", "--peer", net.control(requester))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["files"] == [
        {"name": "notes.bin", "size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}
    ]
    got = await deferToThread(run, *P2P, "get", "notes.bin", "--peer", net.control(requester))
    assert got.returncode == 0, got.stderr
    assert (net.root / requester / "shared" / "notes.bin").read_bytes() == DATA


@pytest.fixture
def stop_later(reactor):
    nets: list[LocalNetwork] = []
    yield nets.append
    for n in nets:
        pytest_twisted.blockon(Deferred.fromCoroutine(n.stop_all()))


@pytest_twisted.ensureDeferred
async def test_a_private_network_admits_members_only(reactor, tmp_path, stop_later):
    secret_file = tmp_path / "network.secret"
    made = run(*P2P, "secret", str(secret_file))
    assert made.returncode == 0 and oct(secret_file.stat().st_mode & 0o777) == "0o600"
    assert run(*P2P, "secret", str(secret_file)).returncode == 1  # never replaced
    secret = Secret.from_file(secret_file)
    net = LocalNetwork(reactor, tmp_path / "net", secret_file=secret_file)
    stop_later(net)
    (tmp_path / "net").mkdir()
    names = await members(net, 3)
    assert "this network is private" in "".join(net.meta.lines)
    await fetch_across(net, names)
    ports = {name: int((net.root / key / "port").read_text()) for name, key in names.items()}

    # Outsiders: no secret, then a wrong one.  Refused at the metadata
    # server (which logs it), each told why; they never join.  A private
    # network is mutual TLS made from its secret: without the secret a
    # peer speaks plain text and is answered so; with another secret the
    # TLS handshake fails on both sides.
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not the network's secret at all\n")
    for i, (extra, said, logged) in enumerate([
        ([], "refused us: this network uses TLS", "refused 127.0.0.1: it spoke plain text"),
        (["--secret-file", str(wrong)], "failed: certificate verify failed (the two sides "
         "hold different network secrets", "failed: tlsv1 alert unknown ca"),
    ]):
        outside = LocalNetwork(reactor, tmp_path / f"out{i}")
        (tmp_path / f"out{i}").mkdir()
        outside.meta_port = net.meta_port
        stop_later(outside)
        since = len(net.meta.lines)
        _, proc = await outside.start_peer(*extra, wait=False)
        await proc.wait_for(said, 30)
        await net.meta.wait_for(logged, 30, since)
        assert proc.running and not any(" ready on port " in line for line in proc.lines)
        if not extra:  # without a secret, a peer says its network is open
            assert "this network is OPEN" in "".join(proc.lines)
    topo = (net.meta_dir / "topo.txt").read_text()
    assert sorted(e.name for e in parse_topo(topo)) == ["s1", "s2", "s3"]

    # Directly at every peer: plain text is answered in plain text and
    # closed; TLS made from another secret fails; a member's TLS and
    # proof get in.
    member = tls_client(secret, tmp_path / "member")
    outsider = tls_client(Secret.from_file(wrong), tmp_path / "outsider")
    for name, port in ports.items():
        c = LineClient(port)
        c.say("HELLO intruder 7000")
        assert c.hear().startswith(b"ERROR tls-required this network uses TLS")
        assert c.hear() == b""  # and the connection is closed
        c.close()
        with pytest.raises(ssl.SSLError):
            LineClient(port, outsider.wrap_socket).hear()
        c, _, answer = handshake(port, secret, ("peer", name), member.wrap_socket)
        assert answer.startswith(b"PROOF ")
        c.say("PING")
        assert c.hear() == b"PONG\r\n"
        c.close()

    # A recorded exchange, replayed, does not fit the fresh challenge.
    c, said, answer = handshake(net.meta_port, secret, META_IDENTITY, member.wrap_socket)
    assert answer.startswith(b"PROOF ")
    c.close()
    replay = LineClient(net.meta_port, member.wrap_socket)
    replay.say(said[0])
    assert replay.hear().startswith(b"CHALLENGE ")
    replay.say(said[1])
    assert replay.hear().startswith(b"ERROR auth-failed ")
    replay.close()

    # The HTTP side is HTTPS with a member's certificate (p2p certs
    # --secret-file), and a URL signed for that very peer.
    certs = tmp_path / "curl-certs"
    made = run(*P2P, "certs", str(certs), "--secret-file", str(secret_file))
    assert made.returncode == 0, made.stderr
    tls_args = ["--cacert", str(certs / "trust" / "ca.pem"), "--cert", str(certs / "member.pem")]
    for name, port in ports.items():
        plain = run(CURL, "-s", f"http://127.0.0.1:{port}/files/notes.bin")
        assert "speaks HTTPS only" in plain.stdout, plain
        no_cert = run(CURL, "-s", "--cacert", str(certs / "trust" / "ca.pem"),
                      f"https://127.0.0.1:{port}/files/notes.bin")
        assert no_cert.returncode != 0  # no certificate: no TLS
        for path in ("/files/notes.bin", "/files/", "/files/notes.bin?expires=99999999999&sig=00",
                     "/files/notes.bin?expires=" + "9" * 5000 + "&sig=00"):
            out = run(CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", *tls_args,
                      f"https://127.0.0.1:{port}{path}")
            assert out.stdout == "403", (name, path, out)
    url = run(*P2P, "url", f"https://127.0.0.1:{ports['s3']}/files/notes.bin", "--secret-file",
              str(secret_file))
    assert url.returncode == 0, url.stderr
    body = subprocess.run([CURL, "-sf", *tls_args, url.stdout.strip()], capture_output=True, timeout=60)
    assert body.returncode == 0 and body.stdout == DATA
    # That URL is good at s3 only: at another member holding the same file
    # it is refused.
    elsewhere = url.stdout.strip().replace(f":{ports['s3']}/", f":{ports['s2']}/")
    out = run(CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", *tls_args, elsewhere)
    assert out.stdout == "403"

    # p2p topo needs the secret too.
    assert run(*P2P, "topo", "--meta", f"tcp:127.0.0.1:{net.meta_port}").returncode == 1
    out = run(*P2P, "topo", "--meta", f"tcp:127.0.0.1:{net.meta_port}", "--secret-file", str(secret_file))
    assert (out.returncode, out.stdout) == (0, topo)


def tls_client(secret: Secret, directory) -> ssl.SSLContext:
    """
    A member's TLS client context for plain sockets: the private network's
    CA and a certificate, made from C{secret}.
    """
    from p2pshare.tls import network_tls

    return network_tls(secret, (), directory).stdlib_client()


@pytest_twisted.ensureDeferred
async def test_an_encrypted_network_with_its_own_ca(reactor, tmp_path, stop_later):
    certs = tmp_path / "certs"
    made = run(*P2P, "certs", str(certs), "meta", "p1", "p2", "p3")
    assert made.returncode == 0, made.stderr
    assert (certs / "trust" / "ca.pem").exists()
    assert oct((certs / "p1.pem").stat().st_mode & 0o777) == "0o600"
    net = LocalNetwork(reactor, tmp_path / "net", certs=certs)
    (tmp_path / "net").mkdir()
    stop_later(net)
    names = await members(net, 3)
    await fetch_across(net, names)
    port = int((net.root / names["s1"] / "port").read_text())

    # Plain TCP gets no line protocol out of a TLS port.
    c = LineClient(port)
    c.say("PING")
    assert not c.hear().startswith(b"PONG")
    c.close()

    # A client with a certificate from another CA is refused by a peer...
    foreign = tmp_path / "foreign"
    assert run(*P2P, "certs", str(foreign), "p1").returncode == 0
    context = ssl.create_default_context(cafile=str(certs / "trust" / "ca.pem"))
    context.check_hostname = False
    context.load_cert_chain(str(foreign / "p1.pem"))

    def foreign_ping() -> bytes:
        try:
            c = LineClient(port, lambda s: context.wrap_socket(s))
            c.say("PING")
            return c.hear()
        except (ssl.SSLError, ConnectionError):
            return b""

    assert await deferToThread(foreign_ping) == b""
    # ... while our own CA's certificate is let in.
    own = ssl.create_default_context(cafile=str(certs / "trust" / "ca.pem"))
    own.check_hostname = False
    own.load_cert_chain(str(certs / "p2.pem"))

    def member_ping() -> bytes:
        c = LineClient(port, lambda s: own.wrap_socket(s))
        c.say("PING")
        answer = c.hear()
        c.close()
        return answer

    assert await deferToThread(member_ping) == b"PONG\r\n"

    # curl (which offers ALPN) fetches with a member certificate, and gets
    # nothing without one.
    holder_port = int((net.root / names["s3"] / "port").read_text())
    url = f"https://127.0.0.1:{holder_port}/files/notes.bin"
    ca = str(certs / "trust" / "ca.pem")
    body = subprocess.run([CURL, "-sf", "--cacert", ca, "--cert", str(certs / "p1.pem"), url],
                          capture_output=True, timeout=60)
    assert body.returncode == 0 and body.stdout == DATA, body.stderr
    refused = subprocess.run([CURL, "-sf", "--cacert", ca, url], capture_output=True, timeout=60)
    assert refused.returncode != 0 and refused.stdout == b""

    # ... and a whole peer with a foreign certificate never joins.
    outside = LocalNetwork(reactor, tmp_path / "out", certs=foreign)
    (tmp_path / "out").mkdir()
    outside.meta_port = net.meta_port
    stop_later(outside)
    since = len(net.meta.lines)
    _, proc = await outside.start_peer(wait=False)
    await proc.wait_for("certificate verify failed", 30)
    await net.meta.wait_for("TLS with 127.0.0.1", 30, since)
    assert not any(" ready on port " in line for line in proc.lines)
    assert sorted(e.name for e in parse_topo((net.meta_dir / "topo.txt").read_text())) == ["s1", "s2", "s3"]
