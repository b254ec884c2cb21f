"""A stopping BACnet adapter cancels its COV subscriptions at the devices, bounded in time.

Left behind, a subscription lives on in the device until its lifetime ends: one of the device's few
subscription slots, and a confirmed notification per change to a gateway that has gone (or, after a restart,
to one that no longer knows the process id).
"""

from __future__ import annotations

import asyncio

import pytest

from adapters.bacnet import BacnetAdapter
from adapters.bacnet.adapter import CANCEL_ON_STOP
from gateway.testing import CollectingReadings
from simulators.control import Fault
from tests.support.bacnet_site import bacnet_point, simulated

# a device timeout longer than CANCEL_ON_STOP: a silent device's cancellations end at the stop's bound
DEVICES = {"d1": {"poll_interval": 60, "cov_lifetime": 300, "timeout": 3.0}}
POINTS = [bacnet_point("det1", "d1", "binary-input,1"), bacnet_point("det2", "d1", "binary-input,2")]


async def _subscribed(adapter: BacnetAdapter, sink: CollectingReadings, count: int) -> None:
    async with asyncio.timeout(10):
        await adapter.wait_ready()
    await sink.wait_for(lambda: adapter.counters["d1"].cov_subscriptions_active == count)


async def _stop(task: asyncio.Task[None]) -> float:
    """Stops the run; returns how long that took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(CANCEL_ON_STOP + 5):  # bounded: a hang fails here, not at the suite's timeout
            await task
    return loop.time() - started


async def test_a_stopped_adapter_leaves_no_subscription_on_the_device() -> None:
    async with simulated(DEVICES, POINTS, event_reporting=False) as (sim, site):
        sink = CollectingReadings()
        adapter = BacnetAdapter(site)
        task = asyncio.create_task(adapter.run(sink))
        await _subscribed(adapter, sink, 2)
        await sink.wait_for(lambda: sim.devices["d1"].cov_subscriptions() == 2)
        await _stop(task)
        assert sim.devices["d1"].cov_subscriptions() == 0


async def test_a_silent_device_does_not_hold_up_the_stop_and_the_next_run_cancels_what_it_kept() -> None:
    async with simulated(DEVICES, POINTS, event_reporting=False) as (sim, site):
        first, second = CollectingReadings(), CollectingReadings()
        adapter = BacnetAdapter(site)
        task = asyncio.create_task(adapter.run(first))
        await _subscribed(adapter, first, 2)
        device = sim.devices["d1"]
        await sim.inject("d1", Fault("silent"))
        # the device answers nothing: the stop ends at CANCEL_ON_STOP, not at the device's 3 s timeout
        assert await _stop(task) < CANCEL_ON_STOP + 1.0
        assert device.cov_subscriptions() == 2  # still held there, until they lapse or are cancelled
        await sim.inject("d1", Fault("none"))
        task = asyncio.create_task(adapter.run(second))
        try:
            await _subscribed(adapter, second, 2)
            # the new run's two; the first run's two cancelled once the device answered again
            await second.wait_for(lambda: device.cov_subscriptions() == 2)
            await second.wait_reading("det1", "inactive")
        finally:
            await _stop(task)
        assert device.cov_subscriptions() == 0
