"""
make finds a Python 3.11 or newer under whatever name the machine gives
it, and says so clearly when there is none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make") or "make"  # make test runs this suite: make is there


def make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    venv = tmp_path / "venv"
    return subprocess.run(
        [MAKE, "-f", str(ROOT / "Makefile"), f"VENV={venv}", *args, f"{venv}/bin/python"],
        cwd=ROOT, env={"PATH": str(tmp_path / "bin")}, capture_output=True, text=True,
        timeout=60,
    )


def test_a_python_called_python3_only_is_used(tmp_path):
    (tmp_path / "bin").mkdir()
    os.symlink(sys.executable, tmp_path / "bin" / "python3")  # this suite's Python: 3.11+
    dry = make(tmp_path, "-n")
    assert dry.returncode == 0, dry.stderr
    assert f"python3 -m venv {tmp_path}/venv" in dry.stdout.splitlines()


def test_without_a_suitable_python_make_says_so_and_fails(tmp_path):
    (tmp_path / "bin").mkdir()
    old = tmp_path / "bin" / "python3"
    old.write_text("#!/bin/sh\nexit 1\n")  # answers no to "3.11 or newer?"
    old.chmod(0o755)
    result = make(tmp_path)
    assert result.returncode != 0
    assert "make: no Python 3.11 or newer found" in result.stderr
    assert "make PYTHON=" in result.stderr
    assert not (tmp_path / "venv").exists()
