"""Missing test tools (Mosquitto, promtool, socat): a skip on a developer's machine, a failure in CI.

CI (`.ci/run`, with `CI=true` in its environment) installs every tool the tests need, so there a missing one
means the set-up is broken: the tests that need it must fail, not pass as skipped. Without CI the suite skips
them, and the run ends by counting the skips by reason (tests/conftest.py).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """`CI=true` (also `1`/`yes`), as CI services set it; `CI=false` or unset is a developer's run."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def tool_missing(what: str, install: str) -> NoReturn:
    """Fail the test under CI=true, skip it otherwise; `install` says how to get the tool."""
    if in_ci():
        pytest.fail(f"{what} is missing, and under CI=true a missing test tool fails the test ({install})",
                    pytrace=False)
    pytest.skip(f"{what} is missing ({install})")
