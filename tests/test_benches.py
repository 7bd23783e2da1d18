"""
The benchmarks under bench/ run at a tiny size, so that none of them rots
unnoticed (bench/churn.py crashed for weeks once the heartbeat became a
TimerService): each ends with status 0 and prints its figures.  Their
figures are not judged here; docs/performance.rst records full runs.
bench/churn.py runs, judged, in tests/test_churn_search_sim.py.
bench/transfer.py runs at 4 MiB (three small networks of real processes,
half a minute): it must print the two ratios it is judged by.
bench/swarm.py starts many more processes even at a tiny size; the
integration tests exercise the same paths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script, args, printed", [
    ("search.py", ["--peers", "20", "--limits", "2", "3"], "searched 20 of 20 peers"),
    ("rescan.py", ["--files", "200"], "unchanged rescan"),
    ("join.py", ["--peers", "20", "--processes", "2"], "private network:"),
    ("relay.py", ["--mib", "2", "--pairs", "1"], "this run: relayed / direct"),
])
def test_a_bench_runs_at_a_tiny_size(short_tmp, script, args, printed):
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=short_tmp, capture_output=True,
        text=True, timeout=300, env={**os.environ, "BENCH_DIR": str(short_tmp)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert printed in out.stdout, out.stdout[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("openssl")),
                    reason="the baselines need curl and openssl")
def test_the_transfer_bench_prints_both_ratios_at_a_tiny_size(short_tmp):
    out = subprocess.run(
        [sys.executable, str(BENCH / "transfer.py"), "--mib", "4", "--sizes", ""], cwd=short_tmp,
        capture_output=True, text=True, timeout=600, env={**os.environ, "BENCH_DIR": str(short_tmp)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    ratios = re.search(
        r"ratios at 4 MiB, this run: TLS / plain TCP (\d+\.\d\d) \(target 0\.9\); "
        r"p2p get / curl \+ openssl \+ sync (\d+\.\d\d) \(target 1\.3\)", out.stdout,
    )
    assert ratios is not None, out.stdout[-2000:]
