"""Transactional intake: an alarm is never consumed before it is durable, whatever the journal's disk does.

A real adapter (Modbus and BACnet simulators) -> Pipeline -> Normaliser -> a real DeliverySink whose journal
sits on a disk that fails on demand (tests/support/failing_disk.py: a tmpfs filled up, or SQLite's "disk I/O
error"). An alarm that arrives while commits fail is refused (NotAccepted): the normaliser rolls its step
back, the Modbus poller does not record the value as seen, the BACnet device gets no SimpleACK. Once the
disk recovers, the alarm is offered again and journaled, preceded by one journal_fault alarm + restore pair;
meanwhile /readyz says 503, the heartbeat journal_ok false and gcmk_journal_write_failures_total counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from adapters.bacnet import BacnetAdapter
from adapters.modbus import ModbusAdapter, PollTuning
from gateway.config.models import SiteConfig
from gateway.core.normaliser import Normaliser
from gateway.core.pipeline import Pipeline
from gateway.core.ports import Adapter
from gateway.delivery.journal import Journal
from gateway.delivery.sink import DeliverySink, journal_path
from gateway.domain.event import Event, utcnow
from gateway.ops.health import OperatorEndpoints
from gateway.ops.metrics import GatewayCollector, Sources
from gateway.testing import wait_until
from simulators.bacnet_sim import BacnetSiteSimulator
from simulators.control import Fault
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.bacnet_site import bacnet_point, bacnet_site
from tests.support.delivery_harness import Collector
from tests.support.failing_disk import FailingDisk, failing_disk
from tests.support.modbus_site import device, point, site_doc, site_of, with_overlay
from tests.support.mosquitto import Mosquitto, mosquitto

__all__ = ["failing_disk", "mosquitto"]  # the fixtures

CLOSED_PORT = "mqtt://127.0.0.1:1"  # delivery is not under test where nothing listens


@contextlib.asynccontextmanager
async def gateway(
    site: SiteConfig, disk: FailingDisk, adapter: Adapter
) -> AsyncIterator[tuple[DeliverySink, Normaliser]]:
    """The production intake path: adapter -> Pipeline -> Normaliser -> DeliverySink on the failing disk."""
    sink = DeliverySink(site, config_hash="test", version="test", journal=disk.journal(site))
    normaliser = Normaliser(site, epoch=utcnow())
    normaliser.load(*await sink.load_state())
    pipeline = Pipeline(normaliser, sink)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(sink.run())
        inputs = [tg.create_task(adapter.run(pipeline)), tg.create_task(pipeline.run_debounce_timer())]
        try:
            yield sink, normaliser
        finally:
            for task in inputs:
                task.cancel()
            await asyncio.gather(*inputs, return_exceptions=True)
            await sink.close()
            await asyncio.wait_for(run, 10)


def journaled(site: SiteConfig) -> tuple[list[Event], dict[str, str]]:
    """What the journal file holds (read after the sink closed it): events in seq order, point conditions."""
    journal = Journal(journal_path(site), site=site.site.id, max_bytes=site.journal.max_bytes, retention=3600)
    journal.open()
    try:
        points, _devices = journal.load_state()
        return journal.events(), {p.point_id: p.condition for p in points}
    finally:
        journal.close()


def journal_condition(site: SiteConfig, point: str) -> str | None:
    """The point's condition as the journal file holds it (durable), read beside the sink's own connection. Not
    the normaliser's: a step awaiting the sink shows its change already, and a BACnet resync that the failing
    disk then refuses is offered again only by the next resync (poll_interval: a minute here)."""
    path = journal_path(site)
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT condition FROM points WHERE point_id = ?", (point,)).fetchone()
    return None if row is None else str(row[0])


def now_ms() -> datetime:
    """Now, cut to the millisecond: events come back from the journal with millisecond time stamps, so a bound
    taken with microseconds can lie up to 1 ms after an event that happened later."""
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def summary(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.point.id, e.type.value, e.state.value) for e in events]


FAULT_PAIR = [("gateway.journal", "journal_fault", "alarm"), ("gateway.journal", "journal_fault", "restore")]


def check_fault_pair(events: list[Event], disk: FailingDisk, failed_at: datetime, recovered_at: datetime) -> None:
    alarm, restore = (e for e in events if e.type.value == "journal_fault")
    assert failed_at <= alarm.occurred_at <= recovered_at <= restore.occurred_at, "alarm at the first failure"
    error = "database or disk is full" if disk.kind == "disk_full" else "disk I/O error"
    assert error in (alarm.text or ""), alarm.text
    assert (alarm.category.value, alarm.codes.contact_id.event, alarm.codes.sia) == ("supervision", "300", "YX")
    assert (restore.codes.contact_id.qualifier, restore.codes.sia) == ("3", "YZ")
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "gap-free"


def write_failures_metric(site: SiteConfig, sink: DeliverySink, normaliser: Normaliser) -> float:
    registry = CollectorRegistry()
    sources = Sources(site=site, config_hash="t", normaliser=normaliser.stats, delivery=sink.stats)
    registry.register(GatewayCollector(sources))
    prefix = f'gcmk_journal_write_failures_total{{site="{site.site.id}"}} '
    line = next(x for x in generate_latest(registry).decode().splitlines() if x.startswith(prefix))
    return float(line.removeprefix(prefix))


# --- Modbus ----------------------------------------------------------------------------------------------


def _modbus_doc() -> dict[str, Any]:
    doc = site_doc(
        [device("panel", poll_interval=0.1, timeout=0.08, offline_after_failures=3)],
        [point("pir-1", "panel", "holding", 100, bit=0), point("pir-2", "panel", "holding", 100, bit=1)],
    )
    doc["supervision"] = {"heartbeat_interval": "200ms"}
    doc["delivery"] = {"confirm": "broker"}
    return doc


async def test_modbus_alarm_during_a_journal_failure_is_journaled_once_the_disk_recovers(
    failing_disk: FailingDisk, mosquitto: Mosquitto
) -> None:
    disk = failing_disk
    doc = _modbus_doc()
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        overlay = {
            **sim.overlay(),
            "mqtt": {"url": mosquitto.url, "insecure": True},
            "journal": {"data_dir": str(disk.path)},
        }
        site = with_overlay(doc, overlay)
        adapter = ModbusAdapter(site, tuning=PollTuning(backoff_cap=0.3))
        collector = Collector(mosquitto.port, topic=f"gcmk/v1/{site.site.id}/#")
        collecting = asyncio.create_task(collector.run())
        async with gateway(site, disk, adapter) as (sink, normaliser):
            endpoints = OperatorEndpoints(CollectorRegistry(), [sink])
            await wait_until(lambda: sink.stats.connected and normaliser.point_state("pir-1").condition == "normal")
            await collector.wait_for(lambda: bool(collector.on("/heartbeat")), 10)
            assert endpoints.readyz().status == 200

            failed_at = now_ms()
            disk.fail()
            await sim.raise_alarm("pir-1")
            # offered by poll after poll, refused each time: never recorded as seen, never consumed
            await wait_until(lambda: sink.stats.journal_write_failures >= 3, what="three refused commits")
            # rolled back after each refusal (a step awaiting the sink shows its change meanwhile)
            await wait_until(lambda: normaliser.point_state("pir-1").condition == "normal", what="not consumed")
            assert not sink.journal_writable
            readyz = endpoints.readyz()
            assert readyz.status == 503 and b"journal not writable" in readyz.body, readyz.body
            assert write_failures_metric(site, sink, normaliser) >= 3
            await collector.wait_for(lambda: not collector.on("/heartbeat")[-1].json()["journal_ok"], 10)
            assert not any(e["point"]["id"] == "pir-1" for e in collector.events())

            recovered_at = now_ms()
            disk.recover()
            await collector.wait_for(lambda: any(e["point"]["id"] == "pir-1" for e in collector.events()), 10)
            await collector.wait_for(lambda: collector.on("/heartbeat")[-1].json()["journal_ok"], 10)
            assert endpoints.readyz().status == 200
            assert normaliser.point_state("pir-1").condition == "burglary"
            failures = sink.stats.journal_write_failures

            await sim.clear_alarm("pir-1")  # the next change goes through at once
            await collector.wait_for(lambda: sum(e["point"]["id"] == "pir-1" for e in collector.events()) == 2, 10)
            assert sink.stats.journal_write_failures == failures
        collecting.cancel()
        events, conditions = journaled(site)
        assert summary(events) == [*FAULT_PAIR, ("pir-1", "burglary", "alarm"), ("pir-1", "burglary", "restore")]
        check_fault_pair(events, disk, failed_at, recovered_at)
        alarm = events[2]
        assert failed_at <= alarm.detected_at <= recovered_at, "detected when first seen, during the failure"
        assert conditions == {"pir-1": "normal", "pir-2": "normal"}
    finally:
        await sim.stop()


async def test_modbus_comm_loss_during_a_journal_failure_is_journaled_once_the_disk_recovers(
    failing_disk: FailingDisk,
) -> None:
    disk = failing_disk
    doc = _modbus_doc()
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        overlay = {
            **sim.overlay(),
            "mqtt": {"url": CLOSED_PORT, "insecure": True},
            "journal": {"data_dir": str(disk.path)},
        }
        site = with_overlay(doc, overlay)
        adapter = ModbusAdapter(site, tuning=PollTuning(backoff_cap=0.3))
        poller = adapter.pollers[0]
        async with gateway(site, disk, adapter) as (sink, normaliser):
            await wait_until(lambda: normaliser.point_state("pir-1").condition == "normal")
            failed_at = now_ms()
            disk.fail()
            await sim.inject("panel", Fault("silent"))
            await wait_until(lambda: poller.stats.online is False)
            failures = sink.stats.journal_write_failures
            await wait_until(lambda: sink.stats.journal_write_failures >= failures + 2, what="the status refused twice")
            await wait_until(lambda: normaliser.device_online("panel") is True, what="offline status not consumed")

            recovered_at = now_ms()
            disk.recover()
            await wait_until(lambda: normaliser.device_online("panel") is False, what="offline reported again")
            await sim.inject("panel", Fault("none"))
            await wait_until(lambda: normaliser.device_online("panel") is True, what="back online")
            await wait_until(lambda: sink.stats.journal_depth >= 4)  # the restore is journaled too
        events, _conditions = journaled(site)
        assert summary(events) == [*FAULT_PAIR, ("panel", "comm_loss", "alarm"), ("panel", "comm_loss", "restore")]
        check_fault_pair(events, disk, failed_at, recovered_at)
        assert failed_at <= events[2].occurred_at <= recovered_at, "offline since the polls said so"
    finally:
        await sim.stop()


# --- BACnet ----------------------------------------------------------------------------------------------


async def test_bacnet_alarm_notified_during_a_journal_failure_is_journaled_and_acked_after_recovery(
    failing_disk: FailingDisk,
) -> None:
    disk = failing_disk
    devices: dict[str, dict[str, Any]] = {"d1": {"cov": False, "poll_interval": 60}}  # only the notification tells
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    # The device retries an unanswered confirmed notification every second, 3 times: inside bacpypes3's own
    # 3 s server transaction, which the gateway must end for the retries to reach it.
    sim = BacnetSiteSimulator(bacnet_site(devices, points), apdu_timeout=1.0)
    await sim.start()
    try:
        simulated = bacnet_site(devices, points, overlay=sim.overlay())
        site = simulated.model_copy(
            update={
                "mqtt": simulated.mqtt.model_copy(update={"url": CLOSED_PORT}),
                "journal": simulated.journal.model_copy(update={"data_dir": disk.path}),
                "delivery": simulated.delivery.model_copy(update={"confirm": "broker"}),
            }
        )
        adapter = BacnetAdapter(site)
        async with gateway(site, disk, adapter) as (sink, normaliser):
            await wait_until(lambda: journal_condition(site, "det1") == "normal", what="resync journaled")
            sim_device = sim.devices["d1"]
            counters = adapter.counters["d1"]
            failed_at = now_ms()
            disk.fail()
            await sim.raise_alarm("det1")
            # the original and the device's retry both reached the normaliser as a change, and were refused: rolled
            # back (a step awaiting the sink shows its change meanwhile; counting and offering are one task step)
            await wait_until(
                lambda: counters.event_notifications >= 2 and normaliser.point_state("det1").condition == "normal",
                what="the device's retry handled as new, refused, rolled back",
            )
            assert sink.stats.journal_write_failures >= 2
            assert sim_device.notifications_acked == 0, "no SimpleACK before the commit"

            recovered_at = now_ms()
            disk.recover()
            await wait_until(lambda: sim_device.notifications_acked == 1, what="SimpleACK after the commit")
            assert normaliser.point_state("det1").condition == "burglary"
            await wait_until(lambda: sim_device.in_flight() == 0, what="nothing left unanswered on the device")
            assert sink.journal_writable
        events, conditions = journaled(site)
        assert summary(events) == [*FAULT_PAIR, ("det1", "burglary", "alarm")]
        check_fault_pair(events, disk, failed_at, recovered_at)
        alarm = events[2]
        assert alarm.notification is not None and alarm.notification.priority == 50  # from the notification
        # the device's time stamp of the alarm (BACnet time stamps have centiseconds)
        assert failed_at - timedelta(seconds=0.5) <= alarm.occurred_at <= recovered_at
        assert conditions == {"det1": "burglary"}
    finally:
        await sim.stop()


async def test_bacnet_comm_loss_during_a_journal_failure_is_journaled_once_the_disk_recovers(
    failing_disk: FailingDisk,
) -> None:
    disk = failing_disk
    devices: dict[str, dict[str, Any]] = {"d1": {"timeout": 0.3}}
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    sim = BacnetSiteSimulator(bacnet_site(devices, points), event_reporting=False)
    await sim.start()
    try:
        simulated = bacnet_site(devices, points, overlay=sim.overlay(), offline_after=1.0)
        site = simulated.model_copy(
            update={
                "mqtt": simulated.mqtt.model_copy(update={"url": CLOSED_PORT}),
                "journal": simulated.journal.model_copy(update={"data_dir": disk.path}),
                "delivery": simulated.delivery.model_copy(update={"confirm": "broker"}),
            }
        )
        adapter = BacnetAdapter(site)
        async with gateway(site, disk, adapter) as (sink, normaliser):
            await wait_until(lambda: journal_condition(site, "det1") == "normal", what="resync journaled")
            assert normaliser.device_online("d1") is True
            failed_at = now_ms()
            disk.fail()
            await sim.inject("d1", Fault("silent"))
            counters = adapter.counters["d1"]
            await wait_until(lambda: counters.online is False, what="supervision: offline")
            failures = sink.stats.journal_write_failures
            await wait_until(lambda: sink.stats.journal_write_failures >= failures + 2, what="refused, retried")
            await wait_until(lambda: normaliser.device_online("d1") is True, what="offline status not consumed")

            recovered_at = now_ms()
            disk.recover()
            await wait_until(lambda: normaliser.device_online("d1") is False, what="offline reported again")
            await sim.inject("d1", Fault("none"))
            await wait_until(lambda: normaliser.device_online("d1") is True, what="back online")
            await wait_until(lambda: sink.stats.journal_depth >= 4, what="the restore journaled")
        events, _conditions = journaled(site)
        assert summary(events) == [*FAULT_PAIR, ("d1", "comm_loss", "alarm"), ("d1", "comm_loss", "restore")]
        check_fault_pair(events, disk, failed_at, recovered_at)
        assert failed_at <= events[2].occurred_at <= recovered_at, "offline since supervision said so"
    finally:
        await sim.stop()
