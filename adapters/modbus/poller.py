"""The poll loop of one Modbus device: schedule, change detection, error classes and supervision.

Why it looks like this:
- the schedule does not drift: the next poll is due one interval after the previous *due* time, and a
  poll that runs past one or more slots is counted as an overrun instead of being stacked;
- only changes are handed on (value or quality differs from the last reading handed on); the pipeline
  debounces by timer, so repeating unchanged values would only cost CPU;
- one poll, one commit, and polling never waits for a disk: the changed readings of one poll (and the
  device's status before them, if it changed) go into a bounded per-device queue as one hand-over; a
  committer task hands them to the sink with `submit_many` (one journal commit per hand-over, or one for all
  that queued up behind a slow commit), in order, while the next polls go on. The poller waits only when the
  queue is full (back-pressure, counted as overruns). A reading counts as accepted (`stats.readings`, the
  blind points, the status the gateway knows) only once its commit returned; when the gateway refuses it
  (NotAccepted: the journal cannot be written) the committer offers the same hand-over again, after one poll
  interval, until it is taken: nothing queued is dropped, and nothing behind it overtakes it;
- after `offline_after_failures` consecutive failed polls the device is reported offline once and polled
  with jittered, capped backoff; when it answers it is reported online and every point is handed on fresh;
- a block the device rejects as wrong (exception 01-03) is a configuration fault: logged once with its
  points, and retried only rarely. A block of several addresses is first split into one block per address,
  so that one missing address does not blind its neighbours; the points of an address still rejected are
  handed on as unavailable (the normaliser raises point_unavailable once, restored when readable again).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from adapters.modbus.blocks import Block, BlockPoint, decode_changed, plan_blocks, split_block
from adapters.modbus.link import ModbusLink, unavailable_reason
from adapters.modbus.stats import DeviceStats
from gateway.config.models import ModbusDevice, ModbusSource, PointConfig
from gateway.core.ports import DeviceStatus, Quality, Reading, ReadingSink
from gateway.domain.errors import ConfigurationFault, DeviceError, DeviceRejected, NotAccepted

DRAIN_GRACE = 5.0  # seconds a stopped poller still gives its queued changes to become durable


@dataclass(frozen=True, slots=True)
class PollTuning:
    """Knobs that are not part of the site config (defaults suit production; tests shorten them)."""

    backoff_cap: float = 3.0  # longest wait between polls of an offline device
    config_fault_retry: float = 60.0  # how often a block answered with exception 01-03 is tried again
    busy_retries: int = 2  # retries of a block answered with 04/05/06 within one poll
    pending_handovers: int = 64  # polls' changes that may wait for their commit before polling waits too


@dataclass(frozen=True, slots=True)
class _Observation:
    point_id: str
    value: int | None
    quality: Quality
    at: datetime
    text: str | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


_Key = tuple[int | None, Quality]


@dataclass(frozen=True, slots=True)
class _Handover:
    """What one poll hands on: the device's status (if it changed, it goes first), or its changed readings."""

    status: DeviceStatus | None = None
    readings: tuple[tuple[Reading, _Key], ...] = ()


