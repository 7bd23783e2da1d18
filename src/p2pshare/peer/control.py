"""
The peer's local control channel, which the C{p2p} command speaks: the
same line format, one request and one C{OK <json>} or C{ERROR} reply.
Lists of any length come before the C{OK} as C{ITEM LIST <json>} lines,
one entry each (a shared file, a match, a neighbour), so that no line
outgrows the wire's limit however large the share or the search;
C{FETCH} sends C{PROGRESS done total} lines while it runs.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.admission import CONTROL_IDENTITY, CONTROL_TOKEN, Secret, new_secret_text
from p2pshare.channel import ChannelFactory, LineChannel
from p2pshare.disk import private_write
from p2pshare.peer.coverage import Found
from p2pshare.peer.download.transfer import Fetched, FetchError
from p2pshare.peer.files import FolderFetched
from p2pshare.peer.queue import DownloadQueue
from p2pshare.peer.share import EXACT, WORDS, is_pattern
from p2pshare.wire import Message

if TYPE_CHECKING:
    from p2pshare.peer.download.attempt import Progress
    from p2pshare.peer.files import Note

_T = TypeVar("_T")


class ISearcher(Protocol):
    def start(self, pattern: str, *, exact: int = 0) -> Deferred[Found]: ...


class IListings(Protocol):
    async def listing(self, holder: str) -> list[dict[str, object]]: ...


class IControlled(Protocol):
    """
    What a C{p2p} command may ask of its peer: all a control channel sees
    of it.
    """

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def search(self) -> ISearcher: ...

    @property
    def files(self) -> IListings: ...

    @property
    def queue(self) -> DownloadQueue: ...

    @property
    def peer_name(self) -> str | None: ...

    def status(self, listed: bool = False) -> dict[str, object]: ...

    def network_size(self) -> Deferred[tuple[int | None, int | None]]: ...

    def stop_requested(self) -> None: ...

    async def fetch(
        self, name: str, directory: Path | None = ..., force: bool = ...,
        progress: Progress | None = ..., *, sources: int = ..., only: str | None = ...,
        note: Note | None = ...,
    ) -> Fetched | FolderFetched: ...


PROGRESS_EVERY = 0.1  # seconds between PROGRESS lines, at least
QUEUED_NAMES_MAX = 1500  # JSON bytes of a queued name and folder: its ITEM line fits


class _FetchAsked(TypedDict):
    """
    What a C{FETCH} or C{QUEUE} asks for (L{ControlProtocol._fetch_options}).
    """

    name: str
    directory: Path | None
    force: bool
    sources: int
    only: str | None


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class ControlProtocol(LineChannel):
    """
    One C{p2p} command.  On a unix socket (mode 0600 in the data dir) the
    command must run as the peer's own user (or root): the kernel says who
    connected.  On a loopback TCP port it must first prove it holds the
    token in the data dir (the challenge-response of private networks,
    with that token as the secret): either way it is the peer's own user,
    and may ask for anything that user could do, such as a download into
    any folder it can write.
    """

    def __init__(self, node: IControlled, token: Secret | None = None,
                 page: IPage | None = None) -> None:
        super().__init__(node.clock)
        self.node = node
        self.secret = token
        self.page = page
        self._running: set[Deferred[Any]] = set()  # requests to cancel if we are left

    def identity(self) -> tuple[str, str]:
        return CONTROL_IDENTITY

    _stranger = False  # another user: nothing it says is read

    def connectionMade(self) -> None:
        stranger = _other_user(self.transport)
        if stranger is not None:
            self._stranger = True
            self.log.warn("refused a control connection from {who}", who=stranger)
            self.sendError(wire.E_AUTH_FAILED, "this peer takes commands from its own user only")
            self.close()
            return
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if not self._stranger:
            super().dataReceived(data)

    def idle_deadline(self) -> float | None:
        return None  # a local command may wait for a long download

    def reply(self, summary: dict[str, object], **lists: Iterable[object]) -> None:
        """
        Send each entry of each list as an C{ITEM} line, then C{OK summary}
        (which names each list, empty: the client fills it in).
        """
        if not self.connected:
            return
        for name, entries in lists.items():
            for entry in entries:
                self.send("ITEM", name, text=_json(entry))
        self.send("OK", text=_json({**summary, **{name: [] for name in lists}}))

    def msg_STATUS(self, msg: Message) -> None:
        def answer(_: object) -> None:
            # Counts and totals always; the list of files on request.
            status = self.node.status(listed=msg.options.get("files") == "1")
            status["ui"] = self.page.address if self.page is not None else None
            lists: dict[str, Any] = {k: status.pop(k) for k in ("neighbours", "shared", "transfers")}
            self.reply(status, **lists)

        # The network's size as the metadata server says it now (the last
        # it said, when it is away): a moment's wait at most.
        self.node.network_size().addCallback(answer).addErrback(self._failed)

    def msg_UI(self, msg: Message) -> None:
        url = self.page.login_url() if self.page is not None else None
        if url is None:
            why = "is off (--ui off)" if self.page is None else "is not listening yet"
            self.sendError(wire.E_NOT_FOUND, f"this peer's web page {why}")
            return
        self.send("OK", text=_json({"url": url}))

    def msg_STOP(self, msg: Message) -> None:
        self.send("OK", text=_json({"name": self.node.peer_name}))
        self.node.clock.callLater(0, self.node.stop_requested)

    def msg_FIND(self, msg: Message) -> None:
        pattern = wire.unquote_name(msg.args[0])

        def found(result: Found) -> None:
            self.reply(
                {"count": len(result.matches), "coverage": result.coverage.as_dict()},
                matches=(asdict(m) for m in result.matches),
            )

        d = Deferred.fromCoroutine(find(self.node.search, pattern, msg.options.get("exact") == "1"))
        self._running.add(d)
        d.addBoth(self._done, d).addCallback(found).addErrback(self._failed)

    def msg_LS(self, msg: Message) -> None:
        holder = msg.args[0]

        def listed(files: list[dict[str, object]]) -> None:
            self.reply({"peer": holder, "count": len(files)}, files=files)

        d = Deferred.fromCoroutine(self.node.files.listing(holder))
        self._running.add(d)
        d.addBoth(self._done, d).addCallback(listed).addErrback(self._failed)

    def _fetch_options(self, msg: Message) -> _FetchAsked | None:
        """
        What a C{FETCH} or C{QUEUE} asks for, checked; None when refused
        (the error is sent).
        """
        directory = msg.options.get("dir")
        path = Path(wire.unquote_name(directory)) if directory else None
        if path is not None and not path.is_absolute():
            self.sendError(wire.E_BAD_ARGS, f"{path} is not an absolute path")
            return None
        sources = msg.options.get("sources", "4")
        holder = msg.options.get("from")
        if not sources.isdigit() or not 1 <= int(sources) <= 64:
            self.sendError(wire.E_BAD_ARGS, "sources is from 1 to 64")
            return None
        if holder is not None and not wire.is_name(holder):
            self.sendError(wire.E_BAD_ARGS, "from names a peer")
            return None
        name = wire.unquote_name(msg.args[0])
        return {"name": name, "directory": path, "force": msg.options.get("force") == "1",
                "sources": int(sources), "only": holder}

    def msg_FETCH(self, msg: Message) -> None:
        asked = self._fetch_options(msg)
        if asked is None:
            return
        last = [-PROGRESS_EVERY]

        def progress(done: int, total: int, sending: int = 0) -> None:
            # At most ten lines a second: one per piece cost a 512 MiB
            # download a tenth of its time, here and in p2p.
            now = self.node.clock.seconds()
            if self.connected and (now - last[0] >= PROGRESS_EVERY or done == total):
                last[0] = now
                self.send("PROGRESS", done, total, sources=sending or None)

        def fetched(result: Fetched | FolderFetched) -> None:
            # What happened on the way (and a folder's failures) as lists:
            # a line each, however many and however long their names.
            summary = {**asdict(result), "path": str(result.path)}
            lists = {k: summary.pop(k) for k in ("notes", "failed") if k in summary}
            self.reply(summary, **lists)

        d = Deferred.fromCoroutine(
            self.node.fetch(
                asked["name"], asked["directory"], asked["force"], progress,
                sources=asked["sources"], only=asked["only"], note=self._note,
            )
        )
        self._running.add(d)
        d.addBoth(self._done, d).addCallback(fetched).addErrback(self._failed)

    def msg_QUEUE(self, msg: Message) -> None:
        asked = self._fetch_options(msg)
        if asked is None:
            return
        if len(_json([asked["name"], str(asked["directory"] or "")])) > QUEUED_NAMES_MAX:
            self.sendError(wire.E_BAD_ARGS, "the name and the folder together are too long "
                           "for the queue; use p2p get without --background")
            return
        try:
            entry = self.node.queue.add(
                asked["name"], asked["directory"], asked["force"], asked["sources"], asked["only"]
            )
        except FetchError as e:
            self.sendError(e.code, e.text)
            return
        self.send("OK", text=_json(asdict(entry)))

    def msg_DOWNLOADS(self, msg: Message) -> None:
        entries = list(self.node.queue.listing())
        self.reply({"count": len(entries)}, downloads=entries)

    def msg_CANCEL(self, msg: Message) -> None:
        name = wire.unquote_name(msg.args[0])
        cancelled = self.node.queue.cancel(name)
        if not cancelled:
            self.sendError(wire.E_NOT_FOUND, f"no queued or running download of {name}")
            return
        self.send("OK", text=_json({"cancelled": [e.name for e in cancelled]}))

    def _note(self, text: str) -> None:
        if self.connected:
            self.send("NOTE", text=text)

    def _done(self, result: _T, d: Deferred[Any]) -> _T:
        self._running.discard(d)
        return result

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # The command went away (Ctrl-C, killed): what it asked for stops.
        running, self._running = self._running, set()
        for d in running:
            d.cancel()
        super().connectionLost(reason)

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            self.log.info("a request was stopped: the command that asked for it went away")
            return
        if failure.check(FetchError):
            code, text = failure.value.code, failure.value.text
        else:
            self.log.failure("control request failed", failure)
            code, text = wire.E_FAILED, failure.getErrorMessage() or "the request failed"
        if self.connected:
            self.sendError(code, text)


async def find(search: ISearcher, pattern: str, exact: bool = False) -> Found:
    """
    A search as C{p2p search} makes it: a glob that matches nothing is
    tried again as words, so that a name holding C{[ ] ? *} is found by
    typing it.
    """
    found: Found = await search.start(pattern, exact=EXACT if exact else 0)
    if not found.matches and not exact and is_pattern(pattern):
        found = await search.start(pattern, exact=WORDS)
    return found


def _other_user(transport: ITransport | None) -> str | None:
    """
    Who connected to a unix socket, if it is neither this process's user
    nor root (then L{None}); L{None} too where the kernel cannot say.
    """
    sock = getattr(transport, "socket", None)
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    pid, uid, _ = struct.unpack("3i", creds)
    if uid in (os.getuid(), 0):
        return None
    return f"user {uid} (pid {pid})"


class IPage(Protocol):
    """
    The peer's web page, as a command sees it.
    """

    @property
    def address(self) -> str | None: ...

    def login_url(self) -> str | None: ...


class ControlFactory(ChannelFactory):
    """
    @param token: the secret a TCP control connection must prove it holds
        (L{None} on a unix socket, guarded by its mode and owner).
    @param page: the peer's web page, unless it has none (C{--ui off}).
    """

    def __init__(self, node: IControlled, token: Secret | None = None,
                 page: IPage | None = None) -> None:
        super().__init__(node)
        self.token = token
        self.page = page

    def buildProtocol(self, addr: object) -> ControlProtocol:
        proto = ControlProtocol(self.owner, self.token, self.page)
        proto.factory = self
        return proto


def control_token(data_dir: Path) -> Secret:
    """
    A new token for a TCP control port, written to C{DATA-DIR/control.token}
    (mode 0600) for the C{p2p} command to read: made afresh at every start,
    so a copy that leaked stops working when the peer restarts.
    """
    text = new_secret_text()
    private_write(data_dir / CONTROL_TOKEN, text.encode("ascii"))
    return Secret(text.strip().encode("ascii"))
