"""The suite's own honesty: a missing test tool fails under CI=true, a hang fails its test, skips are counted.

Each test runs a small pytest session of its own in a subprocess, with this repository's pytest settings (from
pyproject.toml), its tests/conftest.py and its tests/support modules, in the environment and PATH the test sets.
"""

from __future__ import annotations

import os
import re
import tomllib

import pytest

from tests.support.paths import REPO

NEEDS_TOOLS = """
from tests.support.mosquitto import Mosquitto
from tests.support.promtool import promtool


def test_needs_mosquitto(tmp_path):
    with Mosquitto(tmp_path / "broker"):
        pass


def test_needs_promtool():
    promtool()
"""


def _repo_pytest_settings(pytester: pytest.Pytester) -> None:
    """The [tool.pytest.ini_options] of this repository as the inner session's ini (testpaths aside), and the
    suite's conftest."""
    options = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    ini = ["[pytest]"]
    for key, value in options.items():
        if key == "testpaths":
            continue
        lines = value if isinstance(value, list) else [value]
        ini.append(f"{key} =" + "".join(f"\n  {line}" for line in lines))
    pytester.makeini("\n".join(ini) + "\n")
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text(encoding="utf-8"))


def _run_without_tools(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    """The session of NEEDS_TOOLS with neither tool to be found: an empty PATH (pytest itself is started by the
    absolute path of this interpreter) and GCMK_MOSQUITTO naming a file that does not exist (else the broker
    helper would still find Debian's /usr/sbin/mosquitto, which is not looked up on PATH)."""
    _repo_pytest_settings(pytester)
    pytester.makepyfile(test_tools=NEEDS_TOOLS)
    empty = pytester.mkdir("empty-bin")
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("GCMK_MOSQUITTO", str(empty / "mosquitto"))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)


def test_under_ci_a_missing_mosquitto_or_promtool_fails_the_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run_without_tools(pytester, monkeypatch, ci="true")
    result.assert_outcomes(failed=2, skipped=0)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_tools.py::test_needs_mosquitto - *mosquitto (*) is missing, and under CI=true*",
            "FAILED test_tools.py::test_needs_promtool - *promtool is missing, and under CI=true*",
        ],
        consecutive=False,
    )


def test_without_ci_they_are_skipped_and_the_summary_says_how_many_and_why(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run_without_tools(pytester, monkeypatch, ci=None)
    result.assert_outcomes(skipped=2)
    lines = [line.strip() for line in result.stdout.lines]
    header = next((i for i, line in enumerate(lines) if re.fullmatch(r"-+ 2 skipped -+", line)), None)
    assert header is not None, "no '2 skipped' section at the end:\n" + "\n".join(lines[-8:])
    closing = next(i for i, line in enumerate(lines) if line.startswith("=") and "2 skipped in" in line)
    mosquitto = os.environ["GCMK_MOSQUITTO"]
    assert sorted(line for line in lines[header + 1 : closing] if line) == [
        f"1 x mosquitto ({mosquitto}) is missing (apt-get install -y mosquitto, or GCMK_MOSQUITTO=PATH)",
        "1 x promtool is missing (apt-get install -y prometheus)",
    ], "the skips counted by reason, just above pytest's closing line"


def test_a_hanging_async_test_fails_by_timeout_and_the_run_goes_on(pytester: pytest.Pytester) -> None:
    """The repository's default per-test timeout is in force (pytest-timeout's header line), and its method
    interrupts a test hanging inside the asyncio loop without ending the session (a marker shortens it here)."""
    _repo_pytest_settings(pytester)
    pytester.makepyfile(
        test_hang="""
        import asyncio
        import pytest

        @pytest.mark.timeout(1)
        async def test_hangs():
            await asyncio.Event().wait()

        def test_after():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    # the error: the suite's loop check reports the test's task, destroyed while pending when the timeout hit
    result.assert_outcomes(failed=1, passed=1, errors=1)
    result.stdout.fnmatch_lines(["FAILED test_hang.py::test_hangs - Failed: Timeout (>1.0s) from pytest-timeout."])
    result.stdout.fnmatch_lines(["timeout: 120.0s", "timeout method: signal"], consecutive=False)

