"""The promtool binary for the tests of alert rules and metrics output."""

from __future__ import annotations

import os
import shutil

import pytest


def promtool() -> str:
    """The promtool binary (Debian package `prometheus`); skipped only outside CI when it is missing."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: apt-get install -y prometheus")
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    return found
