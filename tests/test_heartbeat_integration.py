"""
Real processes: three peers with --heartbeat 1, 5 and 15 s, left idle for
five minutes, never drop a link (before links were agreed per link, the
1 s peer gave up on the 15 s one every few seconds).  The network runs in
tests/idle_watch.py, started by conftest.py when the session begins, so
that its five minutes pass while the rest of the suite runs; this test
runs last and judges its report.  The in-process simulation
(tests/test_heartbeat_sim.py) covers hours and days.
"""

from __future__ import annotations

import json
import os

import pytest

IDLE = float(os.environ.get("P2P_IDLE_WATCH", "300"))  # seconds: twenty beats of the slowest peer


@pytest.mark.watch("idle_watch.py", IDLE)
def test_peers_with_heartbeats_1_5_15_stay_linked_for_five_idle_minutes(watch):
    # Bounded: the watch itself stops after IDLE seconds and its network.
    watch.wait(timeout=IDLE + 180)
    assert watch.returncode == 0, watch.stderr
    result = json.loads(watch.report.read_text())
    assert "error" not in result, result.get("error")
    assert result["settled"]
    assert result["watched"] >= IDLE
    for key, peer in result["peers"].items():
        said = peer["lines"]
        assert not [line for line in said if "dropping the link" in line or "lost its" in line], (key, said)
        assert peer["running"], key
    assert len(result["peers"]) == 3
    meta_said = result["meta"]["lines"]
    assert not [line for line in meta_said if "silent" in line or " left" in line], meta_said
    assert result["topo_after"] == result["topo_before"]
    assert result["topo_before"].count(":") == 3
