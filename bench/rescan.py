"""
Rescanning a big share that did not change: 100,000 small files in 100
folders, indexed once (hashed), then scanned again; the figure is the
time of an unchanged rescan (target: under 1 s), against the baseline of
the same walk by ``os.walk`` plus one ``os.stat`` per file, measured in
the same run.

    python bench/rescan.py [--files 100000]

It prints its figures; docs/performance.rst records them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from p2pshare.peer.share import ShareIndex


def make_share(root: Path, files: int, folders: int = 100) -> None:
    for i in range(files):
        folder = root / f"folder {i % folders:03d}"
        if i < folders:
            folder.mkdir()
        (folder / f"file {i:06d}.txt").write_bytes(b"%d" % i)


def baseline(root: Path) -> float:
    started = time.perf_counter()
    for folder, _, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(folder, name))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2p-rescan-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        make_share(root, args.files)
        index = ShareIndex(root)
        started = time.perf_counter()
        index.refresh()
        first = time.perf_counter() - started
        assert len(index.files) == args.files, len(index.files)
        again = []
        for _ in range(3):
            started = time.perf_counter()
            index.refresh()
            again.append(time.perf_counter() - started)
        walk = min(baseline(root) for _ in range(3))
        print(f"{args.files:,} files: first scan (hashing) {first:.1f} s; unchanged rescan best "
              f"{min(again):.2f} s, worst {max(again):.2f} s (target < 1 s); os.walk + stat "
              f"{walk:.2f} s: ratio {min(again) / walk:.1f}")


if __name__ == "__main__":
    main()
