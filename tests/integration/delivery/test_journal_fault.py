"""DeliverySink on a journal whose disk fails: refused batches, the journal_fault pair, readiness coming back.

The adapters' side (readings offered again, no SimpleACK) is in tests/integration/adapters/test_journal_failure.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import gateway.delivery.sink as sink_module
from gateway.config.models import SiteConfig
from gateway.delivery.journal import Journal, Plan
from gateway.delivery.sink import DeliverySink, journal_path
from gateway.domain.errors import NotAccepted
from gateway.domain.state import Batch
from gateway.testing import wait_until
from tests.integration.delivery.test_delivery import running
from tests.support.delivery_harness import Collector, make_event, site_config
from tests.support.failing_disk import FailingDisk, failing_disk, failing_disk_of
from tests.support.mosquitto import Mosquitto, mosquitto

__all__ = ["failing_disk", "mosquitto"]  # the fixtures


def _events(site: SiteConfig) -> list[tuple[str, str]]:
    journal = Journal(journal_path(site), site=site.site.id, max_bytes=site.journal.max_bytes, retention=3600)
    journal.open()
    try:
        return [(e.type.value, e.state.value) for e in journal.events()]
    finally:
        journal.close()


async def test_a_refused_batch_on_a_quiet_site_is_followed_by_the_fault_pair_once_the_disk_recovers(
    failing_disk: FailingDisk,
) -> None:
    """Nothing offers a reading again (a quiet site): the writer's own retry journals the fault once it can."""
    site = site_config(failing_disk.path, "mqtt://127.0.0.1:1")
    sink = DeliverySink(site, config_hash="t", version="t", journal=failing_disk.journal(site))
    async with running(sink=sink):
        await sink.accept(Batch(events=(make_event(1),)))
        failing_disk.fail()
        with pytest.raises(NotAccepted, match="disk"):
            await sink.accept(Batch(events=(make_event(2),)))
        assert not sink.journal_writable and sink.stats.journal_write_failures == 1
        await wait_until(lambda: sink.stats.journal_write_failures >= 2, what="the writer tried on its own")
        assert not sink.journal_writable
        failing_disk.recover()
        await wait_until(lambda: sink.journal_writable, what="writable again without any new batch")
        assert sink.stats.last_seq == 3
    assert _events(site) == [("fault", "alarm"), ("journal_fault", "alarm"), ("journal_fault", "restore")]


async def test_failed_marks_make_the_journal_unwritable_until_a_mark_succeeds(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """PUBACK marks fail while commits still work; no further commit comes: readiness and the heartbeat's
    journal_ok come back with the next mark that is written, and no journal_fault is raised for marks."""
    with failing_disk_of("io_error", tmp_path) as disk:
        site = site_config(disk.path, mosquitto.url, supervision={"heartbeat_interval": "200ms"})
        sink = DeliverySink(site, config_hash="t", version="t", journal=disk.journal(site))
        collector = Collector(mosquitto.port)

        def journal_ok() -> bool:
            beats = collector.on("/heartbeat")
            return bool(beats) and bool(beats[-1].json()["journal_ok"])

        async with running(sink=sink, collector=collector):
            await collector.wait_for(journal_ok, 10)
            disk.statements = ("BEGIN", "UPDATE")  # the marks; an events-only commit is one INSERT
            disk.fail()
            await sink.accept(Batch(events=(make_event(1),)))
            await wait_until(lambda: not sink.journal_writable, what="the PUBACK's mark failed")
            assert sink.stats.journal_write_failures >= 1 and sink.stats.journal_depth == 1
            await collector.wait_for(lambda: not journal_ok(), 10)
            disk.recover()
            await wait_until(lambda: sink.journal_writable, what="writable again with the next mark")
            await collector.wait_for(journal_ok, 10)
            await wait_until(lambda: sink.stats.journal_depth == 0, what="the mark put back was written")
        assert _events(site) == [("fault", "alarm")]


class HangingJournal(Journal):
    """A disk that hangs in fsync: commits neither fail nor finish until `release` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hanging = threading.Event()
        self.release = threading.Event()

    def write(self, plan: Plan) -> None:
        if self.hanging.is_set():
            self.release.wait(30)
        super().write(plan)


async def test_a_hung_journal_shows_in_readiness_and_heartbeats_which_keep_their_interval(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing fails, every commit just waits: that is no quiet building. Once the journal's thread has not
    answered for JOURNAL_STALL, readiness says so and heartbeats go on, on time, with journal_ok false."""
    monkeypatch.setattr(sink_module, "JOURNAL_STALL", 0.5)
    site = site_config(tmp_path / "journal", mosquitto.url, supervision={"heartbeat_interval": "200ms"})
    journal = HangingJournal(journal_path(site), site=site.site.id, max_bytes=site.journal.max_bytes, retention=3600)
    sink = DeliverySink(site, config_hash="t", version="t", journal=journal)
    collector = Collector(mosquitto.port)

    def beats() -> list[dict[str, Any]]:
        return [b.json() for b in collector.on("/heartbeat")]

    async with running(sink=sink, collector=collector):
        await sink.accept(Batch(events=(make_event(1),)))
        await collector.wait_for(lambda: bool(beats()) and beats()[-1]["journal_ok"], 10)
        journal.hanging.set()
        waiting = asyncio.create_task(sink.accept(Batch(events=(make_event(2),))))
        await wait_until(lambda: "journal stalled" in sink.health().detail, what="readiness says the journal hangs")
        assert not sink.health().ok
        stalled_at = len(beats())
        await collector.wait_for(lambda: len(beats()) >= stalled_at + 4, 10)  # 4 more at 200 ms, none held up
        assert not beats()[-1]["journal_ok"] and not waiting.done()
        journal.release.set()
        assert [e.seq for e in await waiting] == [2]
        await collector.wait_for(lambda: beats()[-1]["journal_ok"], 10)
        await wait_until(lambda: sink.health().ok, what="ready again")


async def test_while_the_journal_hangs_the_heartbeats_age_of_the_oldest_undelivered_event_keeps_growing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat no longer asks a hung journal; the age it reports is that of the oldest undelivered event
    as last read, measured now: it grows, as the event waits, instead of standing still."""
    from gateway.tools.demo import free_port

    monkeypatch.setattr(sink_module, "JOURNAL_STALL", 0.3)
    site = site_config(tmp_path / "journal", f"mqtt://127.0.0.1:{free_port()}")  # nothing listens: undelivered
    journal = HangingJournal(journal_path(site), site=site.site.id, max_bytes=site.journal.max_bytes, retention=3600)
    sink = DeliverySink(site, config_hash="t", version="t", journal=journal)
    async with running(sink=sink):
        await sink.accept(Batch(events=(make_event(1),)))
        first = (await sink._heartbeat()).oldest_undelivered_age
        assert first is not None
        journal.hanging.set()
        waiting = asyncio.create_task(sink.accept(Batch(events=(make_event(2),))))
        await wait_until(lambda: sink.stats.journal_stalled_for(time.monotonic()) >= 0.3, what="the journal stalls")
        during = (await sink._heartbeat()).oldest_undelivered_age
        assert during is not None and during > first + 0.3, (first, during)
        journal.release.set()
        await waiting
