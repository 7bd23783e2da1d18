"""
Files written so that a crash never leaves half of one (L{atomic_write},
L{fsync_directory}), files only their owner may read (L{private_write}),
and sizes as people read them (L{human_size}).  No Twisted here: the
C{p2p} command imports this.
"""

from __future__ import annotations

import math
import os
import tempfile
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: float) -> str:
    """
    A size for people (a rate too, with C{/s} after it), in powers of 1024
    as C{--upload-rate 8M} reads them: C{512 B}, C{8.0 MiB}, C{1.5 GiB}.

    One decimal, rounded half up (as the topology page's script rounds, so
    both show a size alike), and the next unit where the number would
    round to 1024: C{1 MiB - 1} is C{1.0 MiB}, never C{1024.0 KiB}.
    """
    if not math.isfinite(n):
        return f"{n} B"
    shown = _rounded(n, "1")
    if shown < 1024:
        return f"{shown} B"
    for unit in _UNITS:
        n /= 1024  # exact: a power of two
        shown = _rounded(n, "0.1")
        if shown < 1024 or unit == _UNITS[-1]:
            break
    return f"{shown} {unit}"


def _rounded(n: float, places: str) -> Decimal:
    # Decimal(n) is the float's exact value: halves are halves, as in
    # JavaScript's toFixed.
    return Decimal(n).quantize(Decimal(places), rounding=ROUND_HALF_UP)


def atomic_write(path: Path | str, data: bytes) -> None:
    """
    Replace the file at C{path} with C{data} so that a reader sees the old
    content or the new, never a mix: write a temporary file beside it, fsync
    it, rename it over, and fsync the directory.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(path.parent)


def private_write(path: Path, data: bytes, exclusive: bool = False) -> None:
    """
    Write a file only its owner may read (keys, secrets); with
    C{exclusive}, refuse (L{FileExistsError}) to replace one.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # a file that was there keeps its mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def fsync_directory(directory: Path) -> None:
    """
    Make a rename or link in C{directory} durable.
    """
    dirfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


DATA_DIR_MARK = ".p2pshare-data-dir"
"""
A file in every role's data dir (peer or metadata server): a share that
holds such a folder, anywhere, never shares it (its tokens, keys, registry).
"""


def mark_data_dir(directory: Path) -> None:
    mark = directory / DATA_DIR_MARK
    if not mark.exists():
        private_write(mark, b"this folder is a p2pshare data dir: it is never shared\n")
