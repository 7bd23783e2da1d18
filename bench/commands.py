"""
How long the small commands take: ``p2p status``, ``p2p search WORD``,
``p2p ls NAME`` and ``p2p topo`` (target: each under 0.15 s wall on an
idle peer), each started as a user starts it (the ``p2p`` console script,
a new process every time) against an idle network of real processes: a
metadata server and 3 peers, twistd on 127.0.0.1, sharing a few files.
``p2p topo --data-dir`` (the same output, read from the metadata server's
``topo.txt``) is timed beside it.

Baseline in the same run: Python start-up (``python -c pass``), and
``python -c "import p2pshare.cli"`` (start-up and the command's imports).
Runs are interleaved, one of each in turn, so that a busy moment weighs
on all alike, after one untimed run of each that writes the bytecode
caches (to a temporary ``PYTHONPYCACHEPREFIX``, whatever
``PYTHONDONTWRITEBYTECODE`` says: an installed copy has its bytecode).
For each: the median and 90th percentile wall time, the median minus
start-up, and the median as a ratio of start-up.  Then the biggest
imports of ``p2pshare.cli`` (``python -X importtime``, the top 10 by
cumulative time, median over up to 5 runs).

    python bench/commands.py [--runs 20] [--top 10]

It prints its figures; the README's come from it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.internet.threads import deferToThread

import p2pshare
from p2pshare.launch import LocalNetwork

TARGET = 0.150  # seconds, wall, for each small command
PEERS = 3
SHARES = {  # what each peer (by its directory) shares
    "p1": {"notes/readme.txt": b"read me\n"},
    "p2": {"music/live/set.ogg": b"s" * 3000, "music/studio/take.ogg": b"t" * 2000},
    "p3": {"music/live/encore.ogg": b"e" * 1500, "photos/beach.jpg": b"b" * 4000,
           "photos/dunes.jpg": b"d" * 5000},
}
WORD = "live"  # found at p2 and p3 from p1
ASKED, LISTED = "p1", "p3"  # the peer the commands ask, and the one `ls` lists


def p2p_command() -> list[str]:
    """
    The C{p2p} console script beside this Python (what a user of the venv
    runs), or its equivalent when the project is not installed there.
    """
    script = Path(sys.executable).parent / "p2p"
    if script.is_file():
        return [os.path.normpath(script)]
    return [sys.executable, "-c", "from p2pshare.cli import main; main()"]


def absolute_pythonpath() -> None:
    """
    C{PYTHONPATH=../src} as the bench is usually run, made absolute: the
    roles and the commands run in other directories.
    """
    path = os.environ.get("PYTHONPATH")
    if path:
        os.environ["PYTHONPATH"] = os.pathsep.join(
            str(Path(p).absolute()) for p in path.split(os.pathsep) if p
        )


def make_shares(root: Path) -> None:
    for key, files in SHARES.items():
        for name, data in files.items():
            path = root / key / "shared" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """
    The nearest-rank percentile (C{fraction} 0.9: the 90th).
    """
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


def cached_bytecode(root: Path) -> dict[str, str]:
    """
    The environment of the commands timed: bytecode written once and read
    after (as from an installed copy), in C{root}, not in the source tree.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    return env


def timed_runs(
    commands: dict[str, list[str]], runs: int, cwd: Path, stopping: threading.Event
) -> dict[str, list[float]]:
    """
    Wall time of each command, C{runs} times, one of each in turn, after
    one untimed run of each (it writes the bytecode caches).  A command
    that fails ends the bench with what it said.
    """
    env = cached_bytecode(cwd)
    times: dict[str, list[float]] = {label: [] for label in commands}
    for round_ in range(runs + 1):
        for label, argv in commands.items():
            if stopping.is_set():
                raise SystemExit("interrupted")
            started = time.perf_counter()
            done = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=120)
            took = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(
                    f"{label} exited with {done.returncode}: "
                    f"{done.stderr.decode(errors='replace').strip() or '(nothing on stderr)'}"
                )
            if round_:
                times[label].append(took)
    return times


