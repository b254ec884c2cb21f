"""The promtool binary for the tests of alert rules and metrics output."""

from __future__ import annotations

import shutil

from tests.support.ci import tool_missing


def promtool() -> str:
    """The promtool binary (Debian package `prometheus`); when it is missing the test is skipped, or fails under
    CI=true (tests/support/ci.py)."""
    found = shutil.which("promtool")
    if found is None:
        tool_missing("promtool", "apt-get install -y prometheus")
    return found
