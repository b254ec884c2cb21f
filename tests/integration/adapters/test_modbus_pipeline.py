"""End to end: simulated Modbus device -> ModbusAdapter -> Pipeline (normaliser) -> a collecting EventSink."""

from __future__ import annotations

import asyncio

from adapters.modbus import ModbusAdapter, PollTuning
from gateway.core.normaliser import Normaliser
from gateway.core.pipeline import Pipeline
from gateway.domain.event import utcnow
from gateway.testing import CollectingSink, wait_until
from simulators.control import Fault
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.modbus_site import device, point, site_doc, site_of, with_overlay


def summary(sink: CollectingSink) -> list[tuple[str, str, str]]:
    return [(e.point.id, e.type.value, e.state.value) for e in sink.events]


async def test_alarm_comm_loss_and_restores_through_the_pipeline() -> None:
    doc = site_doc(
        [device("panel", poll_interval=0.1, timeout=0.08, offline_after_failures=3)],
        [
            point("pir-1", "panel", "holding", 100, bit=0),
            point("pir-2", "panel", "holding", 100, bit=1),
            point("tamper", "panel", "coil", 0, type="tamper"),
        ],
    )
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        site = with_overlay(doc, sim.overlay())
        events = CollectingSink()
        pipeline = Pipeline(Normaliser(site, epoch=utcnow()), events)
        adapter = ModbusAdapter(site, tuning=PollTuning(backoff_cap=0.3))
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(adapter.run(pipeline)), tg.create_task(pipeline.run_debounce_timer())]
            await wait_until(lambda: adapter.pollers[0].stats.polls >= 2)
            assert events.events == []  # the quiet building causes no events

            await sim.raise_alarm("pir-1")
            await events.wait_for(lambda ev: len(ev) >= 1)
            await sim.inject("panel", Fault("silent"))
            await events.wait_for(lambda ev: len(ev) >= 2)
            await sim.clear_alarm("pir-1")  # restored while the gateway cannot see the panel
            await sim.raise_alarm("tamper")  # and a new alarm meanwhile
            await sim.inject("panel", Fault("none"))
            await events.wait_for(lambda ev: len(ev) >= 5)
            polls = adapter.pollers[0].stats.polls
            await wait_until(lambda: adapter.pollers[0].stats.polls >= polls + 5)
            for task in tasks:
                task.cancel()
        assert summary(events)[:2] == [("pir-1", "burglary", "alarm"), ("panel", "comm_loss", "alarm")]
        assert summary(events)[2] == ("panel", "comm_loss", "restore")
        assert sorted(summary(events)[3:]) == [("pir-1", "burglary", "restore"), ("tamper", "tamper", "alarm")]
        assert [e.seq for e in events.events] == [1, 2, 3, 4, 5]
    finally:
        await sim.stop()

