"""The command document and its stateless checks (gateway/commands/contract.py), and the `actions:` config."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.commands.contract import REFUSALS, CommandDoc, Refusal, check_command, parse_command
from gateway.config.models import SiteConfig, cross_check

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def site(enabled: bool = True, **commands: Any) -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "version": 1,
            "site": {"id": "t", "name": "T", "address": "Teststraat 1"},
            "tenants": [{"id": "jv", "name": "JV"}],
            "zones": [{"id": "z1", "name": "Z1", "tenant": "jv"}],
            "mqtt": {"url": "mqtt://127.0.0.1:1883", "insecure": True},
            "journal": {"data_dir": "/tmp/unused"},
            "bacnet": {"address": "127.0.0.1"},
            "commands": {"enabled": enabled, **commands},
            "devices": [
                {"protocol": "modbus", "id": "m1", "name": "M1", "host": "127.0.0.1", "timeout": 0.2},
                {"protocol": "bacnet", "id": "b1", "name": "B1", "address": "127.0.0.1", "device_instance": 1},
            ],
            "points": [
                {
                    "id": "door-1", "name": "Door", "device": "m1", "tenant": "jv", "zone": "z1",
                    "type": "door_forced", "source": {"protocol": "modbus", "table": "holding", "address": 0},
                    "alarm": [1], "normal": [0],
                    "actions": [
                        {"action": "pulse", "table": "coil", "address": 4, "value": 1, "restore": 0,
                         "pulse": "2s", "max_pulse": "10s"},
                        {"action": "lock", "table": "coil", "address": 4, "value": 0},
                    ],
                },
                {
                    "id": "zone-1", "name": "Zone", "device": "b1", "tenant": "jv", "zone": "z1",
                    "type": "burglary", "source": {"protocol": "bacnet", "object": "life-safety-zone,1"},
                    "alarm": ["alarm"], "normal": ["quiet"],
                    "actions": [{"action": "acknowledge"},
                                {"action": "arm", "property": "mode", "value": "armed", "priority": 8}],
                },
            ],
        }
    )


SITE = site()


def command(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "command_id": "c-1", "point_id": "door-1", "action": "pulse", "operator": "op-7",
        "issued_at": NOW.isoformat(), "expires_at": (NOW + timedelta(seconds=30)).isoformat(),
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def outcome(**fields: Any) -> Any:
    parsed = parse_command(json.dumps(command(**fields)))
    return parsed if isinstance(parsed, Refusal) else check_command(parsed, SITE, NOW)


def test_a_valid_command_passes() -> None:
    point, action = outcome(duration=3)
    assert (point.id, action.action, action.pulse_max) == ("door-1", "pulse", 10.0)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"point_id": "ghost"}, "unknown_point"),
        ({"action": "unlock"}, "action_not_allowed"),
        ({"action": "explode"}, "malformed"),
        ({"expires_at": (NOW - timedelta(seconds=6)).isoformat(),
          "issued_at": (NOW - timedelta(seconds=60)).isoformat()}, "expired"),
        ({"issued_at": (NOW + timedelta(seconds=20)).isoformat()}, "not_yet_valid"),
        ({"expires_at": (NOW + timedelta(hours=1)).isoformat()}, "ttl_too_long"),
        ({"expires_at": NOW.isoformat()}, "malformed"),
        ({"duration": 11}, "duration_too_long"),
        ({"action": "lock", "duration": 1}, "duration_not_allowed"),
        ({"issued_at": "2026-11-22T08:00:00"}, "malformed"),  # no time zone
        ({"operator": None}, "malformed"),
        ({"extra": 1}, "malformed"),
    ],
)
def test_refusals(fields: dict[str, Any], reason: str) -> None:
    result = outcome(**fields)
    assert isinstance(result, Refusal)
    assert result.reason == reason, result.detail


def test_clock_skew_is_tolerated() -> None:
    late = outcome(issued_at=(NOW - timedelta(seconds=60)).isoformat(),
                   expires_at=(NOW - timedelta(seconds=4)).isoformat())
    assert not isinstance(late, Refusal)


def test_disabled_site_refuses_everything() -> None:
    parsed = parse_command(json.dumps(command()))
    assert isinstance(parsed, CommandDoc)
    result = check_command(parsed, site(enabled=False), NOW)
    assert isinstance(result, Refusal) and result.reason == "commands_disabled"


def test_malformed_refusal_echoes_a_readable_command_id() -> None:
    result = parse_command(json.dumps(command(issued_at="yesterday")))
    assert isinstance(result, Refusal) and result.command_id == "c-1" and result.reason == "malformed"
    for payload in (b"", b"\xff\xfe", b"[1,2]", b"null", b"{" * 100_000, b'"x"', b"{}"):
        assert isinstance(parse_command(payload), Refusal)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
_field_values = st.one_of(
    _json, st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()), st.sampled_from(
        ["door-1", "zone-1", "pulse", "arm", "acknowledge", "lock", NOW.isoformat(), "c-1"]
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        _json.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from(["command_id", "point_id", "action", "issued_at", "expires_at", "operator", "reason",
                             "duration", "schema"]),
            _field_values,
        ).map(lambda d: json.dumps({**command(), **d}).encode()),
    )
)
def test_fuzzed_payloads_never_raise(payload: bytes) -> None:
    parsed = parse_command(payload)
    if isinstance(parsed, Refusal):
        assert parsed.reason == "malformed"
        return
    result = check_command(parsed, SITE, NOW)
    if isinstance(result, Refusal):
        assert result.reason in REFUSALS
    else:
        point, action = result
        assert action.action == parsed.action and point.id == parsed.point_id


def _point_with(actions: list[dict[str, Any]], source: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "p", "name": "P", "device": "m1", "tenant": "jv", "zone": "z1", "type": "door_forced",
        "source": source or {"protocol": "modbus", "table": "input", "address": 0},
        "alarm": [1], "normal": [0], "actions": actions,
    }


@pytest.mark.parametrize(
    ("actions", "source", "message"),
    [
        ([{"action": "lock", "value": 1}], None, "read-only"),
        ([{"action": "lock", "table": "coil", "value": 1}], None, "table and address go together"),
        ([{"action": "lock", "table": "coil", "address": 1, "value": 2}], None, "does not fit"),
        ([{"action": "lock", "table": "coil", "address": 1}], None, "integer value"),
        ([{"action": "pulse", "table": "coil", "address": 1, "value": 1}], None, "restore"),
        ([{"action": "lock", "table": "coil", "address": 1, "value": 1, "pulse": 3}], None, "belong to action pulse"),
        ([{"action": "lock", "table": "coil", "address": 1, "value": 1}] * 2, None, "listed twice"),
        ([{"action": "lock", "table": "coil", "address": 70000, "value": 1}], None, "less than or equal"),
        ([{"action": "pulse", "table": "coil", "address": 1, "value": 1, "restore": 0, "pulse": 40, "max_pulse": 30}],
         None, "longer than max_pulse"),
        ([{"action": "arm"}], {"protocol": "bacnet", "object": "life-safety-zone,1"}, "needs value"),
        ([{"action": "arm", "value": "armed", "table": "coil", "address": 1}],
         {"protocol": "bacnet", "object": "life-safety-zone,1"}, "Modbus targets"),
        ([{"action": "arm", "value": 1, "priority": 8}], {"protocol": "modbus", "table": "coil", "address": 0},
         "BACnet settings"),
    ],
)
def test_invalid_actions_are_explained(actions: list[dict[str, Any]], source: dict[str, Any] | None,
                                       message: str) -> None:
    doc = SITE.model_dump(mode="json", exclude_none=True)
    doc["points"] = [_point_with(actions, source)]
    if source and source["protocol"] == "bacnet":
        doc["points"][0]["device"] = "b1"
    with pytest.raises(ValidationError, match=message):
        SiteConfig.model_validate(doc)


def test_cross_check_names_a_target_that_another_point_reads() -> None:
    doc = SITE.model_dump(mode="json", exclude_none=True)
    doc["points"][0]["actions"] = [{"action": "lock", "table": "holding", "address": 9, "value": 0}]
    doc["points"].append(_point_with([], {"protocol": "modbus", "table": "holding", "address": 9}) | {"id": "q"})
    problems = cross_check(SiteConfig.model_validate(doc))
    assert [(loc, msg) for loc, msg in problems if "actions" in loc] == [
        (("points", 0, "actions", 0, "address"),
         "action lock writes holding:9, which point 'q' reads: a command would change that point's state")
    ]


def test_commands_are_disabled_by_default() -> None:
    doc = SITE.model_dump(mode="json", exclude_none=True)
    del doc["commands"]
    assert SiteConfig.model_validate(doc).commands.enabled is False
