"""End to end: BACnet simulator -> BacnetAdapter -> Pipeline -> Normaliser -> an in-memory journal.

The gateway restarts while one point is in alarm and another clears during the outage: after resync exactly
one alarm is known for the first (none duplicated, none invented) and the second yields its restore.
"""

from __future__ import annotations

import asyncio

import pytest

from adapters.bacnet import BacnetAdapter
from gateway.config.models import SiteConfig
from gateway.core.normaliser import Normaliser
from gateway.core.pipeline import Pipeline
from gateway.domain.event import utcnow
from gateway.testing import CollectingReadings, CollectingSink
from simulators.bacnet_sim import BacnetSiteSimulator
from tests.support.bacnet_site import bacnet_point, bacnet_site


async def _gateway(
    site: SiteConfig, journal: CollectingSink
) -> tuple[BacnetAdapter, CollectingReadings, asyncio.Task[None]]:
    """A gateway on `journal`: the tap records what the adapter hands on to the pipeline."""
    normaliser = Normaliser(site, epoch=utcnow())
    normaliser.load(*await journal.load_state())
    tap = CollectingReadings(forward=Pipeline(normaliser, journal))
    adapter = BacnetAdapter(site)
    return adapter, tap, asyncio.create_task(adapter.run(tap))


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_restart_yields_one_alarm_and_the_restore_of_a_point_cleared_while_down() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1"), bacnet_point("det2", "d1", "binary-input,2")]
    sim = BacnetSiteSimulator(bacnet_site({"d1": {}}, points), priorities=(4, 40, 200))
    await sim.start()
    try:
        site = bacnet_site({"d1": {}}, points, overlay=sim.overlay())
        journal = CollectingSink()  # keeps events and state across the restart

        _adapter, tap, task = await _gateway(site, journal)
        try:
            await tap.wait_reading("det2", "inactive")
            await sim.raise_alarm("det1")
            await sim.raise_alarm("det2")
            await tap.wait_for(lambda: journal.of("det1") and journal.of("det2"))
        finally:
            await _stop(task)
        alarm = next(e for e in journal.events if e.point.id == "det1")
        assert alarm.notification is not None and alarm.notification.priority == 4  # the device's priority
        assert alarm.occurred_at == tap.of("det1")[-1].occurred_at  # the device's time stamp

        await sim.clear_alarm("det2")  # while the gateway is down

        _adapter, tap, task = await _gateway(site, journal)
        try:
            await tap.wait_reading("det1", "active")  # resync re-reports the alarm ...
            await tap.wait_for(lambda: ("burglary", "restore") in journal.of("det2"))
        finally:
            await _stop(task)
        assert journal.of("det1") == [("burglary", "alarm")]  # ... and the normaliser keeps it at one
        assert journal.of("det2") == [("burglary", "alarm"), ("burglary", "restore")]
    finally:
        await sim.stop()
