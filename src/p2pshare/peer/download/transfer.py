"""
Downloading a file from its holders, verified before it is kept.

The data streams into a hidden temporary file beside the target,
C{.NAME.SHA16.part}: named by the version it is for, and owned by one
download at a time (an exclusive lock, so a second download of the same
file into the same folder, from this peer or another process, waits or is
refused, never writing beside it).  An interrupted transfer keeps its
verified pieces and goes on from there with C{Range} requests guarded by
C{If-Match: "SHA-256"}, so a holder whose file has changed since answers
C{412} (and is passed over) rather than sending bytes of another version.  Once
all bytes are in, the file is fsynced and what is I{on disk} is hashed:
size and SHA-256 must match what the search reported; then it is moved
into place without overwriting anything (unless asked to), and the
directory fsynced.  Data that fails the check is thrown away and the next
holder is tried.  A half-written download never appears under the final
name.  A fault of this machine (a full disk, a folder it may not write)
ends the download at once with one sentence: other holders cannot help.

Search results are input, and may be forged: of the versions found, the
one that the most distinct addresses hold is fetched (then the nearest),
not simply the nearest claim; holders are known by their address, so
many names at one address are one source; and every address a download
connects to goes through its L{Ledger}, which tries no address twice once
it failed and at most L{BAD_ADDRESSES} that fail (peer/download/swarm.py).  A file
whose pieces would be larger than this peer takes (pieces.py:
L{MAX_PIECE}) is refused before anything is asked of its holders.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.iweb import IAgent

from p2pshare import wire
from p2pshare.admission import Secret, authority
from p2pshare.disk import human_size
from p2pshare.peer.download.agent import AgentFetcher, deliver, read_at_most
from p2pshare.peer.download.attempt import Attempt, Discover, Partial, Progress
from p2pshare.peer.download.book import Ledger
from p2pshare.peer.download.fetch import HEADER_TIMEOUT, IFetcher
from p2pshare.peer.download.fetch import why_failed as _why
from p2pshare.peer.download.holders import Source
from p2pshare.peer.download.keeping import (
    Fetched,
    FetchError,
    LocalFault,
    PartFile,
    local_fault,
    other_versions,
    part_path,
)
from p2pshare.peer.download.threads import ThreadFetcher
from p2pshare.peer.download.versions import (
    PieceLists,
    address_of,
    versions,
)
from p2pshare.peer.reversal import reversed_host
from p2pshare.peer.share import SharedFile, is_shareable_name, sha256_of
from p2pshare.pieces import MAX_SIZE, too_large
from p2pshare.wire import Match

# Names the rest of the peer and its tests know this module by.
__all__ = [
    "Downloader", "Fetched", "FetchError", "LocalFault", "Partial", "PartFile", "address_of",
    "part_path", "url_for", "versions",
]

RunBlocking = Callable[..., Deferred[Any]]

DISTRUST_FOR = 600.0  # seconds a holder that served corrupt data is passed over
SOURCES = 4  # holders a download fetches from at once
MAX_LISTING = 64 * 2**20  # bytes of a holder's /index.json, at most


def url_for(
    m: Match, secret: Secret | None = None, now: float = 0.0, scheme: str = "http",
    path: str | None = None,
) -> bytes:
    """
    Where C{m} is served (or, given C{path}, that path at its holder); in a
    private network, a URL signed with the network secret (the holder
    answers 403 to anything else).
    """
    where = authority(reversed_host(m.holder) if m.port == 0 else m.host, m.port)
    path = path or f"/files/{wire.url_path(m.name)}"
    if secret is not None:
        path = secret.sign_path(path, now, where=where)  # good at this holder only
    return f"{scheme}://{where}{path}".encode("ascii")


class Downloader:
    log = Logger()

    def __init__(
        self,
        agent: IAgent,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        secret: Secret | None = None,
        scheme: str = "http",
        direct: IReactorFromThreads | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.agent = agent
        # Runs are read in threads that report to this reactor
        # (peer/download/direct.py), over TLS with this context; None: every
        # transfer through the agent.
        self.direct = direct if scheme == "http" or tls is not None else None
        self.tls = tls
        self.clock = clock
        self.run_blocking = run_blocking
        self.secret = secret
        self.scheme = scheme
        self.lists = PieceLists(agent, clock, lambda m, path: self._url_maker(m, path))
        # Holders that served data failing its SHA-256: name -> until when
        # they are passed over (while any other holder is left).
        self.distrusted: dict[str, float] = {}
        # Downloads running here, by target: a second one waits for these.
        self._running: dict[Path, list[Deferred[None]]] = {}
        # What they have verified so far, by SHA-256: served to others.
        self.partials: dict[str, Partial] = {}
        # Fresh downloads begin where the holder suggests (False: at the first).
        self.spread = True
        # Told of each file verified, with its hashes, just before it is kept.
        self.on_verified: Callable[[Path, SharedFile], None] | None = None

    def new_fetcher(self) -> IFetcher:
        """
        A fetcher for one swarm: the thread one if this peer reads in
        threads, else the agent's.
        """
        agent = AgentFetcher(self.agent, self.clock)
        if self.direct is None:
            return agent
        return ThreadFetcher(self.direct, self.clock, agent, self.tls)

    def new_ledger(self) -> Ledger:
        """
        A record for one download's addresses (see L{Ledger}), to be given
        to each L{fetch} of it: every search round, every version tried.
        """
        return Ledger()

    def versions(self, matches: list[Match], ledger: Ledger) -> list[list[Match]]:
        """
        The versions C{matches} describe, the best first (see L{versions}).
        """
        return versions(matches, ledger)

    async def fetch(
        self,
        matches: list[Match],
        directory: Path,
        force: bool = False,
        progress: Progress | None = None,
        sources: int = SOURCES,
        discover: Discover | None = None,
        ledger: Ledger | None = None,
    ) -> Fetched:
        """
        Download the file that C{matches} (nearest first) describe into
        C{directory}, from up to C{sources} of its holders at once: the
        version most holders confirm (see L{versions}).  A download of
        the same target already running here is waited for first (then
        the file is most likely there).  C{ledger} is what this download
        learned of addresses before (a fresh one if not given).
        """
        if not matches:
            raise FetchError(wire.E_NOT_FOUND, "not found")
        ledger = ledger if ledger is not None else self.new_ledger()
        found = versions(matches, ledger)
        if not found:
            raise FetchError(wire.E_FAILED, ledger.exhausted(matches[0].name))
        matches = found[0]
        name, size = matches[0].name, matches[0].size
        if not is_shareable_name(name):
            raise FetchError(wire.E_BAD_ARGS, f"{name!r} is not a file name this peer keeps")
        if too_large(size):
            # Its pieces would need buffers beyond what a download may hold.
            why = (
                f"could not download {name}: its holders say it is {human_size(size)}, "
                f"larger than the {human_size(MAX_SIZE)} this peer downloads"
            )
            ledger.refused[(matches[0].sha256, size)] = why
            raise FetchError(wire.E_FAILED, why)
        target = directory / name
        while target in self._running:
            waiter: Deferred[None] = Deferred(lambda d: self._running[target].remove(d))
            self._running[target].append(waiter)
            await waiter
        self._running[target] = []
        try:
            return await self._fetch(matches, target, force, progress, sources, discover, ledger)
        finally:
            for waiter in self._running.pop(target):
                waiter.callback(None)

    async def _fetch(
        self, matches: list[Match], target: Path, force: bool, progress: Progress | None,
        sources: int,
        discover: Discover | None,
        ledger: Ledger,
    ) -> Fetched:
        name, size, sha = matches[0].name, matches[0].size, matches[0].sha256
        directory = target.parent
        # Holders of another version of the same name are not mixed in,
        # and holders caught serving corrupt data are passed over a while.
        holders = [m for m in matches if (m.sha256, m.size) == (sha, size)]
        now = self.clock.seconds()
        trusted = [m for m in holders if self.distrusted.get(m.holder, 0) <= now]
        holders = trusted or holders
        base = target.name  # the last segment of a path: music/live/set.ogg -> set.ogg
        path = part_path(directory, base, sha)
        try:
            directory.mkdir(parents=True, exist_ok=True)  # a download recreates the folders
            part = PartFile(path)
        except BlockingIOError:
            raise FetchError(
                wire.E_BUSY,
                f"{target} is being downloaded by another process; wait for it to finish",
            ) from None
        except OSError as e:
            raise local_fault(e, directory, size) from None
        older: list[PartFile] = []
        try:
            already = await self._existing(target, sha, force)
            if already is not None:
                part.discard()
                return already
            older = await self.run_blocking(other_versions, directory, base, path)
            fetched = await Attempt(
                self, holders, part, target, force, progress, sources, ledger, discover, older
            ).run()
        except CancelledError:
            kept = part.kept
            part.close()
            self.log.info(
                "download of {name} stopped with {kept} bytes kept for a resume",
                name=name, kept=kept,
            )
            raise
        except LocalFault:
            part.discard()  # free what it took; the fault is ours
            raise
        except FetchError as e:
            kept = part.kept
            if part.size() == 0:
                part.discard()  # nothing came (no piece list): nothing to resume
            part.close()  # kept, for the next try to resume
            if e.code == wire.E_FAILED and kept:
                e.text += f"; the {human_size(kept)} that arrived are kept: the same command resumes"
                e.args = (e.text,)
            raise
        except BaseException:
            part.close()  # kept, for the next try to resume
            raise
        finally:
            self.partials.pop(sha, None)
            for other in older:
                other.discard()
        part.close()
        return fetched

    async def _existing(self, target: Path, sha: str, force: bool) -> Fetched | None:
        if not (target.exists() or target.is_symlink()):
            return None
        if not target.is_file():
            raise FetchError(wire.E_EXISTS, f"{target} exists and is not a file")
        existing = await self.run_blocking(sha256_of, target)
        if existing == sha:
            return Fetched(target, target.stat().st_size, sha, None, already=True)
        if not force:
            raise FetchError(
                wire.E_EXISTS,
                f"{target} already exists with other content; use --force to replace it",
            )
        return None

    def source(self, m: Match) -> Source:
        if m.have is None:
            return Source(m.holder, self._url_maker(m), where=address_of(m))
        return Source(
            m.holder, self._url_maker(m), have_url=self._url_maker(m, f"/have/{m.sha256}"),
            has=set(), where=address_of(m),
        )

    def distrust(self, names: Iterable[str]) -> None:
        now = self.clock.seconds()
        # Those whose time is up are forgotten: names come from search
        # results, which anyone may fill with new ones.
        self.distrusted = {n: t for n, t in self.distrusted.items() if t > now}
        for n in names:
            self.distrusted[n] = now + DISTRUST_FOR

    async def listing(self, m: Match) -> list[dict[str, Any]]:
        """
        Everything C{m}'s holder shares, from its C{/index.json}.
        """
        url = self._url_maker(m, "/index.json")()
        try:
            response = await self.agent.request(b"GET", url).addTimeout(HEADER_TIMEOUT, self.clock)
            if response.code != 200:
                deliver(response, Protocol())
                raise FetchError(wire.E_FAILED, f"{m.holder} answered HTTP {response.code}")
            body = await read_at_most(response, MAX_LISTING).addTimeout(
                HEADER_TIMEOUT, self.clock
            )
            files = json.loads(body)["files"]
        except (FetchError, CancelledError):
            raise
        except Exception as e:
            raise FetchError(wire.E_FAILED, f"no listing from {m.holder} ({_why(e)})") from None
        # Only well-formed entries are passed on: a holder's index is input.
        return [
            {"name": f["name"], "size": f["size"], "sha256": f["sha256"]}
            for f in (files if isinstance(files, list) else [])
            if isinstance(f, dict) and isinstance(f.get("name"), str)
            and is_shareable_name(f["name"]) and isinstance(f.get("size"), int)
            and isinstance(f.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
        ]

    def _url_maker(self, m: Match, path: str | None = None) -> Callable[[], bytes]:
        return lambda: url_for(m, self.secret, self.clock.seconds(), self.scheme, path)
