"""
L{DownloadQueue}: downloads that outlive the command that asked for them.

C{p2p get --background} puts a download here and returns at once; the
peer runs at most L{AT_ONCE} of them together, oldest first, and keeps
finished and failed ones (with the reason) for C{p2p downloads} until
there are more than L{KEPT}.  The queue is written to the data dir
(C{downloads.json}, replaced atomically) at every change of state, so
queued and interrupted downloads survive a restart of the peer and
resume from their verified pieces (the part files stay beside their
targets).  C{p2p cancel} removes one, or every one under a folder.  The
web page also pauses one (it stops, keeping what it verified, and waits
until it is resumed, across restarts too) and resumes one (a paused one,
or one that failed or was cancelled: it is queued again).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from p2pshare import wire
from p2pshare.disk import atomic_write, human_size
from p2pshare.peer.download.transfer import FetchError

AT_ONCE = 2  # downloads of the queue running together
REASON_MAX = 600  # bytes of a reason as JSON: each entry is one line of p2p downloads
KEPT = 200  # finished, failed and cancelled entries kept for p2p downloads
MAX_QUEUED = 1_000  # entries waiting, at most (the file is rewritten at every change)
QUEUE_FILE = "downloads.json"

# fetch(name, directory, force, progress, sources=, only=, note=): PeerFiles.fetch
Fetch = Callable[..., Any]


@dataclass
class Download:
    """
    One entry of the queue.  C{state}: C{queued}, C{running}, C{paused},
    C{done}, C{failed} or C{cancelled}.
    """

    id: int
    name: str
    directory: str | None = None  # None: the peer's downloads folder
    force: bool = False
    sources: int = 4
    holder: str | None = None  # --from
    state: str = "queued"
    reason: str = ""  # why it failed, or what it kept
    path: str = ""  # where it was kept
    done: int = 0  # bytes verified
    total: int = 0
    resumed_at: int | None = None  # bytes already verified when this run began
    rate: int = 0  # bytes per second, this run
    holders: int = 0  # holders sending now
    added: float = 0.0
    started: float | None = None
    ended: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def covers(self, name: str) -> bool:
        """
        Does C{p2p cancel NAME} mean this one: its name, or a folder above it?
        """
        mine, asked = self.name.casefold().rstrip("/"), name.casefold().rstrip("/")
        return mine == asked or mine.startswith(asked + "/")


_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,), "name": (str,), "directory": (str, type(None)), "force": (bool,),
    "sources": (int,), "holder": (str, type(None)), "state": (str,), "reason": (str,),
    "path": (str,), "done": (int,), "total": (int,), "resumed_at": (int, type(None)),
    "added": (int, float), "started": (int, float, type(None)),
    "ended": (int, float, type(None)),
}
_STATES = ("queued", "running", "paused", "done", "failed", "cancelled")


def _entry(item: object) -> Download | None:
    """
    A kept entry, if it is one: every field of its type, a state, a name
    and a folder this peer could have been given, counts in range.
    """
    if not isinstance(item, dict):
        return None
    fields_ = {k: v for k, v in item.items() if k in _TYPES}
    for k, v in fields_.items():
        if not isinstance(v, _TYPES[k]) or (isinstance(v, bool) and bool not in _TYPES[k]):
            return None
    if not {"id", "name"} <= fields_.keys():
        return None
    entry = Download(**fields_)
    directory_ok = entry.directory is None or os.path.isabs(entry.directory)
    if (entry.id < 1 or entry.state not in _STATES or not 1 <= entry.sources <= 64
            or not entry.name or not directory_ok):
        return None
    return entry


class DownloadQueue(Service):
    log = Logger()

    def __init__(self, fetch: Fetch, clock: IReactorTime, path: Path | None) -> None:
        """
        @param fetch: how one download runs (L{p2pshare.peer.files.PeerFiles.fetch}).
        @param path: the file the queue is kept in; None: kept in memory only.
        """
        self._fetch = fetch
        self.clock = clock
        self.path = path
        self.entries: dict[int, Download] = {}
        self._running: dict[int, Deferred[Any]] = {}
        self._next_id = 1
        self._open = False  # downloads run only once the peer has joined
        self._load()

    # Keeping it.

    def _load(self) -> None:
        """
        The queue as it was kept; an entry that is not one (a field of the
        wrong type, a file written by hand) is left out, a file that is not
        a queue at all is an empty queue, each said in the log.
        """
        if self.path is None:
            return
        try:
            saved = json.loads(self.path.read_text("utf-8"))
            raw = saved["downloads"]
            if not isinstance(raw, list):
                raise TypeError("its downloads are not a list")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.log.warn("the download queue in {path} could not be read ({why}); "
                          "it starts empty", path=str(self.path), why=str(e))
            return
        bad = 0
        for item in raw[: MAX_QUEUED + KEPT]:
            entry = _entry(item)
            if entry is None or entry.id in self.entries:
                bad += 1
                continue
            if entry.state == "running":
                entry.state = "queued"  # the peer stopped under it: it resumes
            self.entries[entry.id] = entry
        if bad or len(raw) > MAX_QUEUED + KEPT:
            self.log.warn("{n} entries of the download queue in {path} were left out (not "
                          "downloads this peer wrote, or too many)",
                          n=bad + max(0, len(raw) - MAX_QUEUED - KEPT), path=str(self.path))
        self._next_id = max(self.entries, default=0) + 1
        waiting = sum(not e.finished for e in self.entries.values())
        if waiting:
            self.log.info("{n} queued or interrupted downloads will resume once joined", n=waiting)

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"downloads": [asdict(e) for e in self.entries.values()]}
        try:
            atomic_write(self.path, json.dumps(data, indent=1).encode("utf-8"))
        except OSError as e:
            self.log.warn("could not keep the download queue in {path}: {why}",
                          path=str(self.path), why=e.strerror or str(e))

    # What p2p asks.

    def add(self, name: str, directory: Path | None = None, force: bool = False,
            sources: int = 4, holder: str | None = None) -> Download:
        """
        Queue a download; it starts when its turn comes (at once, if fewer
        than L{AT_ONCE} run).  The same name into the same folder while it
        waits or runs is that one, not a second.
        """
        where = str(directory) if directory is not None else None
        for e in self.entries.values():
            if not e.finished and e.name == name and e.directory == where:
                return e
        if sum(not e.finished for e in self.entries.values()) >= MAX_QUEUED:
            raise FetchError("busy", f"the download queue is full ({MAX_QUEUED:,} waiting)")
        entry = Download(self._next_id, name, where, force, sources, holder,
                         added=self.clock.seconds())
        self._next_id += 1
        self.entries[entry.id] = entry
        self._forget_old()
        self._save()
        self._run_next()
        return entry

    def cancel(self, name: str) -> list[Download]:
        """
        Cancel every download that is C{name} or under the folder C{name}
        and has not finished: those running stop (what they verified
        stays on disk, for a later get to resume).
        """
        cancelled = [e for e in self.entries.values() if not e.finished and e.covers(name)]
        for e in cancelled:
            self._ended(e, "cancelled", "cancelled by p2p cancel")
            self._stop(e)
        if cancelled:
            self._save()
            self._run_next()
        return cancelled

    def cancel_one(self, ident: int) -> Download:
        """
        Cancel the download C{ident} unless it has ended.
        """
        e = self._by_id(ident)
        if not e.finished:
            self._ended(e, "cancelled", "cancelled")
            self._stop(e)
            self._save()
            self._run_next()
        return e

    def pause(self, ident: int) -> Download:
        """
        Stop the download C{ident} (what it verified stays in its part
        file) and keep it waiting until L{resume}.
        """
        e = self._by_id(ident)
        if e.finished:
            raise FetchError(wire.E_UNEXPECTED, f"download {ident} has ended ({e.state})")
        if e.state != "paused":
            e.state, e.rate, e.holders = "paused", 0, 0
            self._stop(e)
            self._save()
            self._run_next()
        return e

    def resume(self, ident: int) -> Download:
        """
        Queue the download C{ident} again: a paused one, or one that failed
        or was cancelled (it resumes from what it verified).
        """
        e = self._by_id(ident)
        if e.state in ("paused", "failed", "cancelled"):
            e.state, e.reason, e.ended = "queued", "", None
            self._save()
            self._run_next()
        elif e.state == "done":
            raise FetchError(wire.E_UNEXPECTED, f"download {ident} is done")
        return e

    def _by_id(self, ident: int) -> Download:
        e = self.entries.get(ident)
        if e is None:
            raise FetchError(wire.E_NOT_FOUND, f"there is no download {ident}")
        return e

    def _stop(self, e: Download) -> None:
        running = self._running.pop(e.id, None)
        if running is not None:
            running.cancel()

    def listing(self) -> Iterator[dict[str, Any]]:
        for e in sorted(self.entries.values(), key=lambda e: e.id):
            yield asdict(e)

    def _ended(self, e: Download, state: str, reason: str, path: str = "") -> None:
        e.state, e.ended, e.holders, e.rate, e.path = state, self.clock.seconds(), 0, 0, path
        while len(json.dumps(reason)) > REASON_MAX:  # as it travels: one line per entry
            reason = reason[: len(reason) * 3 // 4] + "\u2026"
        e.reason = reason

    # Running it.

    def open(self) -> None:
        """
        The peer has joined: downloads may run.
        """
        self._open = True
        self._run_next()

    def stopService(self) -> None:
        """
        The peer stops: what runs is interrupted, not failed; it stays
        C{running} in the file and resumes at the next start.
        """
        self._open = False
        running, self._running = self._running, {}
        for d in running.values():
            d.cancel()
        self._save()
        super().stopService()

    def _run_next(self) -> None:
        if not self._open:
            return
        for e in sorted(self.entries.values(), key=lambda e: e.id):
            if len(self._running) >= AT_ONCE:
                return
            if e.state == "queued":
                self._start(e)

    def _start(self, e: Download) -> None:
        e.state, e.started, e.reason = "running", self.clock.seconds(), ""
        e.resumed_at = None
        self._save()
        self.log.info("download {id} of {name} started", id=e.id, name=e.name)

        run: list[Deferred[Any]] = []

        def progress(done: int, total: int, sending: int = 0) -> None:
            if run and self._running.get(e.id) is not run[0]:
                return  # a run that was stopped: it no longer speaks for the entry
            if e.resumed_at is None:
                e.resumed_at = done
            elapsed = self.clock.seconds() - (e.started or 0)
            e.done, e.total, e.holders = done, total, sending
            e.rate = int((done - e.resumed_at) / elapsed) if elapsed > 0 else 0

        d = Deferred.fromCoroutine(self._fetch(
            e.name, Path(e.directory) if e.directory else None, e.force, progress,
            sources=e.sources, only=e.holder, note=lambda text: self._note(e, text),
        ))
        self._running[e.id] = d
        run.append(d)
        d.addCallbacks(self._kept, self._failed, callbackArgs=(e, d), errbackArgs=(e, d))

    def _note(self, e: Download, text: str) -> None:
        self.log.info("download {id}: {text}", id=e.id, text=text)

    def _current(self, e: Download, d: Deferred[Any]) -> bool:
        """
        Is C{d} the run of C{e} now?  A run that was paused, cancelled or
        replaced by a newer one says nothing about the entry when it ends.
        """
        if self._running.get(e.id) is not d:
            return False
        del self._running[e.id]
        return True

    def _kept(self, result: Any, e: Download, d: Deferred[Any]) -> None:
        if not self._current(e, d):
            return
        failed = getattr(result, "failed", [])
        if failed:  # a folder: some of its files could not be kept
            self._ended(e, "failed", f"{len(failed)} of {result.files} files failed; "
                        f"first: {failed[0][0]}: {failed[0][1]}", str(result.path))
        elif hasattr(result, "files"):
            self._ended(e, "done", f"{result.kept} files, {human_size(result.bytes)}",
                        str(result.path))
        else:
            e.done = e.total = result.size
            self._ended(e, "done", "already here, identical" if result.already else "verified",
                        str(result.path))
        self.log.info("download {id} of {name}: {state} ({reason})", id=e.id, name=e.name,
                      state=e.state, reason=e.reason)
        self._save()
        self._run_next()

    def _failed(self, failure: Any, e: Download, d: Deferred[Any]) -> None:
        if not self._current(e, d):
            return
        e.holders = e.rate = 0
        if failure.check(CancelledError):
            return  # cancelled (said already), or the peer stops: it resumes at the next start
        if failure.check(FetchError):
            self._ended(e, "failed", failure.value.text)
            self.log.info("download {id} of {name} failed: {why}", id=e.id, name=e.name,
                          why=e.reason)
        else:
            self._ended(e, "failed", failure.getErrorMessage() or "the download failed")
            self.log.failure("download {id} of {name} failed", failure, id=e.id, name=e.name)
        self._save()
        self._run_next()

    def _forget_old(self) -> None:
        ended = sorted((e for e in self.entries.values() if e.finished),
                       key=lambda e: e.ended or 0)
        for e in ended[: max(0, len(ended) - KEPT)]:
            del self.entries[e.id]
