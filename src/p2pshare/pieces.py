"""
Pieces: how a file is cut for verifying downloads from many holders.

A file of C{size} bytes is cut into pieces of L{piece_size}(size) bytes
(the last one shorter): a power of two, at least 1 MiB, and large enough
that no file has more than L{MAX_PIECES} pieces.  Each piece has its
SHA-256; the file's I{piece list} is their 32-byte digests end to end, and
its I{root} is the SHA-256 of that list.  A holder computes the whole-file
SHA-256 and the piece digests in one pass over the file.

The list is flat rather than a Merkle tree (BitTorrent v2's choice): a
downloader fetches the whole list once (at most 128 KiB, for a 4 GiB
file), so it never needs a proof for one piece, and the list is checked
against the root that the search results carry.  The root is not the
file's identity; the SHA-256 is.  A downloader groups the holders of one
SHA-256 by root, verifies each piece against its group's list, and checks
the assembled file's SHA-256 before keeping it: a group whose list does
not lead to that SHA-256 is dropped with its holders.
"""

from __future__ import annotations

from pathlib import Path

# hashlib (it loads OpenSSL's libcrypto) is imported where a digest is
# made: the p2p command imports this module only to count pieces.

PIECE_MIN = 1 << 20
MAX_PIECES = 4096
DIGEST = 32
READ = 1 << 20
MAX_PIECE = 32 << 20  # the largest piece a downloader takes: files up to 128 GiB
MAX_SIZE = MAX_PIECE * MAX_PIECES


def piece_size(size: int) -> int:
    """
    The piece size of a file of C{size} bytes.
    """
    piece = PIECE_MIN
    while piece * MAX_PIECES < size:
        piece *= 2
    return piece


def too_large(size: int) -> bool:
    """
    Are a file of C{size} bytes' pieces larger than a downloader takes
    (L{MAX_PIECE})?  A holder's claim of a huge size must not make it
    allocate huge buffers.
    """
    return size > MAX_SIZE


def piece_count(size: int) -> int:
    """
    How many pieces a file of C{size} bytes has (an empty file has one,
    empty, piece).
    """
    return max(1, -(-size // piece_size(size)))


def piece_span(index: int, size: int) -> tuple[int, int]:
    """
    Where piece C{index} lies: (first byte, one past its last byte).
    """
    piece = piece_size(size)
    start = index * piece
    return start, min(size, start + piece)


def root_of(digests: bytes) -> str:
    import hashlib

    return hashlib.sha256(digests).hexdigest()


def hash_file(path: Path | str) -> tuple[str, bytes]:
    """
    The file's SHA-256 (hex) and its piece list, in one pass.
    """
    import hashlib

    whole = hashlib.sha256()
    pieces: list[bytes] = []
    with open(path, "rb") as f:
        size = _size(f)
        piece = piece_size(size)
        while True:
            h = hashlib.sha256()
            left = piece
            while left:
                chunk = f.read(min(READ, left))
                if not chunk:
                    break
                whole.update(chunk)
                h.update(chunk)
                left -= len(chunk)
            if left == piece and pieces:
                break  # the file ended on a piece boundary
            pieces.append(h.digest())
            if left:
                break  # a short last piece
    return whole.hexdigest(), b"".join(pieces)


def _size(f: object) -> int:
    import os

    return os.fstat(f.fileno()).st_size  # type: ignore[attr-defined]


def check_list(digests: bytes, size: int, root: str | None) -> str | None:
    """
    Why C{digests} cannot be the piece list of a file of C{size} bytes with
    root C{root}, or None if it can.
    """
    if len(digests) != piece_count(size) * DIGEST:
        return f"a piece list of {len(digests)} bytes for {piece_count(size)} pieces"
    if root is not None and root_of(digests) != root:
        return "a piece list that does not match its root"
    return None


def digest_of(digests: bytes, index: int) -> bytes:
    return digests[index * DIGEST:(index + 1) * DIGEST]


def bitfield(indices: set[int] | frozenset[int], count: int) -> bytes:
    """
    Which of C{count} pieces are in C{indices}: bit C{i} is C{0x80 >> i % 8}
    of byte C{i // 8} (BitTorrent's order).
    """
    bits = bytearray((count + 7) // 8)
    for i in indices:
        if 0 <= i < count:
            bits[i // 8] |= 0x80 >> (i % 8)
    return bytes(bits)


def from_bitfield(bits: bytes, count: int) -> set[int]:
    """
    The pieces a L{bitfield} names (bits past C{count} are ignored).
    """
    return {i for i in range(min(count, len(bits) * 8)) if bits[i // 8] & (0x80 >> (i % 8))}
