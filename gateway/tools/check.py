"""`gcmk-gateway check`: the commissioning step before go-live, against the real devices.

It connects to every configured device and reads every configured point once, and says per point whether
it is readable (and why not), its raw value, the condition the normaliser decodes it to, whether COV is
accepted (BACnet: a short SubscribeCOV, cancelled at once) or the point will be polled, and whether the
device's event notifications will reach the gateway (the recipient list of the object's notification class
names the gateway's device or address). Any mismatch (an unreadable point, a value that decodes to
nothing, a recipient list without the gateway) makes the exit code non-zero. Read-only, apart from that
short COV subscription.

The reads, error translation and decoding are the gateway's own (adapters' clients, the normaliser's
`decode`), so what check reports is what the running gateway will see.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bacpypes3.pdu import Address

from adapters.bacnet.app import GatewayApplication, start_application
from adapters.bacnet.client import DeviceClient
from adapters.bacnet.errors import ObjectMissing
from adapters.bacnet.plan import Watch
from adapters.bacnet.session import missing_reason, unencodable
from adapters.bacnet.values import cov_properties, to_raw
from adapters.modbus.blocks import plan_blocks
from adapters.modbus.link import ModbusLink, unavailable_reason
from gateway.config.models import (
    BacnetDevice,
    BacnetLocal,
    BacnetSource,
    ModbusDevice,
    ModbusSource,
    PointConfig,
    SiteConfig,
)
from gateway.core.normaliser import decode
from gateway.domain.errors import ConfigurationFault, DeviceError, DeviceTimeout, DeviceUnreachable
from gateway.domain.state import NORMAL
from gateway.domain.values import RawValue

COV_PROBE_LIFETIME = 30  # seconds: if the cancel is lost, the probe lapses on its own soon
_probe_ids = itertools.count(0x3F0000)  # subscriber process ids of probes, far from the adapter's (from 1)


@dataclass
class PointCheck:
    """What check found for one point; `problems` empty = as configured."""

    device: str
    point: str
    source: str
    readable: bool
    why: str = ""  # why not readable
    raw: RawValue | None = None
    condition: str | None = None  # normal / an event type / None: decodes to nothing
    cov: str = ""
    events: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CheckReport:
    site: str
    points: list[PointCheck]
    notes: dict[str, list[str]] = field(default_factory=dict)  # device id -> what the operator should know

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.points)

    def to_json(self) -> str:
        return json.dumps(
            {
                "site": self.site,
                "ok": self.ok,
                "mismatches": sum(1 for p in self.points if not p.ok),
                "points": [{**asdict(p), "ok": p.ok} for p in self.points],
                "devices": self.notes,
            },
            indent=2,
        )

    def table(self) -> str:
        """A fixed-width table, then one line per mismatch and the device notes."""
        head = ("DEVICE", "POINT", "SOURCE", "READ", "RAW", "CONDITION", "COV", "EVENTS")
        rows = [
            (
                p.device,
                p.point,
                p.source,
                "ok" if p.readable else "NO",
                "" if p.raw is None else str(p.raw),
                p.condition or ("-" if not p.readable else "NOTHING"),
                p.cov,
                p.events,
            )
            for p in self.points
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [head, *rows]
        ]
        bad = [p for p in self.points if not p.ok]
        lines.append("")
        for p in bad:
            for problem in p.problems:
                lines.append(f"MISMATCH {p.device}/{p.point}: {problem}")
        for device, notes in self.notes.items():
            for note in notes:
                lines.append(f"note {device}: {note}")
        verdict = (
            "all points as configured" if not bad else f"{len(bad)} of {len(self.points)} point(s) not as configured"
        )
        lines.append(f"{self.site}: {verdict}")
        return "\n".join(lines)


async def check_site(site: SiteConfig) -> CheckReport:
    """Check every device of the site (each device's points in order; the BACnet devices and each Modbus bus
    concurrently, the devices of one Modbus bus one after the other over one link, as the gateway polls them:
    a serial line, or a converter port that takes a single connection, cannot be opened twice)."""
    report = CheckReport(site.site.id, [])
    results: dict[str, list[PointCheck]] = {}
    buses: dict[str, list[ModbusDevice]] = {}
    for device in site.devices:
        if isinstance(device, ModbusDevice):
            buses.setdefault(device.bus_key, []).append(device)
    async with asyncio.TaskGroup() as tg:
        bacnet = [d for d in site.devices if isinstance(d, BacnetDevice)]
        if bacnet:
            tg.create_task(_check_bacnet(site, bacnet, results, report.notes))
        for bus, devices in buses.items():
            tg.create_task(_check_modbus_bus(site, bus, devices, results))
    for device in site.devices:
        report.points.extend(results.get(device.id, []))
    return report


def _judge(check: PointCheck, point: PointConfig) -> None:
    """The condition the normaliser gives the raw value; decoding to nothing is a mismatch for a state point."""
    if not check.readable or check.raw is None:
        check.problems.insert(0, f"not readable: {check.why}")
        return
    check.condition = decode(point, check.raw)
    if check.condition is None:
        if point.kind == "momentary":
            check.condition = "no event"
        else:
            configured = {"normal": point.normal, "alarm": point.alarm, "fault": point.fault}
            listed = ", ".join(f"{k}: {list(v)}" for k, v in configured.items() if v)
            check.problems.append(
                f"raw value {check.raw!r} decodes to nothing ({listed}): the gateway would report a fault"
            )
    elif check.condition != NORMAL and point.kind == "state":
        check.condition = f"{check.condition} (in alarm now)"


# --- BACnet ------------------------------------------------------------------------------------------------


class _NoNotifications:
    """check holds no subscriptions of its own beyond the probe it cancels: notifications are ignored."""

    async def cov_notification(self, request: Any) -> bool:
        return True

    async def event_notification(self, request: Any) -> None:
        return None


async def _check_bacnet(
    site: SiteConfig, devices: list[BacnetDevice], results: dict[str, list[PointCheck]], notes: dict[str, list[str]]
) -> None:
    gateway = site.bacnet or BacnetLocal()
    # Its own port (0: the OS chooses), so a gateway already running on the configured port is not disturbed;
    # the recipient check compares against the configured address and device instance all the same.
    local = gateway.model_copy(update={"port": 0})
    app, _port = await start_application(local, _NoNotifications(), apdu_timeout=max(d.timeout for d in devices))
    try:
        async with asyncio.TaskGroup() as tg:
            for device in devices:
                tg.create_task(_check_bacnet_device(site, gateway, app, device, results, notes))
    finally:
        app.close_quietly()
        await app.stop_handlers()


async def _check_bacnet_device(
    site: SiteConfig,
    gateway: BacnetLocal,
    app: GatewayApplication,
    device: BacnetDevice,
    results: dict[str, list[PointCheck]],
    notes: dict[str, list[str]],
) -> None:
    client = DeviceClient(app, device, lambda: None)
    checks = results.setdefault(device.id, [])
    cov_seen: dict[str, str] = {}
    recipients_seen: dict[int, tuple[str, str | None]] = {}
    silent: str | None = None
    try:
        await client.read(f"device,{device.device_instance}", "system-status")
    except (DeviceTimeout, DeviceUnreachable) as exc:
        silent = f"device did not answer: {exc}"
    except DeviceError as exc:
        notes.setdefault(device.id, []).append(f"device object device,{device.device_instance}: {exc}")
    if silent is None:
        await _event_information_note(client, device, notes)
    for point in site.points_of(device.id):
        assert isinstance(point.source, BacnetSource)
        obj, prop = point.source.object, point.source.property
        check = PointCheck(device.id, point.id, point.source.ref, readable=False)
        checks.append(check)
        problem = silent or unencodable(obj, prop)
        if problem is not None:
            check.why = problem
            _judge(check, point)
            continue
        try:
            check.raw = to_raw(await client.read(obj, prop))
            check.readable = True
        except ObjectMissing as exc:
            check.why = missing_reason(device.id, Watch(point, obj, obj.split(",")[0], prop), exc)
        except DeviceError as exc:
            check.why = str(exc)
        _judge(check, point)
        if not check.readable:
            continue
        check.cov = await _cov_of(client, device, obj, prop, cov_seen)
        await _check_recipients(client, gateway, obj, check, recipients_seen)


async def _event_information_note(client: DeviceClient, device: BacnetDevice, notes: dict[str, list[str]]) -> None:
    try:
        await client.event_information()
    except ConfigurationFault:
        notes.setdefault(device.id, []).append(
            "does not support GetEventInformation: alarms active at start are found by reading every point"
        )
    except DeviceError as exc:
        notes.setdefault(device.id, []).append(f"GetEventInformation failed: {exc}")


async def _cov_of(client: DeviceClient, device: BacnetDevice, obj: str, prop: str, seen: dict[str, str]) -> str:
    """How the gateway will follow this point: COV (probed once per object) or polling, and why."""
    if not device.cov:
        return "off (cov: false): polled"
    if prop not in cov_properties(obj.split(",", maxsplit=1)[0]):
        return f"polled ({prop} is not in COV notifications)"
    if obj not in seen:
        seen[obj] = await _probe_cov(client, obj)
    return seen[obj]


async def _probe_cov(client: DeviceClient, obj: str) -> str:
    """A short SubscribeCOV (unconfirmed notifications), cancelled at once."""
    process_id = next(_probe_ids)
    try:
        await client.subscribe_cov(obj, process_id, COV_PROBE_LIFETIME, confirmed=False)
    except DeviceError as exc:
        return f"refused ({exc}): polled instead"
    with contextlib.suppress(DeviceError):  # a lost cancel lapses after COV_PROBE_LIFETIME
        await client.cancel_cov(obj, process_id)
    return "accepted"


async def _check_recipients(
    client: DeviceClient,
    gateway: BacnetLocal,
    obj: str,
    check: PointCheck,
    seen: dict[int, tuple[str, str | None]],
) -> None:
    """Will this object's event notifications reach the gateway? Its notification class's recipient list must
    name the gateway's device instance or its address and port."""
    try:
        number = int(await client.read(obj, "notification-class"))
    except ObjectMissing:
        check.events = "no intrinsic reporting (COV or polling only)"
        return
    except DeviceError as exc:
        check.events = f"notification class unreadable: {exc}"
        return
    if number not in seen:
        seen[number] = await _recipients_verdict(client, gateway, number)
    check.events, problem = seen[number]
    if problem is not None:
        check.problems.append(problem)


