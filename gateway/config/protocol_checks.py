"""Checks that need to know BACnet and Modbus, run on a validated site by `load_site` (after `cross_check`):
a property the object type does not have, raw values the source can never report, unit ids the transport
does not allow. Each problem comes with its path so that the loader names its line.
"""

from __future__ import annotations

from gateway.config import bacnet_tables as bt
from gateway.config.models import BacnetSource, Loc, ModbusDevice, PointConfig, SiteConfig
from gateway.config.raw_values import Domain, source_domain
from gateway.config.suggest import did_you_mean, one_of
from gateway.domain.values import RawValue

SERIAL_UNIT_IDS = range(1, 248)  # Modbus over serial line: 1-247; 0 is broadcast (never answered)


def check_protocols(site: SiteConfig) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for index, device in enumerate(site.devices):
        if isinstance(device, ModbusDevice):
            problems.extend(_unit_id(index, device))
    for index, point in enumerate(site.points):
        where: Loc = ("points", index)
        if isinstance(point.source, BacnetSource):
            problem = _property_of_object(point.source)
            if problem is not None:
                problems.append(((*where, "source", "property"), problem))
                continue  # its values cannot be checked against a property the object does not have
        problems.extend(_values(where, point))
    return problems


def _unit_id(index: int, device: ModbusDevice) -> list[tuple[Loc, str]]:
    if device.transport == "tcp" or device.unit_id in SERIAL_UNIT_IDS:
        return []
    line = "an RTU line behind a converter" if device.transport == "rtu_over_tcp" else "a serial line"
    why = "0 is the broadcast address, which no device answers" if device.unit_id == 0 else "248-255 are reserved"
    return [
        (
            ("devices", index, "unit_id"),
            f"unit id {device.unit_id} cannot be polled on {line}: Modbus unit ids there are 1-247 ({why})",
        )
    ]


def _property_of_object(source: BacnetSource) -> str | None:
    object_type = source.object.split(",", 1)[0]
    known = bt.properties_of(object_type)
    if known is None or source.property in known:
        return None
    hint = did_you_mean(source.property, known) or "; its properties: " + one_of(known)
    return f"a {object_type} has no property '{source.property}'{hint}"


def _values(where: Loc, point: PointConfig) -> list[tuple[Loc, str]]:
    domain = source_domain(point.source)
    if domain is None:
        return []
    problems: list[tuple[Loc, str]] = []
    lists: list[tuple[Loc, list[RawValue]]] = [
        ((*where, "alarm"), point.alarm),
        ((*where, "normal"), point.normal),
        ((*where, "fault"), point.fault),
    ]
    lists += [((*where, "other_alarms", str(kind)), values) for kind, values in point.other_alarms.items()]
    for loc, values in lists:
        problems.extend(_each(domain, loc, values))
    for e_index, event in enumerate(point.events):
        problems.extend(_each(domain, (*where, "events", e_index, "value"), [event.value], single=True))
    if isinstance(point.source, BacnetSource):
        object_type = point.source.object.split(",", 1)[0]
        for a_index, action in enumerate(point.actions):
            if action.value is None:
                continue
            written = action.property or "present-value"
            target = source_domain(BacnetSource(protocol="bacnet", object=point.source.object, property=written))
            if target is None:
                continue
            for name in ("value", "restore"):
                value = getattr(action, name)
                problem = None if value is None else target.problem(value)
                if problem is not None:
                    problems.append(
                        ((*where, "actions", a_index, name), f"{problem} (written to {object_type} {written})")
                    )
    return problems


def _each(domain: Domain, loc: Loc, values: list[RawValue], single: bool = False) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for v_index, value in enumerate(values):
        problem = domain.problem(value)
        if problem is not None:
            problems.append((loc if single else (*loc, v_index), problem))
    return problems
