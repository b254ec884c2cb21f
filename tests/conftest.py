"""Suite-wide fixtures: every async test fails if its event loop reported an unhandled exception.

asyncio only logs "Task exception was never retrieved", "Future exception was never retrieved" and
"Exception in callback ...": a crashed background task would otherwise pass unnoticed. A test that provokes
such a report on purpose requests `loop_exceptions` and clears (or checks) `loop_exceptions.contexts` itself.
"""

from __future__ import annotations

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
