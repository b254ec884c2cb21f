"""The `ReadingSink` the adapters talk to: normaliser in front, the event sink behind.

`submit` runs the (synchronous) normaliser and then awaits the sink, so it returns only once the events a
reading caused are durably accepted; when the sink's bounded queue is full, adapters wait (back-pressure)
instead of anything being dropped. A timer task confirms debounced changes for which no further reading
arrives (COV devices report a change once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

from gateway.core.normaliser import Normaliser
from gateway.core.ports import DeviceStatus, EventSink, Reading
from gateway.domain.event import Event, utcnow
from gateway.domain.state import Batch


class Pipeline:
    def __init__(self, normaliser: Normaliser, sink: EventSink, clock: Callable[[], datetime] = utcnow) -> None:
        self.normaliser = normaliser
        self._sink = sink
        self._clock = clock
        self._wake = asyncio.Event()
        self.accepted = 0  # events durably accepted through this pipeline

    async def submit(self, reading: Reading) -> None:
        await self._accept(self.normaliser.process(reading))
        if self.normaliser.next_due() is not None:
            self._wake.set()

    async def device_status(self, status: DeviceStatus) -> None:
        await self._accept(self.normaliser.device_status(status))

    async def _accept(self, batch: Batch) -> Sequence[Event]:
        if not batch:
            return ()
        accepted = await self._sink.accept(batch)
        self.accepted += len(accepted)
        return accepted

    async def run_debounce_timer(self) -> None:
        """Runs until cancelled: sleeps until the next debounce deadline or until a reading sets one."""
        while True:
            due = self.normaliser.next_due()
            self._wake.clear()
            if due is None:
                await self._wake.wait()
                continue
            delay = (due - self._clock()).total_seconds()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                    continue  # something new arrived: recompute the deadline
                except TimeoutError:
                    pass
            await self._accept(self.normaliser.tick(self._clock()))
