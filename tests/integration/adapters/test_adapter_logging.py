"""Every log line of an adapter names its site, and every line about one device names that device (`site`,
`device`: what an operator filters on), captured with `structlog.testing.capture_logs` while the adapters run
against the simulators and a device goes silent. Lines about the adapter as a whole carry only the site.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters.bacnet import BacnetAdapter
from adapters.modbus import ModbusAdapter, PollTuning
from gateway.testing import CollectingReadings
from simulators.control import Fault
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.bacnet_site import bacnet_point
from tests.support.bacnet_site import simulated as bacnet_simulated
from tests.support.modbus_site import device, point, running, site_doc, site_of, with_overlay

SITE = "modbus-test"

ADAPTER_LEVEL = {"modbus_adapter_start", "bacnet.started"}  # lines about the adapter as a whole, not one device


async def test_modbus_adapter_lines_carry_site_and_device() -> None:
    doc = site_doc(
        [device(d, port=port, poll_interval=0.1, timeout=0.08, offline_after_failures=2)
         for d, port in (("panel", 1), ("door", 2))],
        [point("pir-1", "panel", "holding", 100, bit=0), point("door-1", "door", "coil", 0, type="door_forced"),
         point("ghost", "door", "holding", 4000, bit=0)],
    )
    sim = ModbusSiteSimulator(site_of(doc), absent=("ghost",))  # answers exception 02 for the ghost's register
    await sim.start()
    try:
        site = with_overlay(doc, sim.overlay())
        sink = CollectingReadings()
        with capture_logs() as logs:
            adapter = ModbusAdapter(site, tuning=PollTuning(backoff_cap=0.3))  # binds its loggers now
            async with running(lambda: adapter.run(sink)):
                await sink.wait_for(lambda: {s.device_id for s in sink.statuses if s.online} == {"panel", "door"})
                await sim.inject("panel", Fault("silent"))
                await sink.wait_for(lambda: any(not s.online for s in sink.statuses))
    finally:
        await sim.stop()
    events = {entry["event"] for entry in logs}
    assert {"modbus_adapter_start", "modbus_device_online", "modbus_configuration_fault", "modbus_poll_failed",
            "modbus_device_offline"} <= events, events
    _assert_site_and_device(logs, SITE, {"panel", "door"})


async def test_bacnet_adapter_lines_carry_site_and_device() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1"), bacnet_point("det2", "d2", "binary-input,2")]
    devices = {"d1": {"timeout": 0.3}, "d2": {"timeout": 0.3}}
    async with bacnet_simulated(devices, points, offline_after=1.0, event_reporting=False) as (sim, site):
        sink = CollectingReadings()
        with capture_logs() as logs:
            adapter = BacnetAdapter(site)
            task = asyncio.create_task(adapter.run(sink))
            try:
                await sink.wait_for(lambda: {s.device_id for s in sink.statuses if s.online} == {"d1", "d2"})
                await sim.inject("d1", Fault("silent"))
                await sink.wait_for(lambda: any(not s.online for s in sink.statuses))
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
    events = {entry["event"] for entry in logs}
    assert {"bacnet.started", "bacnet.device_online", "bacnet.device_offline"} <= events, events
    _assert_site_and_device(logs, "test-site", {"d1", "d2"})


def _assert_site_and_device(logs: list[dict[str, Any]], site: str, devices: set[str]) -> None:
    assert logs
    for entry in logs:
        assert entry.get("site") == site, entry
        if entry["event"] not in ADAPTER_LEVEL:
            assert entry.get("device") in devices, entry
