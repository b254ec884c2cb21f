"""`discover bacnet` against a stock bacpypes3 device written here and against the project's BACnet simulator.

A local broadcast cannot be tested on loopback (only one socket on a shared port hears it): the no-netmask
warning path is tested instead, and a broadcast through a BBMD (foreign-device registration) is. Routed
(NET:MAC) devices need a BACnet router: only how the skeleton treats them is tested.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bacpypes3.app import Application
from bacpypes3.local.analog import AnalogInputObject
from bacpypes3.local.binary import BinaryInputObject
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.local.object import Object as LocalObject
from bacpypes3.object import AccessDoorObject, LifeSafetyPointObject
from bacpypes3.pdu import Address
from ruamel.yaml import YAML

from gateway.tools.discover_bacnet import (
    BacnetFindings,
    BacnetProbe,
    FoundDevice,
    FoundObject,
    bacnet_skeleton,
    discover_bacnet,
)
from gateway.tools.skeleton import diff
from simulators.bacnet_sim import free_udp_port
from tests.support.bacnet_site import bacnet_point, simulated
from tests.support.skeletons import load_resolved, resolve_todos


class StockLifeSafetyPoint(LocalObject, LifeSafetyPointObject):  # type: ignore[misc]
    """bacpypes3.local has no life-safety point: the standard object plus the local-object machinery."""


class StockAccessDoor(LocalObject, AccessDoorObject):  # type: ignore[misc]
    """bacpypes3.local has no access door either."""


@asynccontextmanager
async def stock_device(
    instance: int = 2001, *, detectors: int = 16, long_texts: int = 0, **device: Any
) -> AsyncIterator[int]:
    """A plain bacpypes3 device on its own loopback port: binary inputs, a life-safety point, an access door
    and an analog input (no alarm mapping). `long_texts`: that many characters in every name and description."""
    pad = "x" * long_texts
    objects: list[Any] = [
        DeviceObject(objectIdentifier=("device", instance), objectName="stock-panel", vendorIdentifier=999, **device),
        NetworkPortObject("127.0.0.1:0", objectIdentifier=("network-port", 1), objectName="np"),
    ]
    objects += [
        BinaryInputObject(
            objectIdentifier=("binary-input", i),
            objectName=f"PIR {i}{pad}",
            description=f"floor {i}{pad}",
            presentValue="inactive",
        )
        for i in range(1, detectors + 1)
    ]
    objects.append(AnalogInputObject(objectIdentifier=("analog-input", 1), objectName="temp", presentValue=20.0))
    objects.append(
        StockLifeSafetyPoint(
            objectIdentifier=("life-safety-point", 1),
            objectName="smoke detector hall",
            presentValue="quiet",
            trackingValue="quiet",
            mode="on",
            silenced="unsilenced",
            operationExpected="none",
        )
    )
    objects.append(
        StockAccessDoor(
            objectIdentifier=("access-door", 1),
            objectName="main entrance",
            presentValue="lock",
            relinquishDefault="lock",
            doorStatus="closed",
            doorAlarmState="normal",
            doorPulseTime=30,
            doorExtendedPulseTime=60,
            doorOpenTooLongTime=300,
        )
    )
    app = Application.from_object_list(objects)
    server = next(iter(app.link_layers.values())).server
    await asyncio.gather(*server._transport_tasks)  # bound (the only handle bacpypes3 0.0.110 has)
    port = int(server.local_transport.get_extra_info("sockname")[1])
    server.local_address = ("127.0.0.1", port)
    try:
        yield port
    finally:
        app.close()


def _probe(port: int, **options: Any) -> BacnetProbe:
    return BacnetProbe(target=f"127.0.0.1:{port}", local="127.0.0.1", timeout=1.0, wait=2.0, **options)


async def test_stock_device_objects_become_a_deterministic_loadable_skeleton(tmp_path: Path) -> None:
    async with stock_device() as port:
        started = time.monotonic()
        findings = await discover_bacnet(_probe(port))
        took = time.monotonic() - started
        again = await discover_bacnet(_probe(port))
    (device,) = findings.devices
    assert (device.instance, device.name, device.endpoint) == (2001, "stock-panel", ("127.0.0.1", port))
    types = sorted({o.object_type for o in device.objects})
    assert types == ["access-door", "analog-input", "binary-input", "device", "life-safety-point", "network-port"]
    names = {f"{o.object_type},{o.instance}": o.name for o in device.objects}
    assert names["binary-input,16"] == "PIR 16" and names["access-door,1"] == "main entrance"
    print(f"stock bacpypes3 device, {len(device.objects)} objects: {device.requests} requests in {took:.2f}s")

    skeleton = bacnet_skeleton(findings, "test")
    text = skeleton.render()
    assert text == bacnet_skeleton(again, "test").render()
    doc = YAML(typ="safe").load(text)
    by_object = {p["source"]["object"]: p for p in doc["points"]}
    assert len(by_object) == 18
    assert by_object["binary-input,3"]["type"] == "TODO-burglary"
    assert by_object["binary-input,3"]["location"] == "floor 3"
    assert by_object["life-safety-point,1"]["type"] == "TODO-fire"
    assert by_object["access-door,1"]["source"]["property"] == "door-alarm-state"
    assert by_object["access-door,1"]["other_alarms"] == {
        "door_held_open": ["door-open-too-long"],
        "tamper": ["tamper"],
    }
    assert dict(skeleton.skipped) == {
        "analog objects (no alarm mapping: the gateway maps states, not measurements)": 1,
        "network ports (infrastructure, not points)": 1,
        "the device object itself (it becomes the devices: entry)": 1,
    }
    site = load_resolved(text, tmp_path)
    assert site.device("bacnet-2001").port == port


async def test_device_that_cannot_segment_gives_its_object_list_entry_by_entry() -> None:
    count = 300  # 303 object identifiers do not fit in one unsegmented answer
    points = [bacnet_point(f"det{i}", "d1", f"binary-input,{i}") for i in range(1, count + 1)]
    door = {"protocol": "bacnet", "object": "access-door,1", "property": "door-alarm-state"}
    points.append(bacnet_point("door", "d1", "access-door,1", source=door, alarm=["forced-open"], normal=["normal"]))
    async with simulated({"d1": {}}, points, event_reporting=False, segmentation="no-segmentation") as (_sim, site):
        started = time.monotonic()
        findings = await discover_bacnet(_probe(site.devices[0].port))
        took = time.monotonic() - started
    (device,) = findings.devices
    assert device.object_list_by_index
    found = {f"{o.object_type},{o.instance}" for o in device.objects}
    assert {f"binary-input,{i}" for i in range(1, count + 1)} <= found
    notes = {o.notification_class for o in device.objects if o.object_type == "binary-input"}
    assert notes == {1}  # the simulator's objects report intrinsically through notification class 1
    print(f"simulator, no segmentation, {len(device.objects)} objects: {device.requests} requests in {took:.2f}s")
    lines = diff(bacnet_skeleton(findings, "test"), site)
    assert lines == [], lines  # every configured object found, the door's alarms read where the site reads them


async def test_batches_are_halved_when_the_device_aborts_them() -> None:
    """Names and descriptions far longer than estimated: a batch sized by the estimate (4 objects) does not
    fit in one unsegmented answer, the device aborts, the batch is halved."""
    async with stock_device(
        detectors=8, long_texts=200, maxApduLengthAccepted=1024, segmentationSupported="no-segmentation"
    ) as port:
        findings = await discover_bacnet(_probe(port))
    (device,) = findings.devices
    assert device.max_apdu == 1024
    assert "ReadPropertyMultiple of 4 objects aborted (segmentation-not-supported): halved" in device.notes
    assert device.requests < 8 * 4  # batches still, not one ReadProperty per property
    long_names = [o.name for o in device.objects if o.object_type == "binary-input"]
    assert len(long_names) == 8 and all(n is not None and len(n) > 200 for n in long_names)


async def test_broadcast_from_an_address_without_netmask_warns_instead_of_finding_nothing() -> None:
    probe = BacnetProbe(broadcast=True, local="127.0.0.1", local_port=0, wait=0.2)
    findings = await discover_bacnet(probe)
    assert findings.devices == []
    (warning,) = findings.warnings
    assert "127.0.0.1 has no netmask" in warning and "IP/PREFIX" in warning


async def test_foreign_device_registered_at_a_bbmd_hears_devices_behind_it() -> None:
    port = free_udp_port()
    bbmd_port = NetworkPortObject(
        f"127.0.0.1/32:{port}",
        objectIdentifier=("network-port", 1),
        objectName="np",
        bacnetIPMode="bbmd",
        bbmdAcceptFDRegistrations=True,
        bbmdBroadcastDistributionTable=[],
        bbmdForeignDeviceTable=[],
    )
    device = DeviceObject(objectIdentifier=("device", 3001), objectName="panel behind bbmd", vendorIdentifier=999)
    detector = BinaryInputObject(objectIdentifier=("binary-input", 1), objectName="PIR", presentValue="inactive")
    app = Application.from_object_list([device, bbmd_port, detector])
    server = next(iter(app.link_layers.values())).server
    await asyncio.gather(*server._transport_tasks)
    try:
        probe = BacnetProbe(broadcast=True, local="127.0.0.1", bbmd=f"127.0.0.1:{port}", wait=1.0, timeout=1.0)
        findings = await discover_bacnet(probe)
    finally:
        app.close()
    assert findings.warnings == []  # registered (and no netmask needed: the BBMD distributes the broadcast)
    (found,) = findings.devices
    assert (found.instance, found.name) == (3001, "panel behind bbmd")


def test_routed_devices_are_counted_and_named_but_not_written() -> None:
    routed = FoundDevice(instance=4001, address=Address("2:0x0a"), max_apdu=480, segmentation="no-segmentation")
    routed.objects = [FoundObject("binary-input", 1)]
    local = FoundDevice(instance=4002, address=Address("127.0.0.1:47809"), max_apdu=1476, segmentation="both")
    local.objects = [FoundObject("binary-input", 1, name="PIR")]
    findings = BacnetFindings(BacnetProbe(target="127.0.0.1:47809"), devices=[routed, local])
    skeleton = bacnet_skeleton(findings, "test")
    assert [d.id for d in skeleton.devices] == ["bacnet-4002"]
    assert skeleton.skipped == {"routed device (the site config cannot address NET:MAC devices yet)": 1}
    assert any("routed device,4001 at 2:10" in note for note in skeleton.notes)


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_exits_non_zero_when_nothing_answers() -> None:
    nobody = free_udp_port()
    code, out, err = await _cli(
        "discover", "bacnet", "--target", f"127.0.0.1:{nobody}", "--local", "127.0.0.1", "--wait", "0.5"
    )
    assert (code, out) == (3, "")
    assert f"no BACnet device answered at 127.0.0.1:{nobody}" in err
    code, out, err = await _cli(
        "discover", "bacnet", "--broadcast", "--local", "127.0.0.1", "--local-port", "0", "--wait", "0.2"
    )
    assert (code, out) == (3, "")
    assert "has no netmask" in err and "the broadcast was probably never sent" in err


async def test_cli_writes_the_skeleton_and_diffs_it(tmp_path: Path) -> None:
    async with stock_device() as port:
        args = ("discover", "bacnet", "--target", f"127.0.0.1:{port}", "--local", "127.0.0.1", "--timeout", "1s")
        skeleton = tmp_path / "skeleton.yaml"
        code, out, err = await _cli(*args, "--out", str(skeleton))
        assert (code, out) == (0, ""), err
        assert f"device,2001 at 127.0.0.1:{port}: 21 objects" in err
        doc = YAML(typ="safe").load(resolve_todos(skeleton.read_text(encoding="utf-8")))
        doc["points"] = [p for p in doc["points"] if p["source"]["object"] != "binary-input,16"]
        configured = tmp_path / "site.yaml"
        with configured.open("w", encoding="utf-8") as handle:
            YAML(typ="safe").dump(doc, handle)
        code, out, err = await _cli(*args, "--diff", str(configured))
    assert code == 0, err
    assert out.splitlines() == ["+ point bacnet-2001-binary-input-16 binary-input,16 'PIR 16' (device bacnet-2001)"]
