"""The classification of site-config changes a running gateway may take (gateway/config/diff.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config.diff import LIVE_SECTIONS, RESTART_SECTIONS, diff_sites
from gateway.config.models import Dc09Config, ModbusDevice, SiteConfig, Tenant, Zone
from tests.support.sites import minimal_site

OLD = minimal_site()


def _with(**update: Any) -> SiteConfig:
    return OLD.model_copy(update=update)


def _point(point_id: str, **update: Any) -> list[Any]:
    return [p.model_copy(update=update) if p.id == point_id else p for p in OLD.points]


def test_the_same_config_is_no_change() -> None:
    diff = diff_sites(OLD, minimal_site())
    assert diff.kind == "none" and diff.summary() == "no change"


def test_tenants_zones_and_point_metadata_are_metadata_only() -> None:
    tenants = [*OLD.tenants, Tenant(id="bzk", name="Binnenlandse Zaken", temporary=True)]
    zones = [z.model_copy(update={"tenant": "bzk"}) if z.id == "jv-1" else z for z in OLD.zones]
    points = [
        p.model_copy(update={"tenant": "bzk", "name": p.name + " (BZK)", "priority": 1}) if p.zone == "jv-1" else p
        for p in OLD.points
    ]
    diff = diff_sites(OLD, _with(tenants=tenants, zones=zones, points=points))
    assert diff.kind == "metadata"
    assert not (diff.devices_added or diff.devices_removed or diff.devices_changed or diff.restart)
    assert "tenant 'bzk' added" in diff.metadata and "zone 'jv-1' changed" in diff.metadata
    assert "point 'pir-01': name, tenant, priority" in diff.metadata
    assert set(diff.points_changed) == {f"pir-{n:02d}" for n in range(1, 9)}


def test_a_changed_value_mapping_or_debounce_is_not_a_device_change() -> None:
    diff = diff_sites(OLD, _with(points=_point("smoke-1", debounce=5.0, fault=["fault", "disabled"])))
    assert diff.kind == "metadata" and diff.points_changed == ("smoke-1",)


def test_removed_and_added_points_restart_only_their_device() -> None:
    pir = next(p for p in OLD.points if p.id == "pir-08")
    points = [p for p in OLD.points if p.id not in ("pir-07", "pir-08")] + [pir.model_copy(update={"id": "pir-99"})]
    diff = diff_sites(OLD, _with(points=points))
    assert diff.kind == "devices"
    assert diff.points_removed == ("pir-07", "pir-08") and diff.points_added == ("pir-99",)
    assert diff.devices_changed == ("panel-1",)  # what it reads changed; fire-1 is untouched


def test_a_point_moved_to_another_source_restarts_its_device() -> None:
    source = next(p for p in OLD.points if p.id == "pir-01").source.model_copy(update={"address": 200})
    diff = diff_sites(OLD, _with(points=_point("pir-01", source=source)))
    assert diff.devices_changed == ("panel-1",) and diff.points_changed == ("pir-01",)


def test_device_settings_restart_that_device_and_its_name_is_metadata() -> None:
    def devices(**update: Any) -> list[Any]:
        return [d.model_copy(update=update) if d.id == "panel-1" else d for d in OLD.devices]

    slower = diff_sites(OLD, _with(devices=devices(poll_interval=2.0)))
    assert slower.kind == "devices" and slower.devices_changed == ("panel-1",)
    renamed = diff_sites(OLD, _with(devices=devices(name="Nieuwe centrale")))
    assert renamed.kind == "metadata" and renamed.metadata == ("device 'panel-1': name",)


def test_an_added_device_with_its_points() -> None:
    device = ModbusDevice(protocol="modbus", id="panel-2", name="Tweede centrale", host="127.0.0.1", port=5021)
    pir = next(p for p in OLD.points if p.id == "pir-01")
    point = pir.model_copy(update={"id": "x-1", "device": "panel-2"})
    diff = diff_sites(OLD, _with(devices=[*OLD.devices, device], points=[*OLD.points, point]))
    assert diff.kind == "devices" and diff.devices_added == ("panel-2",) and diff.devices_changed == ()


def test_a_point_of_another_kind_is_replaced() -> None:
    diff = diff_sites(OLD, _with(points=_point("pir-01", kind="momentary")))
    assert diff.points_replaced == ("pir-01",)


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"site": OLD.site.model_copy(update={"id": "other-site"})}, "site.id"),
        ({"site": OLD.site.model_copy(update={"timezone": "Europe/London"})}, "site.timezone"),
        ({"mqtt": OLD.mqtt.model_copy(update={"client_id": "gw-2"})}, "mqtt: the MQTT broker and identity"),
        ({"mqtt": OLD.mqtt.model_copy(update={"url": "mqtts://other.example:8883"})}, "mqtt: the MQTT broker"),
        ({"mqtt": OLD.mqtt.model_copy(update={"username": "gw-2"})}, "mqtt: the MQTT broker and identity"),
        ({"journal": OLD.journal.model_copy(update={"retention": 3600.0})}, "journal:"),
        ({"metrics": OLD.metrics.model_copy(update={"port": 9999})}, "metrics:"),
        ({"delivery": OLD.delivery.model_copy(update={"confirm": "broker"})}, "delivery:"),
        ({"commands": OLD.commands.model_copy(update={"enabled": True})}, "commands:"),
        ({"bacnet": None}, "bacnet:"),
    ],
)
def test_what_the_process_holds_for_life_needs_a_restart(update: dict[str, Any], reason: str) -> None:
    diff = diff_sites(OLD, _with(**update))
    assert diff.kind == "restart"
    assert any(r.startswith(reason) and r.endswith("restart the gateway to apply it") for r in diff.restart), diff
    assert diff.summary().startswith("needs a restart: ")


def test_the_last_device_of_a_protocol_cannot_go_without_a_restart() -> None:
    devices = [d for d in OLD.devices if d.protocol != "bacnet"]
    points = [p for p in OLD.points if p.device != "fire-1"]
    diff = diff_sites(OLD, _with(devices=devices, points=points))
    assert diff.kind == "restart"
    assert any("removes the last bacnet device" in r for r in diff.restart)


def test_the_summary_counts_and_names_the_changes() -> None:
    zones = [*OLD.zones, Zone(id="az-2", name="AZ 2", tenant="az")]
    points = [p for p in OLD.points if p.id != "smoke-1"]
    summary = diff_sites(OLD, _with(zones=zones, points=points)).summary()
    assert "1 point(s) removed (smoke-1)" in summary
    assert "device(s) restarted (fire-1)" in summary
    assert "zone 'az-2' added" in summary


def test_every_section_is_applied_live_or_named_as_needing_a_restart() -> None:
    """A section added to SiteConfig later must not be silently ignored by a reload."""
    assert set(SiteConfig.model_fields) == LIVE_SECTIONS | set(RESTART_SECTIONS) | {"mqtt"}


def test_a_dc09_change_needs_a_restart() -> None:
    receiver = {"id": "ats", "host": "127.0.0.1", "port": 5000, "account": "4711", "insecure": True}
    diff = diff_sites(OLD, _with(dc09=Dc09Config.model_validate({"receivers": [receiver]})))
    assert diff.kind == "restart" and diff.restart[0].startswith("dc09: the SIA DC-09 receivers"), diff


def test_where_the_mqtt_credentials_are_read_from_is_applied_by_reconnecting() -> None:
    tls = OLD.mqtt.tls.model_copy(update={"ca_file": Path("/etc/gcmk/ca-2027.pem")})
    mqtt = OLD.mqtt.model_copy(update={"tls": tls, "password_file": Path("/etc/gcmk/mqtt-password-2027")})
    diff = diff_sites(OLD, _with(mqtt=mqtt))
    assert (diff.kind, diff.restart) == ("credentials", ())
    assert diff.credentials == ("mqtt.tls.ca_file", "mqtt.password_file")
    assert "MQTT credentials from other files (mqtt.tls.ca_file, mqtt.password_file): reconnected" in diff.summary()
    both = diff_sites(OLD, _with(mqtt=mqtt.model_copy(update={"client_id": "gw-2"})))
    assert both.kind == "restart" and any("mqtt.client_id" in r for r in both.restart), both
