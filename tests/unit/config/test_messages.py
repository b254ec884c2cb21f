"""No bare pydantic phrase reaches the installer: a violation of every constraint of every model of the site
config (bounds, lengths, patterns, enumerations, types) is seeded into a valid document one at a time, and
each must come out as `file:line: path: <plain words>`."""

from __future__ import annotations

import enum
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le, MinLen
from pydantic import BaseModel
from ruamel.yaml import YAML

from gateway.config import models
from gateway.config.loader import load_site
from gateway.domain.errors import ConfigError
from tests.support.sites import MINIMAL_SITE

PYDANTIC_PHRASES = re.compile(
    r"Input should|String should|List should|Value error|Field required|Extra inputs|valid integer|"
    r"should have at least|Assertion failed|Dictionary should|Object has no attribute|Unable to parse"
)


def _document() -> dict[str, Any]:
    """The minimal site plus one of every section, so that every model has a place in it."""
    doc: dict[str, Any] = YAML(typ="safe").load(MINIMAL_SITE.read_text(encoding="utf-8"))
    doc["supervision"] = {"heartbeat_interval": "5s", "device_offline_after": "10s"}
    doc["delivery"] = {"confirm": "meldkamer", "receivers": ["meldkamer"], "confirm_timeout": "10s"}
    doc["metrics"] = {"listen": "127.0.0.1", "port": 9108}
    doc["commands"] = {"enabled": False, "rate_limit": 30, "clock_skew": "5s", "max_ttl": "5m", "timeout": "10s",
                       "max_concurrent": 4}
    doc["bacnet"]["device_instance"] = 4194000
    doc["mqtt"]["max_inflight"] = 64
    doc["mqtt"]["protocol"] = "auto"
    doc["journal"]["max_bytes"] = 1 << 30
    doc["devices"].append({"protocol": "modbus", "id": "bus-1", "name": "Bus", "transport": "serial", "unit_id": 2,
                           "serial": {"port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "N", "stopbits": 1,
                                      "bytesize": 8}})
    doc["devices"][0].update(offline_after_failures=3, max_gap=8, inter_request_delay=0)
    doc["devices"][1].update(cov_lifetime="5m", poll_interval="1s", timeout="2s")
    doc["points"].append({
        "id": "relay-1", "name": "Relais", "device": "panel-1", "tenant": "jv", "zone": "jv-1", "type": "burglary",
        "priority": 2, "category": "intrusion", "kind": "state", "debounce": 0,
        "source": {"protocol": "modbus", "table": "holding", "address": 900, "bit": 0, "width": 1},
        "alarm": [1], "normal": [0],
        "actions": [{"action": "pulse", "table": "coil", "address": 901, "value": 1, "restore": 0, "pulse": "2s",
                     "max_pulse": "10s"}],
    })
    doc["points"][1]["actions"] = [{"action": "unlock", "value": "unlock", "priority": 8}]
    doc["points"][3]["events"][0].update(state="info", priority=5)
    doc["dc09"] = {"format": "sia-dcs", "accounts": {"jv": "0815"},
                   "routing": {"categories": ["intrusion"], "states": ["alarm"], "max_priority": 3},
                   "receivers": [{"id": "ats", "host": "192.0.2.50", "port": 5000, "transport": "tcp",
                                  "account": "4711", "receiver": "1", "prefix": "0", "insecure": True,
                                  "supervision": "60s", "ack_timeout": "10s"}]}
    return doc


