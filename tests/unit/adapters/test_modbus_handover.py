"""One poll, one commit; polling never waits for a disk (adapters/modbus/poller.py).

The poller against a scripted link (the values the device answers, read by read) and a sink whose commits
stall on an Event (a slow journal): while a commit is stalled the poller still reads the device and queues
the next polls' changes, which go in the next commit together, in order; nothing counts as accepted before
its commit returned; and when the bound of pending hand-overs is reached, polling waits (back-pressure)
instead of dropping anything. No timing is measured here (figures: bench/bench_fastpoll.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from adapters.modbus.poller import DevicePoller, PollTuning
from gateway.config.models import ModbusDevice, SiteConfig
from gateway.core.ports import DeviceStatus, Reading
from gateway.testing import wait_until
from tests.support.modbus_site import device, point, site_doc, site_of

INTERVAL = 0.01


class ScriptedLink:
    """A device whose holding register 100 answers `value(n)` at its n-th read (n from 0)."""

    def __init__(self, value: Callable[[int], int]) -> None:
        self.value = value
        self.reads = 0

    async def read(self, device: ModbusDevice, table: str, address: int, count: int) -> list[int]:
        await asyncio.sleep(0)
        value = self.value(self.reads)
        self.reads += 1
        return [value]


class StallingSink:
    """A ReadingSink whose commits wait while `gate` is clear; keeps each committed batch as (point, value)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls = 0  # submit_many calls begun (a stalled one included)
        self.batches: list[list[tuple[str, object]]] = []
        self.statuses: list[DeviceStatus] = []

    async def submit(self, reading: Reading) -> None:
        await self.submit_many([reading])

    async def submit_many(self, readings: Sequence[Reading]) -> None:
        self.calls += 1
        await self.gate.wait()
        self.batches.append([(r.point_id, r.value) for r in readings])

    async def device_status(self, status: DeviceStatus) -> None:
        self.statuses.append(status)

    def values(self, point_id: str) -> list[object]:
        return [v for batch in self.batches for p, v in batch if p == point_id]


def _site() -> SiteConfig:
    return site_of(
        site_doc(
            [device("panel", poll_interval=INTERVAL, timeout=INTERVAL / 2)],
            [point("pir-1", "panel", "holding", 100, bit=0), point("pir-2", "panel", "holding", 100, bit=1)],
        )
    )


@contextlib.asynccontextmanager
async def polling(link: ScriptedLink, sink: StallingSink, bound: int = 64) -> AsyncIterator[DevicePoller]:
    site = _site()
    dev = site.devices[0]
    assert isinstance(dev, ModbusDevice)
    poller = DevicePoller(dev, list(site.points), link, tuning=PollTuning(pending_handovers=bound))  # type: ignore[arg-type]
    task = asyncio.create_task(poller.run(sink))  # type: ignore[arg-type]
    try:
        yield poller
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_polling_goes_on_while_a_commit_is_stalled_and_the_queued_changes_follow_in_order() -> None:
    script = {"value": 0}
    link = ScriptedLink(lambda _n: script["value"])
    sink = StallingSink()
    async with polling(link, sink) as poller:
        await wait_until(lambda: poller.stats.readings == 2, what="the first values committed")
        assert sink.batches == [[("pir-1", 0), ("pir-2", 0)]], "one poll, one commit"

        sink.gate.clear()  # the journal's disk stalls
        script["value"] = 1  # pir-1 in alarm
        await wait_until(lambda: sink.calls == 2, what="the alarm's commit started (and stalls)")
        script["value"] = 0  # pir-1 back to normal
        await wait_until(lambda: poller.pending == 2, what="the next poll's change queued behind it")
        script["value"] = 3  # both in alarm
        await wait_until(lambda: poller.pending == 3, what="and the next one")
        polls = poller.stats.polls
        await wait_until(lambda: poller.stats.polls >= polls + 5, what="polling goes on meanwhile")
        assert poller.stats.readings == 2, "nothing counts as accepted before its commit returned"
        assert len(sink.batches) == 1

        sink.gate.set()
        await wait_until(lambda: poller.pending == 0 and poller.stats.readings == 6, what="all committed")
    assert sink.batches[1:] == [[("pir-1", 1)], [("pir-1", 0), ("pir-1", 1), ("pir-2", 1)]], (
        "the changes queued behind the stalled commit go together in the next one, in order"
    )
    assert [s.online for s in sink.statuses] == [True]


async def test_back_pressure_when_the_bound_of_pending_polls_is_reached_and_nothing_is_dropped() -> None:
    link = ScriptedLink(lambda n: n % 2)  # pir-1 changes at every read: every poll is a hand-over
    sink = StallingSink()
    async with polling(link, sink, bound=2) as poller:
        await wait_until(lambda: poller.stats.readings >= 3, what="the first changes committed")
        sink.gate.clear()
        # one hand-over in its stalled commit, two queued (the bound), the next poll waits to queue its own
        await wait_until(lambda: poller.pending == 3, what="the bound reached")
        at_bound = link.reads
        # 20 poll slots, twice: not a synchronisation, the absence of reads is the check (the poll under way
        # when the bound was reached may read once more, then waits to queue its change)
        await asyncio.sleep(20 * INTERVAL)
        reads = link.reads
        await asyncio.sleep(20 * INTERVAL)
        assert link.reads == reads <= at_bound + 1, "the poller waits for room in the queue instead of reading on"
        assert poller.pending == 3

        sink.gate.set()
        await wait_until(lambda: link.reads >= reads + 5, what="polling resumes")
        await wait_until(lambda: poller.pending == 0 and len(sink.values("pir-1")) >= reads, what="caught up")
    values = sink.values("pir-1")
    assert values == [n % 2 for n in range(len(values))], "every change read was handed on, in order"


async def test_a_stopped_poller_lets_its_queued_changes_become_durable_first() -> None:
    """A reload of the bus or the shutdown (inputs stopped before the sink) while commits are slow: an alarm that
    came and went is in the queue only; the stopped poller gives it its grace, also against repeated cancels."""
    script = {"value": 0}
    link = ScriptedLink(lambda _n: script["value"])
    sink = StallingSink()
    site = _site()
    dev = site.devices[0]
    assert isinstance(dev, ModbusDevice)
    poller = DevicePoller(dev, list(site.points), link)  # type: ignore[arg-type]
    task = asyncio.create_task(poller.run(sink))  # type: ignore[arg-type]
    await wait_until(lambda: poller.stats.readings == 2, what="the first values committed")
    sink.gate.clear()
    script["value"] = 1
    await wait_until(lambda: sink.calls == 2, what="the alarm's commit stalls")
    script["value"] = 0
    await wait_until(lambda: poller.pending == 2, what="its restore queued behind it")
    task.cancel()
    task.cancel()  # the adapter's stop insists
    await asyncio.sleep(0)
    assert not task.done(), "it waits for its queue"
    sink.gate.set()
    await asyncio.gather(task, return_exceptions=True)
    assert sink.values("pir-1") == [0, 1, 0], "the alarm and its restore, both durable"
