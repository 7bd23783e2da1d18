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
import os
import re
import shutil
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IAgent

from p2pshare import wire
from p2pshare.admission import Secret, authority
from p2pshare.disk import human_size
from p2pshare.peer.download.agent import AgentFetcher, read_at_most
from p2pshare.peer.download.book import Address, Ledger, PieceBook
from p2pshare.peer.download.fetch import HEADER_TIMEOUT, IFetcher
from p2pshare.peer.download.fetch import why_failed as _why
from p2pshare.peer.download.holders import Source
from p2pshare.peer.download.keeping import (
    Fetched,
    FetchError,
    LocalFault,
    PartFile,
    allocated,
    keep,
    local_fault,
    other_versions,
    part_path,
)
from p2pshare.peer.download.outcomes import Broke
from p2pshare.peer.download.storing import copy_matching_pieces, verified_pieces
from p2pshare.peer.download.swarm import Swarm, Target
from p2pshare.peer.download.threads import ThreadFetcher
from p2pshare.peer.download.versions import (
    PieceLists,
    address_of,
    groups,
    may_serve,
    versions,
)
from p2pshare.peer.share import SharedFile, is_shareable_name, sha256_of, stamp_of
from p2pshare.pieces import MAX_SIZE, bitfield, piece_count, root_of, too_large
from p2pshare.wire import Match

# Names the rest of the peer and its tests know this module by.
__all__ = [
    "Downloader", "Fetched", "FetchError", "LocalFault", "Partial", "PartFile", "address_of",
    "part_path", "url_for", "versions",
]

Progress = Callable[..., None]  # (bytes verified, size[, holders sending now])
RunBlocking = Callable[..., Deferred[Any]]

DISTRUST_FOR = 600.0  # seconds a holder that served corrupt data is passed over
SOURCES = 4  # holders a download fetches from at once
MAX_LISTING = 64 * 2**20  # bytes of a holder's /index.json, at most
DISCOVER_EVERY = 10.0  # at most this many seconds between searches for more holders
Discover = Callable[[], Deferred[list[Match]]]


