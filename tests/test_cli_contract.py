"""
The p2p command's contract, as a user meets it: exit status 0, 1 or 2
(3 when nothing was found among the peers that answered, 130 for Ctrl-C),
errors in one sentence on stderr, never a traceback, whatever the
arguments, also when the reader of its output goes away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

P2P = [sys.executable, "-c", "from p2pshare.cli import main; main()"]
COMMANDS = ["topo", "search", "ls", "get", "status", "stop", "secret", "certs", "url", "demo", "frob",
            "downloads", "cancel", "share", ""]
OPTIONS = ["--peer", "--meta", "--data-dir", "--tree", "--secret-file", "--force", "-o", "--output", "--json", "--exact",
           "--lifetime", "--host", "--peers", "--private", "--tls", "--version", "-h", "--help", "--",
           "--background", "--files", "--sources", "--from", "--port", "--upload-rate",
           "--max-neighbours", "--max-uploads", "--heartbeat", "--advertise", "--name", "--manhole"]
VALUES = st.one_of(
    st.sampled_from([
        "", " ", "x", "*", "a*b", "../..", "/", ".", "unix:", "unix:/nonexistent/sock", "tcp:",
        "tcp:127.0.0.1:1", "5000", "0", "-1", "99999999999999999999", "http://127.0.0.1:1/files/a",
        "http://x/files/", "ssl:0", "sha256:" + "0" * 64, "\u00e9t\u00e9", "a" * 5000, "\t", "s1",
        "127.0.0.1:1", "foo:bar", "nonsense:xyz", "abc", "8M", "0.5", "nan", "inf", "1e999",
        "sha256:zz", "sha256:" + "a" * 12, "Music/", "[2019] x?.mp3", "~", "-",
    ]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            max_size=20),
)
ARGV = st.tuples(
    st.sampled_from(COMMANDS),
    st.lists(st.one_of(st.sampled_from(OPTIONS), VALUES), max_size=5),
)


def p2p(argv: list[str], cwd, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "XDG_STATE_HOME": str(cwd / "state")}
    env.pop("P2P_PEER", None)
    return subprocess.run(P2P + argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=env, **kwargs)


def one_sentence(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) <= 1, stderr


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=ARGV)
def test_any_argv_gets_a_status_and_at_most_one_sentence(tmp_path, argv):
    command, rest = argv
    if command == "demo" and not ({"-h", "--help", "--version"} & set(rest)):
        rest = ["--peers", "0", *rest]  # a demo would start a network: only its usage errors
    if command == "share":
        rest = [*rest, "--meta", "127.0.0.1:1"]  # nothing listens there: no peer starts
    out = p2p([command, *rest] if command else rest, tmp_path)
    assert out.returncode in (0, 1, 2, 3), (argv, out.returncode, out.stderr)
    if "-h" in rest or "--help" in rest or (not command and not rest):
        return  # help and usage text are several lines by nature
    one_sentence(out.stderr)
    if out.returncode:
        assert out.stderr.startswith("p2p"), out.stderr


def test_usage_errors_and_version(tmp_path):
    for argv, says in [
        (["get", ""], "p2p: the name cannot be empty or hold control characters (see p2p --help)"),
        (["get", "../etc/passwd"], "p2p: '../etc/passwd' is not a name a peer shares"),
        (["get", "sha256:zz"], "p2p: sha256: takes the file's SHA-256, or its first 12"),
        (["get", "sha256:" + "a" * 11], "p2p: sha256: takes the file's SHA-256, or its first 12"),
        (["status", "--peer", "nonsense:xyz"], "p2p: unknown endpoint type 'nonsense'"),
        (["share", ".", "--port", "abc"], "p2p: --port 'abc': not an endpoint"),
        (["share", ".", "--meta", "foo:bar"], "p2p: --meta 'foo:bar': not an endpoint"),
        (["share", ".", "--upload-rate", "fast"], "p2p: 'fast' is not a rate"),
        (["share", ".", "--max-neighbours", "0"], "p2p: --max-neighbours is from 1 to"),
        (["topo", "--meta", "127.0.0.1:99999"], "p2p: --meta: '99999' is not a port number"),
        (["search", "a\tb"], "p2p: the pattern cannot be empty or hold control characters"),
        (["url", "http://x/files/a", "--secret-file", "s", "--lifetime", "86401"],
         "p2p: --lifetime is from 1 to 86400 seconds"),
        (["status", "--peer", ""], "p2p: --peer cannot be empty"),
        (["frob"], "p2p: argument COMMAND: invalid choice"),
        (["get", "\u00e9" * 400], "p2p: the name is too long (800 bytes)"),
        (["search", "x" * 1001], "p2p: the pattern is too long (1001 bytes)"),
    ]:
        out = p2p(argv, tmp_path)
        assert out.returncode == 2, (argv, out.stderr)
        assert out.stderr.startswith(says), (argv, out.stderr)
        one_sentence(out.stderr)
    out = p2p(["--version"], tmp_path)
    assert (out.returncode, out.stdout.startswith("p2p (p2pshare) ")) == (0, True)


MALFORMED = [  # (command and its arguments, an option, a malformed value for it)
    (["share", "."], "--port", "abc"),
    (["share", "."], "--port", "tcp:99999"),
    (["share", "."], "--meta", "foo:bar"),
    (["share", "."], "--meta", "tcp::5000"),
    (["share", "."], "--upload-rate", "8X"),
    (["share", "."], "--upload-rate", "nan"),
    (["share", "."], "--max-neighbours", "abc"),
    (["share", "."], "--max-uploads", "0"),
    (["share", "."], "--heartbeat", "inf"),
    (["share", "."], "--name", "a b"),
    (["share", "."], "--advertise", "bad host"),
    (["share", "."], "--manhole", "nope:1"),
    (["topo"], "--meta", "127.0.0.1:0"),
    (["status"], "--peer", "nonsense:xyz"),
    (["search", "x"], "--peer", "tcp:host"),
    (["get", "x"], "--sources", "0"),
    (["get", "x"], "--sources", "many"),
    (["get", "x"], "--from", "not a name"),
    (["ls", "s1"], "--peer", "unix:"),
    (["downloads"], "--peer", "frob:1"),
    (["cancel", "x"], "--peer", "frob:1"),
    (["url", "http://x/files/a", "--secret-file", "s"], "--lifetime", "0"),
    (["share", "."], "--data-dir", ""),
    (["share", "."], "--control", "tcp:0:interface=8.8.8.8"),
    (["share", "."], "--control", "frob:1"),
    (["get", "x"], "-o", ""),
    (["topo"], "--data-dir", " "),
]


@pytest.mark.parametrize("url", ["http://[::1", "http://h:99999/files/a", "http://h:x/files/a"])
def test_a_malformed_url_is_a_usage_error(tmp_path, url):
    out = p2p(["url", url, "--secret-file", "s"], tmp_path)
    assert out.returncode == 2, out.stderr
    one_sentence(out.stderr)


@pytest.mark.parametrize("command, option, value", MALFORMED)
def test_every_malformed_option_value_is_a_usage_error_wherever_it_stands(tmp_path, command,
                                                                         option, value):
    first, *rest = command
    for argv in ([first, option, value, *rest], [first, *rest, option, value],
                 [first, f"{option}={value}", *rest]):
        out = p2p(argv, tmp_path)
        assert out.returncode == 2, (argv, out.stderr)
        assert out.stderr.startswith("p2p") and "Traceback" not in out.stderr, out.stderr
        one_sentence(out.stderr)


def test_meta_as_host_and_port_is_tcp(tmp_path):
    out = p2p(["topo", "--meta", "127.0.0.1:1"], tmp_path)
    assert out.returncode == 1, out.stderr  # a usable endpoint: nothing listens there
    assert "Unknown endpoint" not in out.stderr and "127.0.0.1:1" in out.stderr
    one_sentence(out.stderr)


def test_a_peer_that_is_not_there_and_a_wrong_kind_of_socket(tmp_path):
    out = p2p(["status", "--peer", "unix:" + str(tmp_path / "none.sock")], tmp_path)
    assert out.returncode == 1 and "is it running?" in out.stderr
    one_sentence(out.stderr)
    out = p2p(["status", "--peer", "./p2ppeer-data/control.sock"], tmp_path)
    assert out.returncode == 1  # a path is a unix socket's
    assert f"cannot reach the peer at unix:{tmp_path / 'p2ppeer-data' / 'control.sock'}" in out.stderr
    one_sentence(out.stderr)


def test_a_closed_pipe_ends_quietly(tmp_path):
    # `p2p --help | head -0`, and a command whose output nobody reads.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        out = subprocess.run(P2P + ["secret", str(tmp_path / "s")], stdout=writer,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert out.returncode == 1 and out.stderr == ""
    assert (tmp_path / "s").exists()


def test_ctrl_c_is_130_with_one_sentence(tmp_path):
    # A command that waits (a peer port that accepts and never answers).
    import socket

    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "control.sock"))
        server.listen()
        server.settimeout(30)
        proc = subprocess.Popen(
            P2P + ["status", "--peer", f"unix:{tmp_path / 'control.sock'}"], cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        conn, _ = server.accept()  # it has connected and now waits for a reply
        with conn:
            conn.settimeout(10)
            assert conn.recv(100) == b"STATUS\r\n"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert conn.recv(100) == b""  # it hung up
    assert proc.returncode == 130
    assert err == "p2p status: interrupted\n"


# A file whose name carries a right-to-left override: printed raw it reads
# "evilexe.jpg".  What p2p prints shows the control instead.
EVIL = "evil\u202egpj.exe"
EVIL_SHOWN = "evil\\u202egpj.exe"
SHA = "ab" * 32


def fake_peer(replies):
    """
    A control endpoint (a unix socket) that answers each request with what
    C{replies(msg)} gives (wire messages), as a peer's control channel
    does; returns its endpoint and a function that closes it.
    """
    import json
    import socket
    import tempfile
    import threading

    from p2pshare import wire

    path = Path(tempfile.mkdtemp(prefix="p2p-fake-")) / "control.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                request = b""
                while not request.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                for verb, args, body in replies(wire.decode(request.rstrip(b"\n"))):
                    raw = verb in ("ERROR", "NOTE")
                    text = body if raw else json.dumps(body, separators=(",", ":"))
                    conn.sendall(wire.encode(wire.message(verb, *args, text=text)))

    def stop():
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept
        server.close()
        thread.join(10)
        path.unlink(missing_ok=True)
        path.parent.rmdir()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"unix:{path}", stop


def network_with_an_evil_name(msg):
    from p2pshare import wire

    match = {"name": EVIL, "size": 4, "sha256": SHA, "holder": "s2", "host": "127.0.0.1",
             "port": 5002, "hops": 1, "root": "", "have": None}
    if msg.verb == "FIND":
        return [("ITEM", ["matches"], match), ("OK", [], {"count": 1, "matches": []})]
    if msg.verb == "LS":
        return [("ITEM", ["files"], {"name": EVIL, "size": 4, "sha256": SHA}),
                ("OK", [], {"peer": "s2", "count": 1, "files": []})]
    if msg.verb == "STATUS":
        return [
            ("ITEM", ["neighbours"], {"name": "s2", "host": "127.0.0.1", "port": 5002}),
            ("ITEM", ["shared"], {"name": EVIL, "size": 4, "sha256": SHA}),
            ("ITEM", ["transfers"], {"name": EVIL, "direction": "down", "peer": "s2",
                                     "done": 1, "total": 4, "rate": 0}),
            ("OK", [], {"name": "s1", "host": "127.0.0.1", "port": 5001, "root": True,
                        "joined": True, "max_neighbours": 2, "neighbours": [], "shared": [],
                        "transfers": []}),
        ]
    if msg.verb == "FETCH" and wire.unquote_name(msg.args[0]) == EVIL:
        return [("OK", [], {"path": f"/downloads/{EVIL}", "size": 4, "sha256": SHA,
                            "holder": "s2", "already": False,
                            "notes": [f"s3 sent a corrupt piece of {EVIL}; dropped"]})]
    return [("ERROR", ["failed"], f"every holder of {EVIL} failed")]


def test_names_from_the_network_are_printed_escaped_never_raw(tmp_path):
    """
    p2p search, ls, status and get show a name's bidi control as an
    escape; --json keeps the exact name for programs (a JSON escape, never
    the raw control), so a terminal shows no lie either way.
    """
    import json

    peer, close = fake_peer(network_with_an_evil_name)
    try:
        def run(*argv):
            out = p2p([*argv, "--peer", peer], tmp_path)
            assert "\u202e" not in out.stdout + out.stderr, (argv, out.stdout, out.stderr)
            return out

        out = run("search", "evil")
        assert (out.returncode, out.stdout) == (0, f"{EVIL_SHOWN}\t4\t{SHA[:12]}\t1\ts2\n")
        out = run("ls", "s2")
        assert (out.returncode, out.stdout) == (0, f"{EVIL_SHOWN}\t4\t{SHA[:12]}\n")
        out = run("status", "--files")
        assert f"  {EVIL_SHOWN}  4 B  sha256 {SHA[:12]}" in out.stdout.splitlines()
        assert f"downloading {EVIL_SHOWN} from s2: " in out.stdout
        out = run("get", EVIL)
        assert out.returncode == 0 and out.stdout == f"/downloads/{EVIL_SHOWN}\n"
        assert f"s3 sent a corrupt piece of {EVIL_SHOWN}; dropped" in out.stderr.splitlines()

        out = run("search", "evil", "--json")
        assert out.stdout.count("\n") == 1 and EVIL_SHOWN in out.stdout
        assert json.loads(out.stdout)["name"] == EVIL  # exact, for programs
        out = run("ls", "s2", "--json")
        assert json.loads(out.stdout)["files"] == [{"name": EVIL, "size": 4, "sha256": SHA}]

        # A refusal that quotes a name from the network.
        out = run("get", "other.txt")
        assert out.returncode == 1
        assert out.stderr == f"p2p get: the peer says: every holder of {EVIL_SHOWN} failed\n"
    finally:
        close()


COVERED = "searched 4 of 6 peers; no answer from s4 (and the peer below it)"


def part_of_the_network_is_silent(msg):
    match = {"name": "a.txt", "size": 4, "sha256": SHA, "holder": "s2", "host": "127.0.0.1",
             "port": 5002, "hops": 1, "root": "", "have": None}
    coverage = {"answered": 4, "total": 6, "complete": False, "unnamed": 0, "text": COVERED,
                "missed": [{"name": "s4", "reason": "silent"}]}
    if msg.verb == "FIND":
        found = [match] if "a" in msg.args[0] else []
        return [*(("ITEM", ["matches"], m) for m in found),
                ("OK", [], {"count": len(found), "coverage": coverage, "matches": []})]
    if msg.verb == "LS":
        return [("ERROR", ["incomplete"], f"s9 was not found among the peers that answered "
                                          f"(or shares nothing); {COVERED}")]
    return [
        ("NOTE", [], f"b.txt: not found among the peers that answered ({COVERED}); "
                     "waiting up to 20 s for the network to repair"),
        ("ERROR", ["incomplete"], f"b.txt was not found among the peers that answered; {COVERED}"),
    ]


def test_what_a_search_missed_is_said_and_nothing_found_there_exits_3(tmp_path):
    """
    Found among the peers that answered: exit 0, and one line on stderr
    saying who did not.  Nothing found while some did not answer: exit 3,
    never the definitive "not found" (exit 1); p2p ls and p2p get the same,
    get saying first what it waits for.
    """
    peer, close = fake_peer(part_of_the_network_is_silent)
    try:
        def run(*argv):
            out = p2p([*argv, "--peer", peer], tmp_path)
            assert "Traceback" not in out.stderr
            return out

        out = run("search", "a")
        assert (out.returncode, out.stdout) == (0, f"a.txt\t4\t{SHA[:12]}\t1\ts2\n")
        assert out.stderr == COVERED + "\n"
        out = run("search", "zzz")
        assert (out.returncode, out.stdout, out.stderr) == (
            3, "not found among the peers that answered\n", COVERED + "\n"
        )
        out = run("search", "zzz", "--json")
        assert out.returncode == 3 and out.stderr == COVERED + "\n"
        out = run("ls", "s9")
        assert (out.returncode, out.stderr) == (3, (
            "p2p ls: the peer says: s9 was not found among the peers that answered "
            f"(or shares nothing); {COVERED}\n"
        ))
        out = run("get", "b.txt")
        assert out.returncode == 3
        assert out.stderr.splitlines() == [
            f"b.txt: not found among the peers that answered ({COVERED}); "
            "waiting up to 20 s for the network to repair",
            f"p2p get: the peer says: b.txt was not found among the peers that answered; {COVERED}",
        ]
    finally:
        close()


def a_peer_still_registering(msg):
    if msg.verb == "STATUS":
        return [("OK", [], {"name": None, "host": None, "port": None, "root": False,
                            "joined": False, "max_neighbours": 2, "neighbours": [],
                            "shared": [], "transfers": [], "network_peers": None})]
    if msg.verb == "FETCH":
        return [("OK", [], {"path": "/downloads/empty.txt", "size": 0, "sha256": "e3" * 32,
                            "holder": None, "already": False, "notes": []})]
    return [("ERROR", ["failed"], "no")]


def test_no_none_where_a_user_reads(tmp_path):
    peer, close = fake_peer(a_peer_still_registering)
    try:
        status = p2p(["status", "--peer", peer], tmp_path)
        assert status.returncode == 0, status.stderr
        assert "None" not in status.stdout and "not given yet" in status.stdout
        got = p2p(["get", "empty.txt", "--peer", peer], tmp_path)
        assert got.returncode == 0 and "None" not in got.stderr
        assert got.stderr.startswith("verified 0 B, sha256 ")
    finally:
        close()


def test_a_search_of_several_words_needs_no_quotes(tmp_path):
    from p2pshare import wire

    asked = []

    def answer(msg):
        asked.append(wire.unquote_name(msg.args[0]))
        return [("OK", [], {"count": 0, "matches": [],
                            "coverage": {"complete": True, "text": ""}})]

    peer, close = fake_peer(answer)
    try:
        out = p2p(["search", "live", "ogg", "--peer", peer], tmp_path)
        assert (out.returncode, out.stdout) == (1, "not found\n"), out.stderr
        assert asked == ["live ogg"]
    finally:
        close()
