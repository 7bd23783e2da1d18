"""
L{PeerFiles}: what a peer shares and what it fetches.

The shared folder's index (rescanned by a L{TimerService} child, hashing in
a thread), the downloads and the transfers in progress, and the upload
slots that bound how many files are served at once.  It knows the rest of
the peer only through the callables it is given: how to search the
network, the peer's own name, and whom to tell when the set of shared
files changes.  It is also what the HTTP side serves from (L{IFileHost}).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    FirstError,
    gatherResults,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pshare import wire
from p2pshare.admission import Secret
from p2pshare.disk import human_size
from p2pshare.peer import naming
from p2pshare.peer.coverage import Found
from p2pshare.peer.download.rounds import Rounds
from p2pshare.peer.download.transfer import (
    SOURCES,
    Downloader,
    Fetched,
    FetchError,
    LocalFault,
    Partial,
    Progress,
)
from p2pshare.peer.interfaces import IFileHost
from p2pshare.peer.naming import Wanted, below_pattern, folder_pattern, one_version, same_content
from p2pshare.peer.search import DEFAULT_TIMEOUT, MAX_RESULTS
from p2pshare.peer.serving import MAX_UPLOADS, UploadRate, UploadSlots
from p2pshare.peer.share import EXACT, SharedFile, ShareIndex, by_content
from p2pshare.peer.share import matches as name_matches
from p2pshare.wire import Match

FOLDER_AT_ONCE = 4  # files of a folder downloaded at once
SAME_CONTENT_WAIT = 5.0  # seconds a get looks for holders of its file under other paths
FILES_LOGGED = 10  # a scan that changed more files logs them at debug level only
NOTE_EVERY = 30.0  # seconds between lines while a download waits for a repair
SCAN_SHARE = 20  # periodic scans of the share take at most 1/20 of the time
RunBlocking = Callable[..., Deferred[Any]]
# pattern, timeout, exact, enough: a search (SearchEngine.start)
Find = Callable[[str, float, int, Callable[[list[Match]], bool] | None], Deferred[Found]]
Note = Callable[[str], None]  # a line for the person waiting


def _whole(folder: str, searched: Found) -> None:
    """
    Refuse a folder whose search found as many files as one search keeps:
    a get of it would leave files out without a word.
    """
    if searched.full:
        raise FetchError(
            wire.E_FAILED, f"{folder}/ holds more files than one get can list (a search keeps "
            f"{MAX_RESULTS:,} matches); get its folders one at a time"
        )


@dataclass
class FolderFetched:
    """
    What a folder's download did: how many files it holds, how many were
    kept (C{already}: of them, were here, identical), their bytes, the
    files that failed with why, and what happened on the way.
    """

    path: Path
    files: int
    kept: int = 0
    already: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Transfer:
    """
    A download or an upload in progress, for C{p2p status}.
    """

    name: str
    direction: str  # "down" or "up"
    peer: str  # who: "3 holders", or the downloader's address
    started: float
    done: int = 0
    total: int = 0
    sent: Callable[[], int] | None = None  # an upload's bytes so far
    first: int | None = None  # a download's bytes verified when it began
    path: str = "direct"  # how the bytes come: direct, reversed (the holder dialled)

    def status(self, now: float) -> dict[str, object]:
        done = self.sent() if self.sent is not None else self.done
        moved = done - (self.first or 0)
        rate = moved / (now - self.started) if now > self.started else 0.0
        return {"name": self.name, "direction": self.direction, "peer": self.peer,
                "done": done, "total": self.total, "rate": int(rate), "path": self.path}


def path_of(holders: list[Match], reachable: bool = True) -> str:
    """
    How a download from C{holders} reaches them: each holder nobody can
    dial (port 0) by a reversed connection, or through a relay when
    nobody can dial us either (not C{reachable}); the others directly.
    """
    unreachable = "reversed" if reachable else "relayed"
    paths = sorted({unreachable if m.port == 0 else "direct" for m in holders})
    return " and ".join(paths) or "direct"


@implementer(IFileHost)
class PeerFiles(MultiService):
    """
    @ivar transfers: downloads and uploads running (L{Transfer}s).
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        find: Find,
        me: Callable[[], str | None],
        on_files_changed: Callable[[], None],
        on_transfers_changed: Callable[[], None] = lambda: None,
        shared: Path | None = None,
        downloads: Path | None = None,
        downloader: Downloader | None = None,
        secret: Secret | None = None,
        rescan_interval: float = 2.0,
        max_uploads: int = MAX_UPLOADS,
        upload_rate: float | None = None,
        private: tuple[Path, ...] = (),
        advertised: Callable[[], str | None] = lambda: None,
        repair_time: float = 20.0,
        settle: float = 0.0,
        is_member: Callable[[str], Deferred[bool | None]] | None = None,
        reachable: Callable[[], bool] = lambda: True,
    ) -> None:
        """
        @param private: never shared, wherever they lie (the data dir, the
            files holding secrets): see L{ShareIndex}.
        @param repair_time: how long a download that found nothing, while
            part of the network did not answer, waits for the tree to be
            repaired (three heartbeats and a margin).
        @param settle: seconds a file must stay unchanged before it is
            offered (L{ShareIndex}).
        @param is_member: whether a name is a live peer, as the metadata
            server says (None: it cannot say now).
        """
        super().__init__()
        self.clock = clock
        self.secret = secret
        self.run_blocking = run_blocking
        self._find = find
        self.repair_time = repair_time
        self._is_member = is_member
        self.reachable = reachable  # can others dial us (our ticket says)?
        self._me = me
        self.advertised = advertised
        self._files_changed = on_files_changed
        self._transfers_changed = on_transfers_changed
        self.share = ShareIndex(shared, private, settle) if shared is not None else None
        self._settled_scan: Any = None  # a scan for when a file still changing has settled
        self._withheld: frozenset[str] = frozenset()  # private things the share holds, told
        self.downloads = downloads or shared
        self.downloader = downloader
        if downloader is not None:
            downloader.on_verified = self._verified
        self.upload_slots = UploadSlots(max_uploads, upload_rate)
        self.upload_rate = UploadRate(upload_rate, clock) if upload_rate else None
        self.transfers: dict[object, Transfer] = {}
        self.rescan_interval = rescan_interval
        self._refresh_waiters: list[Deferred[None]] = []
        self._announced: dict[str, SharedFile] = {}
        self._quiet_until = 0.0  # no periodic scan before then
        if self.share is not None:
            rescan = TimerService(rescan_interval, self._rescan)
            rescan.clock = clock
            rescan.setServiceParent(self)

    # The shared folder.

    def refresh(self) -> Deferred[None]:
        """
        Rescan the shared directory (hashing new files through
        C{run_blocking}, a thread in a real peer); a scan already running is
        waited for rather than doubled.
        """
        waiter: Deferred[None] = Deferred()
        if self.share is None:
            waiter.callback(None)
            return waiter
        self._refresh_waiters.append(waiter)
        if len(self._refresh_waiters) == 1:
            self.run_blocking(self.share.refresh).addBoth(self._refreshed)
        return waiter

    def _rescan(self) -> Deferred[None] | None:
        """
        The periodic scan, every C{rescan_interval} seconds unless the last
        one's walk took so long that scanning that often would cost more
        than 1/L{SCAN_SHARE} of the time (a share of tens of thousands of
        files would otherwise keep a core busy walking it).
        """
        if self.clock.seconds() < self._quiet_until:
            return None
        return self.refresh()

    def _refreshed(self, result: object) -> None:
        if isinstance(result, Failure):
            self.log.failure("could not scan the shared directory", result, LogLevel.warn)
        else:
            if self.share is not None:
                self._quiet_until = self.clock.seconds() + (SCAN_SHARE - 1) * self.share.walked
                self._tell_withheld(self.share.withheld)
                self._scan_when_settled(self.share.settles_in)
            self._announce()
        waiters, self._refresh_waiters = self._refresh_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _scan_when_settled(self, wait: float | None) -> None:
        """
        A file was still changing: scan again as soon as it may have
        settled, rather than at the next periodic scan, so that a file
        copied in is offered the settle time after its last write.
        """
        if wait is None or (self._settled_scan is not None and self._settled_scan.active()):
            return

        def scan() -> None:
            self._settled_scan = None
            self.refresh()

        self._settled_scan = self.clock.callLater(wait + 0.05, scan)

    def stopService(self) -> Any:
        if self._settled_scan is not None and self._settled_scan.active():
            self._settled_scan.cancel()
        self._settled_scan = None
        return super().stopService()

    def _tell_withheld(self, withheld: frozenset[str]) -> None:
        """
        Say once (not at every scan) that the share holds something private.
        """
        new, self._withheld = withheld - self._withheld, withheld
        if new and self.share is not None:
            self.log.warn(
                "the shared folder {share} holds {what}: this peer's data dir or a file "
                "with a secret, which is never shared",
                share=str(self.share.directory), what=", ".join(sorted(new)),
            )

    def _announce(self) -> None:
        """
        Log what the share has gained and lost since it was last announced:
        one line for the scan (how many files, how many bytes), and one per
        file only when a few changed (a share of 2,000 files is not 2,000
        lines at start).
        """
        if self.share is None:
            return
        before, self._announced = self._announced, dict(self.share.files)
        if before.keys() != self._announced.keys():
            self._files_changed()  # the web page shows how many files each peer shares
        gained = [f for name, f in self._announced.items()
                  if (was := before.get(name)) is None or was.sha256 != f.sha256]
        gone = sorted(before.keys() - self._announced.keys())
        if not gained and not gone:
            return
        level = LogLevel.info if len(gained) + len(gone) <= FILES_LOGGED else LogLevel.debug
        for f in sorted(gained, key=lambda f: f.name):  # what changed, not the whole share
            self._log_sharing(f, level)
        for name in gone:
            self.log.emit(level, "no longer sharing {file}", file=name)
        count, size = len(self._announced), sum(f.size for f in self._announced.values())
        self.log.info(
            "share: {count:,} {files}, {size} ({gained} new or changed, {gone} gone)",
            count=count, files="file" if count == 1 else "files", size=human_size(size),
            gained=len(gained), gone=len(gone),
        )

    def _log_sharing(self, f: SharedFile, level: LogLevel = LogLevel.info) -> None:
        self.log.emit(level, "sharing {file} ({size}, sha256 {sha})",
                      file=f.name, size=human_size(f.size), sha=f.sha256)

    def upload_began(
        self, name: str, host: str, total: int, sent: Callable[[], int], path: str = "direct"
    ) -> object:
        """
        A response of C{name} to C{host} began, by C{path}; C{sent} says how
        many bytes have gone so far.  The key given back ends it
        (L{upload_ended}).
        """
        key = object()
        self.transfers[key] = Transfer(
            name, "up", host, self.clock.seconds(), 0, total, sent, path=path
        )
        self._transfers_changed()
        return key

    def upload_ended(self, key: object) -> None:
        self.transfers.pop(key, None)
        self._transfers_changed()

    @property
    def peer_name(self) -> str | None:
        return self._me()

    def _verified(self, path: Path, known: SharedFile) -> None:
        """
        A download into the share is verified: its hashes are kept, so the
        share does not read the file again.
        """
        if self.share is not None and path == self.share.directory / known.name:
            self.share.learn(known)

    async def listing(self, holder: str, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
        """
        Everything C{holder} shares (this peer's own share, by its name too):
        found through the network by a search for every file, then asked
        for its whole index.
        """
        if holder == self._me():
            files = self.share.files.values() if self.share is not None else []
            return [{"name": f.name, "size": f.size, "sha256": f.sha256}
                    for f in sorted(files, key=lambda f: f.name)]
        searched = await self._find(
            "*", timeout, False, lambda found: any(m.holder == holder for m in found)
        )
        found = [m for m in searched.matches if m.holder == holder]
        if not found:
            if not searched.coverage.complete:
                raise FetchError(
                    wire.E_INCOMPLETE, f"{holder} was not found among the peers that answered "
                    f"(or shares nothing); {searched.coverage.sentence()}"
                )
            member = await self._is_member(holder) if self._is_member is not None else None
            if member:
                return []  # it answered with nothing: it shares nothing
            if member is False:
                raise FetchError(wire.E_NOT_FOUND, f"{holder} is not in the network")
            raise FetchError(
                wire.E_NOT_FOUND, f"{holder} shares nothing, or is not in the network"
            )
        if self.downloader is None:
            raise FetchError(wire.E_FAILED, "this peer does not fetch from others")
        return await self.downloader.listing(found[0])

    async def _others(self, pattern: str, timeout: float, how: int = 0) -> list[Match]:
        found = await self._find(pattern, timeout, how, None)
        return [m for m in found.matches if m.holder != self._me()]

    async def _holders(
        self, name: str, timeout: float, note: Note | None, only: str | None = None,
    ) -> list[Match]:
        """
        Those who hold the file C{name} (or C{sha256:HEX}), but us; refused
        as not found, or as L{wire.E_INCOMPLETE} when part of the network
        did not answer (see L{_searched}).
        """
        matches, searched = await self._searched(name, timeout, note, only)
        if not matches:
            self._absent(name, searched, only)
        return matches

    async def _searched(
        self, name: str, timeout: float, note: Note | None, only: str | None = None,
        how: int = EXACT,
    ) -> tuple[list[Match], Found]:
        """
        Those who hold C{name} (read as C{how} says), but us, and what the
        search covered.  When nobody that answered holds it while part of
        the network did not answer, wait (a bounded time, saying so) for
        the tree to be repaired before saying it is not there.
        """
        me = self._me()

        def others(found: list[Match]) -> list[Match]:
            return [m for m in found if m.holder != me and only in (None, m.holder)]

        def enough(found: list[Match]) -> bool:
            return bool(others(found))

        searched = await self._find(name, timeout, how, enough)
        if not others(searched.matches) and searched.coverage.missing:
            self.log.info("{name}: not found yet; {covered}; waiting up to {wait:.0f} s for "
                          "the network to repair", name=name,
                          covered=searched.coverage.sentence(), wait=self.repair_time)
            say = note or (lambda text: None)
            say(f"{name}: not found among the peers that answered "
                f"({searched.coverage.sentence()}); waiting up to "
                f"{self.repair_time:.0f} s for the network to repair")
            # In spells of at most NOTE_EVERY, each but the last ending in
            # a line, so that whoever waits (p2p get) hears that it goes on.
            spells = math.ceil(self.repair_time / NOTE_EVERY)
            for spell in range(spells):
                length = min(NOTE_EVERY, self.repair_time - spell * NOTE_EVERY)
                searched = await self._find(name, length, how, enough)
                if others(searched.matches) or not searched.coverage.missing:
                    break
                if spell < spells - 1:
                    say(f"{name}: still waiting for the network to repair "
                        f"({searched.coverage.sentence()})")
        return others(searched.matches), searched

    def _absent(self, name: str, searched: Found, only: str | None,
                seen: list[Match] | None = None) -> NoReturn:
        """
        Refuse C{name}: not in the network, or not among those that
        answered (C{seen}: what other searches for it found, ours too).
        """
        me = self._me()
        mine = [m.name for m in [*searched.matches, *(seen or [])] if m.holder == me]
        if searched.coverage.complete:
            if only is not None and any(m.holder != me for m in searched.matches):
                raise FetchError(wire.E_NOT_FOUND, f"{only} does not hold {name}")
            if mine:
                raise FetchError(wire.E_NOT_FOUND, f"{name} is only in this peer's own share "
                                 f"({mine[0]}); no other peer holds it")
            raise FetchError(wire.E_NOT_FOUND, f"{name} was not found in the network")
        raise FetchError(
            wire.E_INCOMPLETE, f"{name} was not found among the peers that answered; "
            f"{searched.coverage.sentence()}"
        )

    async def wanted(
        self, name: str, timeout: float = DEFAULT_TIMEOUT, note: Note | None = None,
        only: str | None = None,
    ) -> Wanted:
        """
        What C{name} means in the network now (see L{p2pshare.peer.naming}):
        a file and its holders, or a folder and every file under it.
        """
        if name.startswith("sha256:"):
            sha = by_content(name)
            if sha is None:
                raise FetchError(wire.E_BAD_ARGS, "sha256: takes 12 to 64 hex digits")
            matches = one_version(name, await self._holders(name, timeout, note, only))
            return Wanted(matches[0].name, matches)
        if name.endswith("/"):
            folder = name.rstrip("/")
            matches, searched = await self._searched(
                folder_pattern(folder), timeout, note, only, how=0
            )
            if not matches:
                self._absent(name, searched, only)
            _whole(folder, searched)
            return naming.choose(folder, matches, []) or self._absent(name, searched, only)
        matches, searched = await self._searched(name, timeout, note, only)
        if matches:
            return Wanted(name, one_version(name, naming.same_case(name, matches)))
        inside, below = await gatherResults([
            self._find(folder_pattern(name), timeout, 0, None),
            self._find(below_pattern(name), timeout, 0, None),
        ])
        _whole(name, inside)
        me = self._me()
        keep = [m for m in inside.matches if m.holder != me and only in (None, m.holder)]
        ends = [m for m in below.matches if m.holder != me and only in (None, m.holder)]
        return naming.choose(name, keep, ends) or self._absent(
            name, searched, only, inside.matches + below.matches
        )

    # Downloads in progress, which others may fetch from (swarming).

    def partial_named(self, name: str) -> Partial | None:
        if self.downloader is None:
            return None
        for p in self.downloader.partials.values():
            if p.name == name and self._into_share(p):
                return p
        return None

    def _into_share(self, p: Partial) -> bool:
        """
        Is this download's file going into the shared folder, under its name?
        """
        return self.downloads is not None and p.path.parent == (self.downloads / p.name).parent

    def partial_by_sha(self, sha: str) -> Partial | None:
        if self.downloader is None:
            return None
        return self.downloader.partials.get(sha)

    def partial_matches(self, pattern: str, exact: int = 0) -> list[Partial]:
        """
        Downloads in progress into the shared folder that C{pattern} finds,
        unless the whole file is shared here already.
        """
        if self.downloader is None or self.share is None or self.downloads != self.share.directory:
            return []
        sha = by_content(pattern)
        whole = {f.sha256 for f in self.share.files.values()}
        return [
            p for p in self.downloader.partials.values()
            if p.sha256 not in whole and self._into_share(p)
            and (p.sha256.startswith(sha) if sha is not None
                 else name_matches(pattern, p.name, exact))
        ]

    def count(self) -> int:
        return len(self.share.files) if self.share is not None else 0

    def status(self, listed: bool = False) -> dict[str, Any]:
        """
        The files half of what C{p2p status} shows: how many files are
        shared and their bytes, how far the share is indexed, the files
        themselves (C{shared}: only when C{listed}, as C{p2p status --files}
        asks; the web page asks for the rest every second) and the transfers.
        """
        share = self.share
        files = share.files.values() if share is not None else []
        hashed, to_hash, done, total = share.progress if share is not None else (0, 0, 0, 0)
        return {
            "shared_count": len(files),
            "shared_bytes": sum(f.size for f in files),
            # Indexed: the first scan ended (a file still being written
            # waits for its settle time, and is counted apart).
            "indexed": share is None or share.indexed,
            "indexing": {"files": hashed, "of": to_hash, "bytes": done, "of_bytes": total},
            "settling": len(share.unsettled) if share is not None else 0,
            "shared": [{"name": f.name, "size": f.size, "sha256": f.sha256}
                       for f in sorted(files, key=lambda f: f.name)] if listed else [],
            "transfers": self._transfers(),
        }

    @property
    def max_uploads(self) -> int:
        return self.upload_slots.limit

    @property
    def upload_cap(self) -> float | None:
        return self.upload_rate.rate if self.upload_rate is not None else None

    def set_upload_limits(self, max_uploads: int, upload_rate: float | None) -> None:
        """
        Change C{--max-uploads} and C{--upload-rate} while the peer runs
        (from its web page).  A changed cap holds at once for every upload
        begun under a cap; an upload keeps the way it began otherwise
        (uncapped, or under the cap just removed) and the new limits hold
        for every upload that begins from now on.
        """
        self.upload_slots.set_limit(max_uploads, upload_rate)
        if upload_rate is None:
            self.upload_rate = None
        elif self.upload_rate is None:
            self.upload_rate = UploadRate(upload_rate, self.clock)
        else:
            self.upload_rate.set_rate(upload_rate)
        self.log.info("uploads now: at most {n} at once, {rate}", n=max_uploads,
                      rate=f"{human_size(upload_rate)}/s in all" if upload_rate else "no rate cap")

    def _transfers(self) -> list[dict[str, object]]:
        now = self.clock.seconds()
        return [
            t.status(now)
            for t in sorted(self.transfers.values(), key=lambda t: (t.direction, t.name))
        ]

    def summary(self) -> tuple[int, int, list[dict[str, object]]]:
        """
        What the metadata server's page shows of this peer: how many files
        it shares, their bytes, and its transfers (the first
        L{wire.MAX_REPORTED}, downloads first).
        """
        files = self.share.files.values() if self.share is not None else []
        return len(files), sum(f.size for f in files), self._transfers()[:wire.MAX_REPORTED]

    # Fetching.

    async def fetch(
        self,
        name: str,
        directory: Path | None = None,
        force: bool = False,
        progress: Progress | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        sources: int = SOURCES,
        only: str | None = None,
        note: Note | None = None,
    ) -> Fetched | FolderFetched:
        """
        Find C{name} in the network (a path, a bare file name, a folder,
        or C{sha256:HEX}: see L{wanted}) and download it from up to
        C{sources} holders at once (only from C{only}, if given) into the
        downloads directory unless told otherwise; it is then shared
        onward.  A folder is every file under it, L{FOLDER_AT_ONCE} at a
        time.
        """
        directory = directory or self.downloads
        if self.downloader is None or directory is None:
            raise FetchError(wire.E_FAILED, "this peer does not download files")
        target = await self.wanted(name, timeout, note, only)
        if target.folder:
            return await self._fetch_folder(
                target, directory, force, progress, timeout, sources, only, note
            )
        return await self._fetch_one(
            target.name, directory, force, progress, timeout, sources, only, note, target.matches
        )

    async def _fetch_one(
        self, name: str, directory: Path, force: bool, progress: Progress | None,
        timeout: float, sources: int, only: str | None, note: Note | None,
        first: list[Match] | None = None, same_content: bool = True,
    ) -> Fetched:
        """
        One file, shown in C{p2p status} while it runs.  C{first}: its
        holders as found (with C{same_content}, joined by every holder of
        the same bytes under another name).
        """
        key = object()  # two downloads of one name (into two folders) are two
        transfer = self.transfers[key] = Transfer(name, "down", "", self.clock.seconds())
        self._transfers_changed()

        def track(done: int, total: int, sending: int = 0) -> None:
            if transfer.first is None:
                transfer.first = done  # a resumed download starts part-way
            transfer.done, transfer.total = done, total
            # How many are sending now (none while it waits for a holder).
            transfer.peer = f"{sending} holder{'' if sending == 1 else 's'}" if sending else ""
            if progress is not None:
                progress(done, total, sending)

        def route(holders: list[Match]) -> None:
            transfer.path = path_of(holders, self.reachable())

        try:
            return await self._fetch(
                name, directory, force, track, timeout, sources, only, note, first, same_content,
                route,
            )
        finally:
            del self.transfers[key]
            self._transfers_changed()

    async def _fetch_folder(
        self, folder: Wanted, directory: Path, force: bool, progress: Progress | None,
        timeout: float, sources: int, only: str | None, note: Note | None,
    ) -> FolderFetched:
        """
        Every file under a folder, each from whoever holds it (the version
        most hold, when holders differ), L{FOLDER_AT_ONCE} at a time, into
        the same folders under C{directory}.  A file that fails does not
        stop the others; the result counts what was kept and names what
        failed.  Run again, it fetches only what is missing (a kept file
        is checked, not fetched; a part file resumes).
        """
        by_name: dict[str, list[Match]] = {}
        for m in folder.matches:
            by_name.setdefault(m.name, []).append(m)
        sizes = {name: max(m.size for m in ms) for name, ms in by_name.items()}
        done_of: dict[str, int] = {}
        total = sum(sizes.values())
        sending_of: dict[str, int] = {}
        result = FolderFetched(directory / folder.name, len(by_name))

        def track(name: str) -> Progress:
            def moved(done: int, of: int, sending: int = 0) -> None:
                done_of[name], sending_of[name] = done, sending
                if progress is not None:
                    progress(sum(done_of.values()), total, sum(sending_of.values()))
            return moved

        async def one(name: str) -> None:
            try:
                fetched = await self._fetch_one(
                    name, directory, force, track(name), timeout, sources, only, note,
                    by_name[name], same_content=False,
                )
            except LocalFault:
                raise  # the disk is full: every file would fail the same way
            except FetchError as e:
                result.failed.append((name, e.text))
                if note is not None:
                    note(f"{name}: {e.text}")
                return
            finally:
                sending_of[name] = 0
            done_of[name] = sizes[name]
            result.kept += 1
            result.already += fetched.already
            result.bytes += fetched.size
            result.notes += fetched.notes

        at_once = DeferredSemaphore(FOLDER_AT_ONCE)
        running = [at_once.run(one, name) for name in sorted(by_name)]
        try:
            await gatherResults(running, consumeErrors=True)
        except BaseException as e:
            for d in running:
                d.cancel()  # Ctrl-C, or a fault of this machine: stop them all
            if isinstance(e, FirstError):
                e.subFailure.raiseException()  # what went wrong, not its wrapping
            raise
        result.failed.sort()
        return result

    async def _fetch(
        self, name: str, directory: Path, force: bool, progress: Progress, timeout: float,
        sources: int = SOURCES, only: str | None = None, note: Note | None = None,
        first_matches: list[Match] | None = None, same_content: bool = True,
        route: Callable[[list[Match]], None] = lambda holders: None,
    ) -> Fetched:
        assert self.downloader is not None
        # Rounds of searching and fetching, as peer/download/rounds.py says;
        # what happened on the way (holders dropped, the file changed at its
        # source) is told at the end.
        downloader = self.downloader
        notes: list[str] = []
        first: str | None = None  # the version found first
        # What this download learns of the addresses it is given, across
        # all its searches (peer/download/book.py, Ledger): search results
        # may be forged, and name any address.
        ledger = downloader.new_ledger()
        rounds = Rounds(name, ledger)
        fetched: Fetched | None = None
        for searches, pause in enumerate(rounds):
            if first_matches is not None:
                if same_content:
                    first_matches = await self._with_same_content(first_matches, only)
                matches, first_matches = first_matches, None
            else:
                try:
                    matches = await self._holders(name, timeout, note, only)
                except FetchError as e:
                    if searches == 0 or pause is None or not rounds.wait_for_holders(e):
                        e.notes = notes
                        raise
                    self._pause_note(f"{name}: no holder of it is in the network now", pause, note)
                    await deferLater(self.clock, pause)
                    continue
            failed: FetchError | None = None
            # The version most addresses hold first; the next one at once
            # only if none of its holders is left to try.
            for version in downloader.versions(matches, ledger):
                first = first or version[0].sha256
                route(version)
                try:
                    fetched = await downloader.fetch(
                        version, directory, force, progress, 1 if only else sources,
                        discover=None if only else self._discover(version[0].sha256, timeout),
                        ledger=ledger,
                    )
                    break
                except LocalFault:
                    raise  # no holder can help with a fault of this machine
                except FetchError as e:
                    notes += [n for n in e.notes if n not in notes]
                    if not rounds.holders_failed(e):
                        e.notes = notes
                        raise
                    failed = failed or e
                    if downloader.versions(version, ledger):
                        break  # its holders may do better after a pause
            if fetched is not None:
                break
            error, again = rounds.failed(matches, failed)
            if pause is None or not again:
                error.notes = notes
                raise error
            self._pause_note(error.text, pause, note)
            await deferLater(self.clock, pause)
        assert fetched is not None
        if first is not None and fetched.sha256 != first and first in ledger.progressed:
            notes.append(
                f"{name}: the version found first (sha256 {first[:16]}...) could not be fetched "
                f"any more; this is the version its holders have now "
                f"(sha256 {fetched.sha256[:16]}...)"
            )
        fetched.notes = notes + [n for n in fetched.notes if n not in notes]
        if directory == self.downloads and not self._share_at_once(fetched):
            await self.refresh()
        return fetched

    def _pause_note(self, why: str, pause: float, note: Note | None) -> None:
        """
        Say (in the log, and to whoever waits) that a download searches for
        its holders again after C{pause} seconds, and why.
        """
        self.log.info("{why}; searching again in {pause} s", why=why, pause=pause)
        if note is not None:
            note(f"{why}; searching again in {pause:.0f} s")

    def _discover(self, sha: str, timeout: float) -> Callable[[], Deferred[list[Match]]]:
        """
        How a download finds more holders while it runs: everyone who
        holds its content, under any path.
        """
        return lambda: Deferred.fromCoroutine(self._others(same_content(sha), timeout))

    async def _with_same_content(self, matches: list[Match], only: str | None) -> list[Match]:
        """
        C{matches} of one version, and after them every other holder of
        the same content, whatever path it holds it under.
        """
        if only is not None or not matches:
            return matches
        try:
            more = await self._others(same_content(matches[0].sha256), SAME_CONTENT_WAIT)
        except CancelledError:
            raise  # the download was stopped (p2p cancel, a pause, Ctrl-C): not a failure
        except Exception as e:  # the holders found by name will do
            self.log.info("looking for other holders of {name} failed: {why}",
                          name=matches[0].name, why=str(e))
            return matches
        known = {(m.holder, m.name) for m in matches}
        return matches + [m for m in more if (m.holder, m.name) not in known]

    def _share_at_once(self, fetched: Fetched) -> bool:
        """
        A file just downloaded into the share is shared at once, with the
        hashes it was verified against, without a scan of the whole share:
        whether it could be (else a scan it is).
        """
        if self.share is None or fetched.already:
            return False
        try:
            name = fetched.path.relative_to(self.share.directory).as_posix()
        except ValueError:
            return False
        if not self.share.add(name):
            return False
        f, was = self.share.files[name], self._announced.get(name)
        self._announced[name] = f  # one file: no diff of the whole share
        if was is None:
            self._files_changed()
        if was is None or was.sha256 != f.sha256:
            self._log_sharing(f)
        return True
