"""
Shared fixtures: the reactor, a local network of real processes (C{net}),
and a check that fails any test leaving an unhandled error in a Deferred
(pytest-twisted has no such check of its own).
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# The code under test is the working tree's src/, here and in every process
# a test starts (twistd roles, the p2p command): an edit is tested without
# reinstalling.  The installed copy only provides the twistd dropin, which
# names modules, and the console script.
SRC = str(Path(__file__).resolve().parent.parent / "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)

import pytest  # noqa: E402
import pytest_twisted  # noqa: E402
from hypothesis import settings  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.logger import formatEvent, globalLogPublisher  # noqa: E402
from watching import Watch, home_of  # noqa: E402

from p2pshare.launch import LocalNetwork  # noqa: E402

settings.register_profile("default", deadline=None, max_examples=200)
settings.load_profile("default")

WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1 ... under pytest-xdist


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


@pytest.fixture
def net(reactor: Any, tmp_path: Path) -> Any:
    """
    A local network of real processes in C{tmp_path} (the metadata server
    and peers a test starts), every process stopped at the end.
    """
    network = LocalNetwork(reactor, tmp_path)
    yield network
    pytest_twisted.blockon(Deferred.fromCoroutine(network.stop_all()))


@pytest.fixture
def short_tmp() -> Any:
    """
    A directory of its own, removed after the test, whose paths are short
    enough for the control sockets that processes started in it make (a
    Unix socket's address holds 107 bytes; a deep pytest temp dir, one more
    level under pytest-xdist, may not leave room for them).
    """
    with tempfile.TemporaryDirectory(prefix="p2p-") as short:
        yield Path(short)


@pytest.fixture(autouse=True)
def own_state_home(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Every test (and every command it starts) has its own per-user state
    dir and no C{$P2P_PEER}: a C{p2p share} without C{--data-dir} never
    leaves a peer in the real user's C{~/.local/state}, and no command
    finds a peer a test did not start.
    """
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
    monkeypatch.delenv("P2P_PEER", raising=False)


@pytest.fixture(autouse=True)
def no_unhandled_failures(request: pytest.FixtureRequest) -> Any:
    """
    Fail the test if a failure was logged while it ran, which includes
    every "Unhandled error in Deferred" found by the garbage collector.
    """
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield failures
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)
    if failures:
        texts = []
        for event in failures:
            failure = event.get("log_failure")
            texts.append(formatEvent(event))
            if failure is not None:
                texts.append(failure.getTraceback())
        pytest.fail("failures were logged during the test:\n" + "\n".join(texts))


# Long watches of real processes (tests/watching.py) are judged by their
# tests, which run last: their wall time passes while the rest of the suite
# runs.


# The fast tier (make check) leaves out what starts real processes, drives a
# browser or namespaces, or simulates for minutes: marked "slow" here, by
# module or by the fixtures a test uses, so no test has to remember it.
SLOW_MODULES = (
    "_integration.py", "test_browser.py", "test_browser_files.py", "test_netns.py",
    "test_bench_commands.py", "test_benches.py", "test_share_command.py",
    "test_scale_sim.py", "test_churn_search_sim.py", "test_makefile.py",
    "test_heartbeat_sim.py", "test_backpressure.py", "test_churn_stateful.py", "test_manhole.py",
    "test_cli_contract.py",
)
SLOW_FIXTURES = {"net", "watch"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: left out of the fast tier (make check): real processes, a browser, "
        "namespaces, or minutes of simulation",
    )
    config.addinivalue_line(
        "markers",
        "watch(script, *args): the test judges the report of tests/SCRIPT, started with the "
        "session as `python tests/SCRIPT REPORT WORKDIR ARGS...`",
    )


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.name.endswith(SLOW_MODULES) or fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


# The longest tests (pytest --durations): under pytest-xdist each starts
# first in one worker's share of the suite, so that none begins near the
# end and keeps the run going alone after the others are done.
LONG = (
    "tests/test_scale_sim.py::",
    "tests/test_heartbeat_sim.py::test_three_days",
    "tests/test_scale_integration.py::",
    "tests/test_everyday_integration.py::test_queued_downloads",
    "tests/test_churn_integration.py::test_metadata_server_killed",
    "tests/test_backpressure.py::",
    "tests/test_benches.py::test_the_transfer_bench",
    "tests/test_swarm_integration.py::test_a_file_held_by_four",
    "tests/test_churn_stateful.py::",
    "tests/test_faults_integration.py::test_a_resume_never_mixes",
    "tests/test_flood_integration.py::",
    "tests/test_swarm_integration.py::test_peers_fetching_one_file",
    "tests/test_ui_browser.py::",
    "tests/test_nat_integration.py::",
)


def _longest_first(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """
    C{items} with the long ones dealt out to the heads of C{workers} equal
    shares (pytest-xdist's worksteal gives each worker one such share,
    in order, to begin with).
    """
    long = [item for item in items if item.nodeid.startswith(LONG)]
    rest = [item for item in items if not item.nodeid.startswith(LONG)]
    ordered: list[pytest.Item] = []
    for w in range(workers):
        ordered += long[w::workers] + rest[len(rest) * w // workers:len(rest) * (w + 1) // workers]
    return ordered


def _watches_home(config: pytest.Config) -> Path:
    """
    The session's directory of watches, the same for every process of the
    session (an xdist worker's base temp dir is in the controller's).
    """
    base = Path(str(config._tmp_path_factory.getbasetemp()))  # type: ignore[attr-defined]
    return (base.parent if WORKER else base) / "watches"


def pytest_collection_finish(session: pytest.Session) -> None:
    """
    Once -m and -k have chosen the tests: the watches of those chosen
    start now (in one process of the session), and their tests run last (a
    watch left out is not started: the fast tier runs no background
    network).
    """
    config, items = session.config, session.items
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    items[:] = _longest_first(items, workers)
    # What exists now (modules, the collected tests) lives as long as the
    # session: out of the collector's sight, the gc.collect() after every
    # test walks only what tests made.
    gc.collect()
    gc.freeze()
    watched = [item for item in items if item.get_closest_marker("watch") is not None]
    if not watched or config.option.collectonly:
        return
    items[:] = [item for item in items if item not in watched] + watched
    if WORKER not in (None, "gw0"):
        return  # the first worker starts them, for every worker
    started: dict[Path, Watch] = {}
    config._watches = started  # type: ignore[attr-defined]
    for item in watched:
        marker = item.get_closest_marker("watch")
        assert marker is not None
        script, *args = marker.args
        home = home_of(_watches_home(config), script, item.nodeid)
        started[home] = Watch.start(home, script, tuple(args))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A session that ran its course lets its watches end by themselves:
    # another worker's test may be waiting for one.  One cut short (-x,
    # Ctrl-C, an internal error) stops them and their networks now.
    ran = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    for watch in getattr(session.config, "_watches", {}).values():
        watch.finish(keep_running=ran and not session.shouldstop, timeout=900)


@pytest.fixture
def watch(request: pytest.FixtureRequest) -> Watch:
    """
    The background watch of this test, started with the session: by this
    process (waited for on its process), or by another worker (waited for
    on the exit code it leaves).
    """
    marker = request.node.get_closest_marker("watch")
    assert marker is not None, "a watch test needs its marker"
    home = home_of(_watches_home(request.config), marker.args[0], request.node.nodeid)
    started: dict[Path, Watch] = getattr(request.config, "_watches", {})
    return started.get(home) or Watch(home)
