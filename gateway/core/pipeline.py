"""The `ReadingSink` the adapters talk to: normaliser in front, the event sink behind.

`submit` runs the (synchronous) normaliser and then awaits the sink, so it returns only once the events a
reading caused are durably accepted (`submit_many`: the same for a poll's readings, as one step and one
commit); when the sink's bounded queue is full, adapters wait (back-pressure)
instead of anything being dropped. A timer task confirms debounced changes for which no further reading
arrives (COV devices report a change once).

Transactional intake: the normaliser's step takes effect only when the sink accepted its batch. If `accept`
raises, the step is rolled back before the error reaches the adapter (a `NotAccepted` such as JournalError:
offer the reading again later), so the same reading is a change again and nothing is consumed before it is
durable. While a step awaits the sink, no other step may touch the points or device it changed (a rollback
would undo that one's base): a reading or status for them waits until the first is settled. Readings of one
point come from one adapter task in order anyway; what this keeps apart is the debounce timer and a device's
status from its points' readings.

A caller stopped while its step is with the sink (a device restarted by a reload, the shutdown, a BACnet
session torn down) does not decide the step: the sink does. `accept` runs as a task of its own that the
caller's cancellation does not reach, and the step is committed or rolled back when that task ends, by its
outcome; the caller waits up to CANCEL_GRACE for it (through repeated cancels: the adapters' stop and the
shutdown insist) and then re-raises its CancelledError. Rolling the step back on the cancel alone, as this
once did, raised the same alarm a second time when the journal took the batch all the same (a commit under
way completes; DeliverySink also commits what is queued): the next reading of the point was a change again.
Should the sink not have decided within the grace (a disk that hangs), the caller leaves and the step stays
held until it does: a reading of its points waits, and is then judged against the state the journal holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import structlog

from gateway.core.lifecycle import wait_event
from gateway.core.normaliser import Key, Normaliser, Step, point_key
from gateway.core.ports import DeviceStatus, EventSink, Reading
from gateway.domain.errors import NotAccepted
from gateway.domain.event import Event, utcnow

log = structlog.get_logger(__name__)

CANCEL_GRACE = 5.0  # seconds a cancelled caller still waits for the sink's outcome of its step (as DRAIN_GRACE)
REFUSED_RETRY = 1.0  # seconds before the timer offers debounced changes again that the sink did not accept


class Pipeline:
    def __init__(self, normaliser: Normaliser, sink: EventSink, clock: Callable[[], datetime] = utcnow) -> None:
        self.normaliser = normaliser
        self._sink = sink
        self._clock = clock
        self._wake = asyncio.Event()
        self._inflight: dict[Key, asyncio.Future[None]] = {}  # keys of steps awaiting the sink: done when settled
        self._accepting: set[asyncio.Task[Sequence[Event]]] = set()  # the sink's accepts under way (owned here)
        self.accepted = 0  # events durably accepted through this pipeline

    async def submit(self, reading: Reading) -> None:
        if self._inflight:
            await self._settled((point_key(reading.point_id),))
        try:
            await self._accept(self.normaliser.offer(reading))
        finally:
            if self.normaliser.next_due() is not None:
                self._wake.set()  # a new deadline, or (rolled back) a pending change restored

    async def submit_many(self, readings: Sequence[Reading]) -> None:
        """The readings as one step (`Normaliser.offer_many`): one `accept`, so one journal commit for all of
        them; rolled back as a whole if the sink refuses it."""
        if not readings:
            return
        if self._inflight:
            await self._settled({point_key(r.point_id) for r in readings})
        try:
            await self._accept(self.normaliser.offer_many(readings))
        finally:
            if self.normaliser.next_due() is not None:
                self._wake.set()

    async def device_status(self, status: DeviceStatus) -> None:
        if self._inflight:
            await self._settled(self.normaliser.status_keys(status))
        await self._accept(self.normaliser.offer_status(status))

    async def settle(self, keys: Iterable[Key]) -> None:
        """Wait until no step awaiting the sink holds any of `keys` (a reload, before its ending step)."""
        await self._settled(keys)

    async def apply(self, step: Step, hold: Iterable[Key] = ()) -> Sequence[Event]:
        """Hand a step made outside the readings (a reload's final events) to the sink, under the same rules:
        its keys, and the keys in `hold` (which it does not change: nothing to roll back there), are held
        until the sink settled it, and it is rolled back if the sink refuses it."""
        return await self._accept(step, tuple(hold))

    async def _settled(self, keys: Iterable[Key]) -> None:
        """Wait until no step awaiting the sink holds any of `keys`."""
        keys = tuple(keys)
        while busy := {self._inflight[k] for k in keys if k in self._inflight}:
            await asyncio.wait(busy)

    async def _accept(self, step: Step, hold: tuple[Key, ...] = ()) -> Sequence[Event]:
        if not step.batch:
            return ()
        keys = (*step.keys, *hold)
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[None] = loop.create_future()
        for key in keys:
            self._inflight[key] = settled
        accepting = loop.create_task(self._sink.accept(step.batch))
        self._accepting.add(accepting)
        # Registered first: the step is settled before anyone awaiting `accepting` resumes.
        accepting.add_done_callback(lambda done: self._settle(step, keys, settled, done))
        cancelled: asyncio.CancelledError | None = None
        deadline: float | None = None
        while not accepting.done():
            try:
                # asyncio.wait never cancels what it waits for: the caller's cancel stops here, not the sink
                await asyncio.wait({accepting}, timeout=None if deadline is None else deadline - loop.time())
            except asyncio.CancelledError as exc:  # stopped: the sink's outcome still decides (module docstring)
                cancelled = exc
                if deadline is None:
                    deadline = loop.time() + CANCEL_GRACE
            if deadline is not None and loop.time() >= deadline and not accepting.done():
                log.error(
                    "step_outcome_unknown",
                    grace_s=CANCEL_GRACE,
                    detail="a stopped caller left before the sink decided; its points wait for the outcome",
                )
                break
        if cancelled is not None:
            raise cancelled
        return accepting.result()  # NotAccepted (rolled back) is raised here

    def _settle(
        self, step: Step, keys: tuple[Key, ...], settled: asyncio.Future[None], done: asyncio.Task[Sequence[Event]]
    ) -> None:
        """The sink's outcome of a step, whoever still waits for it: durable -> committed, refused (or the accept
        cancelled: never by a caller) -> rolled back, offered again. Then its keys are free."""
        self._accepting.discard(done)
        try:
            error = None if done.cancelled() else done.exception()  # retrieved: never an unretrieved warning
            if done.cancelled() or error is not None:
                self.normaliser.rollback(step)
                if self.normaliser.next_due() is not None:
                    self._wake.set()  # a pending change restored
                if error is not None and not isinstance(error, NotAccepted):  # a bug: said even if no one waits
                    log.error("sink_accept_failed", error=repr(error))
            else:
                self.normaliser.commit(step)
                self.accepted += len(done.result())
        finally:
            for key in keys:
                if self._inflight.get(key) is settled:
                    del self._inflight[key]
            settled.set_result(None)

    async def run_debounce_timer(self) -> None:
        """Runs until cancelled: sleeps until the next debounce deadline or until a reading sets one."""
        while True:
            due = self.normaliser.next_due()
            self._wake.clear()
            if due is None:
                await self._wake.wait()
                continue
            delay = (due - self._clock()).total_seconds()
            if delay > 0 and await wait_event(self._wake, delay):
                continue  # something new arrived: recompute the deadline
            pending = self.normaliser.pending_keys()
            if any(key in self._inflight for key in pending):  # e.g. a reload's batch holding every point
                await self._settled(pending)  # then confirmed under the config in force after it
                continue
            try:
                await self._accept(self.normaliser.offer_tick(self._clock()))
            except NotAccepted as exc:  # rolled back: still pending, and due; not in a tight loop
                log.warning("debounced changes not accepted; offered again", error=str(exc), in_s=REFUSED_RETRY)
                self._wake.clear()
                await wait_event(self._wake, REFUSED_RETRY)
