"""The time zone of the device clocks: site.timezone (default Europe/Amsterdam) and a BACnet device's override."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.loader import load_site
from gateway.config.models import BacnetDevice
from gateway.domain.errors import ConfigError
from tests.support.sites import MINIMAL_SITE

BASE = MINIMAL_SITE.read_text(encoding="utf-8")
SITE_LINE = "  address: Teststraat 1, Den Haag\n"
DEVICE_LINE = "    device_instance: 1001\n"


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return load_site(path)


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return info.value.problems


def test_default_is_amsterdam_and_a_device_may_override(tmp_path: Path) -> None:
    site = _load(tmp_path, BASE)
    assert site.site.timezone == "Europe/Amsterdam"  # type: ignore[attr-defined]
    text = BASE.replace(SITE_LINE, SITE_LINE + "  timezone: Europe/Brussels\n").replace(
        DEVICE_LINE, DEVICE_LINE + "    timezone: UTC\n"
    )
    site = _load(tmp_path, text)
    assert site.site.timezone == "Europe/Brussels"  # type: ignore[attr-defined]
    device = site.device("fire-1")  # type: ignore[attr-defined]
    assert isinstance(device, BacnetDevice) and device.timezone == "UTC"


@pytest.mark.parametrize(
    ("where", "replacement", "path"),
    [
        (SITE_LINE, SITE_LINE + "  timezone: Europe/Amsterdm\n", "site.timezone"),
        (DEVICE_LINE, DEVICE_LINE + "    timezone: Europe/Amsterdm\n", "devices[1].timezone"),
        (SITE_LINE, SITE_LINE + "  timezone: CEST\n", "site.timezone"),  # an abbreviation, not an IANA name
    ],
)
def test_unknown_zone_is_named_with_its_line(tmp_path: Path, where: str, replacement: str, path: str) -> None:
    text = BASE.replace(where, replacement)
    line = text.splitlines().index(replacement.splitlines()[-1]) + 1
    zone = replacement.split("timezone: ")[1].strip()
    problems = _problems(tmp_path, text)
    assert len(problems) == 1, problems
    assert f":{line}: {path}: unknown time zone '{zone}'" in problems[0]
    assert "IANA name" in problems[0]


def test_schema_shows_the_new_keys() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "schema", "site"], capture_output=True, text=True, check=True
    ).stdout
    defs = json.loads(out)["$defs"]
    site_zone = defs["SiteInfo"]["properties"]["timezone"]
    assert site_zone["default"] == "Europe/Amsterdam"
    assert "repeated autumn hour" in site_zone["description"] and "skipped spring hour" in site_zone["description"]
    device_zone = defs["BacnetDevice"]["properties"]["timezone"]
    assert device_zone["default"] is None and "overrides site.timezone" in device_zone["description"]
