"""
The files a peer offers: L{ShareIndex} over its C{--shared} directory.

The whole tree is shared, each file by its path relative to the share
(C{music/live/set.ogg}): no hidden files or folders (downloads in progress
are hidden files), no symlink whose target lies outside the share, and
nothing private: the peer's data dir (its token, its manhole credentials,
its log) and the files holding the network's secrets are never shared,
wherever they lie, recognised by device and inode rather than by name.
Each file's size and SHA-256 are computed once and kept while its size,
mtime and inode stay the same, so a rescan costs one C{stat} per file;
files added, changed or removed are noticed at the next scan, without a
restart.  Only finished files are offered: a new or changed file is
hashed once it has not changed for the settle time (L{SETTLE_TIME} in a
real peer), and a file that changes while it is hashed is dropped until
it settles again, so a file still being copied in is never offered with
part of its bytes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from p2pshare import wire
from p2pshare.disk import DATA_DIR_MARK
from p2pshare.pieces import hash_file, root_of

CHUNK = 1 << 20
SETTLE_TIME = 2.0  # seconds a new or changed file must stay unchanged before it is offered
NAME_MAX = 255  # bytes in one segment of a path
PATH_MAX = 1000  # bytes in a whole path (its percent-encoded form must fit a line)
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]|[\ud800-\udfff]")


@dataclass(frozen=True)
class SharedFile:
    name: str
    size: int
    sha256: str
    stamp: tuple[int, int, int]  # size, mtime_ns, inode: when to hash again
    pieces: bytes = b""  # the piece list (pieces.py), computed with the SHA-256

    @property
    def root(self) -> str:
        return root_of(self.pieces)


def changed_at(st: os.stat_result) -> float:
    """
    When the file last changed, as far as anyone can tell: its
    modification time, or the time its inode changed (a copy that keeps
    the source's mtime, C{cp -p}, still moves that), the later.
    """
    if st.st_mtime > time.time():  # a date from the future (an archive, a clock skew)
        return st.st_ctime
    return max(st.st_mtime, st.st_ctime)


def stamp_of(st: os.stat_result) -> tuple[int, int, int]:
    """
    What tells that a file has changed since it was hashed
    (L{SharedFile.stamp}): its size, modification time and inode.
    """
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def is_shareable_name(name: str) -> bool:
    """
    Can a file of this name be shared and asked for over the network?  A
    name is a path relative to the share, C{/} between folders: no empty
    segment, none hidden (C{.} first, so no C{..} either), none longer than
    255 bytes, no backslash or control character, and short enough to
    travel on the wire.
    """
    return (0 < _size(name) <= PATH_MAX and all(map(_is_shareable_segment, name.split("/")))
            and _travels(name))


def _travels(name: str) -> bool:
    """
    Does C{name} fit a field of the wire once percent-encoded (a name of
    accented letters takes six characters for each)?  A name that did not
    would make every search answer of this peer unsendable.  A name of
    at most a third of the field's length in bytes always fits (each byte
    takes three characters at most): only longer ones are encoded, so a
    scan of a big share does not encode every name.
    """
    if _size(name) * 3 <= wire.QUOTED_MAX:
        return True
    try:
        return wire.FILE(wire.quote_name(name)) is None
    except (UnicodeError, wire.WireError):
        return False


def _is_shareable_segment(segment: str) -> bool:
    return (
        0 < _size(segment) <= NAME_MAX
        and not segment.startswith(".")
        and _BAD_NAME.search(segment) is None
    )


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def is_pattern(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


SHA_PREFIX_MIN = 12  # hex digits of a SHA-256 that name a file (what search prints)
CONTENT = re.compile(rf"sha256:([0-9a-fA-F]{{{SHA_PREFIX_MIN},64}})")


def by_content(pattern: str) -> str | None:
    """
    The SHA-256, or its first 12 to 64 hex digits, that a C{sha256:HEX}
    pattern asks for (lower case), or None: a file's content is found by
    any prefix at least as long as what search prints.
    """
    m = CONTENT.fullmatch(pattern)
    return m.group(1).lower() if m else None


def glob_escape(text: str) -> str:
    """
    C{text} as a glob (L{matches}) that matches only itself: C{[ ] ? *}
    in a name are characters, not wildcards.
    """
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


EXACT = 1  # how a pattern is read: the whole name
WORDS = 2  # ... its words as they are, even with * ? [ in them


def matches(pattern: str, name: str, exact: int = 0) -> bool:
    """
    Does C{pattern} find C{name}, ignoring letter case?  With C{exact}
    (L{EXACT}), it is the whole name; with C{* ? [} (unless C{exact} is
    L{WORDS}), a shell glob on the whole name (C{*} also matches C{/});
    otherwise every one of its space-separated words appears somewhere in
    the name (C{live ogg} finds C{music/Live/set.ogg}).
    """
    name, pattern = name.casefold(), pattern.casefold()
    if exact == EXACT:
        return name == pattern
    if exact != WORDS and is_pattern(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    words = pattern.split()
    return bool(words) and all(word in name for word in words)


def answers(pattern: str, exact: int, name: str, sha256: str) -> bool:
    """
    Does a file of this name and content answer the search C{pattern}
    (read as L{matches} reads it, or C{sha256:HEX} by content)?
    """
    sha = by_content(pattern)
    if sha is not None:
        return sha256.startswith(sha)
    return matches(pattern, name, exact)


def sha256_of(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


Inode = tuple[int, int]  # (st_dev, st_ino): a file or folder, whatever its name


def inode_of(st: os.stat_result) -> Inode:
    return (st.st_dev, st.st_ino)


def _walk(
    top: str, private: frozenset[Inode] = frozenset(), found: set[str] | None = None
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """
    Every entry under C{top} that could be a shared file, with its path
    relative to C{top}: hidden entries, symlinked folders, the folders in
    C{private} and any role's data dir (it holds L{DATA_DIR_MARK}) are
    skipped (the names of those last two are added to C{found}).
    """
    stack = [("", top)]
    while stack:
        prefix, folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            # The folders above were checked on the way down: only this
            # segment, and the whole path's length.
            name = prefix + entry.name
            if not _is_shareable_segment(entry.name) or _size(name) > PATH_MAX \
                    or not _travels(name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if (private and inode_of(entry.stat(follow_symlinks=False)) in private) \
                            or os.path.lexists(os.path.join(entry.path, DATA_DIR_MARK)):
                        if found is not None:
                            found.add(name + "/")
                        continue
                    stack.append((name + "/", entry.path))
                    continue
            except OSError:
                continue
            yield name, entry


def _subfolders(folder: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _files_in(folder: str) -> set[Inode]:
    found = set()
    try:
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                found.add(inode_of(entry.stat(follow_symlinks=False)))
    except OSError:
        pass
    return found


class ShareIndex:
    """
    The shared directory, indexed.  L{refresh} does blocking I/O (it hashes
    new files): run it in a thread.  Readers on the reactor thread see the
    old index or the new one, never a mix.
    """

    def __init__(
        self, directory: Path, private: tuple[Path, ...] = (), settle: float = 0.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        """
        @param private: folders and files never to share (the data dir, the
            secret and key files), wherever they lie: compared by device and
            inode, so no name or link leads to them.
        @param settle: seconds a new or changed file must stay unchanged
            before it is hashed and offered.
        @param now: the wall clock that file times are compared with.
        """
        self.directory = Path(directory)
        self.private = private
        self.settle = settle
        self.now = now
        self.withheld: frozenset[str] = frozenset()  # what the last scan kept private
        self.files: dict[str, SharedFile] = {}
        self._learned: dict[str, SharedFile] = {}
        self.walked = 0.0  # seconds the last scan took, hashing new files aside
        self.scans = 0  # scans finished
        # Indexed: a scan found nothing still changing, or a scan ran once
        # the files changing at the first one had had their settle time.
        self.indexed = False
        self._first_scan: float | None = None
        # Files seen but not offered yet: still changing (or changed while
        # hashed).  The seconds until the first of them may have settled.
        self.unsettled: frozenset[str] = frozenset()
        self.settles_in: float | None = None
        # The scan running now: files hashed and to hash, bytes likewise.
        self.progress: tuple[int, int, int, int] = (0, 0, 0, 0)

    def learn(self, known: SharedFile) -> None:
        """
        A file this peer has just verified itself (a download): the next
        scan takes its hashes as they are, without reading it again, if
        the file still has the C{stamp} it had when it was verified.
        """
        self._learned[known.name] = known

    def add(self, name: str) -> bool:
        """
        Share a file this peer has just verified and kept (it was learned)
        at once, rather than after the next scan of the whole share (0.3 s
        for 50,000 files): whether it could be (it is still the file that
        was verified).  On the reactor thread; the index is replaced, not
        changed, as a scan does.
        """
        known = self._learned.get(name)
        if known is None or not self._unchanged(known):
            return False
        self.files = {**self.files, name: known}
        return True

    def _unchanged(self, known: SharedFile) -> bool:
        try:
            st = os.stat(self.directory / known.name, follow_symlinks=False)
        except OSError:
            return False
        return (
            stat.S_ISREG(st.st_mode) and stamp_of(st) == known.stamp
            and self.resolve(known.name) is not None  # inside, and not private
        )

    def refresh(self) -> dict[str, SharedFile]:
        """
        Walk the whole tree: every shareable file by its path relative to
        the share.  Hidden folders are not entered, nor symlinked ones
        (a tree could then hold itself); a symlinked file counts if it
        stays inside.  A file is hashed only when new or changed.
        """
        private = self._private_inodes()
        try:
            real_dir = os.path.realpath(self.directory)
            top = os.stat(real_dir)
        except OSError:
            self.files = {}
            self.scans += 1
            self.indexed = True
            return self.files
        if inode_of(top) in private or os.path.lexists(os.path.join(real_dir, DATA_DIR_MARK)):
            self.withheld = frozenset({"./"})  # the share is itself private
            self.files = {}
            self.scans += 1
            self.indexed = True
            return self.files
        old = self.files
        new: dict[str, SharedFile] = {}
        withheld: set[str] = set()
        started, hashing = time.monotonic(), 0.0
        unsettled: set[str] = set()
        settles_in: float | None = None
        to_hash: list[tuple[str, str, os.stat_result]] = []
        now = self.now()
        for name, entry in _walk(real_dir, private, withheld):
            try:
                if entry.is_symlink():
                    path = self.resolve(name, real_dir)
                    if path is None:
                        continue
                    st = os.stat(path)
                else:
                    path = entry.path
                    st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if inode_of(st) in private:
                withheld.add(name)
                continue
            stamp = stamp_of(st)
            known = old.get(name)
            if known is None or known.stamp != stamp:
                known = self._learned.pop(name, None)
            if known is not None and known.stamp == stamp:
                new[name] = known
                continue
            wait = changed_at(st) + self.settle - now
            if wait > 0:
                unsettled.add(name)  # still being written, perhaps: not yet
                settles_in = wait if settles_in is None else min(settles_in, wait)
                continue
            to_hash.append((name, path, st))
        total = sum(st.st_size for _, _, st in to_hash)
        done_bytes = 0
        for done, (name, path, st) in enumerate(to_hash):
            self.progress = (done, len(to_hash), done_bytes, total)
            began = time.monotonic()
            try:
                digest, pieces = hash_file(path)
                after = os.stat(path)
            except OSError:
                continue
            finally:
                hashing += time.monotonic() - began
                done_bytes += st.st_size
            if stamp_of(after) != stamp_of(st):
                unsettled.add(name)  # it changed while it was read: later
                settles_in = self.settle if settles_in is None else min(settles_in, self.settle)
                continue
            new[name] = SharedFile(name, st.st_size, digest, stamp_of(st), pieces)
        self.progress = (len(to_hash), len(to_hash), total, total)
        self.unsettled = frozenset(unsettled)
        self.settles_in = settles_in
        if self._first_scan is None:
            self._first_scan = now
        self.indexed = self.indexed or not unsettled or now >= self._first_scan + self.settle
        # A file downloaded while the walk ran may have been added (add())
        # after the walk passed its folder: it stays.
        for name, known in list(self._learned.items()):
            if name in new or self._unchanged(known):
                new.setdefault(name, known)
                self._learned.pop(name, None)
        self.walked = time.monotonic() - started - hashing
        self.withheld = frozenset(withheld)
        self.files = new
        self.scans += 1
        return new

    def _private_inodes(self) -> frozenset[Inode]:
        """
        The private folders and files, and the files in a private folder
        and its subfolders one level down (so that a hard link to the token
        is as private as the token), except a subfolder that holds the
        share itself (the default share lies in the data dir).
        """
        found = set()
        share = os.path.realpath(self.directory)
        for path in self.private:
            try:
                st = os.stat(path)
            except OSError:
                continue
            found.add(inode_of(st))
            if not stat.S_ISDIR(st.st_mode):
                continue
            for folder in [str(path), *_subfolders(str(path))]:
                real = os.path.realpath(folder)
                if folder != str(path) and (share == real or share.startswith(real + os.sep)):
                    continue
                found.update(_files_in(folder))
        return frozenset(found)

    def _is_private(self, path: str, real_dir: str) -> bool:
        """
        Is the file at real path C{path}, or a folder it lies in (up to and
        including the share), private?
        """
        private = self._private_inodes()
        folder = path
        while True:
            try:
                if private and inode_of(os.stat(folder)) in private:
                    return True
            except OSError:
                return True
            if folder != path and os.path.lexists(os.path.join(folder, DATA_DIR_MARK)):
                return True  # some role's data dir
            if folder == real_dir or len(folder) <= len(real_dir):
                return False
            folder = os.path.dirname(folder)

    def resolve(self, name: str, real_dir: str | None = None) -> str | None:
        """
        The real path of shared file C{name}, or L{None} if it is not a
        regular file inside the share (a symlink out, a directory, gone,
        or reached through a hidden folder).
        """
        if not is_shareable_name(name):
            return None
        real_dir = real_dir or os.path.realpath(self.directory)
        path = os.path.realpath(os.path.join(real_dir, name))
        inside = os.path.relpath(path, real_dir)
        if inside.startswith("..") or not is_shareable_name(inside.replace(os.sep, "/")):
            return None
        if not os.path.isfile(path) or self._is_private(path, real_dir):
            return None
        return path

    def search(self, pattern: str, exact: int = 0) -> list[SharedFile]:
        """
        The files that C{pattern} finds (L{matches}), or (C{sha256:HEX})
        whose content has that SHA-256.
        """
        sha = by_content(pattern)
        if sha is not None:
            return [f for _, f in sorted(self.files.items()) if f.sha256.startswith(sha)]
        return [f for name, f in sorted(self.files.items()) if matches(pattern, name, exact)]

    def by_sha256(self, sha: str) -> SharedFile | None:
        """
        A shared file with this content, if any.
        """
        for f in self.files.values():
            if f.sha256 == sha:
                return f
        return None


def get_problem(name: str) -> str | None:
    """
    What is wrong with C{name} as C{p2p get} and C{p2p cancel} take it
    (C{sha256:} and 12 to 64 hex digits, or a path a peer could share, a
    folder ending in C{/}); L{None} when nothing is.
    """
    if name.startswith("sha256:"):
        if by_content(name) is None:
            return "sha256: takes the file's SHA-256, or its first 12 or more hex digits"
        return None
    if not is_shareable_name(name.removesuffix("/")):
        return (f"{name!r} is not a name a peer shares: a path inside a share, '/' between "
                "folders, no segment empty or starting with '.'")
    return None
