"""
The pieces of one swarm as they are kept: each verified against its
digest and written in place in the part file, then handed to the
whole-file hash (peer/download/storing.py does the writing and hashing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from p2pshare.peer.download import storing
from p2pshare.peer.download.storing import Parts, WholeHash
from p2pshare.pieces import digest_of, piece_span


class PieceStore:
    """
    The part file C{fd} of a file of C{size} bytes whose pieces have the
    digests C{digests}; C{verified} are those already in it.  Its methods
    run in threads, never in the reactor's.
    """

    def __init__(self, fd: int, size: int, digests: bytes, verified: Iterable[int]) -> None:
        self.fd = fd
        self.size = size
        self.digests = digests
        self._writing = threading.Lock()
        self._whole = WholeHash(fd, size, verified)

    def store(self, index: int, data: Parts, release: Callable[[], None] | None = None) -> bool:
        """
        Verify and write one piece, then hand it to the whole-file hash.
        False if the piece is corrupt (nothing is written).
        """
        start, _ = piece_span(index, self.size)
        if not storing.verify_and_write(
            self.fd, start, data, digest_of(self.digests, index), self._writing
        ):
            return False
        self._whole.stored(index, data, release)
        return True

    def close(self) -> str | None:
        """
        Once nothing stores any more: the SHA-256 of the pieces as stored,
        if every piece was hashed in order (None: the caller reads the file).
        """
        return self._whole.close()
