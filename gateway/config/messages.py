"""pydantic's constraint errors said in an installer's words: which Modbus or BACnet rule a value breaks,
with the allowed values and a "did you mean" for every enumerated one. No bare pydantic phrase reaches
the user (tests/unit/config/test_messages.py seeds a violation of every constraint of the models)."""

from __future__ import annotations

import re
from typing import Any

from gateway.config.raw_values import MODBUS_TABLE_WORDS
from gateway.config.suggest import did_you_mean, one_of

IDENTIFIER_RULE = "use lower-case letters, digits, '-', '_' and '.', starting with a letter or digit, at most 64"

# (model, field) -> (noun, the rule said in domain words); the noun may use {table}.
_RULES: dict[tuple[str, str], tuple[str, str]] = {
    ("ModbusSource", "address"): ("{table} address", "Modbus addresses are 0-65535"),
    ("PointAction", "address"): ("{table} address", "Modbus addresses are 0-65535"),
    ("ModbusSource", "bit"): ("bit", "a 16-bit register has bits 0 (lowest) to 15"),
    ("ModbusSource", "width"): ("width", "a bit field is 1 to 16 bits of one register"),
    ("ModbusDevice", "unit_id"): (
        "unit id",
        "Modbus unit ids are 1-247 on a serial line; a Modbus TCP device may also answer 0 or 255",
    ),
    ("ModbusDevice", "port"): ("port", "TCP ports are 1-65535 (Modbus TCP: 502)"),
    ("ModbusDevice", "offline_after_failures"): ("offline_after_failures", "1 to 100 failed polls"),
    ("ModbusDevice", "max_gap"): ("max_gap", "a block read may span 0 to 100 unused addresses"),
    ("SerialLine", "baudrate"): ("baudrate", "e.g. 9600 or 19200"),
    ("BacnetDevice", "port"): ("port", "UDP ports are 1-65535 (BACnet/IP: 47808)"),
    ("BacnetLocal", "port"): ("port", "UDP ports are 1-65535 (BACnet/IP: 47808)"),
    ("BacnetDevice", "device_instance"): (
        "device instance",
        "BACnet device instances are 0-4194302 (4194303 means 'no device')",
    ),
    ("BacnetLocal", "device_instance"): (
        "device instance",
        "BACnet device instances are 0-4194302 (4194303 means 'no device'); pick one no device in the building uses",
    ),
    ("MetricsConfig", "port"): ("metrics port", "TCP ports are 1-65535, or 0 to let the OS choose"),
    ("PointConfig", "priority"): ("priority", "priorities run from 1 (most urgent) to 5"),
    ("MomentaryEvent", "priority"): ("priority", "priorities run from 1 (most urgent) to 5"),
    ("PointAction", "priority"): ("write priority", "BACnet write priorities run from 1 (highest) to 16"),
    ("MqttConfig", "max_inflight"): ("max_inflight", "1 to 1000 publishes awaiting their PUBACK"),
    ("JournalConfig", "max_bytes"): ("max_bytes", "the journal needs at least 1 MiB (1048576 bytes)"),
    ("CommandsConfig", "rate_limit"): ("rate_limit", "1 to 10000 commands per minute"),
    ("CommandsConfig", "max_concurrent"): ("max_concurrent", "1 to 64 commands at once"),
    ("CommandsConfig", "clock_skew"): ("clock_skew", "at most 300s (5 minutes)"),
}
_NAMED: dict[tuple[str, str], str] = {
    ("ModbusSource", "table"): "Modbus table",
    ("PointAction", "table"): "Modbus table of the action",
    ("ModbusDevice", "transport"): "Modbus transport",
    ("SerialLine", "parity"): "parity",
    ("SerialLine", "stopbits"): "stop bits",
    ("SerialLine", "bytesize"): "byte size",
    ("PointConfig", "type"): "event type",
    ("MomentaryEvent", "type"): "event type",
    ("PointConfig", "other_alarms"): "event type",
    ("PointConfig", "category"): "category",
    ("PointConfig", "kind"): "point kind",
    ("MomentaryEvent", "state"): "event state",
    ("PointAction", "action"): "command action",
    ("MqttConfig", "protocol"): "MQTT protocol version",
    ("DeliveryConfig", "confirm"): "confirmation mode",
    ("SiteConfig", "version"): "site-config format version",
}
# DC-09's hex fields, by their pattern (gateway/config/models.py DC09_ACCOUNT, DC09_HEX_FIELD): an account also
# appears as a value of dc09.accounts, where the error's field is the tenant id.
_HEX_PATTERNS = {
    r"^[0-9A-Fa-f]{3,16}$": "DC-09 account: 3 to 16 hex digits (0-9, A-F), as the receiving centre assigned it",
    r"^[0-9A-Fa-f]{1,6}$": "DC-09 receiver or prefix number: 1 to 6 hex digits (0-9, A-F)",
}
_DURATIONS = re.compile(r"interval|timeout|lifetime|after|retention|debounce|delay|pulse|ttl|skew|keepalive")


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unit(field: str, limit: Any) -> str:
    return f"{_number(limit)}s" if _DURATIONS.search(field) else _number(limit)


