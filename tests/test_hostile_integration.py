"""
Real processes against a hostile participant (tests/hostile.py): a
stranger on the LAN, an outsider without the secret, another local user,
a member that lies.  Each test drives one finding of docs/security.rst's
table and fails if the hole opens again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from hostile import Participant, Relay, VictimPort, forged
from twisted.internet.threads import deferToThread

from p2pshare import wire
from p2pshare.launch import LocalNetwork, twistd
from p2pshare.topo import parse_topo

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
CURL = shutil.which("curl") or "curl"


def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=env)


async def arun(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """
    L{run} in a thread: the reactor (and the participants on it) go on.
    """
    return await deferToThread(run, *argv, **kwargs)  # type: ignore[arg-type]


def curl_code(url: str, *extra: str) -> str:
    return run(CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", *extra, url).stdout


# 1. Secrets stay home.


@pytest_twisted.ensureDeferred
async def test_a_share_that_holds_the_data_dir_never_serves_it(reactor, tmp_path, net):
    """
    C{cd D && p2p share .}: the data dir (token, lock, log, and with
    --manhole the password and host key) lies inside the share, and none
    of it can be listed or fetched by any path, nor a link to it.
    """
    await net.start_meta(2)
    here = tmp_path / "D"
    here.mkdir()
    (here / "hello.txt").write_text("hello\n")
    shared = run(*P2P, "share", ".", "--meta", f"tcp:127.0.0.1:{net.meta_port}",
                 "--port", "tcp:0:interface=127.0.0.1", "--data-dir", "p2ppeer-data", cwd=here)
    assert shared.returncode == 0, shared.stderr
    data = here / "p2ppeer-data"
    # A second peer keeps its data dir, with a manhole, inside its share,
    # and links to its token beside it.
    other = tmp_path / "E"
    (other / "music").mkdir(parents=True)
    (other / "music" / "song.ogg").write_bytes(b"la" * 1000)
    key, proc = await net.start_peer(
        "--shared", str(other), "--data-dir", str(other / "state"),
        "--portfile", str(tmp_path / "e.port"), "--manhole", "tcp:0", wait=False,
    )
    await proc.wait_for(" ready on port ", 30)
    await proc.wait_for("sharing music/song.ogg", 30)
    os.symlink(other / "state" / "token", other / "token-link")
    os.link(other / "state" / "token", other / "hard-token")
    assert (other / "state" / "manhole.passwd").exists()
    try:
        control_a = f"unix:{data / 'control.sock'}"
        control_e = f"unix:{other / 'state' / 'control.sock'}"
        status_a = json.loads(run(*P2P, "ls", "--json", _name(control_a), "--peer", control_a).stdout)
        assert [f["name"] for f in status_a["files"]] == ["hello.txt"]
        listed = run(*P2P, "ls", "--json", _name(control_e), "--peer", control_a)
        assert listed.returncode == 0, listed.stderr
        assert [f["name"] for f in json.loads(listed.stdout)["files"]] == ["music/song.ogg"]
        a_port = _port(control_a)
        e_port = int((tmp_path / "e.port").read_text())
        for port, paths in (
            (a_port, ["p2ppeer-data/token", "p2ppeer-data/lock", "p2ppeer-data/p2ppeer.log",
                      "p2ppeer-data/name", "p2ppeer-data%2Ftoken", "./p2ppeer-data/token"]),
            (e_port, ["state/token", "state/manhole.passwd", "state/manhole_host_key",
                      "token-link", "hard-token", "state/../state/token"]),
        ):
            for path in paths:
                assert curl_code(f"http://127.0.0.1:{port}/files/{path}") == "404", path
            index = run(CURL, "-s", f"http://127.0.0.1:{port}/index.json").stdout
            assert "token" not in index and "state" not in index and "p2ppeer-data" not in index
        # Said once in the log, not at every scan; never "sharing" them.
        await proc.wait_for("holds", 30)
        log = (data / "p2ppeer.log").read_text()
        assert log.count("holds p2ppeer-data/") == 1, log
        assert "sharing p2ppeer-data" not in log
        assert not any("sharing state/" in line or "sharing token-link" in line
                       or "sharing hard-token" in line for line in proc.lines)
    finally:
        run(*P2P, "stop", "--peer", f"unix:{data / 'control.sock'}")


def _name(control: str) -> str:
    return _status(control)["name"]


def _status(control: str) -> dict:
    from p2pshare.control_client import control_request

    return control_request(control, "STATUS")


def _port(control: str) -> int:
    return int(_status(control)["port"])


# 2. Control stays local.


@pytest_twisted.ensureDeferred
async def test_control_listens_only_locally_and_asks_for_its_token(reactor, tmp_path, net):
    from test_startup_integration import fails

    said = await fails(reactor, tmp_path, "p2ppeer", "--port", "0", "--control",
                       "tcp:5005:interface=0.0.0.0", "--data-dir", str(tmp_path / "x"))
    assert "would be reachable from other hosts" in said
    await net.start_meta(1)
    key, proc = await net.start_peer("--control", "0")
    line = await proc.wait_for("control channel on loopback port", 10)
    port = int(line.split("control channel on loopback port ")[1].split(";")[0])
    target = tmp_path / "outside" / "victim.txt"
    target.parent.mkdir()
    target.write_text("precious\n")
    # From another local address, without the token: nothing is done.
    for line in (b"STATUS\r\n", b"STOP\r\n",
                 b"FETCH x dir=" + wire.quote_path(str(target.parent)).encode() + b" force=1\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10,
                                      source_address=("127.0.0.2", 0)) as s:
            s.sendall(line)
            heard = s.makefile("rb").read()
        assert heard.startswith(b"ERROR auth-required "), heard
        assert b"OK" not in heard
    assert target.read_text() == "precious\n" and proc.running
    # With the token in the data dir (the peer's own user), it works.
    env = {**os.environ, "P2P_CONTROL_TOKEN": str(net.root / key / "control.token")}
    ok = run(*P2P, "status", "--peer", f"tcp:127.0.0.1:{port}", env=env)
    assert ok.returncode == 0 and "state: root" in ok.stdout, ok.stderr
    without = run(*P2P, "status", "--peer", f"tcp:127.0.0.1:{port}", cwd=tmp_path)
    assert without.returncode == 1 and "P2P_CONTROL_TOKEN" in without.stderr
    wrong = tmp_path / "wrong.token"
    wrong.write_text("0" * 64)
    refused = run(*P2P, "status", "--peer", f"tcp:127.0.0.1:{port}",
                  env={**os.environ, "P2P_CONTROL_TOKEN": str(wrong)})
    assert refused.returncode == 1 and "refused this control token" in refused.stderr


@pytest_twisted.ensureDeferred
async def test_another_user_cannot_use_a_control_socket_even_if_it_is_open(reactor, tmp_path, net):
    """
    Another local user: even where a unix control socket was made
    world-writable (mode=666 in an open folder), the peer takes commands
    from its own user (and root) only: the kernel says who connected.
    """
    import tempfile

    assert os.geteuid() == 0, "the suite runs as root (.ci/run) to play another user"
    folder = Path(tempfile.mkdtemp(prefix="p2p-open-"))
    try:
        folder.chmod(0o755)
        sock = folder / "control.sock"
        await net.start_meta(1)
        await net.start_peer("--control", f"unix:{sock}:mode=666")
        other = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    *P2P, "status", "--peer", f"unix:{sock}", cwd=folder)
        assert other.returncode == 1
        assert "takes commands from its own user only" in other.stderr, other.stderr
        mine = run(*P2P, "status", "--peer", f"unix:{sock}")
        assert mine.returncode == 0, mine.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# 3. Places only for those who proved them.


@pytest_twisted.ensureDeferred
async def test_one_registration_cannot_capture_the_newcomers(reactor, tmp_path, net):
    """
    A registrant claims max=1000, a victim's address as its host and a
    link to the root that the root never reports: 50 newcomers all join
    the real tree, and none is referred to the claimed address.
    """
    await net.start_meta(2)
    await net.start_peer("--max-neighbours", "30")
    await net.start_peer("--max-neighbours", "30")
    real = {int((net.root / k / "port").read_text()) for k in net.peers}
    victim = VictimPort()
    liar = Participant(reactor, net.meta_port, source="127.0.0.2")
    try:
        await liar.listen()
        welcome = await liar.register(host="127.0.0.1", port=victim.port, max=1000, beat=5)
        assert welcome.verb == "WELCOME"
        assert (await liar.ticketed()).split("/")[4] == "0"  # not reachable there
        liar.meta.send("NEIGHBOURS", "s1", up="s1")
        newcomers = [Participant(reactor, net.meta_port) for _ in range(50)]
        referred = []
        for n in newcomers:
            await n.listen()
            assert (await n.register(max=1)).verb == "WELCOME"
            chain, parent = await n.join()
            referred += chain
            assert parent in ("s1", "s2")
        assert {port for _, _, port in referred} <= real
        assert all(name != liar.name for name, _, _ in referred)
        # The victim heard at most the one dial-back that found it was not
        # the registrant; the liar's own port was never tried.
        assert victim.take() <= 1 and liar.dialled == 0
        out = await arun(*P2P, "topo", "--meta", f"tcp:127.0.0.1:{net.meta_port}")
        topo = {e.name: e.neighbours for e in parse_topo(out.stdout)}
        assert topo[liar.name] == []  # its one-sided link shows nowhere
        assert liar.name not in topo["s1"]
        hung = set()
        for key in net.peers:
            status = await deferToThread(_status, net.control(key))
            hung |= {n["name"] for n in status["neighbours"]}
        assert {n.name for n in newcomers} <= hung and liar.name not in hung
    finally:
        victim.close()
        liar.close()
        for n in newcomers:
            n.close()


# 4. Search results cannot be aimed at a victim.


@pytest_twisted.ensureDeferred
async def test_forged_results_neither_flood_a_victim_nor_win(reactor, tmp_path, net):
    """
    A neighbour answers every search with 500 forged matches at one
    address, some under the real file's name and content: p2p get of the
    real file succeeds from its real holder, the victim sees at most 8
    connections (none, while the metadata server vouches for holders),
    and p2p ls cannot be spoofed either.
    """
    await net.start_meta(2)
    holder_key, holder = await net.start_peer("--max-neighbours", "3")
    getter_key, _ = await net.start_peer("--max-neighbours", "3")
    names = await net.names()
    data = os.urandom(3 << 20)
    sha = hashlib.sha256(data).hexdigest()
    (net.root / holder_key / "shared" / "real.bin").write_bytes(data)
    await holder.wait_for("sharing real.bin", 30)
    victim = VictimPort()
    liar = Participant(reactor, net.meta_port, source="127.0.0.2")
    try:
        await liar.listen()
        await liar.register(max=1)
        await liar.join()
        holder_name = {v: k for k, v in names.items()}[holder_key]
        liar.on_search = lambda msg: (
            forged(holder_name, "127.0.0.1", victim.port, 250, name="real.bin", size=len(data))
            + forged(liar.name, "127.0.0.1", victim.port, 125, name="real.bin", sha256=sha,
                     size=len(data))
            + forged("nobody", "127.0.0.1", victim.port, 125, name="real.bin")
        )
        control = net.control(getter_key)
        out = (await arun(*P2P, "search", "real.bin", "--json", "--peer", control)).stdout
        found = [json.loads(line) for line in out.splitlines()]
        assert {(m["holder"], m["port"]) for m in found} == {
            (holder_name, int((net.root / holder_key / "port").read_text()))
        }
        got = await arun(*P2P, "get", "real.bin", "--peer", control)
        assert got.returncode == 0, got.stderr
        assert (net.root / getter_key / "shared" / "real.bin").read_bytes() == data
        listed = await arun(*P2P, "ls", holder_name, "--json", "--peer", control)
        assert [f["name"] for f in json.loads(listed.stdout)["files"]] == ["real.bin"]
        assert len(liar.searches) >= 3
        assert victim.take() == 0
        await net.peers[getter_key].wait_for("matches that came through", 10)
    finally:
        victim.close()
        liar.close()


# 5 and 9. Names are bound to their owners.


@pytest_twisted.ensureDeferred
async def test_a_live_name_cannot_be_taken_by_hello(reactor, tmp_path, net):
    """
    A stranger (registered under a name of its own) says HELLO to s2 as
    s3, a live peer that is not s2's neighbour, with a beat meant never to
    be found silent: refused, with or without its own ticket.
    """
    await net.start_network(3, "--max-neighbours", "3")
    names = await net.names()
    ports = {n: int((net.root / k / "port").read_text()) for n, k in names.items()}
    before = await deferToThread(_status, net.control(names["s2"]))
    liar = Participant(reactor, net.meta_port, source="127.0.0.2")
    try:
        await liar.listen()
        await liar.register(max=1)
        ticket = await liar.ticketed()
        liar.name = "s3"
        for options in ({"ticket": ticket, "beat": 999999999}, {"beat": 999999999}):
            with pytest.raises(wire.RemoteError) as refused:
                await liar.hello("127.0.0.1", ports["s2"], "s2", **options)
            assert refused.value.code == wire.E_BAD_TICKET
            assert "ticket" in refused.value.text
    finally:
        liar.close()
    after = await deferToThread(_status, net.control(names["s2"]))
    assert after["neighbours"] == before["neighbours"]
    assert [n["name"] for n in after["neighbours"]] == ["s1"]


# 7. Descriptors.


@pytest_twisted.ensureDeferred
async def test_a_flood_from_one_address_leaves_room_for_others(reactor, tmp_path):
    """
    Under ulimit -n 1024, 1,100 connections from one address: the
    metadata server keeps registering honest peers and answering p2p topo.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    net = LocalNetwork(reactor, tmp_path / "net")
    (tmp_path / "net").mkdir()
    meta_dir = tmp_path / "net" / "meta"
    meta_dir.mkdir()
    meta = twistd(reactor, "p2pmeta", [
        "--port", "tcp:0:interface=127.0.0.1", "--data-dir", str(meta_dir),
        "--portfile", str(meta_dir / "port"), "--expect", "1",
    ], tmp_path, tmp_path / "meta.log")
    meta.argv = ["/bin/sh", "-c", 'ulimit -n 1024 && exec "$@"', "sh", *meta.argv]
    meta.start()
    net.meta = meta
    flood: list[socket.socket] = []
    try:
        await meta.wait_for("p2pmeta ready", 30)
        net.meta_port = int((meta_dir / "port").read_text())

        def open_flood() -> tuple[int, int]:
            held = busy = 0
            for _ in range(1100):
                s = socket.create_connection(("127.0.0.1", net.meta_port), timeout=10,
                                             source_address=("127.0.0.2", 0))
                s.sendall(b"P2P\r\n")  # an observer: in use, not idle
                flood.append(s)
            for s in flood:
                s.settimeout(10)
                try:
                    heard = s.recv(200)
                except OSError:
                    heard = b""
                held += heard.startswith(b"OK observer")
                busy += heard.startswith(b"ERROR busy")
            return held, busy

        held, busy = await deferToThread(open_flood)
        # One address holds at most half the descriptors; the rest of its
        # connections were refused (busy) or, idle still, made room.
        assert 0 < held <= 1024 // 2, (held, busy)
        await net.start_peer()
        await meta.wait_for("topology settled: 1 peers", 30)
        topo = run(*P2P, "topo", "--meta", f"tcp:127.0.0.1:{net.meta_port}")
        assert topo.returncode == 0 and topo.stdout.startswith("s1:"), topo.stderr
        assert meta.running and not any("Too many open files" in line for line in meta.lines)
        assert any("only 1024 file descriptors" in line for line in meta.lines)
    finally:
        for s in flood:
            s.close()
        await net.stop_all()


