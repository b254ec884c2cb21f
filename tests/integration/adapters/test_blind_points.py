"""Blind points are alarms, not silence: a configured object or address the device says does not exist raises
one point_unavailable event with the reason, is counted per device, and does not blind the other points.

Against stock devices written here (a plain bacpypes3 application, a plain pymodbus server) and against our
simulators, through the real normaliser and pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from bacpypes3.primitivedata import ObjectIdentifier
from prometheus_client import CollectorRegistry, generate_latest

from adapters.bacnet import BacnetAdapter
from adapters.modbus import ModbusAdapter, PollTuning
from gateway.config.models import BacnetSource, SiteConfig
from gateway.core.normaliser import Normaliser
from gateway.core.pipeline import Pipeline
from gateway.core.ports import DeviceMetrics
from gateway.domain.event import Event, utcnow
from gateway.ops.metrics import GatewayCollector, Sources
from gateway.testing import CollectingSink, wait_until
from simulators.control import Fault
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.bacnet_site import bacnet_point, bacnet_site, simulated
from tests.support.modbus_site import device, point, site_doc, site_of, with_overlay
from tests.support.stock_devices import binary_input, stock_bacnet, stock_modbus


def _blind(events: list[Event], point_id: str) -> list[Event]:
    return [e for e in events if e.point.id == point_id and e.type.value == "point_unavailable"]


def _of(events: list[Event], point_id: str) -> list[tuple[str, str]]:
    return [(e.type.value, e.state.value) for e in events if e.point.id == point_id]


@asynccontextmanager
async def gateway_of(site: SiteConfig, adapter: Any) -> AsyncIterator[tuple[CollectingSink, Normaliser]]:
    """The adapter feeding the real normaliser and pipeline into a collecting sink, for the block."""
    sink = CollectingSink()
    normaliser = Normaliser(site, epoch=utcnow())
    pipeline = Pipeline(normaliser, sink)
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(adapter.run(pipeline)), tg.create_task(pipeline.run_debounce_timer())]
        try:
            yield sink, normaliser
        finally:
            for task in tasks:
                task.cancel()


def _typo(site: SiteConfig, point_id: str, obj: str) -> SiteConfig:
    """The site with one point's object replaced without validation (validate rejects the typo; the adapter
    must survive it all the same, e.g. from an overlay written by hand)."""
    points = []
    for p in site.points:
        if p.id == point_id:
            assert isinstance(p.source, BacnetSource)
            points.append(p.model_copy(update={"source": p.source.model_copy(update={"object": obj})}))
        else:
            points.append(p)
    return site.model_copy(update={"points": points})


def _scrape(site: SiteConfig, normaliser: Normaliser, adapter: DeviceMetrics) -> str:
    """/metrics as the gateway would serve it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        GatewayCollector(Sources(site=site, config_hash="test", normaliser=normaliser.stats, adapters=[adapter]))
    )
    return generate_latest(registry).decode()


def _gauge(adapter: DeviceMetrics, device_id: str) -> float:
    return adapter.device_metrics()[device_id].gauges.get("points_unavailable", 0)


async def test_stock_bacnet_missing_and_typoed_objects_do_not_blind_the_door_next_to_them() -> None:
    async with stock_bacnet(2001, {1: "inactive", 2: "inactive"}) as (app, port):
        points = [
            bacnet_point("det1", "d1", "binary-input,1"),
            bacnet_point("det2", "d1", "binary-input,2"),
            bacnet_point("ghost", "d1", "binary-input,99"),
            bacnet_point("typo", "d1", "binary-input,3"),
        ]
        site = _typo(bacnet_site({"d1": {"port": port, "device_instance": 2001}}, points), "typo", "binary-inptu,3")
        adapter = BacnetAdapter(site)
        with structlog.testing.capture_logs() as logs:
            async with gateway_of(site, adapter) as (sink, normaliser):
                await sink.wait_for(lambda ev: _blind(ev, "ghost") and _blind(ev, "typo"))
                app.get_object_id(
                    ObjectIdentifier("binary-input,1")
                ).presentValue = "active"  # the neighbour still reports
                await sink.wait_for(lambda ev: ("burglary", "alarm") in _of(ev, "det1"))
                await wait_until(lambda: _gauge(adapter, "d1") == 2)
                assert normaliser.unavailable_points() == {"d1": ["ghost", "typo"]}
                app.add_object(binary_input(99))  # the object appears: the point is readable again
                await sink.wait_for(lambda ev: ("point_unavailable", "restore") in _of(ev, "ghost"))
                await wait_until(lambda: _gauge(adapter, "d1") == 1)
        events = sink.events
        (ghost,) = [e for e in _blind(events, "ghost") if e.state.value == "alarm"]
        (typo,) = _blind(events, "typo")  # once, however often the device is polled
        assert ghost.text == "device d1 has no object binary-input,99 (BACnet unknown-object)"
        assert typo.text is not None and "'binary-inptu' is not a BACnet object type" in typo.text
        assert (ghost.category.value, ghost.priority, ghost.codes.contact_id.event) == ("supervision", 2, "380")
        assert _of(events, "det2") == []  # normal at start: no event, but no blind alarm either
        # stock bacpypes3 rejects GetEventInformation: said once, in words that say what it means
        told = [e for e in logs if "does not support GetEventInformation" in e["event"]]
        assert len(told) == 1 and "reading every configured point" in told[0]["event"]


