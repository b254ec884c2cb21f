"""Adapters adopting a new site config while running (a reload): only the named devices start or stop."""

from __future__ import annotations

from typing import Any

from adapters.modbus import ModbusAdapter
from gateway.config.models import SiteConfig
from gateway.testing import CollectingReadings, wait_until
from simulators.bacnet_sim import BacnetSiteSimulator
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.bacnet_site import bacnet_point, bacnet_site, running
from tests.support.modbus_site import device, point, site_doc, site_of, with_overlay
from tests.support.modbus_site import running as running_task


async def test_modbus_devices_are_added_changed_and_removed_one_by_one() -> None:
    devices = [device("m1", port=1), device("m2", port=2), device("m3", port=3)]
    points = [point("p1", "m1", "coil", 1), point("p2", "m2", "coil", 1), point("p3", "m3", "coil", 1)]
    sim = ModbusSiteSimulator(site_of(site_doc(devices, points)))
    await sim.start()
    try:
        endpoints = sim.overlay()["devices"]

        def config(*device_docs: dict[str, Any]) -> SiteConfig:
            ids = [d["id"] for d in device_docs]
            doc = site_doc(list(device_docs), [p for p in points if p["device"] in ids])
            return with_overlay(doc, {"devices": {i: endpoints[i] for i in ids}})

        before = config(devices[0], devices[1])
        after = config(devices[0], {**devices[1], "poll_interval": 0.3}, devices[2])
        sink = CollectingReadings()
        adapter = ModbusAdapter(before)
        async with running_task(lambda: adapter.run(sink)):
            await sink.wait_reading("p1", 0)
            await sink.wait_reading("p2", 0)
            untouched = next(p for p in adapter.pollers if p.device.id == "m1")
            m2_stats = next(p for p in adapter.pollers if p.device.id == "m2").stats

            await adapter.reconfigure(after, ["m2", "m3"])  # m2 changed, m3 added
            await sink.wait_reading("p3", 0)
            assert next(p for p in adapter.pollers if p.device.id == "m1") is untouched  # never stopped
            changed = next(p for p in adapter.pollers if p.device.id == "m2")
            assert changed.device.poll_interval == 0.3 and changed.stats is m2_stats  # counters carried over
            polls = untouched.stats.polls
            await wait_until(lambda: untouched.stats.polls > polls + 2)

            removed = config(devices[0], devices[2])
            await adapter.reconfigure(removed, ["m2"])
            assert sorted(p.device.id for p in adapter.pollers) == ["m1", "m3"]
            readings = len(sink.of("p2"))
            await sim.raise_alarm("p2")
            await sim.raise_alarm("p1")
            await sink.wait_reading("p1", 1)
            await sink.wait_reading("p3", 0, after=0)
            assert len(sink.of("p2")) == readings  # m2 no longer polled
            assert set(adapter.device_metrics()) == {"m1", "m3"}
    finally:
        await sim.stop()


async def test_bacnet_sessions_are_added_replaced_and_removed_one_by_one() -> None:
    devices = {"d1": {}, "d2": {}}
    points = [bacnet_point("det1", "d1", "binary-input,1"), bacnet_point("det2", "d2", "binary-input,2")]
    sim = BacnetSiteSimulator(bacnet_site(devices, points))
    await sim.start()
    try:
        overlay = sim.overlay()
        before = bacnet_site({"d1": {}}, points[:1], overlay=overlay)
        sink = CollectingReadings()
        async with running(before, sink) as adapter:
            await sink.wait_reading("det1", "inactive")
            first = adapter.sessions["d1"]

            both = before.model_copy(
                update={
                    "devices": bacnet_site(devices, points, overlay=overlay).devices,
                    "points": bacnet_site(devices, points, overlay=overlay).points,
                }
            )
            await adapter.reconfigure(both, ["d2"])  # added
            await sink.wait_reading("det2", "inactive")
            assert adapter.sessions["d1"] is first  # untouched: same session, same subscriptions
            await sim.raise_alarm("det2")
            await sink.wait_reading("det2", "active")

            slower = [d.model_copy(update={"poll_interval": 0.3}) if d.id == "d1" else d for d in both.devices]
            await adapter.reconfigure(both.model_copy(update={"devices": slower}), ["d1"])  # changed: replaced
            assert adapter.sessions["d1"] is not first and adapter.sessions["d1"].device.poll_interval == 0.3
            await sim.raise_alarm("det1")
            await sink.wait_reading("det1", "active")  # the new session has the device

            only_d1 = both.model_copy(update={"devices": slower[:1], "points": both.points[:1]})
            await sink.wait_for(lambda: sim.devices["d2"].cov_subscriptions() == 1)
            await adapter.reconfigure(only_d1, ["d2"])  # removed
            assert set(adapter.sessions) == {"d1"}
            assert sim.devices["d2"].cov_subscriptions() == 0  # cancelled, not left to lapse on the device
            seen = len(sink.of("det2"))
            await sim.clear_alarm("det2")
            await sim.clear_alarm("det1")
            await sink.wait_reading("det1", "inactive")
            assert len(sink.of("det2")) == seen
    finally:
        await sim.stop()