async def _recipients_verdict(client: DeviceClient, gateway: BacnetLocal, number: int) -> tuple[str, str | None]:
    nc = f"notification-class,{number}"
    want = f"device {gateway.device_instance} or {gateway.address}:{gateway.port}"
    try:
        recipients = list(await client.read(nc, "recipient-list") or [])
    except DeviceError as exc:
        return f"{nc}: unreadable", f"event notifications may not reach the gateway: {nc} recipient-list: {exc}"
    names = [_recipient_text(d) for d in recipients]
    mine = Address(f"{gateway.address}:{gateway.port}").addrAddr
    for destination in recipients:
        recipient = destination.recipient
        device = getattr(recipient, "device", None)
        address = getattr(recipient, "address", None)
        if device is not None and int(device[1]) == gateway.device_instance:
            return f"{nc} -> gateway (device {gateway.device_instance})", None
        if address is not None and bytes(address.macAddress) == mine:
            return f"{nc} -> gateway ({gateway.address}:{gateway.port})", None
    listed = ", ".join(names) or "nobody"
    return (
        f"{nc}: gateway NOT a recipient",
        f"event notifications will not reach the gateway: the recipient list of {nc} names {listed}, not {want}",
    )


def _recipient_text(destination: Any) -> str:
    recipient = destination.recipient
    device = getattr(recipient, "device", None)
    if device is not None:
        return f"device {int(device[1])}"
    address = getattr(recipient, "address", None)
    if address is not None:
        mac = bytes(address.macAddress)
        if len(mac) == 6:
            return f"{'.'.join(str(b) for b in mac[:4])}:{int.from_bytes(mac[4:], 'big')}"
        return f"network {int(address.networkNumber)} mac {mac.hex()}"
    return "an unknown recipient"


