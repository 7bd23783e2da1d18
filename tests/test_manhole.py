"""
The SSH manhole of each role, logged into with Twisted's own conch client
and the generated credentials: a Python expression reads the live state.
Wrong credentials are refused; the console listens on loopback unless an
interface is given.
"""

from __future__ import annotations

import os
import re
import socket

import pytest
import pytest_twisted
from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionClosed
from twisted.internet.protocol import ClientFactory

from p2pshare.launch import LocalNetwork
from p2pshare.meta.tap import Options as MetaOptions
from p2pshare.peer.tap import Options as PeerOptions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Shell(channel.SSHChannel):
    name = b"session"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.output = b""
        self.ready: Deferred = Deferred()
        self.waiting: list[tuple[bytes, Deferred]] = []

    def channelOpen(self, data):
        pty = session.packRequest_pty_req(b"xterm", (25, 200, 0, 0), b"")
        d = self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
        d.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        d.addCallbacks(lambda _: self.ready.callback(self), self.ready.errback)

    def dataReceived(self, data):
        self.output += data
        for marker, d in list(self.waiting):
            if re.search(marker, self.output):
                self.waiting.remove((marker, d))
                d.callback(self.output)

    def expect(self, marker: bytes, reactor, whole_line=False) -> Deferred:
        d: Deferred = Deferred()
        pattern = re.escape(marker) + (rb"[^\r\n]*\r?\n" if whole_line else b"")
        self.waiting.append((pattern, d))
        self.dataReceived(b"")
        return d.addTimeout(15, reactor)


class _Connection(connection.SSHConnection):
    def __init__(self, opened: Deferred):
        super().__init__()
        self.opened = opened

    def serviceStarted(self):
        shell = _Shell(conn=self)
        self.openChannel(shell)
        shell.ready.chainDeferred(self.opened)


class _Auth(userauth.SSHUserAuthClient):
    def __init__(self, user, password, conn):
        super().__init__(user.encode(), conn)
        self.password = password
        self.tries = 0

    def getPassword(self, prompt=None):
        self.tries += 1
        if self.tries == 1:
            return succeed(self.password.encode())
        self.transport.loseConnection()  # refused: do not wait for a timeout
        return fail(Exception("refused"))

    def getPublicKey(self):
        return None


class _Transport(transport.SSHClientTransport):
    def verifyHostKey(self, hostKey, fingerprint):
        # The test knows the host: it compares with the key the role wrote.
        expected = self.factory.host_key
        return succeed(True) if expected is None or hostKey == expected else fail(Exception("key"))

    def connectionSecure(self):
        self.requestService(_Auth(self.factory.user, self.factory.password,
                                  _Connection(self.factory.opened)))

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if not self.factory.opened.called:
            self.factory.opened.errback(reason)


async def open_shell(reactor, port, user, password, host_key=None):
    factory = ClientFactory()
    factory.protocol = _Transport
    factory.user, factory.password, factory.host_key = user, password, host_key
    factory.opened = Deferred()
    reactor.connectTCP("127.0.0.1", port, factory)
    return await factory.opened.addTimeout(20, reactor)


async def evaluate(reactor, shell, expression: str) -> str:
    shell.output = b""
    shell.write(f"print('R' + 'ESULT=' + str({expression}))\r".encode())
    out = await shell.expect(b"RESULT=", reactor, whole_line=True)
    line = out.split(b"RESULT=")[-1].split(b"\r")[0].split(b"\n")[0]
    return line.decode()


def read_credentials(path):
    assert os.stat(path).st_mode & 0o777 == 0o600
    user, _, password = path.read_text().strip().partition(":")
    return user, password


@pytest_twisted.ensureDeferred
async def test_manholes_of_both_roles_show_live_state(reactor, tmp_path):
    net = LocalNetwork(reactor, tmp_path)
    shells = []
    try:
        meta_port, peer_port = free_port(), free_port()
        meta = await net.start_meta(2, "--manhole", f"tcp:{meta_port}")
        assert any("manhole credentials written to" in line for line in meta.lines)
        key, peer = await net.start_peer("--manhole", f"tcp:{peer_port}")
        await net.start_peer()
        await meta.wait_for("topology settled: 2 peers", 30)

        user, password = read_credentials(net.meta_dir / "manhole.passwd")
        # The host key is private, its fingerprint logged, and it is the key
        # the manhole presents.
        key_file = net.meta_dir / "manhole_host_key"
        assert os.stat(key_file).st_mode & 0o777 == 0o600
        host_key = keys.Key.fromFile(str(key_file))
        fingerprint = host_key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
        assert any(f"fingerprint {fingerprint}" in line for line in meta.lines)
        shell = await open_shell(reactor, meta_port, user, password, host_key.public().blob())
        shells.append(shell)
        assert await evaluate(reactor, shell, "sorted(p.name for p in registry.peers())") == "['s1', 's2']"

        assert os.stat(net.root / key / "manhole_host_key").st_mode & 0o777 == 0o600
        user, password = read_credentials(net.root / key / "manhole.passwd")
        shell = await open_shell(reactor, peer_port, user, password)
        shells.append(shell)
        name = await evaluate(reactor, shell, "peer.peer_name")
        assert await evaluate(reactor, shell, "list(peer.neighbours)") == str(
            ["s2" if name == "s1" else "s1"]
        )

        # Wrong credentials are refused.
        with pytest.raises(ConnectionClosed):
            await open_shell(reactor, peer_port, user, password + "x")
        with pytest.raises(ConnectionClosed):
            await open_shell(reactor, meta_port, "root", password)
    finally:
        for shell in shells:
            shell.conn.transport.loseConnection()
        await net.stop_all()


def test_the_manhole_listens_on_loopback_unless_an_interface_is_given(tmp_path):
    for options in (MetaOptions(), PeerOptions()):
        options.parseOptions(["--manhole", "2222"])
        assert options["manhole"] == "tcp:2222:interface=127.0.0.1"
    o = PeerOptions()
    o.parseOptions(["--manhole", "tcp:2222:interface=0.0.0.0"])
    assert o["manhole"] == "tcp:2222:interface=0.0.0.0"