def import_times(runs: int, cwd: Path) -> dict[str, tuple[float, float]]:
    """
    Each module imported by C{import p2pshare.cli} (Python's own start-up
    left out): its median self and cumulative time, in seconds.
    """
    seen: dict[str, list[tuple[int, int]]] = {}
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import p2pshare.cli"],
            cwd=cwd, env=cached_bytecode(cwd), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
        if done.returncode != 0:
            raise SystemExit(f"import p2pshare.cli failed: {done.stderr.strip()[-2000:]}")
        rows = []
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "imported package" in line:
                continue
            own_us, total_us, indented = line[len("import time:"):].split("|")
            rows.append((indented.rstrip()[1:], int(own_us), int(total_us)))  # 2 spaces a level
        # -X importtime lists each module after what it imports: the
        # subtree of p2pshare.cli runs back to the previous top-level line.
        end = max(i for i, row in enumerate(rows) if row[0].strip() == "p2pshare.cli")
        start = end
        while start > 0 and rows[start - 1][0].startswith(" "):
            start -= 1
        for name, own, total in rows[start:end + 1]:
            seen.setdefault(name.strip(), []).append((own, total))
    return {
        name: (statistics.median([o for o, _ in pairs]) / 1e6,
               statistics.median([t for _, t in pairs]) / 1e6)
        for name, pairs in seen.items()
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.1f} ms"


def report(times: dict[str, list[float]], imports: dict[str, tuple[float, float]],
           top: int, runs: int) -> None:
    start_label = next(iter(times))
    start_up = statistics.median(times[start_label])
    width = max(len(label) for label in times)
    print(f"wall time of {runs} runs each (median, p90; then the median minus Python "
          f"start-up, and as a ratio of it):")
    for label, samples in times.items():
        median = statistics.median(samples)
        line = f"{label:<{width}}  median {ms(median)}  p90 {ms(percentile(samples, 0.9))}"
        if label != start_label:
            line += f"  start-up +{ms(median - start_up).lstrip()}  ratio {median / start_up:5.1f}"
            if label.startswith("p2p"):
                verdict = "yes" if median < TARGET else "NO"
                line += f"  (target < {TARGET * 1000:.0f} ms: {verdict})"
        print(line, flush=True)
    biggest = sorted(imports.items(), key=lambda item: -item[1][1])[:top]
    print(f"biggest imports of p2pshare.cli (python -X importtime, median of "
          f"{min(runs, 5)} runs; cumulative, self):")
    for name, (own, total) in biggest:
        print(f"  {name:<40} {ms(total)}  {ms(own)}")


async def bench(reactor: Any, runs: int, top: int) -> None:
    stopping = threading.Event()
    with tempfile.TemporaryDirectory(prefix="p2p-commands-", dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        net = LocalNetwork(reactor, root, timeout=60)

        def stop_on_shutdown() -> Deferred[None]:
            # Ctrl-C stops the reactor: the measuring thread stops after the
            # command it runs, and every role is stopped (bounded) first.
            stopping.set()
            return Deferred.fromCoroutine(net.stop_all())

        reactor.addSystemEventTrigger("before", "shutdown", stop_on_shutdown)
        try:
            make_shares(root)
            await net.start_network(PEERS)
            for key, files in SHARES.items():
                for name in files:
                    await net.peers[key].wait_for(f"sharing {name} ", 60)
            names = {key: name for name, key in (await net.names()).items()}
            p2p = p2p_command()
            control = net.control(ASKED)
            meta = f"tcp:127.0.0.1:{net.meta_port}"
            commands = {
                "python start-up (python -c pass)": [sys.executable, "-c", "pass"],
                "import p2pshare.cli": [sys.executable, "-c", "import p2pshare.cli"],
                "p2p status": [*p2p, "status", "--peer", control],
                f"p2p search {WORD}": [*p2p, "search", WORD, "--peer", control],
                f"p2p ls {names[LISTED]}": [*p2p, "ls", names[LISTED], "--peer", control],
                "p2p topo": [*p2p, "topo", "--meta", meta],
                "p2p topo --data-dir": [*p2p, "topo", "--data-dir", str(net.meta_dir)],
            }
            print(f"{PEERS} peers and a metadata server on 127.0.0.1; Python "
                  f"{sys.version.split()[0]}; p2p is {' '.join(p2p)}; p2pshare from "
                  f"{Path(p2pshare.__file__).parent}", flush=True)
            times = await deferToThread(timed_runs, commands, runs, root, stopping)
            imports = await deferToThread(import_times, min(runs, 5), root)
        finally:
            await net.stop_all()
    report(times, imports, top, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command")
    parser.add_argument("--top", type=int, default=10, help="how many imports to list")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs is at least 1")
    absolute_pythonpath()
    react(lambda reactor: Deferred.fromCoroutine(bench(reactor, args.runs, args.top)))


if __name__ == "__main__":
    main()
