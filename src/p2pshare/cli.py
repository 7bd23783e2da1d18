"""
The C{p2p} command.

Exit status: 0 success, 1 the operation failed or found nothing, 2 bad
usage, 130 interrupted (Ctrl-C).  Errors are one sentence on stderr, never
a traceback, also when the reader of our output goes away (C{| head -1}).
Ctrl-C closes the connection to the peer, which stops what it was asked
to do (a download keeps what it has, and the same command resumes it).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Protocol, TextIO, TypeVar
from urllib.parse import SplitResult, urlsplit

from p2pshare import __version__, wire
from p2pshare.admission import (
    CONTROL_TOKEN,
    URL_LIFETIME,
    URL_LIFETIME_MAX,
    Secret,
    SecretError,
    authority,
    load_secret,
    new_secret_text,
)
from p2pshare.control_client import (
    TOKEN_ENV,
    Closed,
    NotAControlChannel,
    NoToken,
    address_of,
    control_request,
)
from p2pshare.control_client import meta_topology as plain_topology
from p2pshare.disk import human_size as _size
from p2pshare.disk import private_write
from p2pshare.display import json_text, leading_page, shown
from p2pshare.options import (
    connect_description,
    control_endpoint,
    endpoint_fields,
    listen_description,
    parse_rate,
)
from p2pshare.pieces import piece_count
from p2pshare.topo import TopoEntry, parse_topo, topo_text, tree_text
from p2pshare.wire import RemoteError, WireError

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

DEFAULT_META = "tcp:127.0.0.1:5000"
INCOMPLETE = 3  # exit status: nothing found among the peers that answered, some did not


class _Reactor(Protocol):
    """
    What L{on_twisted} asks of Twisted's reactor: the parts of
    C{IReactorCore} and C{IReactorFromThreads} it calls (Twisted's reactor
    provides both; a zope interface cannot say so in one type).
    """

    def callWhenRunning(
        self, callable: Callable[..., object], *args: object, **kwargs: object
    ) -> object: ...

    def callFromThread(
        self, callable: Callable[..., object], *args: object, **kwargs: object
    ) -> None: ...


class Failed(Exception):
    """
    The operation failed; the message is the one sentence to print, and
    C{status} the exit status (3: nothing found among the peers that
    answered, while part of the network did not).
    """

    def __init__(self, text: str, status: int = 1) -> None:
        super().__init__(text)
        self.status = status


def _topo_output(entries: list[TopoEntry]) -> str:
    return topo_text(entries) if entries else "empty network\n"


def cmd_topo(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        path = Path(args.data_dir) / "topo.txt"
        try:
            entries = parse_topo(path.read_text("utf-8"))
        except FileNotFoundError:
            raise Failed(f"{path} does not exist: is {args.data_dir} a p2pmeta data dir?") from None
        except ValueError as e:
            raise Failed(str(e)) from None
    else:
        secret = _secret(args.secret_file)

        def topology(reactor: _Reactor) -> Awaitable[list[TopoEntry]]:
            from p2pshare.client import meta_topology

            return meta_topology(reactor, args.meta, secret)

        if secret is None and args.meta.split(":", 1)[0] in ("tcp", "tcp6", "unix"):
            # An open network over a plain socket: no Twisted to load.
            entries = _talk(args.meta, "the metadata server",
                            lambda: plain_topology(args.meta))
        else:
            entries = _talk(args.meta, "the metadata server", lambda: on_twisted(topology))
    if args.tree and entries:
        sys.stdout.write(tree_text(entries))
    else:
        sys.stdout.write(_topo_output(entries))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _asked(args.peer, "STATUS", **({"files": 1} if args.files else {}))
    neighbours = status["neighbours"]
    role = "root" if status["root"] else ("joined" if status["joined"] else "joining")
    lines = [
        f"name: {_shown(status['name'] or '(not given yet: registering)')}",
        "address: " + (f"{_shown(status['host'])}:{status['port']}" if status["host"]
                       else f"port {status['port'] or '(not listening yet)'}, host not known yet"),
        _reach_line(status),
        f"state: {role}",
        "network: " + (
            f"{status['network_peers']:,} {'peer' if status['network_peers'] == 1 else 'peers'}"
            if status.get("network_peers") is not None
            else "size not known now (the metadata server did not say)"
        ),
        f"neighbours ({len(neighbours)} of at most {status['max_neighbours']}):",
    ]
    lines += [
        f"  {_shown(n['name'])} at {_shown(n['host'])}:{n['port']}" for n in neighbours
    ] or ["  (none)"]
    lines.append(_sharing_line(status))
    if status.get("ui"):
        lines.append(f"web page: {status['ui']} (p2p ui prints its login address)")
    relay = status.get("relay")
    if relay:
        cap = f"{_size(relay['rate'])}/s" if relay["rate"] else "no rate cap"
        lines.append(
            f"relay: splicing {relay['splicing']} of at most {relay['slots']} at once ({cap}); "
            f"{relay['spliced']:,} spliced, {relay['refused']:,} refused at the cap so far"
        )
    for f in status["shared"]:  # --files
        lines.append(f"  {_shown(f['name'])}  {_size(f['size'])}  sha256 {_shown(f['sha256'][:12])}")
    for t in status["transfers"]:
        share = f"{t['done'] / t['total']:.0%}" if t["total"] else "starting"
        what, way = ("downloading", "from") if t["direction"] == "down" else ("uploading", "to")
        who = f" {way} {_shown(t['peer'])}" if t["peer"] else ""
        lines.append(
            f"{what} {_shown(t['name'])}{who}: {_size(t['done'])} of {_size(t['total'])} ({share}), "
            f"{_size(t['rate'])}/s, {t.get('path', 'direct')}"
        )
    print("\n".join(lines))
    return 0


def _reach_line(status: dict[str, Any]) -> str:
    """
    Whether others can reach the peer, as the metadata server found.
    """
    mapped, problem = status.get("mapped"), status.get("mapping_problem")
    how = f" (the gateway forwards {_shown(mapped)})" if mapped else ""
    if status.get("reachable") is None:
        return "reachable: not known yet (the metadata server has not checked)"
    if status["reachable"]:
        return f"reachable: yes{how}"
    why = f"; port mapping: {_shown(problem)}" if problem else ""
    return ("reachable: no, a leaf (files move by reversed connections or a relay)" + why)


def _sharing_line(status: dict[str, Any]) -> str:
    """
    How much the peer shares, and how far it has indexed its share.
    """
    count = status.get("shared_count", len(status["shared"]))
    size = status.get("shared_bytes", sum(f["size"] for f in status["shared"]))
    line = f"sharing: {count:,} {'file' if count == 1 else 'files'}, {_size(size)}"
    indexing = status.get("indexing") or {}
    if not status.get("indexed", True) or indexing.get("files", 0) < indexing.get("of", 0):
        line += f" (indexing: {_indexed(indexing)})"
    if status.get("settling"):
        line += f"; {status['settling']:,} still being written (offered once unchanged for a moment)"
    return line


def _indexed(indexing: dict[str, int]) -> str:
    if not indexing.get("of"):
        return "looking through the folder"
    return (f"{indexing['files']:,} of {indexing['of']:,} files hashed, "
            f"{_size(indexing['bytes'])} of {_size(indexing['of_bytes'])}")


def cmd_search(args: argparse.Namespace) -> int:
    options = {"exact": 1} if args.exact else {}
    found = _asked(args.peer, "FIND", wire.quote_name(args.pattern), timeout=30, **options)
    matches = found["matches"]
    coverage = found.get("coverage") or {"complete": True}
    try:
        return _print_matches(args, matches, coverage)
    finally:
        if not coverage["complete"]:
            print(_shown(coverage["text"], sentence=True), file=sys.stderr)


def _print_matches(args: argparse.Namespace, matches: list[dict[str, Any]],
                   coverage: dict[str, Any]) -> int:
    """
    What a search found, on stdout; the exit status: 0 something found, 1
    nothing and every peer answered, 3 nothing among those that did.
    """
    if not matches:
        if coverage["complete"]:
            print("not found")
            return 1
        print("not found among the peers that answered")
        return INCOMPLETE
    if args.json:
        for m in _distinct_holders(matches):
            keys = ("name", "size", "sha256", "holder", "host", "port")
            print(json_text({k: m[k] for k in keys}))
        return 0
    tty = sys.stdout.isatty()
    rows = _by_content(_distinct_holders(matches), human=tty)
    if tty:
        rows.insert(0, ("PATH", "SIZE", "SHA-256", "HOLDERS", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=False)) + "  " + r[4])
    else:
        for r in rows:
            print("\t".join(r))
    return 0


def _distinct_holders(matches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Each holder's copy once (nearest first), however it came back.
    """
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for m in matches:
        key = (m["holder"], m["sha256"], m["name"])
        if key not in seen:
            seen.add(key)
            kept.append(m)
    return kept


