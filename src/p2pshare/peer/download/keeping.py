"""
Where a download grows and how it is kept: the part file (hidden beside
the target, named by the version it is for, locked by one download at a
time), the parts of other versions whose pieces may serve this one, and
keeping the verified file under its name (a link that never overwrites,
or a replace when asked, then the directory fsynced), with one sentence
for a fault of this machine.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from p2pshare import wire
from p2pshare.disk import fsync_directory, human_size


class FetchError(Exception):
    def __init__(self, code: str, text: str, notes: list[str] | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.notes = notes or []  # what happened on the way (holders dropped)


class LocalFault(FetchError):
    """
    This machine cannot keep the file (no space, no permission): no other
    holder would help, so nothing is retried.
    """

    def __init__(self, text: str) -> None:
        super().__init__(wire.E_FAILED, text)


@dataclass
class Fetched:
    path: Path
    size: int
    sha256: str
    holder: str | None  # who sent it ("s2, s3"); None when the file was already there
    already: bool = False
    notes: list[str] = field(default_factory=list)  # holders dropped, and why


def part_path(directory: Path, name: str, sha256: str) -> Path:
    """
    The hidden file a download of version C{sha256} of C{name} grows in
    (a long name is cut so that the part's name fits in 255 bytes).
    """
    return directory / f".{_part_stem(name)}.{sha256[:16]}.part"


def _part_stem(name: str) -> str:
    room = 255 - len(".") - len(".0123456789abcdef.part")
    return name.encode("utf-8")[:room].decode("utf-8", "ignore")


def local_fault(e: OSError, directory: Path, needed: int) -> LocalFault:
    """
    One sentence for a fault of this machine.
    """
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return LocalFault(f"no space left on {directory}: {human_size(needed)} needed")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return LocalFault(f"cannot write into {directory}: {(e.strerror or str(e)).lower()}")
    return LocalFault(f"cannot write into {directory}: {(e.strerror or str(e)).lower()}")


class PartFile:
    """
    The temporary file of one download, locked for as long as it is open.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # as any new file: the umask decides
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        self.f: BinaryIO = os.fdopen(fd, "r+b")
        self.kept = 0  # bytes verified in it, as far as this download knows

    def size(self) -> int:
        self.f.flush()  # what was written, not only what reached the file
        return os.fstat(self.f.fileno()).st_size

    def restart_at(self, offset: int) -> None:
        self.f.truncate(offset)
        self.f.seek(offset)

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()  # and the lock goes with it

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.close()


def other_versions(directory: Path, name: str, keep: Path) -> list[PartFile]:
    """
    The parts of other versions of C{name} that no download holds, locked:
    their pieces may serve this version, then they are discarded.
    """
    stem = _part_stem(name)
    mine = re.compile(rf"\.{re.escape(stem)}\.[0-9a-f]{{16}}\.part")
    found = []
    for other in directory.glob(f".{_glob_escape(stem)}.*.part"):
        if other == keep or not mine.fullmatch(other.name):
            continue  # ours, or another name's (".a.b.SHA.part" is not a part of "a")
        try:
            found.append(PartFile(other))
        except (BlockingIOError, OSError):
            continue  # in use, or gone
    return found


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def keep(part: Path, target: Path, replace: bool) -> None:
    if replace:
        os.replace(part, target)
    else:
        os.link(part, target)  # fails if target exists: nothing is overwritten
        os.unlink(part)
    fsync_directory(target.parent)



def allocated(part: PartFile) -> int:
    try:
        return os.fstat(part.f.fileno()).st_blocks * 512
    except OSError:
        return 0
