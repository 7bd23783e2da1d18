"""
Storing verified pieces in a download's part file.

L{verify_and_write} checks one piece against its digest and writes it in
place; L{WholeHash} computes the whole file's SHA-256 in order, in a thread
of its own, as pieces are stored; L{verified_pieces} finds what a resumed
download already has.  Pure file work, no Twisted: the swarm calls these
from threads (peer/download/swarm.py, peer/download/direct.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from p2pshare.pieces import digest_of, piece_count, piece_span

WRITE_SIZE = 1 << 16  # bytes per pwrite(2): see pwrite_all


def _libc() -> Any:
    """
    The C library, for the two calls Python does not offer (or None).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if hasattr(libc, "sync_file_range"):
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return libc


_LIBC = _libc()
SYNC_FILE_RANGE_WRITE = 2
M_MMAP_THRESHOLD = -3


def start_writeback(fd: int, offset: int, length: int) -> None:
    """
    Ask the kernel to begin writing these bytes to disk now, without
    waiting for it (C{sync_file_range(2)} with C{SYNC_FILE_RANGE_WRITE}):
    the disk works while the rest arrives, and the download's one fsync
    at the end finds little left to write (it took 0.3 s of a 512 MiB
    download's 2 s).  Durability still comes from that fsync alone.
    Where there is no such call: nothing.
    """
    if length > 0 and hasattr(_LIBC, "sync_file_range"):
        _LIBC.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def return_buffers_to_the_system() -> None:
    """
    Make glibc's malloc give pieces back to the system when they are freed.
    A download allocates and frees a few MiB-sized buffers per piece;
    glibc raises its mmap threshold after the first such frees and then
    keeps them in the heap, where fragments pile up (peak RSS grew with
    the file: 69.5 MiB for 128 MiB, 79 MiB for 1 GiB).  Elsewhere: nothing.
    """
    if hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(M_MMAP_THRESHOLD, 1024 * 1024)  # fixed, so no longer adaptive


Parts = list[memoryview]  # a piece as it arrived: views of the received blocks, in order


def verify_and_write(
    fd: int, offset: int, parts: Parts, digest: bytes, writing: Any = None
) -> bool:
    """
    In a thread: write C{parts} at C{offset} if their SHA-256 is
    C{digest}.  The blocks are hashed and written where they are, never
    joined: no copy, and no fresh MiB-sized buffer per piece.  Writes to
    one file take C{writing} (a lock), if given: the kernel lets only one
    writer into a file at a time, and the others would spin on a CPU
    meanwhile.
    """
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    if h.digest() != digest:
        return False
    with writing or contextlib.nullcontext():
        pwrite_all(fd, parts, offset)
    start_writeback(fd, offset, sum(len(p) for p in parts))
    return True


def pwrite_all(fd: int, parts: Parts, offset: int) -> None:
    """
    Write every byte of C{parts} at C{offset}, L{WRITE_SIZE} bytes per
    system call.  Larger writes make Linux (6.x) put the file in large
    page-cache folios, whose pages a virtual machine's host may have to
    supply afresh: 512 MiB took 0.87 s in 1 MiB writes into such pages,
    0.18 s in 64 KiB ones (0.49 and 0.14 s into pages just freed), and
    C{curl}, our baseline, writes 16 KiB at a time.
    """
    for part in parts:
        for start in range(0, len(part), WRITE_SIZE):
            block = part[start:start + WRITE_SIZE]
            while block:
                written = os.pwrite(fd, block, offset)
                offset += written
                block = block[written:]


