"""The site-config skeleton that `discover` and `ede import` write, and its diff against an existing config.

A skeleton is a real site config (gateway/config/models.py: same sections, same keys) in which every value
only a person can decide is marked: `TODO` (no suggestion: tenant, zone, site name, a Modbus point's type)
or `TODO-<suggestion>` (e.g. `type: TODO-burglary` on a binary input: check it and delete `TODO-`).
`gcmk-gateway validate` refuses a file while a TODO remains. Output is deterministic: devices sorted by
identity, points by object or address, ids derived from them, no time stamps.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from gateway.config.models import BacnetDevice, BacnetSource, ModbusDevice, ModbusSource, SiteConfig

TODO = "TODO"


def todo(suggestion: str | None = None) -> str:
    """`TODO` or `TODO-<suggestion>`: the marker `validate` refuses."""
    return TODO if suggestion is None else f"{TODO}-{suggestion}"


# --- what a BACnet object suggests ------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    """One point an object of a type usually gives: which property, which event type, which raw values."""

    property: str
    type: str | None  # None: no suggestion (plain TODO)
    kind: str = "state"
    alarm: tuple[Any, ...] = ()
    normal: tuple[Any, ...] = ()
    fault: tuple[Any, ...] = ()
    other_alarms: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    events: tuple[tuple[Any, str, str], ...] = ()  # (value, type, state)
    suffix: str = ""  # point-id suffix when an object gives more than one point


_LIFE_SAFETY = Suggestion(
    "present-value",
    "fire",
    alarm=("alarm",),
    normal=("quiet",),
    fault=("fault",),
    other_alarms=(("tamper", ("tamper", "tamper-alarm")),),
)
_MODE = Suggestion(
    "mode",
    "armed",
    kind="momentary",
    events=(("armed", "armed", "info"), ("disarmed", "disarmed", "info")),
    suffix="-mode",
)
_MULTI_STATE = Suggestion("present-value", None, alarm=(2,), normal=(1,))

# Per BACnet object type: the points it suggests (values as bacpypes3 names them, as site configs write them).
SUGGESTIONS: dict[str, tuple[Suggestion, ...]] = {
    "binary-input": (Suggestion("present-value", "burglary", alarm=("active",), normal=("inactive",)),),
    "binary-value": (Suggestion("present-value", "burglary", alarm=("active",), normal=("inactive",)),),
    "life-safety-point": (_LIFE_SAFETY,),
    "life-safety-zone": (_LIFE_SAFETY, _MODE),
    "access-door": (
        Suggestion(
            "door-alarm-state",
            "door_forced",
            alarm=("forced-open",),
            normal=("normal",),
            fault=("door-fault",),
            other_alarms=(("door_held_open", ("door-open-too-long",)), ("tamper", ("tamper",))),
        ),
    ),
    "access-point": (
        Suggestion(
            "access-event",
            "access_granted",
            kind="momentary",
            events=(
                ("granted", "access_granted", "info"),
                ("denied-unknown-credential", "access_denied", "info"),
                ("denied-no-access-rights", "access_denied", "info"),
                ("denied-out-of-time-range", "access_denied", "info"),
                ("duress", "duress", "alarm"),
            ),
        ),
    ),
    "multi-state-input": (_MULTI_STATE,),
    "multi-state-value": (_MULTI_STATE,),
}

SKIP_REASONS: dict[str, str] = {
    "device": "the device object itself (it becomes the devices: entry)",
    "network-port": "network ports (infrastructure, not points)",
    "notification-class": "notification classes (event routing, not points)",
    "binary-output": "outputs (commands to the device, not alarm sources)",
    "analog-output": "outputs (commands to the device, not alarm sources)",
    "multi-state-output": "outputs (commands to the device, not alarm sources)",
    "analog-input": "analog objects (no alarm mapping: the gateway maps states, not measurements)",
    "analog-value": "analog objects (no alarm mapping: the gateway maps states, not measurements)",
}


def skip_reason(object_type: str) -> str:
    return SKIP_REASONS.get(object_type, f"{object_type}: no alarm mapping known for this object type")


# --- the skeleton -----------------------------------------------------------------------------------------


@dataclass
class SkeletonPoint:
    id: str
    name: str
    device: str
    source: dict[str, Any]
    type: str
    kind: str = "state"
    location: str = ""
    alarm: list[Any] = field(default_factory=list)
    normal: list[Any] = field(default_factory=list)
    fault: list[Any] = field(default_factory=list)
    other_alarms: dict[str, list[Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""  # written as a comment after the point's source

    @property
    def key(self) -> str:
        """What the point reads, as the diff compares it: 'binary-input,3' or 'discrete_input:12'."""
        if self.source["protocol"] == "bacnet":
            return str(self.source["object"])
        return f"{self.source['table']}:{self.source['address']}"

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.location:
            out["location"] = self.location
        out.update(device=self.device, tenant=TODO, zone=TODO, type=self.type)
        if self.kind != "state":
            out["kind"] = self.kind
        out["source"] = dict(self.source)
        for key in ("alarm", "normal", "fault"):
            values = getattr(self, key)
            if values:
                out[key] = list(values)
        if self.other_alarms:
            out["other_alarms"] = {k: list(v) for k, v in self.other_alarms.items()}
        if self.events:
            out["events"] = [dict(e) for e in self.events]
        return out


@dataclass
class SkeletonDevice:
    entry: dict[str, Any]  # the devices: entry, site-config keys
    points: list[SkeletonPoint] = field(default_factory=list)
    note: str = ""

    @property
    def id(self) -> str:
        return str(self.entry["id"])

    @property
    def identity(self) -> tuple[Any, ...]:
        return device_identity(self.entry)


def device_identity(entry: dict[str, Any] | BacnetDevice | ModbusDevice) -> tuple[Any, ...]:
    """What makes a device the same device in two files: its BACnet instance, or its Modbus endpoint + unit."""
    fields: dict[str, Any] = entry if isinstance(entry, dict) else entry.model_dump()
    if fields.get("protocol") == "bacnet":
        return ("bacnet", int(fields["device_instance"]))
    return ("modbus", str(fields.get("host")), int(fields.get("port") or 502), int(fields.get("unit_id") or 1))


@dataclass
class Skeleton:
    command: str  # how it was made, for the header comment
    devices: list[SkeletonDevice] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    notes: list[str] = field(default_factory=list)
    bacnet_local: dict[str, Any] | None = None
    # Endpoints looked at ("host:port"); "*" = all of the protocol (broadcast, EDE): the diff's scope.
    scanned: set[str] = field(default_factory=set)
    protocol: str = "bacnet"

    @property
    def points(self) -> list[SkeletonPoint]:
        return [p for d in self.devices for p in d.points]

    def sort(self) -> None:
        self.devices.sort(key=lambda d: d.identity)
        for device in self.devices:
            device.points.sort(key=_point_order)

    def document(self) -> dict[str, Any]:
        """The skeleton as plain data in the site-config shape."""
        self.sort()
        doc: dict[str, Any] = {
            "version": 1,
            "site": {"id": TODO, "name": TODO, "address": TODO},
            "tenants": [{"id": TODO, "name": TODO}],
            "zones": [{"id": TODO, "name": TODO, "tenant": TODO}],
            "mqtt": {"url": TODO},
            "journal": {"data_dir": "var/journal"},
        }
        if any(d.entry["protocol"] == "bacnet" for d in self.devices):
            doc["bacnet"] = dict(self.bacnet_local or {"address": "0.0.0.0", "port": 47808})
        doc["devices"] = [dict(d.entry) for d in self.devices]
        doc["points"] = [p.entry() for p in self.points]
        return doc

    def header(self) -> list[str]:
        lines = [
            f"Site config skeleton written by `{self.command}`.",
            "Replace every TODO: `TODO` needs a value only a person can give (tenant, zone, site, type);",
            "`TODO-<x>` is a suggestion (e.g. type: TODO-burglary): check it, then delete `TODO-`.",
            "`gcmk-gateway validate` refuses this file while a TODO remains.",
            f"Found {len(self.devices)} device(s), {len(self.points)} point(s).",
        ]
        total = sum(self.skipped.values())
        if total:
            lines.append(f"Skipped {total}:")
            lines.extend(f"  {count} x {reason}" for reason, count in sorted(self.skipped.items()))
        lines.extend(f"Note: {note}" for note in self.notes)
        return lines

    def render(self) -> str:
        """YAML text: header comment, sections in the usual order, a comment per point where known."""
        doc = self.document()
        root = CommentedMap()
        for key, value in doc.items():
            root[key] = _commented(key, value)
        points: CommentedSeq = root["points"]
        for index, point in enumerate(self.points):
            if point.note:
                points[index].yaml_add_eol_comment(point.note, "source")
        devices: CommentedSeq = root["devices"]
        for index, device in enumerate(self.devices):
            if device.note:
                devices[index].yaml_add_eol_comment(device.note, "name")
        root.yaml_set_start_comment("\n".join(self.header()))
        yaml = YAML(typ="rt")
        yaml.width = 4096
        yaml.indent(mapping=2, sequence=4, offset=2)
        out = io.StringIO()
        yaml.dump(root, out)
        return out.getvalue()


def _point_order(point: SkeletonPoint) -> tuple[Any, ...]:
    src = point.source
    if src["protocol"] == "bacnet":
        object_type, instance = str(src["object"]).split(",")
        return (object_type, int(instance), point.id)
    return (src["table"], int(src["address"]), point.id)


def _commented(key: str, value: Any) -> Any:
    """Plain data -> ruamel nodes; sources, events, tenants, zones and value lists in flow style, as the
    shipped site configs write them."""
    if isinstance(value, dict):
        node = CommentedMap()
        for k, v in value.items():
            node[k] = _commented(k, v)
        if key in _FLOW_MAPPINGS:
            node.fa.set_flow_style()
        return node
    if isinstance(value, list):
        seq = CommentedSeq()
        item_key = _FLOW_ITEMS.get(key, key)
        for item in value:
            seq.append(_commented(item_key, item))
        if all(not isinstance(item, dict | list) for item in value):
            seq.fa.set_flow_style()
        return seq
    return value


_FLOW_MAPPINGS = frozenset({"source", "other_alarms", "_item"})
_FLOW_ITEMS = {"events": "_item", "tenants": "_item", "zones": "_item"}


# --- building points ----------------------------------------------------------------------------------------


def bacnet_points(
    device_id: str,
    object_type: str,
    instance: int,
    *,
    name: str | None = None,
    description: str | None = None,
    note: str = "",
    type_hint: str | None = None,
) -> list[SkeletonPoint]:
    """The points an object suggests (empty: not a point; see `skip_reason`). `type_hint`: an event type
    suggested by the source (e.g. an EDE state text) instead of the object type's usual one."""
    points = []
    for index, suggestion in enumerate(SUGGESTIONS.get(object_type, ())):
        source: dict[str, Any] = {"protocol": "bacnet", "object": f"{object_type},{instance}"}
        if suggestion.property != "present-value":
            source["property"] = suggestion.property
        label = (name or f"{object_type} {instance}").strip() or f"{object_type} {instance}"
        if suggestion.suffix:
            label = f"{label} ({suggestion.property})"
        points.append(
            SkeletonPoint(
                id=f"{device_id}-{object_type}-{instance}{suggestion.suffix}",
                name=label,
                device=device_id,
                source=source,
                type=todo(type_hint if type_hint is not None and index == 0 else suggestion.type),
                kind=suggestion.kind,
                location=(description or "").strip(),
                alarm=list(suggestion.alarm),
                normal=list(suggestion.normal),
                fault=list(suggestion.fault),
                other_alarms={k: list(v) for k, v in suggestion.other_alarms},
                events=[_event(value, kind, state) for value, kind, state in suggestion.events],
                note=note,
            )
        )
    return points


