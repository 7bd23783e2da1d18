"""
The autouse fixture in conftest.py fails a test that leaves an unhandled
error in a Deferred.
"""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]


def test_an_unhandled_deferred_error_fails_the_test(pytester):
    here = Path(__file__).parent
    pytester.makeconftest((here / "conftest.py").read_text())
    pytester.makepyfile(watching=(here / "watching.py").read_text())  # what conftest imports
    pytester.makepyfile(
        """
        from twisted.internet.defer import fail

        def test_leaks_an_error():
            fail(ValueError("nobody handles this"))

        def test_handles_its_error():
            fail(ValueError("handled")).addErrback(lambda f: None)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    # The leaking test passes its call phase and then errors at teardown.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*Unhandled error in Deferred*",
        "*nobody handles this*",
        "ERROR *::test_leaks_an_error*",
    ])
