"""The demo run headless: every scenario event from all four buildings reaches the receiver, no seq gap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.scenario import SCENARIOS, load_scenario


@pytest.mark.slow
def test_headless_demo_delivers_every_scenario_event_without_gaps(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "demo", "--for", "240s", "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    summaries = [r["summary"] for r in records if "summary" in r]
    assert summaries, result.stdout[-3000:] + result.stderr[-3000:]
    summary = summaries[-1]
    assert summary["scenario"]["missing"] == [], summary
    assert set(summary["sites"]) == {"turfmarkt-147", "rijnstraat-8", "hoftoren", "resident"}
    for name, site in summary["sites"].items():
        assert site["seq_gaps"] == [], name
        assert site["invalid"] == 0, name
        assert site["events"] >= 1, name
    expected = sum(e.count for e in load_scenario(SCENARIOS / "demo.yaml").expected())
    events = [r for r in records if r.get("kind") == "event"]
    assert len(events) >= expected
    # the demo sends no commands: a command event would be a broker's retained message taken for one
    assert [e for e in events if e["event"]["type"] == "command"] == []
    assert summary["gateway_exit_codes"] == dict.fromkeys(summary["sites"], 0), "SIGTERM must end a gateway with 0"
    assert summary["ok"] is True and result.returncode == 0