def _event(value: Any, event_type: str, state: str) -> dict[str, Any]:
    event: dict[str, Any] = {"value": value, "type": event_type}
    if state != "info":
        event["state"] = state
    return event


MODBUS_ABBREVIATIONS = {"coil": "co", "discrete_input": "di", "holding": "hr", "input": "ir"}
_TABLE_LABEL = {
    "coil": "Coil",
    "discrete_input": "Discrete input",
    "holding": "Holding register",
    "input": "Input register",
}


def modbus_points(device_id: str, table: str, addresses: Iterable[int]) -> list[SkeletonPoint]:
    """One point per address found; meaning unknown, so the type is a plain TODO (bits: 1 = alarm guessed)."""
    return [
        SkeletonPoint(
            id=f"{device_id}-{MODBUS_ABBREVIATIONS[table]}{address}",
            name=f"{_TABLE_LABEL[table]} {address}",
            device=device_id,
            source={"protocol": "modbus", "table": table, "address": address},
            type=TODO,
            alarm=[1],
            normal=[0],
        )
        for address in sorted(addresses)
    ]


# --- diff -------------------------------------------------------------------------------------------------


def _config_point_key(source: ModbusSource | BacnetSource) -> str:
    if isinstance(source, BacnetSource):
        return source.object
    return f"{source.table}:{source.address}"