def verified_pieces(path: str, size: int, digests: bytes) -> set[int]:
    """
    In a thread: the pieces of a part file that already hold the right
    bytes (a resumed download).  Holes (never written) are skipped unread.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return set()
    try:
        return {i for i, _ in _good_pieces(fd, size, digests, set())}
    finally:
        os.close(fd)


def copy_matching_pieces(paths: Iterable[str], part: str, size: int, digests: bytes,
                         have: set[int]) -> set[int]:
    """
    In a thread: the pieces a download still lacks (not in C{have}) that
    a file here already holds at the same place with the right bytes (an
    older version of the file, or a part of one), copied into the part
    file C{part}, then synced: which pieces.  So a file edited in place at
    its source is fetched again only where it changed.  It opens the files
    itself: a download cancelled meanwhile closes its own, never one this
    thread still writes through (only bytes of the right pieces ever go in).
    """
    copied: set[int] = set()
    fd = os.open(part, os.O_WRONLY)
    try:
        for path in paths:
            try:
                source = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # gone since: nothing to take from it
            try:
                for i, data in _good_pieces(source, size, digests, have | copied):
                    pwrite_all(fd, [memoryview(data)], piece_span(i, size)[0])
                    copied.add(i)
            finally:
                os.close(source)
        if copied:
            os.fsync(fd)
    finally:
        os.close(fd)
    return copied


def _good_pieces(fd: int, size: int, digests: bytes, skip: set[int]) -> Iterator[tuple[int, bytes]]:
    """
    Each piece (not in C{skip}) that the file C{fd} holds at its place
    with the right bytes, and those bytes.
    """
    end = os.fstat(fd).st_size
    for i in range(piece_count(size)):
        start, stop = piece_span(i, size)
        if i in skip or stop > end or (stop > start and not _has_data(fd, start)):
            continue
        data = os.pread(fd, stop - start, start)
        if len(data) == stop - start and hashlib.sha256(data).digest() == digest_of(digests, i):
            yield i, data


def _has_data(fd: int, offset: int) -> bool:
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) == offset
    except OSError:
        return False  # a hole up to the end of the file (ENXIO)


class WholeHash:
    """
    The file's SHA-256, computed in order by a thread of its own while the
    pieces are stored, so that the file need not be read again at the end
    and this pass runs beside the pieces' own hashing (on another core).
    A piece stored in its turn is hashed from memory; one stored ahead of
    its turn is read back from the file when its turn comes (and so are
    pieces verified before, in a resumed download).  At most L{QUEUED}
    pieces wait for it: a thread handing it more waits, which holds the
    download's memory still.
    """

    QUEUED = 4

    def __init__(self, fd: int, size: int, stored: Iterable[int]) -> None:
        self.fd = fd
        self.size = size
        self.count = piece_count(size)
        self._sha = hashlib.sha256()
        self._next = 0  # pieces hashed so far, in order
        self._stored = set(stored)  # on disk and verified
        self._failed: OSError | None = None
        self._queue: queue.Queue[tuple[int, Parts, Callable[[], None] | None] | None] = queue.Queue(
            self.QUEUED
        )
        self._thread = threading.Thread(target=self._run, name="p2p whole-file hash", daemon=True)
        self._thread.start()

    def stored(self, index: int, parts: Parts, release: Callable[[], None] | None = None) -> None:
        """
        Piece C{index}, verified, is written: C{parts} are its bytes, and
        C{release} (if given) is called once they are no longer needed.
        Never from the reactor thread: it may wait.
        """
        self._queue.put((index, parts, release))

    def close(self) -> str | None:
        """
        Wait for every piece handed over, then end: the file's SHA-256 as
        stored if every piece was hashed, else None (the caller reads
        the file).
        """
        self._queue.put(None)
        self._thread.join()
        if self._failed is None and self._next == self.count:
            return self._sha.hexdigest()
        return None

    def _run(self) -> None:
        self._catch_up()
        while (item := self._queue.get()) is not None:
            index, parts, release = item
            try:
                if index == self._next and self._failed is None:
                    for part in parts:
                        self._sha.update(part)
                    self._next += 1
                else:
                    self._stored.add(index)
            finally:
                if release is not None:
                    release()
            self._catch_up()

    def _catch_up(self) -> None:
        while self._failed is None and self._next < self.count and self._next in self._stored:
            start, stop = piece_span(self._next, self.size)
            try:
                self._sha.update(os.pread(self.fd, stop - start, start))
            except OSError as e:
                self._failed = e
                return
            self._next += 1
