"""`TODO` placeholders: `discover` and the EDE import write `TODO` where only a person can decide (tenant,
zone, event type, which values mean alarm) and `TODO-<suggestion>` where they can guess. A site config with
one left is not valid; each is named with what to choose and the choices."""

from __future__ import annotations

import re
from typing import Any

from gateway.config.models import Loc
from gateway.config.raw_values import Domain, bacnet_domain, modbus_domain
from gateway.config.suggest import one_of
from gateway.domain.taxonomy import Category, EventType

_TODO = re.compile(r"^\s*TODO\b")
_VALUE_LISTS = {"alarm": "an alarm", "normal": "quiet (normal)", "fault": "a fault of the point"}


def is_todo(value: object) -> bool:
    return isinstance(value, str) and _TODO.match(value) is not None


def find_todos(data: Any) -> list[tuple[Loc, str]]:
    """Every TODO left in the document (values, and keys of mappings), with what to decide."""
    found: list[tuple[Loc, str]] = []
    _walk(data, (), data, found)
    return found


def _walk(node: Any, loc: Loc, root: Any, found: list[tuple[Loc, str]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            child: Loc = (*loc, str(key))
            if is_todo(key):
                found.append((child, "still TODO: " + _what(child, root)))
            _walk(value, child, root, found)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _walk(value, (*loc, index), root, found)
    elif is_todo(node):
        found.append((loc, "still TODO: " + _what(loc, root) + _suggested(str(node))))


def _suggested(text: str) -> str:
    """discover writes `TODO-<suggestion>` where it can guess (type: TODO-burglary)."""
    suggestion = _TODO.sub("", text, count=1).lstrip("-: ").strip()
    return f"; suggested: '{suggestion}' (if right, delete 'TODO-')" if suggestion else ""


def _ids(root: Any, section: str) -> str:
    items = root.get(section) if isinstance(root, dict) else None
    ids = [str(i["id"]) for i in items or [] if isinstance(i, dict) and "id" in i and not is_todo(i["id"])]
    return f"one of: {one_of(ids)}" if ids else f"the {section}: section has none yet"


_PLAIN = {
    ("site", "id"): "the site id: lower case, e.g. turfmarkt-147 (it names the MQTT topics and the journal)",
    ("site", "address"): "the building's postal address",
    ("tenants", "id"): "the tenant's id: lower case, e.g. bzk",
    ("zones", "id"): "the zone's id: lower case, e.g. bzk-1",
    ("mqtt", "url"): "the broker's url, e.g. mqtts://broker.example:8883",
    ("devices", "id"): "the device's id: lower case, e.g. imc-1",
    ("points", "id"): "the point's id: lower case, e.g. pir-01",
}


def _what(loc: Loc, root: Any) -> str:
    section = loc[0] if loc else ""
    key = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    owner = "zone" if section == "zones" else "point"
    if key == "tenant":
        extra = ", or delete the line for a shared area" if section == "zones" else ""
        return f"choose the tenant this {owner} belongs to ({_ids(root, 'tenants')}){extra}"
    if key == "zone":
        return f"choose the zone this point is in ({_ids(root, 'zones')})"
    if key == "device":
        return f"choose the device this point is read from ({_ids(root, 'devices')})"
    if key == "type" or (section == "points" and "other_alarms" in loc and loc[-1] == key):
        return f"choose what an alarm of this point is (one of: {one_of(e.value for e in EventType)})"
    if key == "category":
        return f"choose the category (one of: {one_of(c.value for c in Category)}), or delete the line"
    if section == "points" and (key in _VALUE_LISTS or key == "value" or "other_alarms" in loc):
        meaning = _VALUE_LISTS.get(key, "this condition" if key != "value" else "this event")
        return f"choose the raw values that mean {meaning}{_source_values(loc, root)}"
    if (str(section), key) in _PLAIN and len(loc) <= 3:
        return f"give {_PLAIN[(str(section), key)]}"
    if key == "name":
        return "give it the name the meldkamer will read"
    return f"replace TODO with the {key.replace('_', ' ') or 'value'}"


def _source_values(loc: Loc, root: Any) -> str:
    """' (this source reports: ...)' from the point's source as written, when it is complete enough."""
    domain: Domain | None
    try:
        source = root["points"][loc[1]]["source"]
        if source.get("protocol") == "modbus":
            bit = source.get("bit")
            domain = modbus_domain(str(source["table"]), int(bit) if bit is not None else None,
                                   int(source.get("width", 1)))
        else:
            domain = bacnet_domain(str(source["object"]).split(",")[0], str(source.get("property", "present-value")))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return ""
    return "" if domain is None else f" ({domain.what} reports: {domain.allowed})"
