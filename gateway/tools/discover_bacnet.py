"""`gcmk-gateway discover bacnet`: find BACnet devices and their objects, read-only, into a skeleton.

Who-Is (unicast to a target, or broadcast, optionally as a foreign device registered at a BBMD), then per
device: Object_List (whole; entry by entry when the device cannot send it in one answer), then names,
descriptions, event states and notification classes with ReadPropertyMultiple in batches sized to the
device's max APDU (from its I-Am), halved whenever the device aborts a batch. Every I-Am heard is kept, so
devices behind a router at the target (`NET:MAC` addresses) and devices answering from another address are
reported too. Requests go through adapters/bacnet (DeviceClient, guarded), so failures are typed errors.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from bacpypes3.pdu import Address

from adapters.bacnet.client import DeviceClient, object_key
from adapters.bacnet.discovery import DiscoveryApplication, registration_result, start_discovery_application
from adapters.bacnet.errors import guarded
from adapters.bacnet.plan import answer_size
from adapters.bacnet.values import to_raw
from gateway.config.models import BacnetDevice
from gateway.domain.errors import ConfigurationFault, DeviceError, DeviceRejected
from gateway.tools.skeleton import SUGGESTIONS, Skeleton, SkeletonDevice, bacnet_points, skip_reason

PROPERTIES = ("object-name", "description", "event-state", "notification-class")
_OBJECT_OVERHEAD = 8
_ACK_OVERHEAD = 24  # APDU header of a ComplexACK and the ReadPropertyMultiple-ACK around the results


@dataclass(frozen=True)
class BacnetProbe:
    target: str | None = None  # "host" or "host:port"; None with broadcast
    broadcast: bool = False
    local: str = "0.0.0.0"  # the local interface, "ip" or "ip/prefix" (a broadcast needs the prefix)
    local_port: int = 0  # 0: the OS chooses
    bbmd: str | None = None
    ttl: int = 60
    timeout: float = 2.0  # per request
    wait: float = 3.0  # how long to listen for I-Ams (a unicast target ends it at its first answer)
    grace: float = 0.3  # after a unicast target's I-Am: further I-Ams (devices behind a router there)


@dataclass
class FoundObject:
    object_type: str
    instance: int
    name: str | None = None
    description: str | None = None
    event_state: str | None = None
    notification_class: int | None = None


@dataclass
class FoundDevice:
    instance: int
    address: Address
    max_apdu: int
    segmentation: str
    name: str | None = None
    objects: list[FoundObject] = field(default_factory=list)
    object_list_by_index: bool = False
    batch_size: int = 0  # objects per ReadPropertyMultiple that the device finally took
    requests: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def routed(self) -> bool:
        return bool(self.address.is_remotestation)

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """(ip, port) of a device on the local IP network; None for a routed one."""
        if self.routed:
            return None
        host, port = self.address.addrTuple[:2]
        return str(host), int(port)


@dataclass
class BacnetFindings:
    probe: BacnetProbe
    devices: list[FoundDevice] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # devices that answered Who-Is but not the reads
    local_port: int = 0
    seconds: float = 0.0


def broadcast_warning(probe: BacnetProbe) -> str | None:
    """A broadcast from an address without a netmask fails inside bacpypes3 and looks like "no devices"."""
    if probe.broadcast and probe.bbmd is None and "/" not in probe.local:
        return (
            f"local address {probe.local} has no netmask: without it there is no broadcast address, so no"
            f" Who-Is was sent and 'no devices' means nothing. Give --local IP/PREFIX"
            f" (e.g. 192.168.10.5/24), or --target HOST for one device"
        )
    return None


async def discover_bacnet(probe: BacnetProbe) -> BacnetFindings:
    findings = BacnetFindings(probe)
    warning = broadcast_warning(probe)
    if warning is not None:
        findings.warnings.append(warning)
    started = time.monotonic()
    app, findings.local_port = await start_discovery_application(
        probe.local, probe.local_port, apdu_timeout=probe.timeout, bbmd=probe.bbmd, ttl=probe.ttl
    )
    try:
        if probe.bbmd is not None:
            status = await registration_result(app, max(2.0, probe.timeout))
            if status is None:
                findings.warnings.append(f"BBMD {probe.bbmd} did not answer the foreign-device registration")
            elif status != 0:
                findings.warnings.append(f"BBMD {probe.bbmd} refused the foreign-device registration (code {status})")
        for iam in await _who_is(app, probe):
            device = FoundDevice(
                instance=int(iam.iAmDeviceIdentifier[1]),
                address=iam.pduSource,
                max_apdu=int(iam.maxAPDULengthAccepted),
                segmentation=str(iam.segmentationSupported),
            )
            try:
                await _read_device(app, device, probe)
            except DeviceError as exc:
                findings.failed.append(f"device,{device.instance} at {device.address}: {exc}")
                continue
            findings.devices.append(device)
    finally:
        app.close_quietly()
        findings.seconds = time.monotonic() - started
    return findings


async def _who_is(app: DiscoveryApplication, probe: BacnetProbe) -> list[Any]:
    """The I-Ams heard, one per device instance (the first heard), sorted by instance."""
    if probe.broadcast:
        if broadcast_warning(probe) is not None:
            return []  # bacpypes3 would fail in a detached task ("no broadcast"): warned, nothing sent
        await app.who_is(timeout=probe.wait)
    else:
        assert probe.target is not None
        await app.who_is(address=Address(probe.target), timeout=probe.wait)
        # Further I-Ams for a short while: devices behind a router at the target answer from NET:MAC addresses.
        deadline = time.monotonic() + probe.grace
        while app.heard and (left := deadline - time.monotonic()) > 0:
            app.heard_event.clear()
            try:
                async with asyncio.timeout(left):
                    await app.heard_event.wait()
            except TimeoutError:
                break
    first: dict[int, Any] = {}
    for iam in app.heard:
        first.setdefault(int(iam.iAmDeviceIdentifier[1]), iam)
    return [first[instance] for instance in sorted(first)]


async def _read_device(app: DiscoveryApplication, device: FoundDevice, probe: BacnetProbe) -> None:
    started = time.monotonic()
    reader = _DeviceReader(app, device, probe)
    device_object = f"device,{device.instance}"
    objects: dict[tuple[str, int], FoundObject] = {}
    for identifier in await reader.object_list():
        object_type, number = object_key(identifier).split(",")
        objects[(object_type, int(number))] = FoundObject(object_type, int(number))
    objects = dict(sorted(objects.items()))
    to_read = [f"{t},{i}" for (t, i) in objects if t in SUGGESTIONS]
    values = await reader.properties([device_object, *to_read])
    for (object_type, instance), found in objects.items():
        props = values.get(f"{object_type},{instance}", {})
        found.name = _text(props.get("object-name"))
        found.description = _text(props.get("description"))
        event_state = props.get("event-state")
        found.event_state = str(to_raw(event_state)) if event_state is not None else None
        notification_class = props.get("notification-class")
        found.notification_class = int(notification_class) if notification_class is not None else None
    device.name = _text(values.get(device_object, {}).get("object-name"))
    device.objects = list(objects.values())
    device.requests = reader.requests
    device.seconds = time.monotonic() - started


def config_id(device: FoundDevice) -> str:
    return f"bacnet-{device.instance}"


class _DeviceReader:
    """The reads of one device through adapters/bacnet's DeviceClient, counted."""

    def __init__(self, app: DiscoveryApplication, device: FoundDevice, probe: BacnetProbe) -> None:
        endpoint = device.endpoint or ("0.0.0.0", 47808)
        config = BacnetDevice(
            protocol="bacnet",
            id=config_id(device),
            name=f"device {device.instance}",
            address=endpoint[0],
            port=endpoint[1],
            device_instance=device.instance,
            timeout=probe.timeout,
        )
        self.client = DeviceClient(app, config, on_contact=lambda: None)
        self.client.address = device.address  # the I-Am's source: also right for a routed (NET:MAC) device
        self.device = device
        self.probe = probe
        self.requests = 0

    async def read(self, obj: str, prop: str) -> Any:
        self.requests += 1
        return await self.client.read(obj, prop)

    async def object_list(self) -> list[Any]:
        """Object_List whole; entry by entry when the device cannot answer it in one piece (it aborts)."""
        device, device_object = self.device, f"device,{self.device.instance}"
        try:
            return list(await self.read(device_object, "object-list"))
        except ConfigurationFault:
            raise
        except DeviceRejected as exc:
            device.notes.append(f"Object_List read entry by entry ({exc.code or exc})")
            device.object_list_by_index = True
        count = int(await self._entry(0))
        return [await self._entry(index) for index in range(1, count + 1)]

    async def _entry(self, index: int) -> Any:
        self.requests += 1
        app, address = self.client.app, self.client.address
        request = app.read_property(address, f"device,{self.device.instance}", "object-list", array_index=index)
        return await guarded(config_id(self.device), self.probe.timeout, request)

    async def properties(self, objects: list[str]) -> dict[str, dict[str, Any]]:
        """PROPERTIES of `objects` with ReadPropertyMultiple, batched to the device's max APDU and halved on
        abort; ReadProperty one by one for a device without ReadPropertyMultiple. A property the object
        lacks is absent from the result."""
        device = self.device
        per_object = _OBJECT_OVERHEAD + sum(answer_size(p) for p in PROPERTIES)
        size = max(1, (device.max_apdu - _ACK_OVERHEAD) // per_object)
        values: dict[str, dict[str, Any]] = {}
        position = 0
        multiple = True
        while position < len(objects):
            batch = objects[position : position + size]
            if not multiple:
                values.update(await self._single(batch))
                position += len(batch)
                continue
            self.requests += 1
            try:
                result = await self.client.read_multiple([(obj, prop) for obj in batch for prop in PROPERTIES])
            except ConfigurationFault as exc:  # e.g. unrecognized-service: no ReadPropertyMultiple
                device.notes.append(f"no ReadPropertyMultiple ({exc.code}): read property by property")
                multiple = False
                continue
            except DeviceRejected as exc:  # an abort: the answer is too big for the device
                if size > 1:
                    device.notes.append(f"ReadPropertyMultiple of {size} objects aborted ({exc.code}): halved")
                    size = max(1, size // 2)
                    continue
                device.notes.append(f"{batch[0]}: ReadPropertyMultiple refused ({exc.code}): read one by one")
                values.update(await self._single(batch))
                position += 1
                continue
            for (obj, prop), value in result.items():
                if not isinstance(value, DeviceError):
                    values.setdefault(obj, {})[prop] = value
            device.batch_size = max(device.batch_size, len(batch))
            position += len(batch)
        return values

    async def _single(self, objects: list[str]) -> dict[str, dict[str, Any]]:
        values: dict[str, dict[str, Any]] = {}
        for obj in objects:
            for prop in PROPERTIES:
                try:
                    values.setdefault(obj, {})[prop] = await self.read(obj, prop)
                except DeviceRejected:
                    continue  # the object lacks the property (or refuses it): absent
        return values


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def bacnet_skeleton(findings: BacnetFindings, command: str) -> Skeleton:
    """The findings as a site-config skeleton: one device per device found, points per SUGGESTIONS."""
    probe = findings.probe
    scanned = {"*"} if probe.broadcast else {_endpoint_text(probe.target or "")}
    local_address = probe.local.split("/")[0]
    skeleton = Skeleton(
        command=command,
        protocol="bacnet",
        scanned=scanned,
        bacnet_local={"address": local_address, "port": 47808},
    )
    skeleton.notes.extend(findings.warnings)
    skeleton.notes.extend(f"answered Who-Is, but not the reads: {text}" for text in findings.failed)
    for device in findings.devices:
        if device.routed:
            skeleton.skipped["routed device (the site config cannot address NET:MAC devices yet)"] += 1
            skeleton.notes.append(
                f"routed device,{device.instance} at {device.address} ({device.name or 'no name'}):"
                f" {len(device.objects)} objects, not written"
            )
            continue
        endpoint = device.endpoint
        assert endpoint is not None
        device_id = config_id(device)
        entry: dict[str, Any] = {
            "protocol": "bacnet",
            "id": device_id,
            "name": device.name or f"BACnet device {device.instance}",
            "address": endpoint[0],
            "port": endpoint[1],
            "device_instance": device.instance,
        }
        how = "Object_List entry by entry" if device.object_list_by_index else "Object_List whole"
        found = SkeletonDevice(
            entry=entry,
            note=f"max APDU {device.max_apdu}, {device.segmentation}; {how}; {len(device.objects)} objects",
        )
        for obj in device.objects:
            points = bacnet_points(
                device_id,
                obj.object_type,
                obj.instance,
                name=obj.name,
                description=obj.description,
                note=_object_note(obj),
            )
            if points:
                found.points.extend(points)
            else:
                skeleton.skipped[skip_reason(obj.object_type)] += 1
        skeleton.devices.append(found)
    return skeleton


def _object_note(obj: FoundObject) -> str:
    parts = []
    if obj.event_state is not None:
        parts.append(f"event-state {obj.event_state}")
    if obj.notification_class is not None:
        parts.append(f"notification-class {obj.notification_class}")
    else:
        parts.append("no notification-class (no intrinsic reporting)")
    return ", ".join(parts)


def _endpoint_text(target: str) -> str:
    return target if ":" in target else f"{target}:47808"
