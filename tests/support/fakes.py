"""In-memory stand-ins for tests that exercise the core without a journal or devices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from gateway.event import Event
from gateway.state import Batch, DeviceState, PointState


class CollectingSink:
    """An EventSink that numbers and keeps every event, and records the calls it got."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.points: dict[str, PointState] = {}
        self.devices: dict[str, DeviceState] = {}
        self.calls: list[str] = []
        self.changed = asyncio.Condition()

    async def load_state(self) -> tuple[list[PointState], list[DeviceState]]:
        return list(self.points.values()), list(self.devices.values())

    async def accept(self, batch: Batch) -> Sequence[Event]:
        numbered = [e.with_seq(len(self.events) + i + 1) for i, e in enumerate(batch.events)]
        self.events.extend(numbered)
        self.points.update({p.point_id: p for p in batch.points})
        self.devices.update({d.device_id: d for d in batch.devices})
        async with self.changed:
            self.changed.notify_all()
        return numbered

    async def run(self) -> None:
        self.calls.append("run")
        await asyncio.Future()

    async def close(self) -> None:
        self.calls.append("close")

    def of(self, point_id: str) -> list[tuple[str, str]]:
        """(type, state) of the events of one point (or device), in order."""
        return [(e.type.value, e.state.value) for e in self.events if e.point.id == point_id]

    async def wait_for(self, predicate: Callable[[list[Event]], bool], within: float = 10.0) -> list[Event]:
        """Wait until `predicate(events)` holds; fail after `within` seconds."""
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: predicate(self.events))
        return self.events


async def wait_until(predicate: Callable[[], bool], within: float = 10.0, interval: float = 0.01) -> None:
    """Poll a condition that has no notification of its own; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