def _by_content(matches: list[dict[str, Any]], human: bool) -> list[tuple[str, ...]]:
    """
    One row per distinct file (same SHA-256), under the name its nearest
    holder gives it: path, size, the SHA-256's first 12 digits, how many
    hold it, and who (a download in progress as C{s3 (partial, 40%)}).
    """
    files: dict[str, list[dict[str, Any]]] = {}
    for m in matches:
        files.setdefault(m["sha256"], []).append(m)
    rows: list[tuple[str, ...]] = []
    for sha, holders in files.items():
        first = holders[0]
        names = []
        for m in holders:
            name = _shown(m["holder"])
            if m.get("have") is not None:  # still downloading it: it serves what it has
                name += f" (partial, {m['have'] / piece_count(m['size']):.0%})"
            names.append(name)
        size = _size(first["size"]) if human else str(first["size"])
        rows.append(
            (_shown(first["name"]), size, _shown(sha[:12]), str(len(holders)), ", ".join(names))
        )
    return rows


def _shown(value: object, sentence: bool = False) -> str:
    """
    What the peer said (a name from the network, a sentence that quotes
    one) as it may be printed: L{shown}, so that nothing in it is invisible
    or turns the line around.  A C{sentence} keeps its backslashes as they
    are (the endpoints it quotes spell a colon C{\\:}).
    """
    text = str(value)
    if sentence:
        return "\\".join(shown(part) for part in text.split("\\"))
    return shown(text)


def _asked(peer: str, verb: str, *args: object, **options: Any) -> Any:
    """
    L{_ask}, and its failure shown with L{_shown}: the peer's refusal may
    quote a name from the network.
    """
    try:
        return _ask(peer, verb, *args, **options)
    except Failed as e:
        raise Failed(_shown(e, sentence=True), e.status) from None


