"""The whole gateway as wiring builds it, with a DC-09 receiver configured: an alarm at a simulated Modbus device
arrives on MQTT (confirmed by the reference receiver) and at pysiaalarm (ACKed), and /metrics shows the path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.app.wiring import build_gateway
from gateway.config.source import SiteSource
from gateway.testing import wait_until
from simulators.modbus_sim import ModbusSiteSimulator
from tests.integration.delivery.test_confirmation import receiver, stored
from tests.integration.ops.test_metrics import _check_metrics, get, scrape_until
from tests.support.dc09 import KEY_TEXT, SiaReceiver
from tests.support.delivery_harness import SITE
from tests.support.modbus_site import device, point, site_doc, site_of, with_overlay
from tests.support.mosquitto import Mosquitto, mosquitto

__all__ = ["mosquitto"]  # the fixture


async def test_an_alarm_at_a_device_arrives_on_mqtt_and_over_dc09(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sia = SiaReceiver()
    await sia.start()
    key_file = tmp_path / "dc09.key"
    key_file.write_text(KEY_TEXT.encode().hex(), encoding="ascii")
    doc = site_doc([device("panel", poll_interval=0.1, timeout=0.08)], [point("pir-1", "panel", "coil", 0)])
    doc["site"]["id"] = SITE
    doc.update(
        mqtt={"url": mosquitto.url, "insecure": True},
        journal={"data_dir": str(tmp_path / "journal")},
        delivery={"confirm": "meldkamer", "receivers": ["meldkamer"], "confirm_timeout": "1s"},
        supervision={"heartbeat_interval": 0.3},
        metrics={"listen": "127.0.0.1", "port": 0},
        dc09={
            "receivers": [
                {
                    "id": "ats",
                    "host": "127.0.0.1",
                    "port": sia.port,
                    "account": "4711",
                    "key_file": str(key_file),
                    "supervision": 1.0,
                    "ack_timeout": 0.3,
                }
            ]
        },
    )
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        gateway = build_gateway(with_overlay(doc, sim.overlay()), config_hash="feed")
        assert [p.name for p in gateway.paths] == ["dc09:ats"]
        async with asyncio.TaskGroup() as tg, receiver(mosquitto, tmp_path / "receiver"):
            tg.create_task(gateway.run())
            await asyncio.wait_for(gateway.started.wait(), 10)
            port = gateway.operator_port
            assert port
            await sim.raise_alarm("pir-1")
            await wait_until(lambda: sia.codes() == ["BA"], 15, what="burglary alarm at pysiaalarm")
            assert gateway.delivery is not None
            await wait_until(lambda: gateway.delivery is not None and gateway.delivery.confirmed_seq >= 1, 15)
            scrape = await scrape_until(  # the backlog gauges are refreshed every 0.25-1 s
                port,
                lambda s: (
                    s.value("gcmk_dc09_acked_total", receiver="ats") == 1
                    and s.value("gcmk_dc09_unacknowledged", receiver="ats") == 0
                ),
            )
            assert scrape.value("gcmk_dc09_up", receiver="ats") == 1
            assert scrape.value("gcmk_dc09_oldest_unacknowledged_age_seconds", receiver="ats") == 0
            assert scrape.value("gcmk_dc09_path_fault", receiver="ats") == 0
            assert scrape.value("gcmk_dc09_encryption_disabled", receiver="ats") == 0
            assert (scrape.value("gcmk_dc09_last_ack_timestamp_seconds", receiver="ats") or 0) > 0
            assert scrape.value("gcmk_component_up", component="dc09:ats") == 1
            _check_metrics(scrape.body)  # promtool: names, types and help of the DC-09 families

            await sia.stop()
            await sim.clear_alarm("pir-1")  # the restore waits for the receiver
            down = await scrape_until(port, lambda s: s.value("gcmk_dc09_path_fault", receiver="ats") == 1, within=10)
            assert down.value("gcmk_dc09_up", receiver="ats") == 0
            await sia.start()
            await wait_until(lambda: sia.codes() == ["BA", "BH"], 20, what="the restore after the receiver is back")
            await scrape_until(port, lambda s: s.value("gcmk_dc09_path_fault", receiver="ats") == 0, within=10)
            assert (await get(port)).value("gcmk_dc09_path_faults_total", receiver="ats") == 1
            gateway.stop()
    finally:
        await sia.stop()
        await sim.stop()
    assert stored(tmp_path / "receiver")[:1] == [1], "the alarm reached the meldkamer over MQTT"


async def test_a_point_added_by_a_reload_gets_its_own_zone_number_over_dc09(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sia = SiaReceiver()
    await sia.start()
    key_file = tmp_path / "dc09.key"
    key_file.write_text(KEY_TEXT.encode().hex(), encoding="ascii")
    points = [point("pir-1", "panel", "coil", 0), point("pir-2", "panel", "coil", 1)]
    doc = site_doc([device("panel", poll_interval=0.1, timeout=0.08)], points)
    doc["site"]["id"] = SITE
    doc.update(
        mqtt={"url": mosquitto.url, "insecure": True},
        journal={"data_dir": str(tmp_path / "journal")},
        delivery={"confirm": "broker"},
        metrics={"listen": "127.0.0.1", "port": 0},
        dc09={
            "receivers": [
                {
                    "id": "ats",
                    "host": "127.0.0.1",
                    "port": sia.port,
                    "account": "4711",
                    "key_file": str(key_file),
                    "supervision": 1.0,
                    "ack_timeout": 0.3,
                }
            ]
        },
    )
    sim = ModbusSiteSimulator(site_of(doc))  # the device has both inputs; the first config reads only pir-1
    await sim.start()
    site_file = tmp_path / "site.json"
    site_file.write_text(json.dumps({**doc, "points": points[:1]}), encoding="utf-8")
    source = SiteSource(site_file, (sim.overlay(),))
    try:
        gateway = build_gateway(source.load().config, config_hash="first", source=source)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gateway.run())
            await asyncio.wait_for(gateway.started.wait(), 10)
            await sim.raise_alarm("pir-1")
            await wait_until(lambda: sia.codes() == ["BA"], 15, what="pir-1's alarm at pysiaalarm")
            site_file.write_text(json.dumps(doc), encoding="utf-8")  # pir-2 added
            assert gateway.reloader is not None
            outcome = await gateway.reloader.reload()
            assert outcome.applied, outcome
            await sim.raise_alarm("pir-2")
            await wait_until(lambda: sia.codes() == ["BA", "BA"], 15, what="pir-2's alarm at pysiaalarm")
            zones = [str(e.message).strip() for e in sia.events]
            assert zones[1] not in ("", "0", "000") and zones[1] != zones[0], zones
            gateway.stop()
    finally:
        await sia.stop()
        await sim.stop()
