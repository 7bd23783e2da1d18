"""
Downloading a file from its holders, verified before it is kept.

The data streams into a hidden temporary file beside the target
(C{.NAME.part}), hashed as it arrives.  An interrupted transfer keeps its
prefix and goes on from there with a C{Range} request, from the next
holder or the same one.  Once all bytes are in, size and SHA-256 must match
what the search reported; then the file is fsynced, moved into place
without overwriting anything (unless asked to), and the directory fsynced.
Data that fails the check is thrown away and the next holder is tried.  A
half-written download never appears under the final name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from p2pshare import wire
from p2pshare.admission import Secret
from p2pshare.common import fsync_directory
from p2pshare.peer.share import CHUNK, is_shareable_name, sha256_of
from p2pshare.wire import Match

Progress = Callable[[int, int], None]
RunBlocking = Callable[..., Deferred[Any]]

HEADER_TIMEOUT = 30.0
IDLE_TIMEOUT = 30.0
ROUNDS = 3  # times through the list of holders before giving up
DISTRUST_FOR = 600.0  # seconds a holder that served corrupt data is passed over


class FetchError(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class HolderFailed(Exception):
    """
    One holder could not (or not fully) deliver; try another.
    """


@dataclass
class Fetched:
    path: Path
    size: int
    sha256: str
    holder: str | None  # None when the file was already there
    already: bool = False


def url_for(
    m: Match, secret: Secret | None = None, now: float = 0.0, scheme: str = "http"
) -> bytes:
    """
    Where C{m} is served; in a private network, a URL signed with the
    network secret (the holder answers 403 to anything else).
    """
    host = f"[{m.host}]" if ":" in m.host else m.host
    path = f"/files/{wire.quote_name(m.name)}"
    if secret is not None:
        path = secret.sign_path(path, now)
    return f"{scheme}://{host}:{m.port}{path}".encode("ascii")


def _prefix_state(part: Path, size: int) -> tuple[int, Any]:
    """
    How much of C{part} can be kept, and the hash of that prefix.
    """
    hasher = hashlib.sha256()
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        return 0, hasher
    if have > size:
        part.unlink()
        return 0, hasher
    with open(part, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return have, hasher


def _keep(part: Path, target: Path, replace: bool) -> None:
    with open(part, "rb") as f:
        os.fsync(f.fileno())
    if replace:
        os.replace(part, target)
    else:
        os.link(part, target)  # fails if target exists: nothing is overwritten
        os.unlink(part)
    fsync_directory(target.parent)


class _Receiver(Protocol):
    """
    Writes a response body to the part file, hashing it, and fires
    C{done} with the reason the body ended.
    """

    def __init__(
        self, f: Any, hasher: Any, clock: IReactorTime, on_bytes: Callable[[int], None]
    ) -> None:
        self.f = f
        self.hasher = hasher
        self.clock = clock
        self.on_bytes = on_bytes
        self.done: Deferred[BaseException] = Deferred()
        self._idle: IDelayedCall | None = None
        self.failed: OSError | None = None

    def connectionMade(self) -> None:
        self._idle = self.clock.callLater(IDLE_TIMEOUT, self._stalled)

    def _stalled(self) -> None:
        self._idle = None
        transport: Any = self.transport
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        # Hashing here, on the reactor thread, costs less than it seems:
        # writing to the page cache is slower than SHA-256 (see
        # docs/performance.rst), and a thread for both doubled the memory.
        try:
            self.f.write(data)
        except OSError as e:
            self.failed = e
            transport: Any = self.transport
            transport.stopProducing()
            return
        self.hasher.update(data)
        self.on_bytes(len(data))
        if self._idle is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        # The reason, as a value: not an error here.
        self.done.callback(self.failed or reason.value)


class Downloader:
    log = Logger()

    def __init__(
        self,
        agent: IAgent,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        secret: Secret | None = None,
        scheme: str = "http",
    ) -> None:
        self.agent = agent
        self.clock = clock
        self.run_blocking = run_blocking
        self.secret = secret
        self.scheme = scheme
        # Holders that served data failing its SHA-256: name -> until when
        # they are passed over (while any other holder is left).
        self.distrusted: dict[str, float] = {}

    async def fetch(
        self,
        matches: list[Match],
        directory: Path,
        force: bool = False,
        progress: Progress | None = None,
    ) -> Fetched:
        """
        Download the file that C{matches} (nearest first) describe into
        C{directory}.
        """
        if not matches:
            raise FetchError(wire.E_NOT_FOUND, "not found")
        name, size, sha = matches[0].name, matches[0].size, matches[0].sha256
        if not is_shareable_name(name):
            raise FetchError(wire.E_BAD_ARGS, f"{name!r} is not a file name this peer keeps")
        # Holders of another version of the same name are not mixed in,
        # and holders caught serving corrupt data are passed over a while.
        holders = [m for m in matches if (m.sha256, m.size) == (sha, size)]
        now = self.clock.seconds()
        trusted = [m for m in holders if self.distrusted.get(m.holder, 0) <= now]
        holders = trusted or holders
        target = directory / name
        if target.exists():
            if not target.is_file():
                raise FetchError(wire.E_EXISTS, f"{target} exists and is not a file")
            existing = await self.run_blocking(sha256_of, target)
            if existing == sha:
                return Fetched(target, size, sha, None, already=True)
            if not force:
                raise FetchError(
                    wire.E_EXISTS,
                    f"{target} already exists with other content; use --force to replace it",
                )
        part = directory / f".{name}.part"
        offset, hasher = await self.run_blocking(_prefix_state, part, size)
        report = progress or (lambda done, total: None)
        problems: list[str] = []
        for attempt in range(ROUNDS * len(holders)):
            holder = holders[attempt % len(holders)]
            if offset < size or size == 0:
                try:
                    offset, hasher = await self._get(holder, part, offset, hasher, size, report)
                except HolderFailed as e:
                    problems.append(f"{holder.holder}: {e}")
                    offset = part.stat().st_size if part.exists() else 0
                    self.log.info(
                        "download of {name} from {holder} stopped with {offset} bytes in: {why}",
                        name=name, holder=holder.holder, offset=offset, why=e,
                    )
                    continue
            if offset == size and hasher.hexdigest() == sha:
                await self.run_blocking(_keep, part, target, force)
                self.log.info(
                    "downloaded {name} ({size} bytes, sha256 {sha}) from {holder}",
                    name=name, size=size, sha=sha, holder=holder.holder,
                )
                return Fetched(target, size, sha, holder.holder)
            problems.append(f"{holder.holder}: the data did not match its SHA-256")
            self.distrusted[holder.holder] = self.clock.seconds() + DISTRUST_FOR
            self.log.warn(
                "download of {name} from {holder} failed verification; discarded",
                name=name, holder=holder.holder,
            )
            part.unlink(missing_ok=True)
            offset, hasher = 0, hashlib.sha256()
            holders = [h for h in holders if h is not holder] or holders
        raise FetchError(
            wire.E_FAILED,
            f"could not download {name}: " + "; ".join(problems[-3:]),
        )

    async def _get(
        self, m: Match, part: Path, offset: int, hasher: Any, size: int, report: Progress
    ) -> tuple[int, Any]:
        headers = Headers()
        if offset:
            headers.addRawHeader(b"range", f"bytes={offset}-".encode())
        try:
            url = url_for(m, self.secret, self.clock.seconds(), self.scheme)
            response = await self.agent.request(b"GET", url, headers).addTimeout(
                HEADER_TIMEOUT, self.clock
            )
        except Exception as e:
            raise HolderFailed(f"no response ({_why(e)})") from None
        if response.code == 200 and offset:
            offset, hasher = 0, hashlib.sha256()  # the holder sends it all
        elif response.code == 206:
            ranges = response.headers.getRawHeaders(b"content-range") or [b""]
            if not ranges[0].startswith(f"bytes {offset}-".encode()):
                response.deliverBody(Protocol())
                raise HolderFailed("it answered another range")
        elif response.code != 200:
            response.deliverBody(Protocol())
            raise HolderFailed(f"HTTP {response.code}")
        etag = (response.headers.getRawHeaders(b"etag") or [b""])[0].strip(b'"').decode()
        if etag and etag != m.sha256:
            response.deliverBody(Protocol())
            raise HolderFailed("it now holds another version")
        received = [offset]
        last = [0.0]

        def on_bytes(n: int) -> None:
            received[0] += n
            now = self.clock.seconds()
            if now - last[0] >= 0.2 or received[0] >= size:
                last[0] = now
                report(received[0], size)

        mode = "ab" if offset else "wb"
        try:
            f = open(part, mode)  # noqa: SIM115
        except OSError as e:
            response.deliverBody(Protocol())
            raise FetchError(wire.E_FAILED, f"cannot write {part}: {e.strerror or e}") from None
        with f:
            receiver = _Receiver(f, hasher, self.clock, on_bytes)
            response.deliverBody(receiver)
            reason = await receiver.done
        if isinstance(reason, OSError):
            raise FetchError(wire.E_FAILED, f"cannot write {part}: {reason.strerror or reason}")
        if not isinstance(reason, ResponseDone) or received[0] < size:
            raise HolderFailed(f"the transfer broke off ({_why(reason)})")
        return received[0], hasher


def _why(e: BaseException) -> str:
    if isinstance(e, (ResponseFailed, PotentialDataLoss)):
        return "the holder closed the connection early"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
