"""The systemd unit: `systemd-analyze verify` without a word on stderr, `security` exposure at most 2.0.

Both work without systemd as PID 1 (Debian package `systemd`). `verify` checks that ExecStart's binary
exists, and the unit names the production path (/opt/gcmk-gateway/bin/gcmk-gateway): so the tests verify a
copy in a temp dir whose ExecStart points at this venv's `gcmk-gateway` (installed by `make`), the one line
that differs. `verify` exits 0 on unknown keys and on bad values (logging them), hence: no stderr at all.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.main import _parser
from tests.support.ci import tool_missing
from tests.support.paths import REPO

DEPLOY = REPO / "deploy" / "systemd"
UNIT = DEPLOY / "gcmk-gateway@.service"
SERIAL_DROPIN = DEPLOY / "serial.conf"
PRODUCTION_BINARY = "/opt/gcmk-gateway/bin/gcmk-gateway"
MAX_EXPOSURE = 2.0
INSTANCE = "gcmk-gateway@test-site.service"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        tool_missing("systemd-analyze", "apt-get install -y systemd")
    return found


def venv_binary() -> Path:
    binary = Path(sys.executable).parent / "gcmk-gateway"
    assert binary.exists(), f"{binary}: the project's console script is not installed (run `make`)"
    return binary


def installable_copy(directory: Path, text: str | None = None, *, serial: bool = False) -> Path:
    """The unit as `verify` can check it here: ExecStart at this venv's gcmk-gateway; optionally the
    serial drop-in beside it (gcmk-gateway@.service.d/)."""
    text = UNIT.read_text(encoding="utf-8") if text is None else text
    assert text.count(PRODUCTION_BINARY) == 1, "ExecStart names the production binary exactly once"
    unit = directory / UNIT.name
    unit.write_text(text.replace(PRODUCTION_BINARY, str(venv_binary())), encoding="utf-8")
    if serial:
        dropins = directory / f"{UNIT.name}.d"
        dropins.mkdir()
        shutil.copy(SERIAL_DROPIN, dropins / SERIAL_DROPIN.name)
    return unit


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


def security(unit: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(unit.parent / INSTANCE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    return result, float(found.group(1))


def settings(text: str) -> dict[str, list[str]]:
    """Key -> values of the unit's assignments (a key may repeat), comments and section headers left out."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("serial", [False, True], ids=["unit", "with-serial-dropin"])
def test_verify_says_nothing(tmp_path: Path, serial: bool) -> None:
    result = verify(installable_copy(tmp_path, serial=serial))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_verify_would_report_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key exits 0 but is reported on stderr."""
    text = UNIT.read_text(encoding="utf-8").replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    result = verify(installable_copy(tmp_path, text))
    assert result.returncode == 0
    assert "NoNewPrivilege" in result.stderr


@pytest.mark.parametrize("serial", [False, True], ids=["unit", "with-serial-dropin"])
def test_security_exposure_at_most_2(tmp_path: Path, serial: bool) -> None:
    result, exposure = security(installable_copy(tmp_path, serial=serial))
    assert result.returncode == 0, result.stdout
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_security_threshold_fails_an_unhardened_unit(tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    plain = "\n".join(line for line in text.splitlines() if not line.startswith(("Protect", "Private", "Restrict")))
    result, exposure = security(installable_copy(tmp_path, plain))
    assert exposure > MAX_EXPOSURE
    assert result.returncode != 0


def test_no_inline_comments() -> None:
    """systemd has no inline comments: `Restart=always # why` would make `# why` part of the value."""
    for number, line in enumerate(UNIT.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("#") and "=" in line:
            assert "#" not in line.partition("=")[2], f"{UNIT.name}:{number}: inline comment: {line}"


def test_the_unit_says_what_the_issue_asks() -> None:
    unit = settings(UNIT.read_text(encoding="utf-8"))
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "Restart": ["always"], "DynamicUser": ["yes"],
        "StateDirectory": ["gcmk-gateway/%i"], "ProtectSystem": ["strict"], "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""], "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
    }
    for key, values in expected.items():
        assert unit.get(key) == values, (key, unit.get(key))
    assert "@system-service" in unit["SystemCallFilter"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["WatchdogSec"] and unit["MemoryMax"]
    assert unit["WorkingDirectory"] == ["%S/gcmk-gateway/%i"]  # a relative journal.data_dir lands in the state dir
    serial = settings(SERIAL_DROPIN.read_text(encoding="utf-8"))
    assert serial["SupplementaryGroups"] == ["dialout"] and serial["DeviceAllow"]


def test_exec_start_is_a_valid_command_line() -> None:
    (command,) = settings(UNIT.read_text(encoding="utf-8"))["ExecStart"]
    binary, *argv = shlex.split(command.replace("%i", "test-site"))
    assert binary == PRODUCTION_BINARY
    args = _parser().parse_args(argv)
    assert args.handler.__name__ == "_run" and args.site == Path("/etc/gcmk/sites/test-site.yaml")