def explain(kind: str, ctx: dict[str, Any], value: Any, model: str, field: str, parent: Any) -> str | None:
    """The message for one pydantic error, or None when the loader has its own (keys, unions)."""
    noun, rule = _RULES.get((model, field), (field.replace("_", " ") if field else "value", ""))
    table = parent.get("table") if isinstance(parent, dict) else None
    noun = noun.format(table=MODBUS_TABLE_WORDS.get(str(table), "Modbus") if table else "Modbus")
    tail = f": {rule}" if rule else ""
    if kind == "less_than_equal":
        if field == "address" and model in ("ModbusSource", "PointAction"):
            return f"{noun} {_number(value)} is beyond {ctx['le']}, the highest Modbus address{_modicon_hint(value)}"
        return f"{noun} {_number(value)} is beyond {_unit(field, ctx['le'])}{tail or ', the most allowed'}"
    if kind in ("less_than", "greater_than_equal", "greater_than"):
        bound = ctx.get("lt", ctx.get("ge", ctx.get("gt")))
        relation = {"less_than": "must be less than", "greater_than_equal": "must be at least"}.get(kind)
        if relation is None:
            relation = "must be longer than" if _DURATIONS.search(field) else "must be more than"
        return f"{noun} {relation} {_unit(field, bound)}, not {_number(value)}{tail}"
    if kind == "too_short":
        return f"{field or 'this list'} needs at least {ctx.get('min_length', 1)} entry"
    if kind == "string_too_short":
        return f"{field or 'this'} must not be empty"
    if kind == "string_pattern_mismatch":
        hex_rule = _HEX_PATTERNS.get(str(ctx.get("pattern", "")))
        if hex_rule is not None:
            return f"'{value}' is not a valid {hex_rule}"
        if field == "property":
            return f"'{value}' is not a BACnet property identifier: write it in lower case with hyphens (present-value)"
        return f"'{value}' is not a valid {noun if noun != 'value' else 'id'}: {IDENTIFIER_RULE}"
    if kind in ("literal_error", "enum"):
        allowed = _expected(ctx.get("expected", ""))
        what = _NAMED.get((model, field), noun)
        if what == "site-config format version":
            return f"version {value!r} is not known: this gateway reads version {one_of(allowed)}"
        return f"unknown {what} '{value}'{did_you_mean(value, allowed)} (one of: {one_of(allowed)})"
    return _type_message(kind, value, noun)


def _type_message(kind: str, value: Any, noun: str) -> str | None:
    shown = f", not '{value}'" if value is not None and not isinstance(value, dict | list) else ""
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{noun} must be a whole number{shown}"
    if kind in ("float_parsing", "float_type"):
        return f"{noun} must be a number{shown}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{noun} must be true or false{shown}"
    if kind == "string_type":
        return f"{noun} must be text{shown} (quote it: \"...\")"
    if kind == "list_type":
        return f"{noun} must be a list, e.g. [a, b] or one '- item' per line"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{noun} must be a mapping of keys (key: value lines)"
    if kind == "none_required":
        return f"{noun} takes no value here"
    if kind in ("path_type", "path_parsing"):
        return f"{noun} must be a file path"
    if kind in ("frozen_set_type", "set_type"):
        return f"{noun} must be a list"
    return None


def _modicon_hint(value: Any) -> str:
    """400001-style six-digit 'Modicon' numbers (table digit + 1-based address) are a common import."""
    if not isinstance(value, int) or not 100_001 <= value <= 465_536:
        return ""
    tables = {0: "coil", 1: "discrete input", 3: "input register", 4: "holding register"}
    table = tables.get(value // 100_000)
    if table is None:
        return ""
    address = value % 100_000 - 1
    return f" ({value} looks like the 6-digit Modicon numbering of {table} {address}: write address: {address})"


def _expected(text: str) -> list[str]:
    """"'a', 'b' or 'c'" (pydantic's list of allowed values) -> ['a', 'b', 'c']."""
    quoted = re.findall(r"'([^']*)'", text)
    if quoted:
        return quoted
    return [part.strip() for part in re.split(r",| or ", text) if part.strip()]
