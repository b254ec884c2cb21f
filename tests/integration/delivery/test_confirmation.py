"""Delivery is done when the meldkamer confirms, not when a broker acknowledged: a real Mosquitto, the real
DeliverySink and journal, and the reference receiver (gateway.tools.receiver_link) that stores and confirms."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.commands.contract import commands_topic, results_topic
from gateway.config.models import SiteConfig
from gateway.delivery.contract import ConfirmDoc, confirm_topic
from gateway.delivery.sink import DeliverySink
from gateway.domain.state import Batch
from gateway.testing import wait_until
from gateway.tools.receiver import Notice, ReceiverState
from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions
from gateway.tools.receiver_store import ReceiverStore
from tests.support.delivery_harness import SITE, Collector, make_event, site_config
from tests.support.mosquitto import Mosquitto, mosquitto

__all__ = ["mosquitto"]  # the fixture

MELDKAMER = {"confirm": "meldkamer", "receivers": ["meldkamer"], "confirm_timeout": "1s"}


def confirming_site(tmp_path: Path, broker: Mosquitto, **delivery: Any) -> SiteConfig:
    return site_config(
        tmp_path / "journal",
        broker.url,
        delivery={**MELDKAMER, **delivery},
        supervision={"heartbeat_interval": "300ms"},
    )


def sink_for(site: SiteConfig) -> DeliverySink:
    return DeliverySink(site, config_hash="cafe", version="1.2.3", devices=lambda: (1, 1))


async def accept(sink: DeliverySink, n: int, start: int = 0) -> list[int]:
    seqs = []
    for i in range(start, start + n):
        (event,) = await sink.accept(Batch(events=(make_event(i),)))
        assert event.seq is not None
        seqs.append(event.seq)
    return seqs


@contextlib.asynccontextmanager
async def receiver(broker: Mosquitto, state_dir: Path, **options: Any) -> AsyncIterator[ReceiverLink]:
    notices: list[Notice] = []
    link = ReceiverLink(
        broker.url,
        ReceiverState(),
        notices.append,
        ReceiverOptions(identifier="meldkamer", state_dir=state_dir, reorder_timeout=0.5, **options),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        yield link
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def stored(state_dir: Path) -> list[int]:
    store = ReceiverStore(state_dir, "meldkamer")
    store.open()
    try:
        return [int(s) for (s,) in store.db.execute("SELECT seq FROM events WHERE site = ? ORDER BY seq", (SITE,))]
    finally:
        store.close()


async def test_without_a_confirming_receiver_events_stay_undelivered_and_are_published_again(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sink = sink_for(confirming_site(tmp_path, mosquitto))
    collector = Collector(mosquitto.port)
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(collector.run())
        await asyncio.wait_for(collector.connected.wait(), 10)
        async with sink:
            seqs = await accept(sink, 5)
            await wait_until(lambda: sink.stats.published_seq == seqs[-1], 10, what="PUBACKs")
            # The broker has them; nobody confirmed: not delivered, and the heartbeat says so.
            await wait_until(lambda: any(m.json()["published_seq"] == 5 for m in collector.on("/heartbeat")), 10)
            beat = collector.on("/heartbeat")[-1].json()
            assert (beat["journal_depth"], beat["confirmed_seq"]) == (5, 0)
            # After the confirm timeout they are published again, flagged as redeliveries.
            await wait_until(lambda: sum(e.get("redelivered", False) for e in collector.events()) >= 5, 15)
            assert sink.stats.journal_depth == 5 and sink.stats.redelivered >= 5
        watch.cancel()


async def test_the_reference_receiver_confirms_what_it_stored_and_the_journal_delivers_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    sink = sink_for(confirming_site(tmp_path, mosquitto))
    state_dir = tmp_path / "receiver"
    async with sink:
        seqs = await accept(sink, 20)
        await wait_until(lambda: sink.stats.published_seq == seqs[-1], 10)
        assert sink.stats.journal_depth == 20
        async with receiver(mosquitto, state_dir) as link:
            await wait_until(lambda: sink.stats.confirmed_seq == 20 and sink.stats.journal_depth == 0, 20)
            assert link.confirms_sent >= 1
            more = await accept(sink, 5, start=20)
            await wait_until(lambda: sink.stats.confirmed_seq == more[-1], 10, what="live events confirmed")
    assert stored(state_dir) == list(range(1, 26))


async def test_a_broker_killed_right_after_its_pubacks_loses_nothing_at_the_meldkamer(tmp_path: Path) -> None:
    """Mosquitto saves its persistence only periodically: events it PUBACKed and queued for the receiver's
    persistent session are gone after a SIGKILL. The gateway keeps them until the receiver confirms."""
    broker = Mosquitto(tmp_path / "broker", extra_config="autosave_interval 3600")
    broker.start()
    state_dir = tmp_path / "receiver"
    try:
        sink = sink_for(confirming_site(tmp_path, broker))
        async with receiver(broker, state_dir):  # creates the receiver's persistent session, then goes away
            await asyncio.sleep(0)
        async with sink:
            await accept(sink, 1)
            async with receiver(broker, state_dir):
                await wait_until(lambda: sink.stats.confirmed_seq == 1, 10)
            seqs = await accept(sink, 30, start=1)  # the receiver is away: the broker queues them for it
            await wait_until(lambda: sink.stats.published_seq == seqs[-1], 10, what="all PUBACKed")
            assert sink.stats.journal_depth == 30
            broker.kill()
            broker.start()
            async with receiver(broker, state_dir):
                await wait_until(lambda: sink.stats.journal_depth == 0, 30, what="everything confirmed")
        assert stored(state_dir) == list(range(1, 32))
    finally:
        broker.kill()


async def test_confirmations_of_strangers_are_ignored_and_counted(tmp_path: Path, mosquitto: Mosquitto) -> None:
    sink = sink_for(confirming_site(tmp_path, mosquitto, receivers=["meldkamer", "backup"]))
    async with sink, aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="stranger") as client:
        await accept(sink, 3)
        await wait_until(lambda: sink.stats.published_seq == 3, 10)
        for receiver_id, site in (("intruder", SITE), ("meldkamer", "other-site")):
            doc = ConfirmDoc(site=site, receiver=receiver_id, up_to_seq=3)
            await client.publish(confirm_topic(SITE), doc.to_json(), qos=1)
        await client.publish(confirm_topic(SITE), b"{not json", qos=1)
        await wait_until(lambda: sink.stats.confirmations_invalid == 3, 10)
        # Both required receivers must confirm: one is not enough.
        await client.publish(
            confirm_topic(SITE), ConfirmDoc(site=SITE, receiver="meldkamer", up_to_seq=3).to_json(), qos=1
        )
        await wait_until(lambda: sink.stats.confirmations == 1, 10)
        assert sink.stats.journal_depth == 3
        await client.publish(
            confirm_topic(SITE), ConfirmDoc(site=SITE, receiver="backup", up_to_seq=1, seqs=[3]).to_json(), qos=1
        )
        await wait_until(lambda: sink.stats.confirmations == 2, 10)
        assert (sink.stats.journal_depth, sink.stats.confirmed_seq) == (1, 1), "seq 2 still lacks backup"


async def test_replay_requests_are_served_or_refused_with_the_reason(tmp_path: Path, mosquitto: Mosquitto) -> None:
    from gateway.app.wiring import build_commands

    site = confirming_site(tmp_path, mosquitto)
    sink = sink_for(site)
    commands = build_commands(site, [], sink)
    assert commands is not None, "a confirming gateway serves replays even when commands are disabled"
    collector = Collector(mosquitto.port)
    results: list[dict[str, Any]] = []
    async with asyncio.TaskGroup() as tg, sink:
        watch = tg.create_task(collector.run())
        await asyncio.wait_for(collector.connected.wait(), 10)
        processor = tg.create_task(commands.run())
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="meldkamer-test") as client:
            await client.subscribe(results_topic(SITE), qos=1)
            reader = tg.create_task(_collect(client, results))
            await wait_until(commands.subscribed.is_set, 10)
            await accept(sink, 6)
            await wait_until(lambda: sink.stats.published_seq == 6, 10)

            async def ask(command_id: str, first: int, last: int | None) -> dict[str, Any]:
                now = datetime.now(UTC)
                doc = {
                    "schema": "gcmk.replay.v1",
                    "command_id": command_id,
                    "from_seq": first,
                    "to_seq": last,
                    "issued_at": now.isoformat(),
                    "expires_at": (now + timedelta(seconds=30)).isoformat(),
                    "operator": "meldkamer",
                }
                await client.publish(commands_topic(SITE), json.dumps(doc), qos=1)
                return await wait_until(lambda: next((r for r in results if r["command_id"] == command_id), None), 10)

            served = await ask("r-1", 2, 4)
            assert (served["status"], served["first_seq"], served["last_seq"]) == ("executed", 2, 4)
            replayed = lambda: sorted(e["seq"] for e in collector.events() if e.get("redelivered"))  # noqa: E731
            await wait_until(lambda: {2, 3, 4} <= set(replayed()), 10, what="replayed events")
            beyond = await ask("r-2", 100, None)
            assert (beyond["status"], beyond["reason"]) == ("refused", "beyond_last_seq")
            again = await ask("r-1", 2, 4)  # the same command_id: its stored result, nothing re-sent twice
            assert again.get("replay") is True or again["status"] == "executed"
            reader.cancel()
        processor.cancel()
        watch.cancel()


async def _collect(client: aiomqtt.Client, into: list[dict[str, Any]]) -> None:
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        doc = json.loads(message.payload)
        if doc.get("status") != "accepted":
            into.append(doc)