async def test_a_device_whose_only_point_is_missing_reports_it_blind_and_keeps_being_watched() -> None:
    """One ref in a ReadPropertyMultiple that the device rejects whole: the point is blind, not the device
    (before: taken for the device going silent, the resync failed the same way for ever)."""
    async with stock_bacnet(2002, {1: "inactive"}) as (app, port):
        devices = {"d1": {"port": port, "device_instance": 2002}}
        site = bacnet_site(devices, [bacnet_point("ghost", "d1", "binary-input,7")])
        adapter = BacnetAdapter(site)
        async with gateway_of(site, adapter) as (sink, _normaliser):
            await sink.wait_for(lambda ev: _blind(ev, "ghost"))
            app.add_object(binary_input(7))
            await sink.wait_for(lambda ev: ("point_unavailable", "restore") in _of(ev, "ghost"))
        assert not [e for e in sink.events if e.type.value == "comm_loss" and e.state.value == "alarm"]


async def test_simulated_bacnet_object_missing_on_the_device_is_one_event_and_the_rest_report() -> None:
    present = [bacnet_point(f"det{i}", "d1", f"binary-input,{i}") for i in (1, 2)]
    async with simulated({"d1": {}}, present) as (sim, sim_site):
        site = bacnet_site(
            {"d1": {}},
            [*present, bacnet_point("ghost", "d1", "binary-input,77", alarm=["active"])],
            overlay=sim.overlay(),
        )
        assert sim_site.devices[0].port == site.devices[0].port
        adapter = BacnetAdapter(site)
        async with gateway_of(site, adapter) as (sink, _normaliser):
            await sink.wait_for(lambda ev: _blind(ev, "ghost"))
            await sim.raise_alarm("det2")
            await sink.wait_for(lambda ev: ("burglary", "alarm") in _of(ev, "det2"))
            resyncs = adapter.counters["d1"].errors["ObjectMissing"]
            await wait_until(lambda: adapter.counters["d1"].errors["ObjectMissing"] >= resyncs + 5)  # polled on
        assert len(_blind(sink.events, "ghost")) == 1
        assert _gauge(adapter, "d1") == 1


async def test_stock_modbus_address_beyond_the_table_is_blind_and_its_block_neighbours_still_report() -> None:
    async with stock_modbus(inputs=16) as (server, port):
        doc = site_doc(
            [device("m1", port=port, poll_interval=0.1, timeout=0.08, max_gap=100)],
            [
                point("in-3", "m1", "discrete_input", 3),
                point("in-7", "m1", "discrete_input", 7),
                point("in-40", "m1", "discrete_input", 40),  # one block 3..40 with the others: exception 02
            ],
        )
        site = with_overlay(doc, {})
        adapter = ModbusAdapter(site, tuning=PollTuning(config_fault_retry=0.2))
        async with gateway_of(site, adapter) as (sink, normaliser):
            await sink.wait_for(lambda ev: _blind(ev, "in-40"))
            await server.async_setValues(1, 2, 7, [True])
            await sink.wait_for(lambda ev: ("burglary", "alarm") in _of(ev, "in-7"))
            polls = adapter.stats["m1"].polls
            await wait_until(lambda: adapter.stats["m1"].polls >= polls + 10)  # retried: still once
            assert normaliser.unavailable_points() == {"m1": ["in-40"]}
            assert _gauge(adapter, "m1") == 1
            metrics = _scrape(site, normaliser, adapter)
            assert 'gcmk_device_points_unavailable{device="m1",protocol="modbus",site="modbus-test"} 1.0' in metrics
            assert (
                'gcmk_events_received_total{category="supervision",device="m1",site="modbus-test",'
                'type="point_unavailable"} 1.0'
            ) in metrics
            assert adapter.stats["m1"].online is True
        (event,) = _blind(sink.events, "in-40")
        assert (
            event.text
            == "discrete_input 40 on device m1 (unit 1): the device answers exception 02 (illegal data address)"
        )
        assert _of(sink.events, "in-3") == []


async def test_simulated_modbus_rejecting_everything_then_recovering_raises_and_restores_each_point() -> None:
    doc = site_doc(
        [device("d", poll_interval=0.1, timeout=0.08, offline_after_failures=3)],
        [point("c", "d", "coil", 0), point("h", "d", "holding", 10, bit=3)],
    )
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        site = with_overlay(doc, sim.overlay())
        adapter = ModbusAdapter(site, tuning=PollTuning(config_fault_retry=0.1))
        async with gateway_of(site, adapter) as (sink, normaliser):
            await wait_until(lambda: adapter.stats["d"].online is True)
            await sim.inject("d", Fault("exception", code=2))  # e.g. a panel reconfigured under us
            await sink.wait_for(lambda ev: _blind(ev, "c") and _blind(ev, "h"))
            assert _gauge(adapter, "d") == 2
            await sim.inject("d", Fault("none"))
            await sink.wait_for(lambda ev: len(_blind(ev, "c")) == 2 and len(_blind(ev, "h")) == 2)
            assert normaliser.unavailable_points() == {}
            await wait_until(lambda: _gauge(adapter, "d") == 0)
        for pid in ("c", "h"):
            assert _of(sink.events, pid) == [("point_unavailable", "alarm"), ("point_unavailable", "restore")]
    finally:
        await sim.stop()
