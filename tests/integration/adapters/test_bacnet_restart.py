"""A restarted BACnet adapter (the Supervisor calls run() again on the same object) routes only to its new run.

The previous run's COV subscriptions live on in the device until their lifetime ends; their notifications
must not reach the previous run's sessions (and so its sink), and the new run cancels them.
"""

from __future__ import annotations

import asyncio

import pytest

from adapters.bacnet import BacnetAdapter
from gateway.app.service import RestartPolicy, Supervisor
from gateway.core.ports import Reading
from gateway.testing import CollectingReadings
from simulators.bacnet_sim import BacnetSiteSimulator
from tests.support.bacnet_site import bacnet_point, running, simulated

DETECTOR = "binary-input,1"


class BreakingSink(CollectingReadings):
    """A sink (the journal, say) that fails on the reading of one point: the adapter's run crashes."""

    def __init__(self, breaking_point: str) -> None:
        super().__init__()
        self.breaking_point = breaking_point

    async def submit(self, reading: Reading) -> None:
        if reading.point_id == self.breaking_point and reading.value == "active":
            raise RuntimeError("journal failed")
        await super().submit(reading)


# d1: the device under test, COV only (polling every 60 s cannot deliver a change in time);
# d2: a polled device whose point "trip" makes the first sink fail, i.e. crashes the first run.
DEVICES = {"d1": {"poll_interval": 60, "cov_lifetime": 300}, "d2": {"cov": False, "poll_interval": 0.1}}
POINTS = [bacnet_point("det1", "d1", DETECTOR), bacnet_point("trip", "d2", "binary-input,9")]


async def _first_run_subscribed(adapter: BacnetAdapter, sim: BacnetSiteSimulator, sink: CollectingReadings) -> int:
    await sink.wait_reading("det1", "inactive")
    await sink.wait_reading("trip", "inactive")
    await sink.wait_for(lambda: adapter.counters["d1"].cov_subscriptions_active == 1)
    await sink.wait_for(lambda: sim.devices["d1"].cov_subscriptions() == 1)
    return adapter.sessions["d1"].plans[DETECTOR].process_id


async def _only_the_new_run_gets_it(
    adapter: BacnetAdapter, sim: BacnetSiteSimulator, old: CollectingReadings, new: CollectingReadings, old_id: int
) -> None:
    await new.wait_reading("det1", "inactive")  # the new run's resync
    device = sim.devices["d1"]
    # subscribed afresh under a new process id; the old run's subscription cancelled at the device
    await new.wait_for(lambda: adapter.counters["d1"].cov_subscriptions_active == 1)
    await new.wait_for(lambda: device.cov_subscriptions() == 1)
    assert adapter.sessions["d1"].plans[DETECTOR].process_id != old_id
    old_count = len(old.readings)

    # a notification for the old subscription is unknown now: answered so, counted, routed nowhere
    assert await sim.notify_cov("det1", old_id) == "unknown-subscription"
    assert adapter.counters["d1"].unknown_subscription_notifications == 1

    await sim.raise_alarm("det1")
    await new.wait_reading("det1", "active", within=5)
    mark = len(new.readings)
    await sim.clear_alarm("det1")  # a later change, so a duplicate of "active" would have arrived before it
    await new.wait_reading("det1", "inactive", after=mark, within=5)
    assert [r.value for r in new.of("det1")] == ["inactive", "active", "inactive"]
    assert len(old.readings) == old_count  # nothing reached the previous run's sink


async def test_supervisor_restart_after_a_crash_routes_only_to_the_new_run() -> None:
    async with simulated(DEVICES, POINTS, event_reporting=False) as (sim, site):
        first, second = BreakingSink("trip"), CollectingReadings()
        sinks = iter([first, second])
        adapter = BacnetAdapter(site)
        supervisor = Supervisor(RestartPolicy(backoff_initial=0.01, backoff_max=0.01))
        # as Gateway does: the Supervisor calls adapter.run(sink) again on the same instance after a crash
        task = asyncio.create_task(supervisor.run("bacnet", lambda: adapter.run(next(sinks))))
        try:
            old_id = await _first_run_subscribed(adapter, sim, first)
            await sim.raise_alarm("trip")  # the first sink fails on it: the first run crashes
            await second.wait_for(lambda: supervisor.restarts.get("bacnet") == 1)
            await _only_the_new_run_gets_it(adapter, sim, first, second, old_id)
            assert supervisor.restarts == {"bacnet": 1}
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_run_again_after_cancellation_routes_only_to_the_new_run() -> None:
    async with simulated(DEVICES, POINTS, event_reporting=False) as (sim, site):
        first, second = CollectingReadings(), CollectingReadings()
        adapter = BacnetAdapter(site)
        task = asyncio.create_task(adapter.run(first))
        old_id = await _first_run_subscribed(adapter, sim, first)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        task = asyncio.create_task(adapter.run(second))
        try:
            await _only_the_new_run_gets_it(adapter, sim, first, second, old_id)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_process_id_of_another_object_is_not_routed() -> None:
    """A subscription left by an earlier gateway process (whose process ids also started at 1) can carry an id
    that is now another object's: its notification must not become a reading of that other object."""
    points = [bacnet_point("det1", "d1", DETECTOR), bacnet_point("det2", "d1", "binary-input,2")]
    async with simulated({"d1": {"poll_interval": 60}}, points, event_reporting=False) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_for(lambda: adapter.counters["d1"].cov_subscriptions_active == 2)
            await sim.raise_alarm("det1")
            await sink.wait_reading("det1", "active")
            other_id = adapter.sessions["d1"].plans["binary-input,2"].process_id
            # det1's object (now active) under det2's process id
            assert await sim.notify_cov("det1", other_id) == "unknown-subscription"
            await sim.clear_alarm("det1")  # a later reading, so a misrouted one would have come before it
            await sink.wait_reading("det1", "inactive", after=len(sink.readings))
            assert [r.value for r in sink.of("det2")] == ["inactive"]
            assert adapter.unknown_cov_notifications == 1
