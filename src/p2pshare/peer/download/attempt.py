"""
One version of a file downloaded into one part file: its holders a group
at a time (those that agree on the piece list, the largest group first),
each group a swarm (peer/download/swarm.py); pieces already here in parts
of older versions copied rather than fetched; and the file kept only once
what is on disk has the version's SHA-256.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pshare import wire
from p2pshare.disk import human_size
from p2pshare.peer.download.book import Address, Ledger, PieceBook
from p2pshare.peer.download.fetch import IFetcher, why_failed
from p2pshare.peer.download.holders import Source
from p2pshare.peer.download.keeping import (
    Fetched,
    FetchError,
    LocalFault,
    PartFile,
    allocated,
    keep,
    local_fault,
)
from p2pshare.peer.download.outcomes import Broke
from p2pshare.peer.download.storing import copy_matching_pieces, verified_pieces
from p2pshare.peer.download.swarm import Swarm, Target
from p2pshare.peer.download.versions import Lists, PieceLists, address_of, groups, may_serve
from p2pshare.peer.share import SharedFile, sha256_of, stamp_of
from p2pshare.pieces import bitfield, piece_count, root_of
from p2pshare.wire import Match


class IDownloader(Protocol):
    """
    What an attempt uses of the downloader that runs it.
    """

    clock: IReactorTime
    run_blocking: Callable[..., Deferred[Any]]
    lists: PieceLists
    spread: bool  # fresh downloads begin where the holder suggests
    partials: dict[str, Partial]  # downloads under way, by SHA-256: served to others
    distrusted: dict[str, float]  # holders passed over, until when
    on_verified: Callable[[Path, SharedFile], None] | None

    def new_fetcher(self) -> IFetcher: ...

    def source(self, m: Match) -> Source: ...

    def distrust(self, names: Iterable[str]) -> None: ...

Progress = Callable[..., None]  # (bytes verified, size[, holders sending now])
Discover = Callable[[], Deferred[list[Match]]]
DISCOVER_EVERY = 10.0  # at most this many seconds between searches for more holders


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


class Attempt:
    """
    The download of the version C{holders} hold (the nearest first) into
    C{part}, kept as C{target}, for its downloader.  Pieces already
    here in C{older} parts of other versions (or in the file this one
    replaces) are copied, not fetched; those parts are then discarded.
    """

    log = Logger()

    def __init__(
        self, downloader: IDownloader, holders: list[Match], part: PartFile, target: Path,
        force: bool, progress: Progress | None, sources: int, ledger: Ledger,
        discover: Discover | None, older: list[PartFile],
    ) -> None:
        self.downloader = downloader
        self.holders = holders
        self.part = part
        self.target = target
        self.force = force
        self.report: Progress = progress or (lambda *figures: None)
        self.sources = sources  # holders fetched from at once
        self.ledger = ledger
        self.discover = discover
        self.older: list[PartFile] | None = older  # None once their pieces were copied
        self.problems: list[str] = []
        self.notes: list[str] = []
        # The roots each address claims for this version: one that claims
        # several is asked for its list before it serves any group.
        self.claimed: dict[Address, set[str]] = {}
        for m in holders:
            self.claimed.setdefault(address_of(m), set()).add(m.root)
        self.lists: Lists = {}  # the piece lists fetched, by address

    @property
    def name(self) -> str:
        # Its path in the share (music/live/set.ogg), as its holders give
        # it; the target may be elsewhere (-o DIR).
        return self.holders[0].name

    @property
    def size(self) -> int:
        return self.holders[0].size

    @property
    def sha(self) -> str:
        return self.holders[0].sha256

    def _fault(self, e: OSError) -> LocalFault:
        return local_fault(e, self.target.parent, self.size)

    async def run(self) -> Fetched:
        """
        Fetch the file's pieces from its holders, a group at a time, up to
        C{sources} of them at once; keep it once the whole file verifies.
        """
        ledger, sha = self.ledger, self.sha
        for root, group in groups(self.holders):
            if root in ledger.bad_roots:
                continue
            group = [m for m in group if may_serve(m, sha, root, ledger, self.claimed, self.lists)]
            if not group:
                continue
            listed = await self.downloader.lists.fetch(
                group, self.size, sha, root, self.problems, ledger, self.claimed, self.lists
            )
            if listed is None:
                continue
            digests, suggested = listed
            group = [
                m for m in group
                if may_serve(m, sha, root, ledger, self.claimed, self.lists, strict=True)
            ]
            book = await self._book(digests, suggested)
            swarm = await self._swarm(group, book, digests)
            if swarm is None:
                continue
            fetched = await self._keep(swarm, group, root, digests)
            if fetched is not None:
                return fetched
        if ledger.spent or not self.problems:
            raise FetchError(wire.E_FAILED, ledger.exhausted(self.name), self.notes)
        raise FetchError(
            wire.E_FAILED, f"could not download {self.name}: " + "; ".join(self.problems[-4:]),
            self.notes,
        )

    async def _book(self, digests: bytes, suggested: int) -> PieceBook:
        """
        What the part holds already of the version these C{digests} list
        (with what older parts could give it), and where to begin: the
        book a swarm fills.
        """
        part, size = self.part, self.size
        directory = self.target.parent
        run_blocking = self.downloader.run_blocking
        try:
            part.f.flush()
            os.ftruncate(part.f.fileno(), size)
            have = await run_blocking(verified_pieces, str(part.path), size, digests)
            if self.older is not None:
                reused = await self._reuse(self.older, digests, have)
                self.older = None  # once, with the first piece list that came
                if reused:
                    have |= reused
                    self.notes.append(
                        f"{len(reused)} of {piece_count(size)} pieces of {self.name} were already "
                        f"here, in an older copy, and were not fetched again"
                    )
        except OSError as e:
            raise self._fault(e) from None
        # A fresh download begins where the holder suggests: the first
        # piece when nobody else is fetching the file there, elsewhere
        # when others are, so that peers starting together hold different
        # pieces and trade them (the whole-file hash then reads back what
        # was stored ahead of its turn); a resumed one where it left off.
        missing = [i for i in range(piece_count(size)) if i not in have]
        first = missing[0] if have and missing else (suggested if self.downloader.spread else 0)
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
                name=self.name, n=len(have), total=book.count,
            )
        return book

    async def _reuse(self, older: list[PartFile], digests: bytes, have: set[int]) -> set[int]:
        """
        Copy into the part the pieces it lacks that the parts of C{older}
        versions, or the file it is to replace, hold right; discard those
        parts: which pieces were copied.
        """
        local = [str(other.path) for other in older]
        if self.force and self.target.is_file():
            local.append(str(self.target))
        reused: set[int] = set()
        if local and len(have) < piece_count(self.size):
            reused = await self.downloader.run_blocking(
                copy_matching_pieces, local, str(self.part.path), self.size, digests, have
            )
        for other in older:
            other.discard()  # what was worth keeping is in the part now
        if reused:
            self.log.info(
                "download of {name}: {n} pieces copied from an older copy here",
                name=self.target.name, n=len(reused),
            )
        return reused

    async def _swarm(self, group: list[Match], book: PieceBook, digests: bytes) -> Swarm | None:
        """
        Fetch every missing piece from C{group}: the swarm, once done; None
        if it failed (why is in C{problems}).
        """
        d, part = self.downloader, self.part

        def track(done: int, total: int, sending: int = 0) -> None:
            part.kept = done
            self.report(done, total, sending)

        partial = Partial(self.name, self.size, self.sha, root_of(digests), book, part.path, digests)
        d.partials[self.sha] = partial
        swarm = Swarm(
            fetcher=d.new_fetcher(), clock=d.clock, run_blocking=d.run_blocking,
            target=Target(self.name, self.size, self.sha, digests, part.f.fileno()),
            book=book, progress=track, sources=[d.source(m) for m in group], ledger=self.ledger,
        )
        looking = None
        if self.discover is not None:
            looking = Deferred.fromCoroutine(self._look_for_more(swarm, self.discover, partial.root))
            looking.addErrback(_cancelled)
        try:
            await swarm.run(self.sources)
        except OSError as e:
            raise self._fault(e) from None
        except Broke as e:
            self.problems.append(str(e))
            return None
        finally:
            if looking is not None:
                looking.cancel()
            self.notes += [n for n in swarm.notes if n not in self.notes]
            d.distrust(s.name for s in swarm.sources if s.corrupt)
        return swarm

    async def _keep(
        self, swarm: Swarm, group: list[Match], root: str, digests: bytes
    ) -> Fetched | None:
        """
        Keep the file under its name if what is on disk is the version
        asked for; else (None) that root is no version of the file, and
        its holders are let go.
        """
        d, part, target, ledger = self.downloader, self.part, self.target, self.ledger
        try:
            part.sync()
            on_disk = swarm.whole_sha256() or await d.run_blocking(sha256_of, part.path)
            st = os.fstat(part.f.fileno())
        except OSError as e:
            raise self._fault(e) from None
        served = [s.name for s in swarm.sources if s.verified]
        if on_disk != self.sha:
            names = ", ".join(m.holder for m in group)
            self.problems.append(f"{names}: piece hashes that do not lead to the file's SHA-256")
            self.notes.append(f"{names} gave piece hashes that do not match {self.name}; dropped")
            self.log.warn(
                "download of {name}: the piece list of {names} does not lead to its "
                "SHA-256; dropped", name=self.name, names=names,
            )
            d.distrust(m.holder for m in group)
            # That root is no version of the file: whoever gave its list
            # or sent pieces of it does not hold the file.
            ledger.bad_roots.add(root)
            for where in {address_of(m) for m in group} & (set(self.lists) | ledger.good):
                ledger.fail(where, "piece hashes that do not lead to the file's SHA-256")
            part.restart_at(0)
            return None
        if d.on_verified is not None:  # before the file appears under its name
            d.on_verified(target, SharedFile(self.name, self.size, self.sha, stamp_of(st), digests))
        try:
            await d.run_blocking(keep, part.path, target, self.force)
        except FileExistsError:
            raise FetchError(
                wire.E_EXISTS,
                f"{target} appeared while downloading; the download is kept hidden "
                f"beside it, and the same command resumes it",
            ) from None
        except OSError as e:
            raise self._fault(e) from None
        self.log.info(
            "downloaded {name} ({size} bytes, sha256 {sha}) from {holders}",
            name=self.name, size=self.size, sha=self.sha,
            holders=", ".join(served) or "(already here)",
        )
        return Fetched(target, self.size, self.sha, ", ".join(served) or None, notes=self.notes)

    async def _look_for_more(self, swarm: Swarm, discover: Discover, root: str) -> None:
        """
        While the swarm runs, search again now and then: peers that started
        fetching the same file since (partial holders) join as sources.
        """
        d = self.downloader
        pause = 1.0
        while True:
            await deferLater(d.clock, pause)
            pause = min(pause * 2, DISCOVER_EVERY)
            try:
                found = await discover()
            except CancelledError:
                raise
            except Exception as e:
                self.log.info("looking for more holders failed: {why}", why=why_failed(e))
                continue
            now = d.clock.seconds()
            for m in found:
                where = address_of(m)
                if ((m.sha256, m.size) == (self.sha, self.size) and m.root in (root, "")
                        and d.distrusted.get(m.holder, 0) <= now and self.ledger.usable(where)
                        and self.ledger.lists.get((where, self.sha), root) == root):
                    swarm.add(d.source(m))  # which tries it only as the ledger allows


def _cancelled(f: Failure) -> Failure | None:
    return None if isinstance(f.value, CancelledError) else f
