"""The real turfmarkt-147 site (five BACnet devices, 40-212 objects each) through the whole gateway, with
alarms raised while the startup reads are still under way: every point must show exactly alarm, restore.

Before the fixes this produced false restores (a startup read answered after the alarm notification) and
"Task exception was never retrieved" AssertionErrors (segmented ReadPropertyMultiple answers in bacpypes3).
An end-to-end check, timing-dependent by nature: the deterministic regression tests are in
test_bacnet_robustness.py.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from adapters.bacnet import BacnetAdapter
from gateway.app.wiring import build_gateway
from gateway.config.loader import load_site
from gateway.config.models import BacnetDevice
from gateway.domain.event import Event
from gateway.domain.taxonomy import EventState
from gateway.testing import CollectingSink, LoopExceptionCatcher, wait_until
from simulators.bacnet_sim import BacnetSiteSimulator
from tests.support.paths import REPO

SITE = REPO / "config" / "sites" / "turfmarkt-147.yaml"
SAMPLE = 60
PACE = 0.03  # seconds between alarms: they are spread over the first ~2 s, while the startup reads run


def _states(events: list[Event], point_id: str) -> list[EventState]:
    return [e.state for e in events if e.point.id == point_id and e.state in (EventState.ALARM, EventState.RESTORE)]


def _detail(events: list[Event], point_id: str) -> list[tuple[str, Any, str | None, str]]:
    """What each alarm/restore of a point was made of, for the failure message."""
    return [
        (e.state, e.source.raw, e.notification.to_state if e.notification else None, e.detected_at.isoformat())
        for e in events
        if e.point.id == point_id and e.state in (EventState.ALARM, EventState.RESTORE)
    ]


async def test_alarms_during_startup_reads_give_exactly_alarm_then_restore(
    loop_exceptions: LoopExceptionCatcher,
) -> None:
    sim = BacnetSiteSimulator(load_site(SITE))
    await sim.start()
    try:
        site = load_site(SITE, [sim.overlay(), {"commands": {"enabled": False}, "metrics": {"port": 0}}])
        sink = CollectingSink()
        gateway = build_gateway(site, sink=sink)
        task = asyncio.create_task(gateway.run())
        try:
            adapter = next(a for a in gateway.adapters if isinstance(a, BacnetAdapter))
            devices = [d.id for d in site.devices if isinstance(d, BacnetDevice)]
            await wait_until(
                lambda: len(adapter.counters) == len(devices) and all(c.online for c in adapter.counters.values()),
                30,
            )
            # straight away and spread out: the startup reads and subscriptions are still on their way
            bacnet = [p for p in site.points if p.kind == "state" and p.alarm and p.device in devices]
            sample = random.Random(147).sample(bacnet, SAMPLE)
            for point in sample:
                await sim.raise_alarm(point.id)
                await asyncio.sleep(PACE)  # scenario pacing, not synchronisation
            await sink.wait_for(lambda ev: all(EventState.ALARM in _states(ev, p.id) for p in sample), 60)
            for point in sample:
                await sim.clear_alarm(point.id)
            await sink.wait_for(lambda ev: all(EventState.RESTORE in _states(ev, p.id) for p in sample), 60)
            # startup is over once every COV object is subscribed: a stale answer would have come in by now
            subscribable = {
                s.device.id: sum(1 for plan in s.plans.values() if s.device.cov and plan.cov_watches())
                for s in adapter.sessions.values()
            }
            await wait_until(
                lambda: all(adapter.counters[d].cov_subscriptions_active == n for d, n in subscribable.items()),
                30,
            )
            wrong = {p.id: _states(sink.events, p.id) for p in sample}
            wrong = {k: v for k, v in wrong.items() if v != [EventState.ALARM, EventState.RESTORE]}
            assert not wrong, {k: _detail(sink.events, k) for k in wrong}
            loop_exceptions.check()  # no "Task exception was never retrieved" from the segmented answers
        finally:
            gateway.stop()
            async with asyncio.timeout(30):
                await task
    finally:
        await sim.stop()