# --- Modbus ------------------------------------------------------------------------------------------------


async def _check_modbus_bus(
    site: SiteConfig, bus: str, devices: list[ModbusDevice], results: dict[str, list[PointCheck]]
) -> None:
    spacing = max(d.inter_request_delay for d in devices)  # as the adapter spaces a shared line
    link = ModbusLink(bus, devices[0].model_copy(update={"inter_request_delay": spacing}))
    try:
        for device in devices:
            await _check_modbus(site, link, device, results)
    finally:
        link.close()


async def _check_modbus(
    site: SiteConfig, link: ModbusLink, device: ModbusDevice, results: dict[str, list[PointCheck]]
) -> None:
    checks = results.setdefault(device.id, [])
    silent: str | None = None
    cov = f"n/a (Modbus: polled every {device.poll_interval:g}s)"
    for point in site.points_of(device.id):
        assert isinstance(point.source, ModbusSource)
        check = PointCheck(device.id, point.id, point.source.ref, readable=False, cov=cov, events="n/a")
        checks.append(check)
        if silent is not None:
            check.why = silent
            _judge(check, point)
            continue
        (block,) = plan_blocks([(point.id, point.source)], 0)
        try:
            values = await link.read(device, block.table, block.address, block.count)
            check.raw = block.decode(values)[0][1]
            check.readable = True
        except ConfigurationFault as exc:
            check.why = unavailable_reason(device, block.table, block.address, exc.code)
        except (DeviceTimeout, DeviceUnreachable) as exc:
            silent = check.why = f"device did not answer: {exc}"
        except DeviceError as exc:
            check.why = str(exc)
        _judge(check, point)


def exit_code(report: CheckReport) -> int:
    return 0 if report.ok else 1


def render(report: CheckReport, as_json: bool) -> str:
    return report.to_json() if as_json else report.table()