def cmd_ls(args: argparse.Namespace) -> int:
    listed = _asked(args.peer, "LS", args.holder, timeout=60)
    files = listed["files"]
    if args.json:
        print(json_text({"peer": args.holder, "files": files}))
        return 0
    if not files:
        print(f"{args.holder} shares nothing")
        return 0
    tty = sys.stdout.isatty()
    rows = [
        (_shown(f["name"]), _size(f["size"]) if tty else str(f["size"]), _shown(f["sha256"][:12]))
        for f in files
    ]
    if tty:
        total = _size(sum(f["size"] for f in files))
        print(f"{args.holder} shares {len(files)} files ({total})")
        rows.insert(0, ("PATH", "SIZE", "SHA-256"))
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        for r in rows:
            print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}")
    else:
        for r in rows:
            print("\t".join(r))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    options: dict[str, object] = {}
    if args.output is not None:
        directory = Path(os.path.abspath(args.output))  # printed resolved: no a/../b
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise Failed(f"{_shown(args.output)} exists and is not a directory") from None
        except OSError as e:
            raise Failed(f"cannot make the folder {_shown(args.output)}: {_reason(e)}") from None
        options["dir"] = wire.quote_path(str(directory))
    if args.force:
        options["force"] = 1
    if args.sources != 4:
        options["sources"] = args.sources
    if args.holder is not None:
        options["from"] = args.holder
    if args.background:
        entry = _asked(args.peer, "QUEUE", wire.quote_name(args.name), **options)
        print(f"queued {_shown(entry['name'])} (download {entry['id']}); "
              "p2p downloads shows how it goes")
        return 0
    bar = ProgressBar(sys.stderr)
    try:
        result = _asked(
            args.peer, "FETCH", wire.quote_name(args.name),
            on_progress=bar.update, on_note=bar.note, timeout=120, **options,
        )
    finally:
        bar.close()
    for note in result.get("notes", []):
        print(_shown(note), file=sys.stderr)
    if "files" in result:
        return _folder_summary(result)
    sha = _shown(result["sha256"])
    if result["already"]:
        print(f"already here, identical (sha256 {sha})", file=sys.stderr)
    elif result.get("holder"):
        print(f"verified {_size(result['size'])} from {_shown(result['holder'])}, sha256 {sha}",
              file=sys.stderr)
    else:  # an empty file: nothing to fetch, nothing from anyone
        print(f"verified {_size(result['size'])}, sha256 {sha}", file=sys.stderr)
    print(_shown(result["path"]))
    return 0


def _folder_summary(result: dict[str, Any]) -> int:
    """
    What a folder's download kept and what failed, on stderr; its path
    on stdout.  Exit 0 only when every file was kept.
    """
    failed = result["failed"]
    new = result["kept"] - result["already"]
    print(
        f"kept {result['kept']:,} of {result['files']:,} files ({_size(result['bytes'])}): "
        f"{new:,} downloaded and verified, {result['already']:,} already here",
        file=sys.stderr,
    )
    for name, why in failed:
        print(f"failed: {_shown(name)}: {_shown(why, sentence=True)}", file=sys.stderr)
    print(_shown(result["path"]))
    if failed:
        raise Failed(f"{len(failed):,} of {result['files']:,} files could not be kept; "
                     "the same command fetches what is missing")
    return 0


def cmd_downloads(args: argparse.Namespace) -> int:
    listed = _asked(args.peer, "DOWNLOADS")
    entries = listed["downloads"]
    if args.json:
        for e in entries:
            print(json_text(e))
        return 0
    if not entries:
        print("no downloads")
        return 0
    for e in entries:
        print(_download_line(e))
    return 0


def _download_line(e: dict[str, Any]) -> str:
    name = _shown(e["name"])
    state = e["state"]
    if state == "running":
        share = f"{e['done'] / e['total']:.0%}" if e["total"] else "starting"
        line = f"{e['id']:>4}  running   {name}: {_size(e['done'])} of {_size(e['total'])} ({share})"
        if e["rate"]:
            line += f", {_size(e['rate'])}/s"
        if e["holders"]:
            line += f", from {e['holders']} {'holder' if e['holders'] == 1 else 'holders'}"
        if e.get("resumed_at"):
            line += f"; resumed at {_size(e['resumed_at'])}"
        return line
    if state == "done":
        return f"{e['id']:>4}  done      {name} -> {_shown(e['path'])} ({_shown(e['reason'])})"
    if state in ("queued", "paused"):
        done = f": {_size(e['done'])} of {_size(e['total'])} verified" if e["total"] else ""
        return f"{e['id']:>4}  {state:<9} {name}{done}"
    return f"{e['id']:>4}  {state:<9} {name}: {_shown(e['reason'], sentence=True)}"


def cmd_cancel(args: argparse.Namespace) -> int:
    result = _asked(args.peer, "CANCEL", wire.quote_name(args.name))
    for name in result["cancelled"]:
        print(f"cancelled {_shown(name)}")
    return 0


