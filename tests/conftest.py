"""Suite-wide fixtures: every async test fails if its event loop reported an unhandled exception; the run ends
by saying how many tests were skipped and why.

asyncio only logs "Task exception was never retrieved", "Future exception was never retrieved" and
"Exception in callback ...": a crashed background task would otherwise pass unnoticed. A test that provokes
such a report on purpose requests `loop_exceptions` and clears (or checks) `loop_exceptions.contexts` itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
from pytest_asyncio import is_async_test

from gateway.testing import LoopExceptionCatcher

pytest_plugins = ["pytester"]  # tests/unit/testing runs this conftest in a pytest session of its own


@pytest.fixture
async def loop_exceptions() -> AsyncIterator[LoopExceptionCatcher]:
    """The catcher installed on the test's event loop; at teardown (garbage collected first) the test fails if
    the loop reported anything."""
    catcher = LoopExceptionCatcher().install()  # on the running loop: the test's own
    try:
        yield catcher
        try:
            catcher.check()
        except AssertionError as report:
            pytest.fail(str(report), pytrace=False)
    finally:
        catcher.uninstall()


@pytest.fixture(autouse=True)
def _fail_on_loop_exceptions(request: pytest.FixtureRequest) -> None:
    """`loop_exceptions` for every async test; sync tests get no event loop they would not use."""
    if is_async_test(request.node):
        request.getfixturevalue("loop_exceptions")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The skips counted by reason, at the end of the run (above pytest's short summary of failures, if any, and its
    closing line): a run without Mosquitto or promtool says so there. Under CI=true those tests fail instead
    (tests/support/ci.py)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = Counter(_skip_reason(report) for report in skipped)
    terminalreporter.section(f"{len(skipped)} skipped", sep="-", yellow=True)
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:>4} x {reason}")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")
