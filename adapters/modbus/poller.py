"""The poll loop of one Modbus device: schedule, change detection, error classes and supervision.

Why it looks like this:
- the schedule does not drift: the next poll is due one interval after the previous *due* time, and a
  poll that runs past one or more slots is counted as an overrun instead of being stacked;
- only changes are handed on (value or quality differs from the last reading handed on); the pipeline
  debounces by timer, so repeating unchanged values would only cost CPU. A value counts as handed on only
  once `submit` returned: when the gateway does not accept it (NotAccepted: the journal cannot be written),
  the next poll offers it again, and so with the device's online/offline status;
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
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from adapters.modbus.blocks import Block, plan_blocks, split_block
from adapters.modbus.link import ModbusLink, unavailable_reason
from adapters.modbus.stats import DeviceStats
from gateway.config.models import ModbusDevice, ModbusSource, PointConfig
from gateway.core.ports import DeviceStatus, Quality, Reading, ReadingSink
from gateway.domain.errors import ConfigurationFault, DeviceError, DeviceRejected, NotAccepted


@dataclass(frozen=True, slots=True)
class PollTuning:
    """Knobs that are not part of the site config (defaults suit production; tests shorten them)."""

    backoff_cap: float = 3.0  # longest wait between polls of an offline device
    config_fault_retry: float = 60.0  # how often a block answered with exception 01-03 is tried again
    busy_retries: int = 2  # retries of a block answered with 04/05/06 within one poll


@dataclass(frozen=True, slots=True)
class _Observation:
    point_id: str
    value: int | None
    quality: Quality
    at: datetime
    text: str | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        self._last: dict[str, tuple[int | None, Quality]] = {}  # per point: the last reading the gateway accepted
        self._fault_retry_at: dict[Block, float] = {}
        self._online: bool | None = None  # the last status the gateway accepted (stats.online: what polls show)
        self._offline_at: datetime | None = None  # when the polls showed the device offline
        self._refused = False  # the gateway did not accept the last reading or status (logged once)
        # per point: a value the gateway did not accept, and when it was first seen (its detection time)
        self._unaccepted: dict[str, tuple[tuple[int | None, Quality], datetime]] = {}
        self._blind: set[str] = set()  # points the gateway accepted as unavailable (exception 01-03)
        self._log = structlog.get_logger("adapters.modbus").bind(site=site_id, device=device.id)

    async def run(self, sink: ReadingSink) -> None:
        loop = asyncio.get_running_loop()
        interval = self.device.poll_interval
        due = loop.time() + self.phase
        backoff_step = 0
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            started = loop.time()
            ok = await self.poll_once(sink)
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

    async def poll_once(self, sink: ReadingSink) -> bool:
        """Read every block that is due; True if the device answered (even with configuration faults)."""
        loop = asyncio.get_running_loop()
        observed: list[_Observation] = []
        due_blocks = [b for b in self.blocks if self._fault_retry_at.get(b, 0.0) <= loop.time()]
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
                if self._fault_retry_at.pop(block, None) is not None:
                    self._log.info("modbus_block_readable_again", block=block.ref, points=list(block.point_ids))
                observed.extend(_Observation(pid, value, Quality.GOOD, at) for pid, value in block.decode(values))
        except DeviceError as exc:
            await self._failed(sink, exc)
            return False
        await self._answered(sink, observed)
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

    async def _answered(self, sink: ReadingSink, observed: list[_Observation]) -> None:
        self.stats.consecutive_failures = 0
        self.stats.last_contact = time.time()
        if self.stats.online is not True:
            self._log.info("modbus_device_online", previous=self._online)
            self.stats.online = True
        if self._online is not True:
            online = DeviceStatus(self.device.id, True, utcnow(), reason="answering")
            if not await self._hand_on(sink.device_status(online)):
                return  # the readings wait for the status: all of them are offered again at the next poll
            self._online = True
        for obs in observed:
            key = (obs.value, obs.quality)
            if self._last.get(obs.point_id) == key:
                continue
            earlier = self._unaccepted.get(obs.point_id)
            at = earlier[1] if earlier is not None and earlier[0] == key else obs.at
            reading = Reading(obs.point_id, obs.value, obs.quality, at, text=obs.text)
            if not await self._hand_on(sink.submit(reading)):
                self._unaccepted[obs.point_id] = (key, at)
                return  # not recorded as seen: this and the rest are offered again at the next poll
            self._unaccepted.pop(obs.point_id, None)
            self._last[obs.point_id] = key
            self.stats.readings += 1
            if obs.quality is Quality.UNAVAILABLE:
                self._blind.add(obs.point_id)
            elif obs.quality is Quality.GOOD:
                self._blind.discard(obs.point_id)
            self.stats.points_unavailable = len(self._blind)

    async def _hand_on(self, call: Awaitable[None]) -> bool:
        """Await a submit or device_status; False (logged once per spell) if the gateway did not accept it."""
        try:
            await call
        except NotAccepted as exc:
            if not self._refused:
                self._log.warning("modbus_reading_not_accepted", error=str(exc), detail="offered again next poll")
            self._refused = True
            return False
        if self._refused:
            self._log.info("modbus_readings_accepted_again")
        self._refused = False
        return True

    async def _failed(self, sink: ReadingSink, exc: DeviceError) -> None:
        self.stats.consecutive_failures += 1
        failures = self.stats.consecutive_failures
        self._log.debug("modbus_poll_failed", error=type(exc).__name__, detail=str(exc), failures=failures)
        if failures < self.device.offline_after_failures or self._online is False:
            return
        if self.stats.online is not False:
            self._log.warning("modbus_device_offline", error=type(exc).__name__, detail=str(exc), failures=failures)
            self.stats.online = False
            self._offline_at = utcnow()
        self._last.clear()  # everything is handed on fresh when it answers again
        self._fault_retry_at = dict.fromkeys(self._fault_retry_at, 0.0)  # and every block is tried again
        status = DeviceStatus(
            self.device.id,
            False,
            self._offline_at or utcnow(),
            reason=str(exc),
            detail={"error": type(exc).__name__, "failures": str(failures)},
        )
        if await self._hand_on(sink.device_status(status)):
            self._online = False  # else reported again after the next failed poll
