"""Site-config validation: the four buildings pass; every kind of mistake is named with file, line, path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.loader import load_site
from gateway.config.models import ModbusDevice
from gateway.domain.errors import ConfigError
from tests.support.sites import MINIMAL_SITE, SITES

BASE = MINIMAL_SITE.read_text(encoding="utf-8")


def _line_of(text: str, needle: str, occurrence: int = 1) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(lines) >= occurrence, f"{needle!r} not in the test document"
    return lines[occurrence - 1]


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_site(path)
    return info.value.problems


# (case, old text, new text, the line's needle (occurrence), expected path, expected message fragment)
BROKEN = [
    ("typo in a key", "    timeout: 500ms", "    timout: 500ms", ("timout", 1), "devices[0].timout",
     "unknown key 'timout'; did you mean 'timeout'?"),
    ("dangling zone", "    zone: hal\n    type: door_forced", "    zone: lobby\n    type: door_forced",
     ("zone: lobby", 1), "points[1].zone", "unknown zone 'lobby'"),
    ("dangling device", "    device: fire-1\n    tenant: jv\n    zone: hal\n    type: fire",
     "    device: fire-9\n    tenant: jv\n    zone: hal\n    type: fire", ("device: fire-9", 1), "points[2].device",
     "unknown device 'fire-9'"),
    ("duplicate point id", "  - id: smoke-1", "  - id: door-1", ("id: door-1", 2), "points[2].id",
     "duplicate point id 'door-1'"),
    ("inline password", "  password_file: /etc/gcmk/secrets/test-mqtt", "  password: geheim-wachtwoord",
     ("password: geheim", 1), "mqtt.password", "inline secrets are not allowed"),
    ("register out of range", 'address: "100 + {i} // 16"', 'address: "65534 + {i}"', ("65534", 1),
     "points[0] (repeat n=3 and 5 more).source.address",
     "holding register address 65536 is beyond 65535, the highest Modbus address"),
    ("bit field past the register", 'bit: "{i} % 16"}', 'bit: "{i} % 16", width: 12}', ("{i} % 16", 1),
     "points[0] (repeat n=6 and 2 more).source", "bit 5 + width 12 does not fit in a 16-bit register"),
    ("timeout not shorter than interval", "    timeout: 500ms", "    timeout: 1s", ("timeout: 1s", 1),
     "devices[0].timeout", "timeout 1s must be shorter than poll_interval 1s"),
    ("wrong type", "    port: 5020", "    port: vijf", ("port: vijf", 1), "devices[0].port",
     "port must be a whole number, not 'vijf'"),
    ("two BACnet devices on one endpoint", "    device_instance: 1001\n", "    device_instance: 1001\n"
     "  - protocol: bacnet\n    id: fire-2\n    name: Tweede centrale\n    address: 127.0.0.1\n    port: 47809\n"
     "    device_instance: 1002\n", ("port: 47809", 2), "devices[2].port", "share 127.0.0.1:47809"),
    ("unknown tenant of a zone", "    tenant: jv\n  - id: hal", "    tenant: ocw\n  - id: hal", ("tenant: ocw", 1),
     "zones[0].tenant", "unknown tenant 'ocw'"),
    ("plain mqtt without insecure", "mqtts://broker.example:8883", "mqtt://broker.example:1883", ("mqtt:", 1),
     "mqtt", "needs an explicit insecure: true"),
    ("value in two conditions", "    alarm: [alarm]\n    normal: [quiet]",
     "    alarm: [alarm]\n    normal: [quiet, alarm]", ("id: smoke-1", 1), "points[2]",
     "mapped to more than one condition"),
    ("unknown placeholder in a repeat", 'name: "PIR {n}"', 'name: "PIR {k}"', ("PIR {k}", 1), "points[0].name",
     "unknown placeholder"),
    ("YAML syntax error", "    name: Inbraakcentrale\n", "    name: Inbraakcentrale\n   host: [127.0.0.1\n",
     ("host: [127", 1), "", "YAML syntax error"),
]


@pytest.mark.parametrize(("case", "old", "new", "needle", "path", "message"), BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_config_names_line_path_and_problem(
    tmp_path: Path, case: str, old: str, new: str, needle: tuple[str, int], path: str, message: str
) -> None:
    assert old in BASE, case
    text = BASE.replace(old, new, 1)
    problems = _problems(tmp_path, text)
    line = _line_of(text, *needle)
    matching = [p for p in problems if message in p]
    assert matching, problems
    if case == "YAML syntax error":  # the parser notices at the broken line or the one after it
        assert any(f"site.yaml:{n}:" in p for p in matching for n in (line, line + 1)), matching
    else:
        assert f"site.yaml:{line}: {path}: " in matching[0], matching
    assert "geheim" not in "\n".join(problems)


def test_every_problem_is_reported_not_just_the_first(tmp_path: Path) -> None:
    text = BASE.replace("    timeout: 500ms", "    timout: 500ms").replace("  name: Testgebouw", "  nam: Testgebouw")
    problems = _problems(tmp_path, text)
    assert len(problems) == 3, problems
    assert "site.name: missing required key 'name'" in problems[0]
    assert "site.nam: unknown key 'nam'; did you mean 'name'?" in problems[1]
    assert "devices[0].timout: unknown key 'timout'" in problems[2]


def test_overlay_replaces_endpoints_and_rejects_unknown_devices() -> None:
    site = load_site(MINIMAL_SITE, [{"devices": {"panel-1": {"port": 15020}}, "journal": {"data_dir": "/tmp/x"}}])
    device = site.device("panel-1")
    assert isinstance(device, ModbusDevice)
    assert device.port == 15020
    assert str(site.journal.data_dir) == "/tmp/x"
    with pytest.raises(ConfigError, match=r"devices\.ghost: no such device"):
        load_site(MINIMAL_SITE, [{"devices": {"ghost": {"port": 1}}}])


def test_repeat_expands_with_arithmetic() -> None:
    site = load_site(MINIMAL_SITE)
    pirs = [p for p in site.points if p.id.startswith("pir-")]
    assert [p.id for p in pirs] == [f"pir-{n:02d}" for n in range(1, 9)]
    assert [(p.source.address, p.source.bit) for p in pirs] == [(100, i) for i in range(8)]  # type: ignore[union-attr]


def _site_files() -> list[Path]:
    return sorted(SITES.glob("*.yaml"))


def test_the_four_buildings_have_site_configs() -> None:
    assert {p.stem for p in _site_files()} >= {"turfmarkt-147", "rijnstraat-8", "hoftoren", "resident"}


@pytest.mark.parametrize("path", _site_files(), ids=lambda p: p.stem)
def test_site_config_is_valid_and_realistic(path: Path) -> None:
    site = load_site(path)
    assert site.site.id == path.stem
    assert len(site.points) >= 150, "realistic sizes: hundreds of points per building"


@pytest.mark.parametrize("path", _site_files(), ids=lambda p: p.stem)
def test_misspelt_key_in_a_real_site_config_names_its_line(tmp_path: Path, path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    line = _line_of(text, "poll_interval:")
    broken = text.replace("poll_interval:", "pol_interval:", 1)
    problems = _problems(tmp_path, broken)
    assert any(f"site.yaml:{line}: " in p and "unknown key 'pol_interval'" in p for p in problems), problems


def test_sites_exercise_every_transport_and_point_kind() -> None:
    sites = [load_site(p) for p in _site_files()]
    devices = [d for s in sites for d in s.devices]
    transports = {getattr(d, "transport", "bacnet") for d in devices}
    assert transports >= {"bacnet", "tcp", "rtu_over_tcp", "serial"}
    tables = {getattr(p.source, "table", None) for s in sites for p in s.points}
    assert tables >= {"coil", "discrete_input", "holding", "input"}
    objects = {p.source.object.split(",")[0] for s in sites for p in s.points if p.source.protocol == "bacnet"}
    assert objects >= {"binary-input", "life-safety-point", "access-door", "access-point"}
    temporary = [t.id for s in sites for t in s.tenants if t.temporary]
    assert temporary == ["az"]


@pytest.mark.parametrize("path", [MINIMAL_SITE, *_site_files()], ids=lambda p: p.stem)
def test_editor_schema_accepts_the_site_configs_as_written(path: Path) -> None:
    import jsonschema
    from ruamel.yaml import YAML

    from gateway.config.loader import site_json_schema

    document = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    errors = list(jsonschema.Draft202012Validator(site_json_schema()).iter_errors(document))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_editor_schema_catches_a_typo() -> None:
    import jsonschema
    from ruamel.yaml import YAML

    from gateway.config.loader import site_json_schema

    document = YAML(typ="safe").load(BASE.replace("    timeout: 500ms", "    timout: 500ms"))
    assert list(jsonschema.Draft202012Validator(site_json_schema()).iter_errors(document))


def test_an_overlay_can_name_a_device_written_with_repeat(tmp_path: Path) -> None:
    text = BASE.replace("  - protocol: modbus\n    id: panel-1\n", "  - protocol: modbus\n    repeat: {count: 1}\n"
                        "    id: panel-{n}\n")
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    site = load_site(path, [{"devices": {"panel-1": {"port": 15021}}}])
    assert site.device("panel-1").port == 15021


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    ok = _cli("validate", str(MINIMAL_SITE))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("    timeout: 500ms", "    timout: 500ms"), encoding="utf-8")
    result = _cli("validate", str(MINIMAL_SITE), str(bad))
    assert result.returncode == 1
    assert f"{bad}:{_line_of(bad.read_text(), 'timout')}: devices[0].timout: unknown key" in result.stdout


def test_cli_schemas() -> None:
    event = json.loads(_cli("schema", "event").stdout)
    required = set(event["required"])
    assert {"event_id", "site", "category", "type", "state", "priority", "codes", "point", "source"} <= required
    for name in ("seq", "tenant", "occurred_at", "detected_at", "buffered", "commissioning", "credential"):
        assert name in event["properties"], name
    site = json.loads(_cli("schema", "site").stdout)
    assert {"site", "tenants", "zones", "mqtt", "devices", "points"} <= set(site["properties"])
