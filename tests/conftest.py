"""
Shared fixtures: the reactor, and a check that fails any test leaving an
unhandled error in a Deferred (pytest-twisted has no such check of its own).
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import settings
from twisted.logger import formatEvent, globalLogPublisher

settings.register_profile("default", deadline=None, max_examples=200)
settings.load_profile("default")


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor


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