# 6. A secret protects the whole session, and the traffic.


@pytest_twisted.ensureDeferred
async def test_a_relayed_handshake_gets_nothing_and_a_capture_shows_nothing(
    reactor, tmp_path
):
    """
    A relay passes a member's connection to the metadata server through,
    then cuts the member off and speaks on its own: not one line is
    answered.  A capture of a private network's search and download shows
    neither names nor file bytes; the same capture of an open network shows
    both (so the check itself works).  And a member that proved the secret
    under one name cannot say HELLO under another's.
    """
    from p2pshare.admission import Secret
    from p2pshare.tls import network_tls

    secret_file = tmp_path / "network.secret"
    assert run(*P2P, "secret", str(secret_file)).returncode == 0
    secret = Secret.from_file(secret_file)
    private = LocalNetwork(reactor, tmp_path / "private", secret_file=secret_file)
    open_ = LocalNetwork(reactor, tmp_path / "open")
    relay = None
    try:
        for net in (private, open_):
            net.root.mkdir()
            await net.start_meta(2)
            for name in ("alice-keeps-the-plans", "bob-wants-the-plans"):
                await net.start_peer("--name", name)
        data = os.urandom(1 << 20)
        for net in (private, open_):
            keys = await net.names()
            (net.root / keys["alice-keeps-the-plans"] / "shared" / "q3-secret-plans.bin"
             ).write_bytes(data)
            await net.peers[keys["alice-keeps-the-plans"]].wait_for("sharing q3-secret-plans", 30)
            control = net.control(keys["bob-wants-the-plans"])
            seen = await captured(reactor, tmp_path / f"{net.root.name}.pcap", lambda c=control: arun(
                *P2P, "get", "q3-secret-plans.bin", "--peer", c,
            ))
            readable = [b"q3-secret-plans", b"alice-keeps-the-plans", data[1000:1064]]
            if net is private:
                assert not any(text in seen for text in readable)
            else:
                assert all(text in seen for text in readable)

        # The relay: a member registers through it; then the relay speaks.
        relay = Relay(private.meta_port)
        relay.start()
        member = Participant(reactor, relay.port, secret=secret,
                             tls=network_tls(secret, (), tmp_path / "member"))
        await member.listen()
        assert (await member.register(max=1)).verb == "WELCOME"
        since = len(private.meta.lines)
        heard = await deferToThread(relay.speak, b"TOPO\r\nP2P port=7\r\nPLACE\r\n")
        assert b"PEER" not in heard and b"END" not in heard and b"WELCOME" not in heard
        assert b"alice-keeps-the-plans" not in bytes(relay.seen)
        await private.meta.wait_for("TLS with 127.0.0.1", 10, since)

        # A member proves the secret as mallory, then says HELLO as bob.
        mallory = Participant(reactor, private.meta_port, secret=secret,
                              tls=network_tls(secret, (), tmp_path / "mallory"))
        await mallory.listen()
        await mallory.register(name="mallory", max=1)
        ticket = await mallory.ticketed()
        keys = await private.names()
        port = int((private.root / keys["alice-keeps-the-plans"] / "port").read_text())
        with pytest.raises(wire.RemoteError) as refused:
            await mallory.hello("127.0.0.1", port, "alice-keeps-the-plans",
                                as_name="bob-wants-the-plans", ticket=ticket)
        assert "proved the network secret as mallory, not as bob-wants-the-plans" in (
            refused.value.text
        )
        member.close()
        mallory.close()
    finally:
        if relay is not None:
            relay.close()
        await private.stop_all()
        await open_.stop_all()