@dataclass
class Partial:
    """
    A download in progress, as others may fetch from it: the pieces it has
    verified are served (swarming), and searches list it as a partial
    holder.
    """

    name: str
    size: int
    sha256: str
    root: str
    book: PieceBook
    path: Path
    pieces: bytes  # the piece list

    def holds(self, first: int, last: int) -> bool:
        """
        Are bytes C{first} to C{last} all in verified pieces?
        """
        piece = self.book.piece
        return all(i in self.book.verified for i in range(first // piece, last // piece + 1))

    def bits(self) -> bytes:
        return bitfield(self.book.verified, self.book.count)


def url_for(
    m: Match, secret: Secret | None = None, now: float = 0.0, scheme: str = "http",
    path: str | None = None,
) -> bytes:
    """
    Where C{m} is served (or, given C{path}, that path at its holder); in a
    private network, a URL signed with the network secret (the holder
    answers 403 to anything else).
    """
    where = authority(m.host, m.port)
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

    def _fetcher(self) -> IFetcher:
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
            fetched = await self._download(
                holders, part, target, size, sha, force, progress, sources, ledger, discover, older
            )
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

    async def _download(
        self,
        holders: list[Match],
        part: PartFile,
        target: Path,
        size: int,
        sha: str,
        force: bool,
        progress: Progress | None,
        sources: int,
        ledger: Ledger,
        discover: Discover | None = None,
        older: list[PartFile] | None = None,
    ) -> Fetched:
        """
        Fetch the file's pieces from its holders, a group of holders that
        agree on the piece list at a time (the largest first), up to
        C{sources} of them at once; keep it once the whole file verifies.
        Pieces already here in C{older} parts of other versions (or in the
        file this one replaces) are copied, not fetched; those parts are
        then discarded.
        """
        # The file's name is its path in the share (music/live/set.ogg), as
        # its holders give it; the target may be elsewhere (-o DIR).
        name, directory = holders[0].name, target.parent
        report: Progress = progress or (lambda *figures: None)
        problems: list[str] = []
        notes: list[str] = []
        # The roots each address claims for this version: one that claims
        # several is asked for its list before it serves any group.
        claimed: dict[Address, set[str]] = {}
        for m in holders:
            claimed.setdefault(address_of(m), set()).add(m.root)
        lists: dict[Address, tuple[bytes, int]] = {}  # the piece lists fetched, by address
        for root, group in groups(holders):
            if root in ledger.bad_roots:
                continue
            group = [m for m in group if may_serve(m, sha, root, ledger, claimed, lists)]
            if not group:
                continue
            listed = await self.lists.fetch(group, size, sha, root, problems, ledger, claimed, lists)
            if listed is None:
                continue
            digests, suggested = listed
            group = [m for m in group if may_serve(m, sha, root, ledger, claimed, lists, strict=True)]
            try:
                part.f.flush()
                os.ftruncate(part.f.fileno(), size)
                have = await self.run_blocking(verified_pieces, str(part.path), size, digests)
                if older is not None:
                    reused = await self._reuse(older, target, force, part, size, digests, have)
                    older = None  # once, with the first piece list that came
                    if reused:
                        have |= reused
                        notes.append(
                            f"{len(reused)} of {piece_count(size)} pieces of {name} were already "
                            f"here, in an older copy, and were not fetched again"
                        )
            except OSError as e:
                raise local_fault(e, directory, size) from None
            # A fresh download begins where the holder suggests: the first
            # piece when nobody else is fetching the file there, elsewhere
            # when others are, so that peers starting together hold different
            # pieces and trade them (the whole-file hash then reads back what
            # was stored ahead of its turn); a resumed one where it left off.
            missing = [i for i in range(piece_count(size)) if i not in have]
            first = missing[0] if have and missing else (suggested if self.spread else 0)
            book = PieceBook(size, have, first)
            needed = size - book.verified_bytes()
            free = shutil.disk_usage(directory).free + allocated(part)
            if free < needed:
                raise LocalFault(
                    f"no space left on {directory}: {human_size(needed)} needed, "
                    f"{human_size(free)} free"
                )
            if have:
                self.log.info(
                    "download of {name} resumes with {n} of {total} pieces verified",
                    name=name, n=len(have), total=book.count,
                )

            def track(done: int, total: int, sending: int = 0) -> None:
                part.kept = done
                report(done, total, sending)

            partial = Partial(name, size, sha, root_of(digests), book, part.path, digests)
            self.partials[sha] = partial
            swarm = Swarm(
                fetcher=self._fetcher(), clock=self.clock, run_blocking=self.run_blocking,
                target=Target(name, size, sha, digests, part.f.fileno()),
                book=book, progress=track, sources=[self._source(m) for m in group],
                ledger=ledger,
            )
            looking = None
            if discover is not None:
                looking = Deferred.fromCoroutine(
                    self._look_for_more(swarm, discover, sha, size, partial.root, ledger)
                )
                looking.addErrback(lambda f: f.trap(CancelledError))
            try:
                await swarm.run(sources)
            except OSError as e:
                raise local_fault(e, directory, size) from None
            except Broke as e:
                problems.append(str(e))
                continue
            finally:
                if looking is not None:
                    looking.cancel()
                notes += [n for n in swarm.notes if n not in notes]
                self._distrust(s.name for s in swarm.sources if s.corrupt)
            try:
                part.sync()
                on_disk = swarm.whole_sha256() or await self.run_blocking(sha256_of, part.path)
                st = os.fstat(part.f.fileno())
            except OSError as e:
                raise local_fault(e, directory, size) from None
            served = [s.name for s in swarm.sources if s.verified]
            if on_disk != sha:
                names = ", ".join(m.holder for m in group)
                problems.append(f"{names}: piece hashes that do not lead to the file's SHA-256")
                notes.append(f"{names} gave piece hashes that do not match {name}; dropped")
                self.log.warn(
                    "download of {name}: the piece list of {names} does not lead to its "
                    "SHA-256; dropped", name=name, names=names,
                )
                self._distrust(m.holder for m in group)
                # That root is no version of the file: whoever gave its list
                # or sent pieces of it does not hold the file.
                ledger.bad_roots.add(root)
                for where in {address_of(m) for m in group} & (set(lists) | ledger.good):
                    ledger.fail(where, "piece hashes that do not lead to the file's SHA-256")
                part.restart_at(0)
                continue
            if self.on_verified is not None:  # before the file appears under its name
                self.on_verified(target, SharedFile(
                    name, size, sha, stamp_of(st), digests
                ))
            try:
                await self.run_blocking(keep, part.path, target, force)
            except FileExistsError:
                raise FetchError(
                    wire.E_EXISTS,
                    f"{target} appeared while downloading; the download is kept hidden "
                    f"beside it, and the same command resumes it",
                ) from None
            except OSError as e:
                raise local_fault(e, directory, size) from None
            self.log.info(
                "downloaded {name} ({size} bytes, sha256 {sha}) from {holders}",
                name=name, size=size, sha=sha, holders=", ".join(served) or "(already here)",
            )
            return Fetched(target, size, sha, ", ".join(served) or None, notes=notes)
        if ledger.spent or not problems:
            raise FetchError(wire.E_FAILED, ledger.exhausted(name), notes)
        raise FetchError(
            wire.E_FAILED, f"could not download {name}: " + "; ".join(problems[-4:]), notes
        )

    async def _reuse(
        self, older: list[PartFile], target: Path, force: bool, part: PartFile, size: int,
        digests: bytes, have: set[int],
    ) -> set[int]:
        """
        Copy into C{part} the pieces it lacks that the parts of C{older}
        versions, or the file it is to replace, hold right; discard those
        parts: which pieces were copied.
        """
        local = [str(other.path) for other in older]
        if force and target.is_file():
            local.append(str(target))
        reused: set[int] = set()
        if local and len(have) < piece_count(size):
            reused = await self.run_blocking(
                copy_matching_pieces, local, str(part.path), size, digests, have
            )
        for other in older:
            other.discard()  # what was worth keeping is in the part now
        if reused:
            self.log.info(
                "download of {name}: {n} pieces copied from an older copy here",
                name=target.name, n=len(reused),
            )
        return reused

    def _source(self, m: Match) -> Source:
        if m.have is None:
            return Source(m.holder, self._url_maker(m), where=address_of(m))
        return Source(
            m.holder, self._url_maker(m), have_url=self._url_maker(m, f"/have/{m.sha256}"),
            has=set(), where=address_of(m),
        )

    async def _look_for_more(
        self, swarm: Swarm, discover: Discover, sha: str, size: int, root: str, ledger: Ledger
    ) -> None:
        """
        While the swarm runs, search again now and then: peers that started
        fetching the same file since (partial holders) join as sources.
        """
        pause = 1.0
        while True:
            await deferLater(self.clock, pause)
            pause = min(pause * 2, DISCOVER_EVERY)
            try:
                found = await discover()
            except CancelledError:
                raise
            except Exception as e:
                self.log.info("looking for more holders failed: {why}", why=_why(e))
                continue
            now = self.clock.seconds()
            for m in found:
                where = address_of(m)
                if ((m.sha256, m.size) == (sha, size) and m.root in (root, "")
                        and self.distrusted.get(m.holder, 0) <= now and ledger.usable(where)
                        and ledger.lists.get((where, sha), root) == root):
                    swarm.add(self._source(m))  # which tries it only as the ledger allows

    def _distrust(self, names: Iterable[str]) -> None:
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
                response.deliverBody(Protocol())
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
