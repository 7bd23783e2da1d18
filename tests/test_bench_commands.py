"""
bench/commands.py (the small commands' wall times) runs at a tiny size, so
that it does not rot unnoticed; its figures are not judged here (a bound
on wall time fails on a busy machine and proves nothing on an idle one).
And the modules that C{p2p status}, C{search} and C{ls} import keep
Twisted and cryptography out: importing them costs more than the whole
command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "commands.py"

TIMED = [
    "python start-up (python -c pass)",
    "import p2pshare.cli",
    "p2p status",
    "p2p search live",
    "p2p ls ",  # the name the network gave the peer listed
    "p2p topo",
    "p2p topo --data-dir",
]


def test_the_commands_bench_runs_at_a_tiny_size(short_tmp):
    out = subprocess.run(
        [sys.executable, str(BENCH), "--runs", "2"], cwd=short_tmp, capture_output=True,
        text=True, timeout=300, env={**os.environ, "BENCH_DIR": str(short_tmp)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    labels = [line.split(" median ")[0].rstrip() for line in out.stdout.splitlines()
              if " median " in line and " p90 " in line]
    for label in TIMED:
        matching = [x for x in labels if x.startswith(label)] if label.endswith(" ") else \
            [x for x in labels if x == label]
        assert len(matching) == 1, (label, out.stdout)
    imports = out.stdout.split("biggest imports of p2pshare.cli", 1)[1].splitlines()[1:]
    assert imports and imports[0].split()[0] == "p2pshare.cli", out.stdout


def imported_by(module: str) -> set[str]:
    """
    The top-level packages that C{import module} loads, in a new Python.
    """
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.mark.parametrize("module", [
    "p2pshare.cli",  # the command itself: what it runs for status, search, ls, topo
    "p2pshare.control_client",  # status, search, ls, and an open network's topo
    "p2pshare.admission",
    "p2pshare.display",
    "p2pshare.topo",
    "p2pshare.pieces",
])
def test_the_small_commands_modules_leave_twisted_and_cryptography_out(module):
    assert imported_by(module) & {"twisted", "cryptography", "OpenSSL", "zope"} == set()


@pytest.mark.parametrize("module", ["p2pshare.cli", "p2pshare.admission", "p2pshare.pieces"])
def test_hashing_is_imported_only_when_used(module):
    """
    The command imports these for their constants and errors; hashlib
    loads OpenSSL's libcrypto, secrets the random module.
    """
    assert imported_by(module) & {"hashlib", "_hashlib", "hmac", "secrets"} == set()