async def captured(reactor, pcap: Path, work) -> bytes:
    """
    The bytes of every loopback TCP packet while C{work} runs (tcpdump,
    which .ci/run installs).
    """
    from p2pshare.launch import ChildProcess

    tcpdump = shutil.which("tcpdump") or "tcpdump"
    dump = ChildProcess(reactor, "tcpdump", [tcpdump, "-i", "lo", "-U", "-w", str(pcap), "tcp"],
                        pcap.parent).start()
    await dump.wait_for("listening on lo", 10)
    try:
        done = await work()
        assert done.returncode == 0, done.stderr
    finally:
        dump.signal(2)
        await dump.when_ended(10)
    return pcap.read_bytes()


# After a leak.


@pytest_twisted.ensureDeferred
async def test_a_leaked_token_is_replaced_and_then_worthless(reactor, tmp_path, net):
    """
    A peer's token leaked while the peer was away (its name held for it):
    started with --reset-token, the peer gets its name back with a new
    token, and the old one no longer takes the name.
    """
    import signal

    await net.start_meta(2)
    key, proc = await net.start_peer("--name", "alice", "--heartbeat", "1")
    leaked = (net.root / key / "token").read_text().strip()
    proc.signal(signal.SIGKILL)  # no goodbye: the name is held for its owner
    await proc.when_ended(10)
    _, again = await net.start_peer("--name", "alice", "--heartbeat", "1", "--reset-token", key=key)
    new = (net.root / key / "token").read_text().strip()
    assert new != leaked and not (net.root / key / "token.old").exists()
    assert any("peer alice registered" in line for line in again.lines)
    thief = Participant(reactor, net.meta_port, source="127.0.0.2")
    try:
        await thief.listen()
        with pytest.raises(wire.RemoteError) as refused:
            await thief.register(name="alice", token=leaked)
        assert refused.value.code == wire.E_NAME_TAKEN
    finally:
        thief.close()
    assert oct((net.root / key / "token").stat().st_mode & 0o777) == "0o600"
