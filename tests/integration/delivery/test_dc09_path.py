"""Two paths to the meldkamer: the real DeliverySink and journal publish over a real Mosquitto to the reference
receiver (which confirms), and a DC-09 path sends the same events to pysiaalarm, an independent DC-09 receiver
(AES-128, TCP). Short intervals: supervision 1 s, ack timeout 0.3 s."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.models import SiteConfig
from gateway.delivery.dc09_path import Dc09Path, build_paths
from gateway.delivery.sink import DeliverySink
from gateway.domain.state import Batch
from gateway.domain.taxonomy import EventState, EventType
from gateway.testing import wait_until
from tests.integration.delivery.test_confirmation import receiver, stored
from tests.support.dc09 import KEY_TEXT, KEY_TEXT_256, SiaReceiver, with_dc09
from tests.support.delivery_harness import Collector, make_event, site_config
from tests.support.mosquitto import Mosquitto, mosquitto

__all__ = ["mosquitto"]  # the fixture

# one event type per step of the restart test, so that pysiaalarm's record tells the events apart (DC-09
# sequence numbers start again with every connection)
KINDS = [EventType.BURGLARY, EventType.FIRE, EventType.PANIC, EventType.TAMPER, EventType.DURESS]
MELDKAMER = {"confirm": "meldkamer", "receivers": ["meldkamer"], "confirm_timeout": "1s"}


def dual_site(tmp_path: Path, broker: Mosquitto, dc09_port: int, **receiver_options: Any) -> SiteConfig:
    site = site_config(
        tmp_path / "journal", broker.url, delivery=MELDKAMER, supervision={"heartbeat_interval": "300ms"}
    )
    return with_dc09(site, tmp_path, dc09_port, **receiver_options)


@contextlib.asynccontextmanager
async def gateway(site: SiteConfig) -> AsyncIterator[tuple[DeliverySink, Dc09Path]]:
    """The sink and its DC-09 path as the Gateway runs them (the path beside the sink, on its journal)."""
    sink = DeliverySink(site, config_hash="cafe", version="1.2.3", devices=lambda: (1, 1))
    (path,) = build_paths(site, sink)
    async with sink:
        await sink.load_state()
        task = asyncio.create_task(path.run())
        try:
            yield sink, path
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def alarm(sink: DeliverySink, n: int, event_type: EventType = EventType.BURGLARY) -> int:
    (event,) = await sink.accept(Batch(events=(make_event(n, event_type, EventState.ALARM),)))
    assert event.seq is not None
    return event.seq


@pytest.mark.parametrize(
    ("fmt", "key_text"),
    [("sia-dcs", KEY_TEXT), ("adm-cid", KEY_TEXT_256), ("sia-dcs", None)],
    ids=["sia-dcs-aes128", "adm-cid-aes256", "sia-dcs-plain"],
)
async def test_an_alarm_arrives_confirmed_on_mqtt_and_acked_by_pysiaalarm(
    tmp_path: Path, mosquitto: Mosquitto, fmt: str, key_text: str | None
) -> None:
    sia = SiaReceiver(key=key_text)
    await sia.start()
    options: dict[str, Any] = {"fmt": fmt, "key": key_text is not None, "key_text": key_text or KEY_TEXT}
    site = dual_site(tmp_path, mosquitto, sia.port, **options)
    state_dir = tmp_path / "receiver"
    try:
        async with gateway(site) as (sink, path), receiver(mosquitto, state_dir):
            seq = await alarm(sink, 1)
            await wait_until(lambda: sink.stats.confirmed_seq == seq, 10, what="confirmed on MQTT")
            await wait_until(lambda: path.stats.cursor == seq, 10, what="ACKed over DC-09")
            assert sia.codes() == ["BA"], "burglary alarm: SIA BA, or Contact ID 1130 which pysiaalarm maps to BA"
            (event,) = sia.events
            assert (event.account, event.encrypted) == ("4711", key_text is not None)
            if fmt == "sia-dcs":
                assert event.ri == "1", "area 1"
            assert await sink.journal_call(sink.journal.path_outcomes, "dc09:ats") == [(seq, "acked")]
            assert await sink.journal_call(sink.journal.prune, time.time() + 10 * 86400) == 1, "both paths: done"
    finally:
        await sia.stop()
    assert stored(state_dir) == [1]


async def test_a_receiver_down_raises_a_path_fault_on_mqtt_and_everything_follows_in_order(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sia = SiaReceiver()
    await sia.start()
    site = dual_site(tmp_path, mosquitto, sia.port)
    collector = Collector(mosquitto.port)
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(collector.run())
        await asyncio.wait_for(collector.connected.wait(), 10)
        async with gateway(site) as (sink, path), receiver(mosquitto, tmp_path / "receiver"):
            first = await alarm(sink, 0)
            await wait_until(lambda: path.stats.cursor == first, 10, what="first alarm ACKed")
            await sia.stop()
            down_at = time.monotonic()
            seqs = [await alarm(sink, n, EventType.TAMPER if n % 2 else EventType.BURGLARY) for n in range(1, 6)]

            def faults(state: str) -> list[dict[str, Any]]:
                return [e for e in collector.events() if e["type"] == "path_fault" and e["state"] == state]

            await collector.wait_for(lambda: bool(faults("alarm")), 10)
            fault_after = time.monotonic() - down_at
            (fault,) = faults("alarm")
            assert fault["point"]["id"] == "gateway.dc09.ats" and fault["codes"]["sia"] == "YC"
            # supervision 1 s; the send of the first waiting event must first time out (0.3 s) or find the
            # connection gone; then the commit and the MQTT round trip
            assert 1.0 <= fault_after < 3.0, fault_after
            # (pysiaalarm's stop may let its open connection take one more message first)
            await wait_until(lambda: path.stats.unacknowledged == seqs[-1] - path.stats.cursor > 0, 5, what="gauge")
            await sia.start()  # the same port
            await collector.wait_for(lambda: bool(faults("restore")), 20)
            await wait_until(lambda: path.stats.cursor >= seqs[-1], 20, what="backlog sent")
            await wait_until(lambda: sink.stats.confirmed_seq >= seqs[-1] + 2, 10, what="fault + restore confirmed")
        watch.cancel()
    await sia.stop()
    assert sia.codes() == ["BA", "TA", "BA", "TA", "BA", "TA"], "every DC-09 event, in order, none twice"
    assert [e.sequence for e in sia.events] == sorted({e.sequence for e in sia.events})


async def test_a_restart_resumes_each_path_where_it_stopped(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sia = SiaReceiver()
    await sia.start()
    site = dual_site(tmp_path, mosquitto, sia.port)
    collector = Collector(mosquitto.port)
    state_dir = tmp_path / "receiver"
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(collector.run())
        await asyncio.wait_for(collector.connected.wait(), 10)
        # 1. DC-09 ACKs 1-3, MQTT publishes but nobody confirms.
        async with gateway(site) as (sink, path):
            seqs = [await alarm(sink, n, KINDS[n]) for n in range(3)]
            await wait_until(lambda: path.stats.cursor == seqs[-1], 10)
            await wait_until(lambda: sink.stats.published_seq == seqs[-1], 10)
            assert sink.stats.confirmed_seq == 0
        await sia.stop()
        # 2. Restart with DC-09 down and the meldkamer confirming: 1-3 confirmed on MQTT, nothing sent over DC-09;
        # 4-5 confirmed on MQTT only.
        async with gateway(site) as (sink, path), receiver(mosquitto, state_dir):
            assert path.stats.cursor in (0, seqs[-1])
            more = [await alarm(sink, n, KINDS[n]) for n in range(3, 5)]
            await wait_until(lambda: sink.stats.confirmed_seq >= more[-1], 10, what="MQTT confirms 1-5")
            assert len(sia.events) == 3
        confirmed = sink.stats.confirmed_seq  # 1-5 and the path_fault alarm (DC-09 was down)
        published = [e["seq"] for e in collector.events()]
        # 3. Restart with DC-09 back: exactly 4-5 go over DC-09; MQTT publishes nothing again.
        await sia.start()
        async with gateway(site) as (sink, path), receiver(mosquitto, state_dir):
            await wait_until(lambda: len(sia.events) == 5 and path.stats.cursor >= more[-1], 10, what="4-5 over DC-09")
            await wait_until(lambda: sink.stats.confirmed_seq == confirmed + 1, 10, what="path_fault restore")
        watch.cancel()
    await sia.stop()
    assert sia.codes() == ["BA", "FA", "PA", "TA", "HA"], "1-3 once, 4-5 once, in order"
    again = [e["seq"] for e in collector.events()][len(published) :]
    assert again == [confirmed + 1], "the MQTT path resends nothing it had confirmed; only the restore is new"
    assert stored(state_dir) == list(range(1, confirmed + 2)), "1-5, the path_fault alarm and its restore"