class DevicePoller:
    """Polls one device forever; `run` returns only when cancelled."""

    def __init__(
        self,
        device: ModbusDevice,
        points: list[PointConfig],
        link: ModbusLink,
        *,
        site_id: str = "",
        tuning: PollTuning | None = None,
        rng: random.Random | None = None,
        phase: float = 0.0,
    ) -> None:
        self.device = device
        self.phase = phase  # delay of the first poll, so that many devices do not all poll at once
        self.blocks = plan_blocks(
            [(p.id, p.source) for p in points if isinstance(p.source, ModbusSource)], device.max_gap
        )
        self.stats = DeviceStats(device.id)
        self._link = link
        self._tuning = tuning or PollTuning()
        self._rng = rng or random.Random()
        self._handed: dict[str, _Key] = {}  # per point: the last reading queued for the gateway (or accepted)
        self._fault_retry_at: dict[Block, float] = {}
        # per block (ref): the values of its last good read whose points were handed on; a poll decodes only
        # the addresses that differ from them
        self._raw: dict[str, list[int]] = {}
        self._offsets: dict[str, dict[int, tuple[BlockPoint, ...]]] = {}
        self._status: bool | None = None  # the last status queued for the gateway (or accepted)
        self._online: bool | None = None  # the last status the gateway accepted (stats.online: what polls show)
        self._offline_at: datetime | None = None  # when the polls showed the device offline
        self._refused = False  # the gateway did not accept the last hand-over (logged once)
        self._blind: set[str] = set()  # points the gateway accepted as unavailable (exception 01-03)
        self._queue: asyncio.Queue[_Handover] = asyncio.Queue(self._tuning.pending_handovers)
        self._committing = 0  # hand-overs taken from the queue whose commit has not returned yet
        self._log = structlog.get_logger("adapters.modbus").bind(site=site_id, device=device.id)

    @property
    def pending(self) -> int:
        """Hand-overs queued or being committed: the polls whose changes are not durable yet."""
        return self._queue.qsize() + self._committing

    async def run(self, sink: ReadingSink) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._commit_loop(sink), name=f"modbus-commit-{self.device.id}")
            try:
                await self._poll_loop()
            except asyncio.CancelledError:
                await self._drain()
                raise

    async def _drain(self) -> None:
        """Stopped (a reload of this bus, the shutdown, which stops the inputs before the sink): polling has
        ended; the changes already read get DRAIN_GRACE seconds to become durable, so a change that came and
        went while commits were slow is not lost with the queue. Repeated cancels (the adapter's stop insists)
        do not cut the grace short; it is re-raised by the caller."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_GRACE
        while self.pending and (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._queue.join(), left)
            except TimeoutError:
                break
            except asyncio.CancelledError:
                continue
        if self.pending:
            self._log.error("modbus_handover_dropped", pending=self.pending, detail="not durable within the grace")

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.device.poll_interval
        due = loop.time() + self.phase
        backoff_step = 0
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            started = loop.time()
            ok = await self.poll_once()
            now = loop.time()
            self.stats.record_poll(now - started, started - due, ok)
            if ok or self._online is not False:
                backoff_step = 0
                due += interval
                if due <= now:
                    missed = int((now - due) // interval) + 1
                    self.stats.overruns += missed
                    due += missed * interval
            else:
                backoff_step += 1
                wait = min(self._tuning.backoff_cap, interval * 2.0**backoff_step)
                due = now + max(interval, wait * self._rng.uniform(0.5, 1.0))

    async def poll_once(self) -> bool:
        """Read every block that is due; True if the device answered (even with configuration faults)."""
        loop = asyncio.get_running_loop()
        observed: list[_Observation] = []
        faults = self._fault_retry_at  # (a block of many points is costly to hash: not looked up while empty)
        now = loop.time()
        due_blocks = [b for b in self.blocks if not faults or faults.get(b, 0.0) <= now]
        raw: list[tuple[Block, list[int]]] = []  # the values read, kept for the next poll once handed on
        if not due_blocks and self.blocks:
            # Every block is misconfigured: still send one request per poll, or a dead device would
            # never be noticed.
            due_blocks = [min(self.blocks, key=lambda b: self._fault_retry_at[b])]
        try:
            queue = list(due_blocks)
            while queue:
                block = queue.pop(0)
                try:
                    values = await self._read_block(block)
                except ConfigurationFault as exc:
                    if block.count > 1 and len({p.address for p in block.points}) > 1:
                        parts = split_block(block)
                        self._log.info("modbus_block_split", block=block.ref, error=str(exc), parts=len(parts))
                        self.blocks[self.blocks.index(block)] = parts[0]
                        self.blocks.extend(parts[1:])
                        queue[:0] = parts
                        continue
                    observed.extend(self._config_fault(block, exc))
                    continue
                at = utcnow()
                if faults and self._fault_retry_at.pop(block, None) is not None:
                    self._log.info("modbus_block_readable_again", block=block.ref, points=list(block.point_ids))
                previous = self._raw.get(block.ref)
                if previous is None or len(previous) != len(values):
                    decoded = block.decode(values)
                else:  # only the addresses that changed since the last poll (whose points were handed on)
                    index = self._offsets.get(block.ref)
                    if index is None:
                        index = self._offsets[block.ref] = block.by_offset()
                    decoded = decode_changed(block, index, values, previous)
                observed.extend(_Observation(pid, value, Quality.GOOD, at) for pid, value in decoded)
                raw.append((block, values))
        except DeviceError as exc:
            await self._failed(exc)
            return False
        await self._answered(observed)
        for block, values in raw:  # after _answered: its points' values are handed on (or queued)
            self._raw[block.ref] = values
        return True

    async def _read_block(self, block: Block) -> list[int]:
        attempt = 0
        while True:
            self.stats.requests += 1
            try:
                return await self._link.read(self.device, block.table, block.address, block.count)
            except DeviceError as exc:
                self.stats.errors[type(exc).__name__] += 1
                retryable = isinstance(exc, DeviceRejected) and not isinstance(exc, ConfigurationFault)
                if not retryable or attempt >= self._tuning.busy_retries:
                    raise
            pause = min(0.05 * 2.0**attempt, self.device.poll_interval / 4)
            attempt += 1
            await asyncio.sleep(pause * self._rng.uniform(0.8, 1.2))

    def _config_fault(self, block: Block, exc: ConfigurationFault) -> list[_Observation]:
        loop = asyncio.get_running_loop()
        self._raw.pop(block.ref, None)  # read in full again once readable
        if block not in self._fault_retry_at:
            self._log.error(
                "modbus_configuration_fault",
                block=block.ref,
                points=list(block.point_ids),
                code=exc.code,
                error=str(exc),
                retry_in=self._tuning.config_fault_retry,
            )
        self._fault_retry_at[block] = loop.time() + self._tuning.config_fault_retry
        at = utcnow()
        text = unavailable_reason(self.device, block.table, block.address, exc.code)
        return [_Observation(pid, None, Quality.UNAVAILABLE, at, text) for pid in block.point_ids]

    async def _answered(self, observed: list[_Observation]) -> None:
        self.stats.consecutive_failures = 0
        self.stats.last_contact = time.time()
        if self.stats.online is not True:
            self._log.info("modbus_device_online", previous=self._online)
            self.stats.online = True
        if self._status is not True:
            await self._queue.put(_Handover(status=DeviceStatus(self.device.id, True, utcnow(), reason="answering")))
            self._status = True
        handed = self._handed
        changed = []
        for obs in observed:
            key = (obs.value, obs.quality)
            if handed.get(obs.point_id) != key:
                handed[obs.point_id] = key
                changed.append((Reading(obs.point_id, obs.value, obs.quality, obs.at, text=obs.text), key))
        if changed:
            await self._queue.put(_Handover(readings=tuple(changed)))

    async def _commit_loop(self, sink: ReadingSink) -> None:
        """Hands the queued hand-overs to the sink in order, until cancelled. Readings that queued up behind
        a slow commit go together in the next one; a status is a commit of its own, in its place."""
        queue = self._queue
        while True:
            taken = [await queue.get()]
            while not queue.empty():
                taken.append(queue.get_nowait())
            self._committing = len(taken)
            try:
                for part in _segments(taken):
                    while True:
                        if await self._hand_on(sink, part):
                            break
                        await asyncio.sleep(self.device.poll_interval)  # offered again, as the next poll would
                    self._acknowledge(part)
                    self._committing -= len(part)
                    for _ in part:
                        queue.task_done()
            finally:
                self._committing = 0

    async def _hand_on(self, sink: ReadingSink, taken: list[_Handover]) -> bool:
        """Commit the hand-overs; False (logged once per spell) if the gateway did not accept them."""
        try:
            status = taken[0].status
            if status is not None:
                await sink.device_status(status)
            else:
                await sink.submit_many([r for h in taken for r, _key in h.readings])
        except NotAccepted as exc:
            if not self._refused:
                self._log.warning("modbus_reading_not_accepted", error=str(exc), detail="offered again")
            self._refused = True
            return False
        if self._refused:
            self._log.info("modbus_readings_accepted_again")
        self._refused = False
        return True

    def _acknowledge(self, taken: list[_Handover]) -> None:
        """The hand-overs are durable: now they count as seen by the gateway."""
        for handover in taken:
            if handover.status is not None:
                self._online = handover.status.online
                continue
            for reading, _key in handover.readings:
                self.stats.readings += 1
                if reading.quality is Quality.UNAVAILABLE:
                    self._blind.add(reading.point_id)
                elif reading.quality is Quality.GOOD:
                    self._blind.discard(reading.point_id)
        self.stats.points_unavailable = len(self._blind)

    async def _failed(self, exc: DeviceError) -> None:
        self.stats.consecutive_failures += 1
        failures = self.stats.consecutive_failures
        self._log.debug("modbus_poll_failed", error=type(exc).__name__, detail=str(exc), failures=failures)
        if failures < self.device.offline_after_failures or self._status is False:
            return
        if self.stats.online is not False:
            self._log.warning("modbus_device_offline", error=type(exc).__name__, detail=str(exc), failures=failures)
            self.stats.online = False
            self._offline_at = utcnow()
        self._handed.clear()  # everything is handed on fresh when it answers again
        self._raw.clear()
        self._fault_retry_at = dict.fromkeys(self._fault_retry_at, 0.0)  # and every block is tried again
        status = DeviceStatus(
            self.device.id,
            False,
            self._offline_at or utcnow(),
            reason=str(exc),
            detail={"error": type(exc).__name__, "failures": str(failures)},
        )
        await self._queue.put(_Handover(status=status))
        self._status = False


def _segments(handovers: list[_Handover]) -> Iterator[list[_Handover]]:
    """Consecutive readings hand-overs as one commit; each status as one of its own (order kept)."""
    run: list[_Handover] = []
    for handover in handovers:
        if handover.status is None:
            run.append(handover)
            continue
        if run:
            yield run
            run = []
        yield [handover]
    if run:
        yield run