class ProgressBar:
    """
    Bytes, rate and time left: a bar redrawn in place on a terminal, a
    plain line every 10% otherwise.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.first: int | None = None
        self.shown = -1
        self.drawn = False

    def update(self, done: int, total: int, sources: int = 0) -> None:
        if self.first is None:
            self.first = done  # a resumed download starts part-way
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (done - self.first) / elapsed
        share = done / total if total else 1.0
        eta = (total - done) / rate if rate > 0 else float("inf")
        figures = (
            f"{_size(done)}/{_size(total)} {share:4.0%} {_size(rate)}/s"
            f" ETA {'--' if eta == float('inf') else f'{eta:.0f}s'}"
        )
        if sources:
            figures += f" from {sources} {'holder' if sources == 1 else 'holders'}"
        if self.tty:
            filled = int(share * 30)
            self.stream.write(f"\r[{'#' * filled}{' ' * (30 - filled)}] {figures}  ")
            self.stream.flush()
            self.drawn = True
        elif int(share * 10) > self.shown:
            self.shown = int(share * 10)
            print(f"progress: {figures}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """
        A line from the peer (what the download waits for), under the bar.
        """
        self.close()
        self.drawn = False
        print(_shown(text, sentence=True), file=self.stream, flush=True)

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
SHARE_WAIT = 30.0  # seconds p2p share waits for its peer to join
# The p2ppeer options p2p share passes on as they are given.
PASSED = ("name", "secret_file", "downloads", "upload_rate", "advertise", "max_neighbours",
          "max_uploads", "heartbeat", "manhole", "control", "ui", "relay_rate", "relay_slots")


def user_data_dir() -> Path:
    """
    Where C{p2p share} keeps its peer's state when not told: the per-user
    C{$XDG_STATE_HOME/p2pshare/peer} (C{~/.local/state/p2pshare/peer}),
    so that every C{p2p} command finds the peer from any directory.
    """
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "p2pshare" / "peer"


def _unix(path: Path) -> str:
    return "unix:" + str(path).replace(":", "\\:")


def cmd_share(args: argparse.Namespace) -> int:
    """
    Start a peer in the background that shares C{args.dir}, wait until it
    has joined and indexed its share, say where it is, and return.  It is
    twistd in its own session (the terminal's signals do not reach it),
    logging to its data dir; what it says when it cannot start is what
    this command says.
    """
    import subprocess

    folder = Path(args.dir).absolute()
    if not folder.is_dir():
        raise Failed(f"{args.dir} is not a directory")
    data = Path(args.data_dir).absolute() if args.data_dir is not None else user_data_dir()
    control = _unix(data / "control.sock")
    log = data / "p2ppeer.log"
    running = _status_of(control)
    if running is not None:
        raise Failed(
            f"a peer already runs from {data} ({running['name']}): "
            f"p2p stop --peer {control} first, or give another --data-dir"
        )
    _meta_reachable(args.meta)
    try:
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        before = log.stat().st_size if log.exists() else 0
        out = open(log, "ab")  # noqa: SIM115 (handed to the peer)
    except OSError as e:
        raise Failed(f"cannot use the data dir {data}: {(e.strerror or str(e)).lower()}") from None
    argv = [
        *TWISTD, "-n", f"--pidfile={data / 'p2ppeer.pid'}", f"--logfile={log}", "p2ppeer",
        "--shared", str(folder), "--data-dir", str(data), "--meta", args.meta, "--port", args.port,
        "--log-level", args.log_level,
    ]
    for flag in PASSED:
        if getattr(args, flag) is not None:
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    argv += [f"--{flag}" for flag in ("no-port-mapping", "relay")
             if getattr(args, flag.replace("-", "_"))]
    if args.control is not None:
        control = _client_control(control_endpoint(args.control, data))
        os.environ.setdefault(TOKEN_ENV, str(data / CONTROL_TOKEN))  # a TCP one asks for it
    with out:
        peer = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    progress = ShareProgress(sys.stderr)
    deadline = time.monotonic() + SHARE_WAIT
    while True:
        if peer.poll() is not None:
            progress.close()
            raise Failed(f"the peer did not start: {_last_words(log, before)}")
        status = _status_of(control)
        if status is not None and status.get("joined") and status.get("indexed", True):
            progress.close()
            print(f"sharing {folder} as {status['name']} ({status['host']}:{status['port']}): "
                  f"{_sharing_line(status).removeprefix('sharing: ')}")
            print(f"control: {control}")
            print(f"log: {log}")
            print(f"files page: http://{status['host']}:{status['port']}/")
            if status.get("ui"):
                print(f"web page: {status['ui']} (p2p ui prints its login address)")
            print("stop it with: p2p stop" + ("" if args.data_dir is None else f" --peer {control}"))
            return 0
        if status is not None and status.get("joined"):
            progress.show(status)  # joined, still indexing: that takes as long as it takes
        elif time.monotonic() > deadline:
            peer.terminate()
            progress.close()
            raise Failed(f"the peer did not join within {SHARE_WAIT:.0f} s; see {log}")
        time.sleep(0.2)  # a command waiting for a daemon: nothing to be woken by


def _client_control(listening: str) -> str:
    """
    Where the command reaches a control channel that listens at
    C{listening} (C{unix:PATH:mode=600}, C{tcp:PORT:interface=HOST}).
    """
    kind, *fields = endpoint_fields(listening)
    plain = [f for f in fields if "=" not in f]
    named = dict(f.split("=", 1) for f in fields if "=" in f)
    if kind == "unix":
        return _unix(Path(named.get("path") or plain[0]))
    host = named.get("interface", "127.0.0.1").replace(":", "\\:")
    return f"tcp:host={host}:port={named.get('port') or plain[0]}"


class ShareProgress:
    """
    How far a new peer has indexed its share, on one line redrawn on a
    terminal (nothing otherwise).
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.drawn = False

    def show(self, status: dict[str, Any]) -> None:
        if self.stream.isatty():
            self.stream.write(f"\rindexing the share: {_indexed(status.get('indexing') or {})}  ")
            self.stream.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _status_of(control: str) -> dict[str, Any] | None:
    """
    What the peer at C{control} says of itself, or None if none answers.
    """
    try:
        status: dict[str, Any] = control_request(control, "STATUS", timeout=2)
    except (OSError, Closed, RemoteError, NotAControlChannel, ValueError):
        return None
    return status


def _meta_reachable(meta: str) -> None:
    """
    Fail at once, in one sentence, when the metadata server cannot be
    reached (a peer would otherwise keep trying, in the background); with
    C{auto}, when none announces itself on the LAN.
    """
    if meta.strip() == "auto" or meta.strip().startswith("mdns:"):
        from p2pshare.lan import NotFound, find_meta

        try:
            find_meta()
        except NotFound as e:
            raise Failed(e.text) from None
        return
    try:
        family, address = address_of(meta)
    except ValueError:
        return  # an endpoint this check does not know: the peer will say
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(address)
    except OSError as e:
        raise Failed(
            f"cannot reach the metadata server at {meta}: {_reason(e)} (give --meta ENDPOINT)"
        ) from None


def _last_words(log: Path, offset: int) -> str:
    """
    What a peer that could not start said last, in one line.
    """
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "it said nothing"
    said = [line for line in lines if line.strip()]
    for line in reversed(said):
        if "peer stops: " in line:
            return line.split("peer stops: ", 1)[1].strip()
    for line in reversed(said):
        if "cannot start" in line or ": error:" in line or line.startswith("twistd"):
            return line.split("] ", 1)[-1].strip()
    return said[-1].split("] ", 1)[-1].strip() if said else "it said nothing"


def cmd_ui(args: argparse.Namespace) -> int:
    """
    The peer's web page: its address with a one-time login token (good
    for ten minutes; the browser then keeps a session).
    """
    url = _ask(args.peer, "UI")["url"]
    print(url)
    if args.open and not _open_privately(url):
        print("no web browser could be started here: open the address above in one",
              file=sys.stderr)
    return 0


def _open_privately(url: str) -> bool:
    """
    Open C{url} in a browser without putting its token on a command line,
    which every user of this machine may read (C{/proc/PID/cmdline}): the
    browser is given a page in a folder only we may read, which leads
    there (as Jupyter does).
    """
    import tempfile
    import webbrowser

    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(tempfile.mkdtemp(prefix="p2pshare-ui-",
                                   dir=runtime if runtime and os.path.isdir(runtime) else None))
    page = folder / "open.html"
    private_write(page, leading_page(url))
    return webbrowser.open(page.as_uri())


def cmd_stop(args: argparse.Namespace) -> int:
    result = _ask(args.peer, "STOP")
    print(f"{result['name']} is leaving the network")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from p2pshare.demo import run_demo

    return on_twisted(
        lambda reactor: run_demo(reactor, peers=args.peers, private=args.private, tls=args.tls)
    )


def cmd_secret(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        private_write(path, new_secret_text().encode(), exclusive=True)
    except FileExistsError:
        raise Failed(f"{path} exists: a network keeps its secret (remove it first to change it)") from None
    except OSError as e:
        raise Failed(f"cannot write {path}: {e.strerror}") from None
    print(f"wrote a new network secret to {path} (mode 0600): give it to every member, privately")
    return 0


def cmd_url(args: argparse.Namespace) -> int:
    secret = _secret(args.secret_file)
    assert secret is not None
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not (
        parts.path.startswith("/files/") or parts.path in ("/", "/index.json")
    ):
        raise Failed("give a file's URL, like http://HOST:PORT/files/NAME (or / or /index.json)")
    signed = secret.sign_path(parts.path, time.time(), args.lifetime, where=_where(parts))
    print(f"{parts.scheme}://{parts.netloc}{signed}")
    return 0


def _where(parts: SplitResult) -> str:
    """
    The holder a URL names, as a signature binds it (HOST:PORT).
    """
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Failed("the URL's port is not a number") from None
    return authority(parts.hostname or "", port)


def cmd_certs(args: argparse.Namespace) -> int:
    from p2pshare.tls import make_certs

    directory = Path(args.dir)
    if args.secret_file is not None:
        return _member_certs(directory, args)
    if not args.names:
        raise Failed("name the roles to make certificates for (p2p certs DIR meta s1 s2 ...), "
                     "or give --secret-file for a private network's member certificate")
    bad = [n for n in args.names if not wire.is_name(n)]
    if bad:
        raise Failed(f"{bad[0]!r} is not a name: letters, digits or _ - . @")
    written = make_certs(directory, args.names, args.host)
    for path in written:
        if path.name == "ca.pem":
            print(f"made a new network CA: {path} (trustRoots={path.parent}; ca.key stays with you)")
        elif path.name != "ca.key":
            print(f"wrote {path} (certificate and key, mode 0600)")
    return 0


def _member_certs(directory: Path, args: argparse.Namespace) -> int:
    """
    A private network's CA (made from its secret) and a member certificate
    signed by it, for curl: every connection of a private network is
    mutual TLS.
    """
    from p2pshare.tls import network_tls

    if args.names:
        raise Failed("with --secret-file, p2p certs writes one member certificate: no names")
    secret = _secret(args.secret_file)
    assert secret is not None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        network_tls(secret, args.host, directory)
    except OSError as e:
        raise Failed(f"cannot write in {directory}: {_reason(e)}") from None
    print(f"wrote {directory / 'trust' / 'ca.pem'} (the private network's CA, made from its secret)")
    print(f"wrote {directory / 'member.pem'} (a member's certificate and key, mode 0600)")
    print(f"curl --cacert {directory / 'trust' / 'ca.pem'} --cert {directory / 'member.pem'} "
          '"$(p2p url https://HOST:PORT/files/NAME --secret-file SECRET)"')
    return 0


def _secret(path: str | None) -> Secret | None:
    try:
        return load_secret(path)
    except SecretError as e:
        raise Failed(str(e)) from None


def _ask(peer: str, verb: str, *args: object, **options: Any) -> Any:
    """
    One request to the peer's control channel, its reply, or L{Failed}.
    """
    return _talk(peer, "the peer", lambda: control_request(peer, verb, *args, **options))


T = TypeVar("T")


def _talk(where: str, what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise Failed(f"cannot reach {what} at {where}: is it running? ({_reason(e)})") from None
    except TimeoutError:
        raise Failed(f"{what} at {where} did not answer in time") from None
    except (Closed, ConnectionResetError, BrokenPipeError):
        raise Failed(f"{what} at {where} closed the connection") from None
    except NotAControlChannel as e:
        raise Failed(f"{where} is {e.what}, not {e.wanted}{e.hint}") from None
    except NoToken as e:
        raise Failed(str(e)) from None
    except RemoteError as e:
        status = INCOMPLETE if e.code == wire.E_INCOMPLETE else 1
        raise Failed(f"{what} says: {e.text}", status) from None
    except WireError as e:
        # Our own request breaks the grammar: a bug of this command, not the endpoint's.
        raise Failed(f"this p2p cannot ask {what} that: {e}") from None
    except OSError as e:
        raise Failed(f"cannot reach {what} at {where}: {_reason(e)}") from None
    except ValueError as e:
        hint = ""
        if ":" not in where:
            hint = f" (a unix socket is given as unix:{where})"
        raise Failed(f"{where} is not a usable endpoint: {_reason(e)}{hint}") from None


def on_twisted(work: Callable[[_Reactor], Awaitable[T]]) -> T:
    """
    Run C{work(reactor)} on Twisted's reactor and return what it returns,
    for the commands that need Twisted (only they import it).  Ctrl-C
    cancels the work, so that what it started is stopped, and surfaces as
    L{KeyboardInterrupt}; a second Ctrl-C leaves at once.  Twisted's
    connection errors become the built-in ones the plain commands meet.
    """
    from twisted.internet import task
    from twisted.internet.defer import CancelledError, Deferred
    from twisted.internet.defer import TimeoutError as TwistedTimeout
    from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost

    outcome: list[tuple[bool, Any]] = []

    async def body(reactor: _Reactor) -> None:
        work_done: Deferred[T] = Deferred.fromCoroutine(work(reactor))  # type: ignore[arg-type]
        interrupted: list[bool] = []

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            if interrupted:  # a second Ctrl-C: leave now
                os._exit(130)
            interrupted.append(True)
            reactor.callFromThread(work_done.cancel)

        reactor.callWhenRunning(signal.signal, signal.SIGINT, on_sigint)
        try:
            outcome.append((True, await work_done))
        except CancelledError as e:
            outcome.append((False, KeyboardInterrupt() if interrupted else e))
        except TwistedTimeout:
            outcome.append((False, TimeoutError()))
        except ConnectError as e:
            outcome.append((False, ConnectionRefusedError(_reason(e))))
        except (ConnectionLost, ConnectionDone):
            outcome.append((False, Closed()))
        except Exception as e:
            outcome.append((False, e))

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(body(reactor)))
    except SystemExit:
        pass  # react always exits; what happened is in outcome
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _reason(e: BaseException) -> str:
    text = str(e).strip().rstrip(".")
    return text.splitlines()[0] if text else type(e).__name__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """
        A usage error: one sentence and status 2 (not argparse's usage dump).
        """
        self.exit(2, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str) -> str:
    """
    A message that quotes what the user typed, kept to one line.
    """
    return CONTROL.sub("?", text)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="p2p", description="Use a p2pshare network.")
    p.add_argument("--version", action="version", version=f"p2p (p2pshare) {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    topo = sub.add_parser("topo", help="print the topology in the topo.txt format")
    source = topo.add_mutually_exclusive_group()
    source.add_argument("--meta", default=None, help=f"metadata server endpoint, or auto: the one announced on the LAN (default {DEFAULT_META})")
    source.add_argument("--data-dir", default=None, help="read topo.txt from a p2pmeta data dir")
    topo.add_argument("--tree", action="store_true", help="draw it as an indented tree")
    topo.add_argument("--secret-file", default=None, help="the network secret (private networks)")
    topo.set_defaults(run=cmd_topo)

    search = sub.add_parser("search", help="every match in the whole network, ignoring case")
    search.add_argument(
        "pattern", nargs="+", help="words found anywhere in the path (any order: p2p search live "
        "ogg), a glob with * ? [ on the whole path, or sha256:HEX"
    )
    search.add_argument("--exact", action="store_true", help="the whole path exactly (any case)")
    search.add_argument("--json", action="store_true",
                        help="one JSON object per holder of each match, for scripts")
    search.add_argument("--peer", default=None, help="the peer's control endpoint (default: $P2P_PEER, ./p2ppeer-data/control.sock, or the per-user peer's)")
    search.set_defaults(run=cmd_search)

    ls = sub.add_parser("ls", help="the files a peer shares (found through the network by name)")
    ls.add_argument("holder", help="the peer's name (s1, s2, ...)")
    ls.add_argument("--peer", default=None, help="the peer's control endpoint (default: $P2P_PEER, ./p2ppeer-data/control.sock, or the per-user peer's)")
    ls.add_argument("--json", action="store_true", help='{"peer": NAME, "files": [...]}')
    ls.set_defaults(run=cmd_ls)

    get = sub.add_parser("get", help="find, download, verify and keep a file or a folder")
    get.add_argument("name", help="a file's path (or a bare file name that only one path ends in), "
                     "a FOLDER/, or sha256:HEX (12 to 64 hex digits) for a file by its content")
    get.add_argument("--peer", default=None, help="the peer's control endpoint (default: $P2P_PEER, ./p2ppeer-data/control.sock, or the per-user peer's)")
    get.add_argument("-o", "--output", default=None, help="directory to keep it in (default: the peer's downloads)")
    get.add_argument("--force", action="store_true", help="replace an existing different file")
    get.add_argument("--sources", type=int, default=4,
                     help="holders to fetch from at once (default 4)")
    get.add_argument("--from", dest="holder", default=None, metavar="HOLDER",
                     help="fetch only from this peer")
    get.add_argument("--background", action="store_true",
                     help="queue it in the peer and return at once (p2p downloads shows it)")
    get.set_defaults(run=cmd_get)

    downloads = sub.add_parser("downloads", help="the peer's download queue: queued, running, "
                               "finished and failed")
    downloads.add_argument("--peer", default=None, help="the peer's control endpoint (default: $P2P_PEER, ./p2ppeer-data/control.sock, or the per-user peer's)")
    downloads.add_argument("--json", action="store_true", help="one JSON object per download")
    downloads.set_defaults(run=cmd_downloads)

    cancel = sub.add_parser("cancel", help="cancel a queued or running download (or all under a FOLDER/)")
    cancel.add_argument("name", help="the name it was queued under, or a FOLDER/")
    cancel.add_argument("--peer", default=None, help="the peer's control endpoint (default: $P2P_PEER, ./p2ppeer-data/control.sock, or the per-user peer's)")
    cancel.set_defaults(run=cmd_cancel)

    status = sub.add_parser("status", help="a peer's name, neighbours, share and transfers")
    status.add_argument("--peer", default=None, help="the peer's control endpoint (default: $P2P_PEER, ./p2ppeer-data/control.sock, or the per-user peer's)")
    status.add_argument("--files", action="store_true", help="list every shared file")
    status.set_defaults(run=cmd_status)

    share = sub.add_parser("share", help="start a peer in the background that shares DIR")
    share.add_argument("dir", help="the folder to share, all of it")
    share.add_argument("--meta", default="tcp:127.0.0.1:5000",
                       help="the metadata server, or auto: the one announced on the LAN "
                            "(default tcp:127.0.0.1:5000)")
    share.add_argument("--port", default="tcp:5001", help="where other peers reach it (default tcp:5001)")
    share.add_argument("--data-dir", default=None,
                       help="the peer's state, log and control socket (default: the per-user "
                            "$XDG_STATE_HOME/p2pshare/peer, ~/.local/state/p2pshare/peer)")
    share.add_argument("--name", default=None, help="this peer's name (default: assigned)")
    share.add_argument("--secret-file", default=None, help="the network secret (private networks)")
    share.add_argument("--downloads", default=None, help="where downloads land (default: DIR)")
    share.add_argument("--upload-rate", default=None,
                       help="cap on all uploads, bytes/s with K, M, G (powers of 1024)")
    share.add_argument("--advertise", default=None, help="the host other peers should use")
    share.add_argument("--max-neighbours", type=int, default=None,
                       help="neighbours before newcomers are referred on (default 2)")
    share.add_argument("--max-uploads", type=int, default=None, help="files served at once (default 16)")
    share.add_argument("--heartbeat", type=float, default=None,
                       help="seconds between heartbeats (default 5)")
    share.add_argument("--manhole", default=None, help="an SSH manhole on loopback (ENDPOINT)")
    share.add_argument("--ui", default=None,
                       help="the web page's endpoint (default a free loopback port), or off")
    share.add_argument("--control", default=None,
                       help="the control endpoint (default unix:DATA-DIR/control.sock)")
    share.add_argument("--no-port-mapping", action="store_true",
                       help="do not ask the gateway (UPnP) to forward --port")
    share.add_argument("--relay", action="store_true",
                       help="splice transfers between peers that cannot reach each other")
    share.add_argument("--relay-rate", default=None,
                       help="with --relay: cap on all splices, bytes/s with K, M, G")
    share.add_argument("--relay-slots", type=int, default=None,
                       help="with --relay: transfers spliced at once (default 8)")
    share.add_argument("--log-level", default="info", choices=["debug", "info", "warn"],
                       help="what the log file gets (default info)")
    share.set_defaults(run=cmd_share)

    ui = sub.add_parser("ui", help="print the address of the peer's web page, with a login token")
    ui.add_argument("--peer", default=None, help="the peer's control endpoint (default: $P2P_PEER, ./p2ppeer-data/control.sock, or the per-user peer's)")
    ui.add_argument("--open", action="store_true", help="open it in a web browser too")
    ui.set_defaults(run=cmd_ui)

    stop = sub.add_parser("stop", help="the peer leaves the network gracefully and exits")
    stop.add_argument("--peer", default=None, help="the peer's control endpoint (default: $P2P_PEER, ./p2ppeer-data/control.sock, or the per-user peer's)")
    stop.set_defaults(run=cmd_stop)

    demo = sub.add_parser("demo", help="run a local demonstration network")
    demo.add_argument("--peers", type=int, default=5, help="how many peers (default 5)")
    demo.add_argument("--private", action="store_true", help="a private network: a shared secret")
    demo.add_argument("--tls", action="store_true", help="every link encrypted with a private CA")
    demo.set_defaults(run=cmd_demo)

    secret = sub.add_parser("secret", help="write a new network secret to FILE (for --secret-file)")
    secret.add_argument("file", help="where to write it (must not exist)")
    secret.set_defaults(run=cmd_secret)

    certs = sub.add_parser("certs", help="make a network CA (once) and a certificate per role")
    certs.add_argument("dir", help="where the CA and certificates live")
    certs.add_argument("names", nargs="*", help="one certificate per name (e.g. meta s1 s2)")
    certs.add_argument("--secret-file", default=None,
                       help="a private network's secret: write its CA and one member certificate "
                            "(for curl) instead")
    certs.add_argument("--host", action="append", default=[],
                       help="an address or host name the roles are reached at (repeatable; "
                            "localhost, 127.0.0.1 and ::1 always)")
    certs.set_defaults(run=cmd_certs)

    url = sub.add_parser("url", help="sign a file's URL so that curl may fetch it from a private network")
    url.add_argument("url", help="http://HOST:PORT/files/NAME (NAME percent-encoded)")
    url.add_argument("--secret-file", required=True, help="the network secret")
    url.add_argument("--lifetime", type=int, default=URL_LIFETIME,
                     help=f"seconds the signature holds (default {URL_LIFETIME})")
    url.set_defaults(run=cmd_url)
    return p


INTERRUPTED = {
    "get": "interrupted; the peer stopped the download and keeps what it has: "
           "the same command resumes it",
}


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """
    What argparse cannot check: a usage error exits 2 with one sentence.
    """
    for field in ("name", "pattern"):
        value = getattr(args, field, None)
        if value is None:
            continue
        try:
            wire.unquote_name(wire.quote_name(value))
        except (WireError, UnicodeError):
            p.error(f"the {field} cannot be empty or hold control characters")
        if wire.FILE(wire.quote_name(value)) is not None:
            p.error(f"the {field} is too long ({len(value.encode())} bytes)")
    if args.command in ("get", "cancel"):
        _check_name(p, args.name)
    for field in ("peer", "meta", "data_dir", "output", "control", "downloads"):
        value = getattr(args, field, None)
        if value is not None and not value.strip():
            p.error(f"{_flag(field)} cannot be empty")
    _check_values(p, args)
    if args.command == "get" and not 1 <= args.sources <= 64:
        p.error("--sources is from 1 to 64")
    if args.command == "ls" and not wire.is_name(args.holder):
        p.error("the holder is a peer's name: 1 to 64 letters, digits or _ - . @")
    if args.command == "get" and args.holder is not None and not wire.is_name(args.holder):
        p.error("--from names a peer: 1 to 64 letters, digits or _ - . @")
    if args.command == "demo" and not 1 <= args.peers <= 50:
        p.error("--peers is from 1 to 50")
    if args.command == "url" and not 1 <= args.lifetime <= URL_LIFETIME_MAX:
        p.error(f"--lifetime is from 1 to {URL_LIFETIME_MAX} seconds")


def _check_name(p: argparse.ArgumentParser, name: str) -> None:
    """
    What p2p get and cancel take: C{sha256:} and 12 to 64 hex digits, or
    a path a peer could share (a folder ends in C{/}).
    """
    from p2pshare.peer.share import get_problem

    problem = get_problem(name)
    if problem is not None:
        p.error(problem)


def _check_values(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """
    Every option value, read as the peer would read it: a malformed one
    is a usage error here rather than a failure later.
    """
    try:
        if getattr(args, "meta", None) is not None:
            args.meta = connect_description(args.meta)
        if getattr(args, "peer", None) is not None:
            args.peer = _peer_endpoint(args.peer)
            address_of(args.peer)
        if args.command == "share":
            args.port = listen_description(args.port)
            if args.upload_rate is not None:
                parse_rate(args.upload_rate)
            if args.relay_rate is not None:
                try:
                    parse_rate(args.relay_rate)
                except ValueError as e:
                    raise ValueError(f"--relay-rate: {e}") from None
            if args.manhole is not None:
                listen_description(args.manhole, "--manhole")
            if args.ui is not None and args.ui != "off":
                listen_description(args.ui, "--ui")
            if args.control is not None:
                control_endpoint(args.control, Path("."))  # a unix socket, or loopback TCP
        if args.command == "url":
            parts = urlsplit(args.url)
            _ = parts.port  # a port that is no number raises here
    except ValueError as e:
        p.error(str(e))
    if args.command != "share":
        return
    if args.max_neighbours is not None and not 1 <= args.max_neighbours <= wire.NEIGHBOURS_MAX:
        p.error(f"--max-neighbours is from 1 to {wire.NEIGHBOURS_MAX}")
    if args.max_uploads is not None and not 1 <= args.max_uploads <= 10000:
        p.error("--max-uploads is from 1 to 10000")
    if args.relay_slots is not None and not 1 <= args.relay_slots <= 1000:
        p.error("--relay-slots is from 1 to 1000")
    if args.heartbeat is not None and not wire.BEAT_MIN <= args.heartbeat <= wire.BEAT_MAX:
        p.error(f"--heartbeat is from {wire.BEAT_MIN} to {wire.BEAT_MAX:.0f} seconds")
    if args.name is not None and not wire.is_name(args.name):
        p.error("--name is 1 to 64 letters, digits or _ - . @")
    if args.advertise is not None and wire.HOST(args.advertise) is not None:
        p.error("--advertise is a host name or an IP address")


def _flag(field: str) -> str:
    return "-o" if field == "output" else "--" + field.replace("_", "-")


def find_peer() -> str:
    """
    The peer a command talks to when C{--peer} is not given: C{$P2P_PEER},
    else C{./p2ppeer-data/control.sock} if it is there, else the per-user
    peer's socket (L{user_data_dir}) if it is there.
    """
    named = os.environ.get("P2P_PEER", "").strip()
    if named:
        return _peer_endpoint(named)
    for sock in (Path("p2ppeer-data") / "control.sock", user_data_dir() / "control.sock"):
        if sock.is_socket() and _ours(sock):
            return _unix(sock.absolute())
    raise Failed(
        "no peer found: $P2P_PEER is not set, and neither ./p2ppeer-data/control.sock nor "
        f"{user_data_dir() / 'control.sock'} exists; start one with p2p share DIR, or give --peer"
    )


def _ours(sock: Path) -> bool:
    """
    Is this socket our user's (or root's)?  Another user's socket in a
    shared folder is not our peer, whatever its name: its answers would be
    theirs.
    """
    try:
        return sock.stat().st_uid in (os.getuid(), 0)
    except OSError:
        return False


def _peer_endpoint(value: str) -> str:
    """
    C{--peer} as given, or C{unix:PATH} when it is a path (what people
    type first): it starts with C{/}, C{./}, C{../} or C{~}, or names an
    existing socket.
    """
    value = value.strip()
    if value.startswith(("/", "./", "../", "~")) or Path(value).is_socket():
        return _unix(Path(value).expanduser().absolute())
    return value


def _silence_stdout() -> None:
    """
    Our reader went away: nothing more can be said there, and Python must
    not complain when it flushes at exit.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> None:
    # Started from a background job (nohup, cron, a CI runner) a command
    # inherits SIGINT ignored, and Python keeps it so: Ctrl-C and kill
    # -INT must still stop it (exit 130).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    p = parser()
    args = p.parse_args(argv)
    if getattr(args, "meta", "") is None and getattr(args, "data_dir", None) is None:
        args.meta = DEFAULT_META
    if isinstance(getattr(args, "pattern", None), list):
        args.pattern = " ".join(args.pattern)  # the words of a search, however they were quoted
    check_args(p, args)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        if hasattr(args, "peer") and args.peer is None:
            args.peer = find_peer()
        code = run(args)
    except KeyboardInterrupt:
        print(f"p2p {args.command}: {INTERRUPTED.get(args.command, 'interrupted')}", file=sys.stderr)
        code = 130
    except Failed as e:
        print(f"p2p {args.command}: {one_line(str(e))}", file=sys.stderr)
        code = e.status
    except BrokenPipeError:
        _silence_stdout()
        code = 1
    except Exception as e:  # one sentence, never a traceback
        print(f"p2p {args.command}: failed: {one_line(_reason(e))}", file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = code or 1
    if code:
        raise SystemExit(code)