def diff(skeleton: Skeleton, site: SiteConfig) -> list[str]:
    """What the found devices and points change against `site`: `+` found, not configured; `-` configured,
    not found; `~` both, but different. Devices match by identity (BACnet instance, Modbus endpoint + unit),
    points by object (BACnet) or table:address (Modbus) on a matched device."""
    skeleton.sort()
    found = {d.identity: d for d in skeleton.devices}
    configured = {
        device_identity(d): d for d in site.devices if d.protocol == skeleton.protocol and _in_scope(skeleton, d)
    }
    lines: list[str] = []
    for identity in sorted(set(found) | set(configured)):
        new, old = found.get(identity), configured.get(identity)
        what = _identity_text(identity)
        if old is None:
            assert new is not None
            lines.append(f"+ device {new.id} ({what}): {len(new.points)} point(s)")
            lines.extend(f"+   point {p.id} {p.key} {p.name!r}" for p in new.points)
            continue
        old_points = site.points_of(old.id)
        if new is None:
            lines.append(f"- device {old.id} ({what}): not found; its {len(old_points)} point(s) not checked")
            continue
        changes = _device_changes(new.entry, old)
        if changes:
            lines.append(f"~ device {old.id} ({what}): {'; '.join(changes)}")
        new_by_key: dict[str, list[SkeletonPoint]] = {}
        for p in new.points:
            new_by_key.setdefault(p.key, []).append(p)
        old_by_key: dict[str, list[str]] = {}
        old_props: dict[str, set[str]] = {}
        for cp in old_points:
            key = _config_point_key(cp.source)
            old_by_key.setdefault(key, []).append(cp.id)
            if isinstance(cp.source, BacnetSource):
                old_props.setdefault(key, set()).add(cp.source.property)
        for key in sorted(set(new_by_key) | set(old_by_key), key=_key_order):
            if key not in old_by_key:
                lines.extend(f"+ point {p.id} {key} {p.name!r} (device {old.id})" for p in new_by_key[key])
            elif key not in new_by_key:
                lines.extend(f"- point {pid} {key} (device {old.id}): not on the device" for pid in old_by_key[key])
            elif key in old_props:
                suggested = {str(p.source.get("property", "present-value")) for p in new_by_key[key]}
                if not old_props[key] & suggested:
                    lines.append(
                        f"~ point {', '.join(old_by_key[key])} {key}: reads {', '.join(sorted(old_props[key]))}; "
                        f"the object's alarms are in {', '.join(sorted(suggested))}"
                    )
    return lines


def _in_scope(skeleton: Skeleton, device: BacnetDevice | ModbusDevice) -> bool:
    if "*" in skeleton.scanned:
        return True
    if isinstance(device, BacnetDevice):
        return f"{device.address}:{device.port}" in skeleton.scanned
    return f"{device.host}:{device.port}" in skeleton.scanned


def _device_changes(entry: dict[str, Any], old: BacnetDevice | ModbusDevice) -> list[str]:
    keys = ("address", "port") if isinstance(old, BacnetDevice) else ()
    changes = []
    for key in keys:
        known = key in entry and not str(entry[key]).startswith(TODO)  # an EDE has no addresses
        if known and str(entry[key]) != str(getattr(old, key)):
            changes.append(f"{key} {getattr(old, key)} -> {entry[key]}")
    return changes


def _identity_text(identity: tuple[Any, ...]) -> str:
    if identity[0] == "bacnet":
        return f"device,{identity[1]}"
    return f"{identity[1]}:{identity[2]} unit {identity[3]}"


def _key_order(key: str) -> tuple[str, int]:
    sep = "," if "," in key else ":"
    head, _, tail = key.partition(sep)
    return (head, int(tail) if tail.isdigit() else 0)