# Where each model lives in _document().
PLACES: dict[type[BaseModel], tuple[str | int, ...]] = {
    models.SiteConfig: (), models.SiteInfo: ("site",), models.Tenant: ("tenants", 0), models.Zone: ("zones", 0),
    models.MqttConfig: ("mqtt",), models.MqttTls: ("mqtt", "tls"), models.Supervision: ("supervision",),
    models.DeliveryConfig: ("delivery",), models.JournalConfig: ("journal",), models.BacnetLocal: ("bacnet",),
    models.MetricsConfig: ("metrics",), models.CommandsConfig: ("commands",), models.ModbusDevice: ("devices", 0),
    models.BacnetDevice: ("devices", 1), models.SerialLine: ("devices", 2, "serial"),
    models.ModbusSource: ("points", 4, "source"), models.BacnetSource: ("points", 1, "source"),
    models.PointConfig: ("points", 4), models.MomentaryEvent: ("points", 3, "events", 0),
    models.PointAction: ("points", 4, "actions", 0), models.Dc09Config: ("dc09",),
    models.Dc09Receiver: ("dc09", "receivers", 0), models.Dc09Routing: ("dc09", "routing"),
}


def _violations(model: type[BaseModel]) -> list[tuple[str, Any, str]]:
    """(field, a value breaking one of its constraints, which constraint) for every constrained field."""
    out: list[tuple[str, Any, str]] = []
    for name, info in model.model_fields.items():
        if name == "protocol" or info.exclude:
            continue
        for meta in info.metadata:
            if isinstance(meta, Ge):
                out.append((name, int(meta.ge) - 1, f"ge {meta.ge}"))  # type: ignore[call-overload]
            elif isinstance(meta, Gt):
                out.append((name, meta.gt, f"gt {meta.gt}"))
            elif isinstance(meta, Le):
                out.append((name, int(meta.le) + 1, f"le {meta.le}"))  # type: ignore[call-overload]
            elif isinstance(meta, MinLen):
                out.append((name, [] if typing.get_origin(info.annotation) is list else "", "min_length"))
            elif getattr(meta, "pattern", None):
                out.append((name, "Not An Id!", "pattern"))
        base = typing.get_args(info.annotation)[0] if typing.get_origin(info.annotation) is list else info.annotation
        members = [a for a in typing.get_args(base)] or [base]
        if typing.get_origin(base) is typing.Literal:
            out.append((name, "wrong-choice", "literal"))
        elif any(isinstance(m, type) and issubclass(m, enum.Enum) for m in members):
            out.append((name, ["wrong-choice"] if base is not info.annotation else "wrong-choice", "enum"))
        elif info.annotation is int or (int in members and str not in members):
            out.append((name, "abc", "int type"))
        elif info.annotation is bool:
            out.append((name, "maybe", "bool type"))
    return out


CASES = [(model, *v) for model in PLACES for v in _violations(model)]


def test_every_model_of_the_site_config_is_covered() -> None:
    def reachable(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
        seen.add(model)
        for info in model.model_fields.values():
            for arg in _flatten(info.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                    reachable(arg, seen)
        return seen

    assert reachable(models.SiteConfig, set()) <= set(PLACES)
    assert len(CASES) > 60


def _flatten(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    return [annotation] + [x for a in args for x in _flatten(a)] if args else [annotation]


def test_the_seeding_document_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    YAML(typ="safe").dump(_document(), path)
    load_site(path)


@pytest.mark.parametrize(("model", "field", "value", "constraint"), CASES,
                         ids=[f"{c[0].__name__}.{c[1]}-{c[3]}" for c in CASES])
def test_a_broken_constraint_is_said_in_plain_words(
    tmp_path: Path, model: type[BaseModel], field: str, value: Any, constraint: str
) -> None:
    doc = _document()
    node: Any = doc
    for part in PLACES[model]:
        node = node[part]
    node[field] = value
    path = tmp_path / "site.yaml"
    YAML(typ="safe").dump(doc, path)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    problems = info.value.problems
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (*PLACES[model], field)).lstrip(".")
    assert any(re.match(rf"{re.escape(str(path))}:\d+: {re.escape(where)}", p) for p in problems), (where, problems)
    bare = [p for p in problems if PYDANTIC_PHRASES.search(p)]
    assert not bare, bare
