"""A device stopped while its step is being journaled: the real DeliverySink decides, not the cancellation.

The caller (a Modbus committer, a BACnet session, the debounce timer: any task the reload or the shutdown
cancels) is cancelled while the sink's journal thread is busy, so its batch is queued for the commit under
way. DeliverySink journals a queued batch whether or not its caller still waits; the pipeline therefore must
not roll the normaliser back, or the next reading of the point raises the same alarm a second time (a
duplicate with a new seq for the meldkamer).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from gateway.core.normaliser import Normaliser
from gateway.core.pipeline import Pipeline
from gateway.core.ports import Quality, Reading
from gateway.delivery.journal import Journal
from gateway.delivery.sink import DeliverySink, journal_path
from gateway.domain.event import utcnow
from gateway.testing import wait_until
from gateway.tools.demo import free_port
from tests.integration.delivery.test_delivery import running
from tests.support.delivery_harness import site_config

CLOSED_PORT = f"mqtt://127.0.0.1:{free_port()}"  # delivery is not under test: nothing listens there


def _reading(value: int) -> Reading:
    return Reading("pir-01", value, Quality.GOOD, utcnow())


async def test_a_caller_cancelled_while_its_batch_waits_for_the_journal_raises_its_alarm_once(tmp_path: Path) -> None:
    site = site_config(tmp_path / "journal", CLOSED_PORT)
    sink = DeliverySink(site, config_hash="t", version="t", close_grace=0.5)
    normaliser = Normaliser(site, epoch=utcnow())
    pipeline = Pipeline(normaliser, sink)
    busy, release = threading.Event(), threading.Event()

    def journal_busy() -> None:  # the journal thread in a slow fsync
        busy.set()
        release.wait(10)

    async with running(sink=sink), asyncio.TaskGroup() as tg:
        await pipeline.submit(_reading(0))
        holding = tg.create_task(sink.journal_call(journal_busy))
        await wait_until(busy.is_set, 5, what="the journal thread busy")
        caller = tg.create_task(pipeline.submit(_reading(1)))
        await wait_until(lambda: normaliser.point_state("pir-01").condition == "burglary", 5, what="offered")
        caller.cancel()  # the device stopped (reload, shutdown) while its batch waits for the journal
        release.set()
        await holding
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, 5)
        await pipeline.submit(_reading(1))  # the next poll of the restarted device: the same value
        assert normaliser.point_state("pir-01").condition == "burglary"
        assert pipeline.accepted == 1
    journal = Journal(journal_path(site), site=site.site.id, max_bytes=site.journal.max_bytes, retention=3600)
    journal.open()
    try:
        events = [(e.point.id, e.state.value) for e in journal.events()]
    finally:
        journal.close()
    assert events == [("pir-01", "alarm")], "journaled once: the cancelled caller's batch, not raised again"
