"""`gcmk-gateway demo --dc09` run headless for one building: the scenario's alarms and restores arrive over MQTT
and, ACKed by the demo's reference DC-09 receiver, over DC-09, both shown in the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.tools.demo import SITES_DIR


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_demo_shows_dc09_deliveries_beside_the_mqtt_ones(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "demo", "--dc09", "--site", str(SITES_DIR / "hoftoren.yaml"),
         "--for", "120s", "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=170, check=False,
    )
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    summaries = [r["summary"] for r in records if "summary" in r]
    assert summaries, result.stdout[-3000:] + result.stderr[-3000:]
    summary = summaries[-1]
    assert summary["scenario"]["missing"] == [] and summary["sites"]["hoftoren"]["seq_gaps"] == []
    dc09 = summary["dc09"]
    assert dc09["missing"] == {} and dc09["bad_frames"] == {}, dc09
    assert dc09["sites"]["hoftoren"]["received"] >= dc09["sites"]["hoftoren"]["expected"] == 2
    lines = [r["data"] for r in records if r.get("kind") == "dc09"]
    assert lines[:2] == ["Nri1/BA001", "Nri1/BH001"], "burglary alarm then restore, zone 1, area 1"
    assert summary["ok"] is True and result.returncode == 0
