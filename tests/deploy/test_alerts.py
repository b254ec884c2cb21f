"""The Prometheus alert rules: valid, unit-tested by promtool, every alert covered, every test meaningful."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.support.paths import REPO
from tests.support.promtool import promtool

DEPLOY = REPO / "deploy" / "prometheus"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts_test.yml"




def run(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def test_rules_are_valid() -> None:
    result = run("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = run("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test_in_which_it_fires() -> None:
    fired = {
        case["alertname"]
        for test in load(RULE_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts without a firing test"
    required = {
        "GcmkGatewayDown",
        "GcmkHeartbeatMissing",
        "GcmkDeviceOffline",
        "GcmkBacklogGrowing",
        "GcmkDeliveryDelayed",
        "GcmkMqttDisconnected",
        "GcmkInfoEventsShed",
        "GcmkTlsDisabled",
    }
    assert required <= names


def test_every_alert_names_a_severity_and_a_summary() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize("name", [rule["alert"] for rule in alerts()])
def test_the_unit_tests_fail_when_an_alert_is_broken(tmp_path: Path, name: str) -> None:
    """Mutation check: an alert whose expression can never fire must make `promtool test rules` fail."""
    yaml = YAML(typ="safe")
    doc = load(RULES)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                rule["expr"] = "vector(0) == 1"
    with (tmp_path / RULES.name).open("w", encoding="utf-8") as out:
        yaml.dump(doc, out)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, f"the tests still pass with {name} disabled"
