"""`gcmk-gateway dc09 zones`: the zone and area table as CSV, stable when points are added or reordered."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

from tests.support.sites import MINIMAL_SITE

DC09 = """
dc09:
  format: adm-cid
  receivers:
    - {id: ats, host: 127.0.0.1, port: 5000, account: "4711", insecure: true, supervision: 60s, ack_timeout: 10s}
  accounts: {az: "0815"}
"""
NEW_POINT = """  - id: pir-new
    name: Nieuwe PIR
    device: panel-1
    tenant: az
    zone: hal
    type: burglary
    source: {protocol: modbus, table: coil, address: 900}
    alarm: [1]
    normal: [0]
"""


def export(site: Path, journal: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "dc09", "zones", "--site", str(site), "--journal", str(journal)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def table(text: str) -> dict[tuple[str, str], tuple[int, str, str]]:
    rows = csv.DictReader(io.StringIO(text))
    return {(r["kind"], r["id"]): (int(r["number"]), r["source"], r["account"]) for r in rows}


def test_the_zone_table_is_exported_and_stays_stable(tmp_path: Path) -> None:
    base = MINIMAL_SITE.read_text(encoding="utf-8")
    site = tmp_path / "site.yaml"
    site.write_text(base + DC09, encoding="utf-8")
    first = export(site, tmp_path / "journal")
    assert first.returncode == 0, first.stderr
    rows = table(first.stdout)
    assert first.stdout.splitlines()[0] == "kind,number,id,name,tenant,zone,source,account"
    assert rows[("area", "jv")] == (1, "derived", "4711") and rows[("area", "az")] == (2, "derived", "0815")
    assert rows[("zone", "pir-01")] == (1, "derived", "4711") and rows[("zone", "pir-08")][0] == 8
    zones = {key: value for key, value in rows.items() if key[0] == "zone"}
    assert len({n for n, _s, _a in zones.values()}) == len(zones), "unique"

    # A point added at the front and door-1 given an override: the others keep their numbers.
    points = base.index("points:\n") + len("points:\n")
    changed = base[:points] + NEW_POINT + base[points:]
    changed = changed.replace("  - id: door-1\n", "  - id: door-1\n    dc09_zone: 500\n", 1)
    site.write_text(changed + DC09, encoding="utf-8")
    second = export(site, tmp_path / "journal")
    assert second.returncode == 0, second.stderr
    again = table(second.stdout)
    for key, (number, _source, _account) in zones.items():
        if key != ("zone", "door-1"):
            assert again[key][0] == number, key
    assert again[("zone", "door-1")][:2] == (500, "override")
    assert again[("zone", "pir-new")] == (len(zones) + 1, "derived", "0815"), "the lowest number never given"

    # An override that another point holds is refused with the config path, and changes nothing.
    site.write_text(changed.replace("dc09_zone: 500", "dc09_zone: 2") + DC09, encoding="utf-8")
    refused = export(site, tmp_path / "journal")
    assert refused.returncode == 2
    assert "dc09_zone: zone number 2 is already 'pir-02'" in refused.stderr, refused.stderr


def test_a_site_without_dc09_says_so(tmp_path: Path) -> None:
    result = export(MINIMAL_SITE, tmp_path / "journal")
    assert result.returncode == 1 and "no dc09: section" in result.stderr
