"""The skeleton that discover and ede import write: suggestions per object type, shape, determinism, diff."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from gateway.config.loader import load_site
from gateway.domain.errors import ConfigError
from gateway.tools.skeleton import Skeleton, SkeletonDevice, bacnet_points, diff, modbus_points, skip_reason
from tests.support.skeletons import load_resolved, resolve_todos


def _device(instance: int, port: int = 47809) -> SkeletonDevice:
    entry = {
        "protocol": "bacnet",
        "id": f"bacnet-{instance}",
        "name": f"panel {instance}",
        "address": "127.0.0.1",
        "port": port,
        "device_instance": instance,
    }
    return SkeletonDevice(entry=entry)


def _panel() -> Skeleton:
    local = {"address": "127.0.0.1", "port": 47808}
    skeleton = Skeleton(command="test", scanned={"127.0.0.1:47809"}, bacnet_local=local)
    device = _device(7)
    for object_type, instance in [
        ("binary-input", 2),
        ("access-point", 1),
        ("binary-input", 1),
        ("life-safety-zone", 4),
        ("access-door", 3),
        ("life-safety-point", 9),
    ]:
        device.points.extend(bacnet_points(device.id, object_type, instance, name=f"{object_type} {instance}"))
    skeleton.devices.append(device)
    skeleton.skipped[skip_reason("analog-input")] += 2
    return skeleton


def test_each_security_object_type_suggests_its_event_types() -> None:
    (detector,) = bacnet_points("d", "binary-input", 1)
    assert (detector.type, detector.alarm, detector.normal) == ("TODO-burglary", ["active"], ["inactive"])
    (smoke,) = bacnet_points("d", "life-safety-point", 1)
    assert (smoke.type, smoke.alarm, smoke.fault) == ("TODO-fire", ["alarm"], ["fault"])
    (door,) = bacnet_points("d", "access-door", 1)
    assert door.source == {"protocol": "bacnet", "object": "access-door,1", "property": "door-alarm-state"}
    assert (door.type, door.alarm) == ("TODO-door_forced", ["forced-open"])
    assert door.other_alarms["door_held_open"] == ["door-open-too-long"]
    (reader,) = bacnet_points("d", "access-point", 1)
    assert reader.kind == "momentary" and reader.source["property"] == "access-event"
    assert {e["value"]: e["type"] for e in reader.events}["granted"] == "access_granted"
    assert {e["value"]: e["type"] for e in reader.events}["denied-unknown-credential"] == "access_denied"
    zone, mode = bacnet_points("d", "life-safety-zone", 1)
    assert (zone.type, mode.source["property"], mode.kind) == ("TODO-fire", "mode", "momentary")
    assert bacnet_points("d", "analog-input", 1) == []
    assert "analog" in skip_reason("analog-input")
    (bit,) = modbus_points("m", "discrete_input", [5])
    assert (bit.id, bit.type, bit.source["table"]) == ("m-di5", "TODO", "discrete_input")


def test_skeleton_is_sorted_commented_and_identical_when_built_twice() -> None:
    first, second = _panel().render(), _panel().render()
    assert first == second
    doc = YAML(typ="safe").load(first)
    assert list(doc) == ["version", "site", "tenants", "zones", "mqtt", "journal", "bacnet", "devices", "points"]
    objects = [p["source"]["object"] for p in doc["points"]]
    assert objects[:3] == ["access-door,3", "access-point,1", "binary-input,1"]
    assert doc["points"][0]["tenant"] == "TODO" and doc["site"]["id"] == "TODO"
    assert "# Skipped 2:" in first and "2 x analog objects" in first


def test_skeleton_is_refused_until_resolved_and_then_loads(tmp_path: Path) -> None:
    text = _panel().render()
    raw = tmp_path / "skeleton.yaml"
    raw.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_site(raw)
    site = load_resolved(text, tmp_path)
    assert len(site.points) == 7
    door = next(p for p in site.points if p.source.ref == "access-door,3/door-alarm-state")
    assert door.type == "door_forced"


def test_diff_names_added_removed_and_changed_by_identity(tmp_path: Path) -> None:
    configured = _panel()
    text = configured.render()
    path = tmp_path / "site.yaml"
    path.write_text(resolve_todos(text), encoding="utf-8")
    site = load_site(path)
    assert diff(_panel(), site) == []

    found = _panel()
    device = found.devices[0]
    device.entry["port"] = 47999
    device.points = [p for p in device.points if p.key != "binary-input,2"]
    device.points.extend(bacnet_points(device.id, "binary-input", 5, name="new detector"))
    found.devices.append(_device(8))
    lines = diff(found, site)
    assert "~ device bacnet-7 (device,7): port 47809 -> 47999" in lines
    assert "- point bacnet-7-binary-input-2 binary-input,2 (device bacnet-7): not on the device" in lines
    assert "+ point bacnet-7-binary-input-5 binary-input,5 'new detector' (device bacnet-7)" in lines
    assert "+ device bacnet-8 (device,8): 0 point(s)" in lines
