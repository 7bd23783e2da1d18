"""
Searches during churn, in one process: bench/churn.py at a smaller size
(60 peers, heartbeat 5 s, 10% failing every simulated minute for five
minutes, half crashing and half hanging, as many newcomers), judged.  No
search may claim that every peer answered while it misses a file a live
peer holds, and searches as ``p2p get`` runs them (waiting for a repair)
find their file at least 99 times in 100.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "churn.py"


def test_no_search_during_churn_claims_a_coverage_it_did_not_have(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH), "--peers", "60", "--minutes", "5", "--seed", "7"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=os.environ,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    every = re.search(
        r"searches for every file: (\d+): right (\d+) .*honest and incomplete (\d+), wrong (\d+)",
        out.stdout,
    )
    gets = re.search(r"searches as p2p get runs them: (\d+)/(\d+) right", out.stdout)
    assert every and gets, out.stdout
    searches, right, honest, wrong = map(int, every.groups())
    assert searches >= 5 * 6 and right + honest + wrong == searches
    assert wrong == 0, out.stdout
    assert right > searches // 2, out.stdout  # churn leaves most searches whole
    found, tried = map(int, gets.groups())
    assert tried == searches
    assert found >= 0.99 * tried, out.stdout
