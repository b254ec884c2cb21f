"""The `dc09:` section, per-point zone and per-tenant area overrides: valid shapes load, every mistake is named
with file:line and path, and a site without any DC-09 numbers works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from gateway.config.loader import load_site, site_json_schema
from gateway.domain.errors import ConfigError
from tests.support.sites import MINIMAL_SITE

BASE = MINIMAL_SITE.read_text(encoding="utf-8")

DC09 = """
dc09:
  format: adm-cid
  receivers:
    - id: meldkamer-ats
      host: 192.0.2.50
      port: 5000
      account: "4711ab"
      receiver: "1"
      key_file: /etc/gcmk/secrets/dc09.key
      supervision: 60s
      ack_timeout: 10s
  accounts: {az: "0815"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_site(_write(tmp_path, text))
    return info.value.problems


def _line_of(text: str, needle: str, occurrence: int = 1) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return lines[occurrence - 1]


def test_a_site_without_dc09_or_any_zone_number_loads() -> None:
    site = load_site(MINIMAL_SITE)
    assert site.dc09 is None
    assert all(p.dc09_zone is None for p in site.points)


def test_the_dc09_section_loads_with_defaults_and_upper_case_accounts(tmp_path: Path) -> None:
    site = load_site(_write(tmp_path, BASE + DC09))
    assert site.dc09 is not None
    (receiver,) = site.dc09.receivers
    assert (receiver.account, receiver.prefix, receiver.transport, receiver.receiver) == ("4711AB", "0", "tcp", "1")
    assert (receiver.supervision, receiver.ack_timeout) == (60.0, 10.0)
    assert site.dc09.accounts == {"az": "0815"}
    routing = site.dc09.routing
    assert routing.routes("intrusion", "alarm", 2) and routing.routes("access", "restore", 5)
    assert not routing.routes("access", "info", 5), "info events stay on MQTT by default"


def test_zone_and_area_overrides_load_also_from_repeat_templates(tmp_path: Path) -> None:
    text = BASE.replace('    id: "pir-{n:02d}"', '    id: "pir-{n:02d}"\n    dc09_zone: "100 + {i}"', 1)
    text = text.replace("    temporary: true", "    temporary: true\n    dc09_area: 7", 1)
    site = load_site(_write(tmp_path, text + DC09))
    assert [p.dc09_zone for p in site.points if p.id.startswith("pir-")] == list(range(100, 108))
    assert next(t for t in site.tenants if t.id == "az").dc09_area == 7


# (case, old text, new text (appended when old is None), needle of the line, path, message fragment)
BROKEN = [
    ("account not hex", '"4711ab"', '"47g1"', '"47g1"', "dc09.receivers[0].account",
     "'47g1' is not a valid DC-09 account: 3 to 16 hex digits"),
    ("account too short", '"4711ab"', '"47"', 'account: "47"', "dc09.receivers[0].account",
     "'47' is not a valid DC-09 account"),
    ("no key without insecure", "      key_file: /etc/gcmk/secrets/dc09.key\n", "", "- id: meldkamer-ats",
     "dc09.receivers[0]", "give key_file (AES key as hex), or insecure: true"),
    ("key and insecure", "      key_file: /etc/gcmk/secrets/dc09.key\n",
     "      key_file: /etc/gcmk/secrets/dc09.key\n      insecure: true\n", "- id: meldkamer-ats",
     "dc09.receivers[0]", "insecure: true contradicts a key_file"),
    ("ack timeout too long", "ack_timeout: 10s", "ack_timeout: 90s", "- id: meldkamer-ats", "dc09.receivers[0]",
     "ack_timeout 90s must be shorter than supervision 60s"),
    ("unknown transport", "      port: 5000\n", "      port: 5000\n      transport: sctp\n", "transport: sctp",
     "dc09.receivers[0].transport", "unknown transport 'sctp' (one of: tcp, udp)"),
    ("unknown tenant account", '{az: "0815"}', '{ocw: "0815"}', "accounts:", "dc09.accounts.ocw",
     "unknown tenant 'ocw'"),
    ("typo in a key", "      supervision: 60s", "      supervison: 60s", "supervison", "dc09.receivers[0].supervison",
     "unknown key 'supervison'"),
]


@pytest.mark.parametrize(("case", "old", "new", "needle", "path", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_dc09_section_is_named_with_file_line_and_path(
    tmp_path: Path, case: str, old: str, new: str, needle: str, path: str, message: str
) -> None:
    text = BASE + DC09.replace(old, new, 1)
    assert text != BASE + DC09, case
    problems = _problems(tmp_path, text)
    expected = f"{tmp_path / 'site.yaml'}:{_line_of(text, needle)}: {path}:"
    assert any(p.startswith(expected) and message in p for p in problems), (expected, message, problems)


def test_duplicate_zone_numbers_and_areas_are_named(tmp_path: Path) -> None:
    text = BASE.replace("  - id: door-1\n", "  - id: door-1\n    dc09_zone: 12\n", 1)
    text = text.replace("  - id: smoke-1\n", "  - id: smoke-1\n    dc09_zone: 12\n", 1)
    text = text.replace("    name: Justitie en Veiligheid\n", "    name: Justitie en Veiligheid\n    dc09_area: 3\n", 1)
    text = text.replace("    temporary: true", "    temporary: true\n    dc09_area: 3", 1)
    problems = _problems(tmp_path, text)
    file = tmp_path / "site.yaml"
    assert f"{file}:{_line_of(text, 'dc09_zone: 12', 2)}: points[2].dc09_zone: dc09_zone 12 is already the zone of" \
        " point 'door-1'" in problems, problems
    assert any(p.startswith(f"{file}:{_line_of(text, 'dc09_area: 3', 2)}: tenants[1].dc09_area:") for p in problems)


def test_contact_id_zones_stop_at_999(tmp_path: Path) -> None:
    text = BASE.replace("  - id: door-1\n", "  - id: door-1\n    dc09_zone: 1000\n", 1)
    assert load_site(_write(tmp_path, text + DC09.replace("adm-cid", "sia-dcs"))).points[8].dc09_zone == 1000
    problems = _problems(tmp_path, text + DC09)
    assert any("points[1].dc09_zone: dc09_zone 1000: Contact ID (adm-cid) zones are 1-999" in p for p in problems)


def test_the_editor_schema_knows_the_dc09_keys(tmp_path: Path) -> None:
    schema = site_json_schema()
    document = YAML(typ="safe").load(BASE + DC09)
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(document)) == []
    document["dc09"]["receivers"][0]["accont"] = "1234"
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(document)), "a typo is flagged"
    printed = subprocess.run(
        [sys.executable, "-m", "gateway", "schema", "site"], capture_output=True, text=True, check=True
    ).stdout
    assert "Dc09Receiver" in json.loads(printed)["$defs"]


def test_models_and_messages_agree_on_the_dc09_hex_patterns() -> None:
    from gateway.config import messages, models

    assert set(messages._HEX_PATTERNS) == {models.DC09_ACCOUNT, models.DC09_HEX_FIELD}
