"""DeliverySink against a real Mosquitto the tests start themselves: order, outage, status, heartbeat, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import re
import socket
import ssl
import stat
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.app.service import Gateway
from gateway.app.wiring import build_commands
from gateway.config.models import SiteConfig
from gateway.delivery.journal import Journal, JournalError
from gateway.delivery.publisher import Publisher
from gateway.delivery.sink import DeliverySink, journal_path
from gateway.domain.errors import DeliveryError
from gateway.domain.state import Batch
from gateway.domain.taxonomy import EventState, EventType
from gateway.testing import wait_until
from tests.support.delivery_harness import SITE, Collector, make_event, point_state, site_config
from tests.support.mosquitto import Mosquitto, mosquitto, tls_files

__all__ = ["mosquitto"]  # the fixture


@contextlib.asynccontextmanager
async def running(*, sink: DeliverySink | None = None, collector: Collector | None = None) -> AsyncIterator[None]:
    """Runs a collector and/or a sink in a task group; closes the sink cleanly on exit."""
    async with asyncio.TaskGroup() as tg:
        tasks = []
        if collector is not None:
            tasks.append(tg.create_task(collector.run()))
            await asyncio.wait_for(collector.connected.wait(), 10)
        if sink is not None:
            await sink.load_state()
            run = tg.create_task(sink.run())
        try:
            yield
        finally:
            if sink is not None:
                await sink.close()
                await asyncio.wait_for(run, 10)
            for task in tasks:
                task.cancel()


def sink_for(site: SiteConfig, **kwargs: Any) -> DeliverySink:
    return DeliverySink(site, config_hash="cafe", version="1.2.3", devices=lambda: (3, 4), **kwargs)


async def test_10000_events_arrive_once_in_seq_order(tmp_path: Path, mosquitto: Mosquitto) -> None:
    site = site_config(tmp_path / "journal", mosquitto.url)
    sink = sink_for(site)
    collector = Collector(mosquitto.port)
    n = 10_000
    async with running(sink=sink, collector=collector):

        async def produce(k: int) -> None:  # 20 concurrent producers, as many adapters would be
            for i in range(k, n, 20):
                await sink.accept(Batch(events=(make_event(i),)))

        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            for k in range(20):
                tg.create_task(produce(k))
        await collector.wait_for(lambda: len(collector.events()) >= n, 60)
        elapsed = time.monotonic() - started
        assert sink.stats.commits < n / 2, "group commit: many events share one transaction"
    events = collector.events()
    assert [e["seq"] for e in events] == list(range(1, n + 1))
    assert len({e["event_id"] for e in events}) == n
    assert sum(e["buffered"] for e in events) < n / 10, "live events are not flagged buffered"
    first = next(m for m in collector.messages if "/events/" in m.topic)
    assert first.topic == f"gcmk/v1/{SITE}/events/technical" and not first.retain
    assert first.properties.ContentType == "application/json"
    assert ("schema", "gcmk.event.v1") in first.properties.UserProperty
    assert sink.stats.published == n and sink.stats.protocol == "5" and sink.stats.insecure
    print(f"10,000 events in {elapsed:.1f}s, {sink.stats.commits} commits")


async def test_broker_outage_buffers_and_delivers_everything(tmp_path: Path, mosquitto: Mosquitto) -> None:
    site = site_config(tmp_path / "journal", mosquitto.url)
    sink = sink_for(site)
    collector = Collector(mosquitto.port)
    produced: list[int] = []
    outage: dict[str, float] = {}
    async with running(sink=sink, collector=collector):
        stop = asyncio.Event()

        async def produce() -> None:  # ~200 events/s throughout
            n = 0
            while not stop.is_set():
                done = await sink.accept(Batch(events=tuple(make_event(n + i) for i in range(4))))
                produced.extend(e.seq or 0 for e in done)
                n += 4
                await asyncio.sleep(0.02)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce())
            await wait_until(lambda: len(collector.events()) > 200, 20, what="live delivery")
            mosquitto.stop()
            outage["start"] = time.time()
            await wait_until(lambda: not sink.stats.connected, 10, what="link down")
            await asyncio.sleep(8.0)  # the outage itself: events keep coming for ~10 s
            fire = await sink.accept(Batch(events=(make_event(-1, EventType.FIRE, EventState.ALARM),)))
            await asyncio.sleep(2.0)
            mosquitto.start()
            outage["end"] = time.time()
            await wait_until(lambda: sink.stats.connected, 20, what="reconnect")
            stop.set()
        last = max(produced)
        await collector.wait_for(lambda: {e["seq"] for e in collector.events()} >= set(range(1, last + 1)), 60)
        live = await sink.accept(Batch(events=tuple(make_event(i) for i in range(20))))
        await collector.wait_for(lambda: {e["seq"] for e in collector.events()} >= {e.seq for e in live}, 20)
    events = collector.events()
    by_seq: dict[int, set[str]] = defaultdict(set)
    for e in events:
        by_seq[e["seq"]].add(e["event_id"])
    assert set(by_seq) == set(range(1, last + 21)), "every seq arrives"
    assert all(len(ids) == 1 for ids in by_seq.values()), "duplicates only with the same event_id"
    journal = sink._journal  # the sink is closed: read its journal file directly
    journal.open()
    assert journal.read_undelivered(1, 10**6) == []
    rows = journal.db.execute("SELECT seq, link_down, journaled_at FROM events").fetchall()
    journal.close()
    # held back > 2 s: journaled after the link dropped and more than 2 s before the broker came back
    delayed = {seq for seq, _down, at in rows if outage["start"] + 1 < at < outage["end"] - 2.1}
    assert len(delayed) > 300
    flagged = {e["seq"] for e in events if e["buffered"]}
    assert delayed <= flagged, "events held back during the outage are flagged buffered"
    assert not flagged & {e.seq for e in live}, "live events on a healthy link are not flagged"
    # The fire alarm raised during the outage overtook the backlog once the link was back.
    order = [e["seq"] for e in events]
    fire_seq = fire[0].seq
    assert order.index(fire_seq) < order.index(max(delayed - {fire_seq})), "urgent alarm before the backlog end"
    assert sink.stats.reconnects >= 1


async def test_status_online_offline_and_heartbeats(tmp_path: Path, mosquitto: Mosquitto) -> None:
    site = site_config(tmp_path / "journal", mosquitto.url, supervision={"heartbeat_interval": "500ms"})
    sink = sink_for(site)
    collector = Collector(mosquitto.port)
    async with running(sink=sink, collector=collector):
        await sink.accept(Batch(events=(make_event(1),), points=(point_state("pir-01", "burglary", 1),)))
        await collector.wait_for(lambda: len(collector.on("/heartbeat")) >= 6, 20)
        online = collector.on("/status")[0].json()
        assert online["status"] == "online" and online["version"] == "1.2.3" and online["config_hash"] == "cafe"
        state = collector.on("/state/pir-01")[0]
        assert state.json()["condition"] == "burglary" and state.json()["in_alarm"]
    beats = collector.on("/heartbeat")
    gaps = [b.at - a.at for a, b in itertools.pairwise(beats[1:])]
    assert 0.3 < sum(gaps) / len(gaps) < 0.9, gaps
    beat = beats[-1].json()
    assert beat["last_seq"] == 1 and beat["journal_depth"] == 0 and beat["oldest_undelivered_age"] is None
    assert (beat["devices_online"], beat["devices_total"]) == (3, 4)
    assert (beat["inputs_ok"], beat["journal_ok"]) == (True, True)
    assert beats[-1].properties.MessageExpiryInterval > 0
    assert collector.on("/status")[-1].json()["status"] == "offline"
    # A meldkamer connecting later sees the retained documents at once.
    late = Collector(mosquitto.port, identifier="late")
    async with running(collector=late):
        await late.wait_for(lambda: bool(late.on("/status")) and bool(late.on("/state/pir-01")), 10)
    status = late.on("/status")[0]
    assert status.retain and status.json()["status"] == "offline" and status.json()["reason"] == "shutdown"
    assert late.on("/state/pir-01")[0].retain


async def test_a_failed_session_leaves_with_the_will_and_reconnects(tmp_path: Path, mosquitto: Mosquitto) -> None:
    site = site_config(tmp_path / "journal", mosquitto.url, supervision={"heartbeat_interval": "200ms"})
    beats = 0

    def flaky_publisher(*args: Any, heartbeat: Callable[[], Awaitable[Any]], **kwargs: Any) -> Publisher:
        async def flaky() -> Any:  # the third heartbeat fails as a dead link would
            nonlocal beats
            beats += 1
            if beats == 3:
                raise DeliveryError("simulated link failure")
            return await heartbeat()

        return Publisher(*args, heartbeat=flaky, **kwargs)

    sink = sink_for(site, publisher=flaky_publisher)
    collector = Collector(mosquitto.port)
    async with running(sink=sink, collector=collector):
        await collector.wait_for(lambda: len(collector.on("/status")) >= 3, 20)
    statuses = [(m.json()["status"], m.json()["reason"]) for m in collector.on("/status")]
    assert statuses[:3] == [("online", "connected"), ("offline", "connection lost"), ("online", "connected")]
    assert sink.stats.reconnects == 1


async def test_restart_republishes_undelivered_with_the_same_event_id(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    site = site_config(tmp_path / "journal", broker.url)
    sink = sink_for(site, close_grace=0.5)
    async with running(sink=sink):  # no broker yet: everything waits in the journal
        done = await sink.accept(
            Batch(events=tuple(make_event(i) for i in range(50)), points=(point_state("pir-01", "burglary", 1),))
        )
    ids = {e.seq: str(e.event_id) for e in done}
    with broker:
        collector = Collector(broker.port)
        async with running(sink=sink_for(site), collector=collector):
            await collector.wait_for(lambda: len(collector.events()) >= 50 and bool(collector.on("/state/pir-01")), 20)
    assert {e["seq"]: e["event_id"] for e in collector.events()} == ids
    state = collector.on("/state/pir-01")[0]  # the point state journaled before the restart
    assert state.json()["condition"] == "burglary" and state.json()["as_of_seq"] == 50


async def test_disk_bound_shedding_is_announced_to_the_meldkamer(tmp_path: Path, mosquitto: Mosquitto) -> None:
    site = site_config(tmp_path / "journal", mosquitto.url, journal={"max_bytes": 1 << 20})
    broker_down = Mosquitto(tmp_path / "nowhere")  # never started: the link stays down, the journal fills
    offline = sink_for(site_config(tmp_path / "journal", broker_down.url, journal={"max_bytes": 1 << 20}))
    async with running(sink=offline):
        for i in range(1000):
            await offline.accept(Batch(events=tuple(
                make_event(i, t, s) for t, s in ((EventType.ACCESS_GRANTED, EventState.INFO),
                                                 (EventType.BURGLARY, EventState.ALARM))
            )))
        assert offline.stats.shed > 0
    collector = Collector(mosquitto.port)
    async with running(sink=sink_for(site), collector=collector):
        # the backlog drains in seq order: the announcement can arrive before the last alarms
        await collector.wait_for(
            lambda: any(e["type"] == "info_shed" for e in collector.events())
            and sum(e["type"] == "burglary" for e in collector.events()) >= 1000,
            30,
        )
    shed = next(e for e in collector.events() if e["type"] == "info_shed")
    assert shed["category"] == "supervision" and shed["state"] == "alarm" and "tenant" not in shed
    burglaries = [e for e in collector.events() if e["type"] == "burglary"]
    assert len(burglaries) == 1000, "alarms are never shed"


def _tls_site(tmp_path: Path, broker: Mosquitto, ca: Path, client: tuple[Path, Path] | None) -> SiteConfig:
    tls: dict[str, Any] = {"ca_file": str(ca)}
    if client is not None:
        tls |= {"cert_file": str(client[0]), "key_file": str(client[1])}
    return site_config(tmp_path / "journal", f"mqtts://127.0.0.1:{broker.port}", tls=tls)


async def test_mutual_tls_delivers(tmp_path: Path) -> None:
    broker_tls, ca, client = tls_files(tmp_path / "tls")
    with Mosquitto(tmp_path / "broker", tls=dataclasses.replace(broker_tls, require_certificate=True)) as broker:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(client[0]), str(client[1]))
        collector = Collector(broker.port, tls=context)
        sink = sink_for(_tls_site(tmp_path, broker, ca, client))
        async with running(sink=sink, collector=collector):
            await sink.accept(Batch(events=(make_event(1),)))
            await collector.wait_for(lambda: len(collector.events()) == 1, 10)
        assert not sink.stats.insecure


async def test_tls_wrong_ca_or_plain_listener_never_connects(tmp_path: Path) -> None:
    broker_tls, _ca, _client = tls_files(tmp_path / "tls")
    _other, wrong_ca, _ = tls_files(tmp_path / "other")
    with Mosquitto(tmp_path / "broker", tls=broker_tls) as broker:
        sink = sink_for(_tls_site(tmp_path / "a", broker, wrong_ca, None), close_grace=0.2)
        async with running(sink=sink):
            await wait_until(lambda: sink.stats.connect_errors >= 2, 20, what="repeated connect errors")
            assert not sink.stats.connected and sink.stats.connects == 0
            assert "certificate verify failed" in sink.stats.last_error
    # mqtts:// pointed at a plain listener: the TLS handshake fails; no plain-text fallback ever
    with Mosquitto(tmp_path / "plain") as plain:
        spy = Collector(plain.port)
        site = site_config(tmp_path / "b", f"mqtts://127.0.0.1:{plain.port}", tls={"ca_file": str(wrong_ca)})
        sink = sink_for(site, close_grace=0.2)
        async with running(sink=sink, collector=spy):
            await sink.accept(Batch(events=(make_event(1),)))
            await wait_until(lambda: sink.stats.connect_errors >= 2, 20, what="repeated connect errors")
            assert sink.stats.connects == 0 and not spy.messages


async def test_username_and_password_from_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Mosquitto(tmp_path / "broker", users={"gw": "s3cret", "meldkamer": "m"}) as broker:
        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret\n")
        collector = Collector(broker.port, login={"username": "meldkamer", "password": "m"})
        sink = sink_for(site_config(tmp_path / "a", broker.url, username="gw", password_file=str(secret)))
        async with running(sink=sink, collector=collector):
            await sink.accept(Batch(events=(make_event(1),)))
            await collector.wait_for(lambda: len(collector.events()) == 1, 10)
        monkeypatch.setenv("GCMK_TEST_MQTT_PASSWORD", "wrong")
        sink = sink_for(
            site_config(tmp_path / "b", broker.url, username="gw", password_env="GCMK_TEST_MQTT_PASSWORD"),
            close_grace=0.2,
        )
        async with running(sink=sink):
            await wait_until(lambda: sink.stats.connect_errors >= 1, 20, what="refused login")
            assert sink.stats.connects == 0 and "authori" in sink.stats.last_error.lower()


async def test_mqtt_311_fallback_with_the_demo_broker(tmp_path: Path) -> None:
    from amqtt.broker import Broker

    from tests.support.mosquitto import free_port

    port = free_port()
    broker = Broker(
        {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}}, "auth": {"allow-anonymous": True}}
    )
    await broker.start()
    try:
        collector = Collector(port, v5=False)
        sink = sink_for(site_config(tmp_path / "journal", f"mqtt://127.0.0.1:{port}"))
        async with running(sink=sink, collector=collector):
            await sink.accept(Batch(events=(make_event(1),)))
            await collector.wait_for(lambda: len(collector.events()) == 1, 20)
        assert sink.stats.protocol == "3.1.1"
    finally:
        await broker.shutdown()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_forced_protocol(tmp_path: Path, mosquitto: Mosquitto, protocol: str) -> None:
    collector = Collector(mosquitto.port)
    sink = sink_for(site_config(tmp_path / "journal", mosquitto.url, protocol=protocol))
    async with running(sink=sink, collector=collector):
        await sink.accept(Batch(events=(make_event(1),)))
        await collector.wait_for(lambda: len(collector.events()) == 1, 10)
    assert sink.stats.protocol == protocol


async def test_latency_is_measured_from_detection_to_puback(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """End to end: an event detected 3 s before it reaches the sink shows >= 3 s, in the deque and in the
    cumulative buckets that /metrics exports."""
    sink = sink_for(site_config(tmp_path / "journal", mosquitto.url))
    async with running(sink=sink):
        detected = datetime.now(UTC) - timedelta(seconds=3)
        late = [make_event(i).model_copy(update={"detected_at": detected}) for i in range(5)]
        await sink.accept(Batch(events=tuple(late)))
        await wait_until(lambda: sink.stats.published >= 5, 20, what="PUBACKs")
        assert sink.stats.latency_buckets.count == 5 == len(sink.stats.latency)
        assert min(sink.stats.latency) >= 3.0, "from detected_at, not from the hand-off to the sink"
        assert sink.stats.latency_buckets.sum >= 15.0
        assert dict(sink.stats.latency_buckets.cumulative())["2.5"] == 0


async def test_journal_writable_turns_false_on_a_failed_commit_and_when_closed(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = sink_for(site_config(tmp_path / "journal", mosquitto.url))
    async with running(sink=sink):
        await sink.accept(Batch(events=(make_event(1),)))
        assert sink.journal_writable

        def disk_full(plan: Any) -> None:
            raise JournalError("journal commit failed: database or disk is full")

        with monkeypatch.context() as patch:
            patch.setattr(sink._journal, "write", disk_full)
            with pytest.raises(JournalError):
                await sink.accept(Batch(events=(make_event(2),)))
            assert not sink.journal_writable
        await sink.accept(Batch(events=(make_event(3),)))
        assert sink.journal_writable, "writable again once a commit succeeds"
    assert not sink.journal_writable, "closed"


def _tcp_nodelay_of_connections_to(port: int) -> dict[int, int]:
    """This process's TCP connections to 127.0.0.1:`port`, read from the kernel (a duplicate of each open file
    descriptor), not through the MQTT library: {local port: the socket's TCP_NODELAY option}."""
    found: dict[int, int] = {}
    for name in os.listdir("/dev/fd"):
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # the descriptor listdir itself used, closed by now
            continue
        with sock:
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                continue
            try:
                peer = sock.getpeername()
            except OSError:  # not connected (a listener)
                continue
            if peer == ("127.0.0.1", port):
                found[sock.getsockname()[1]] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    return found


def _client_ports(broker: Mosquitto) -> dict[str, int]:
    """{client id: its local port} of the latest connection of each client, from the broker's log."""
    pattern = r"New client connected from 127\.0\.0\.1:(\d+) as (\S+) "
    return {client: int(port) for port, client in re.findall(pattern, broker.log_file.read_text())}


async def test_the_gateway_mqtt_connections_have_tcp_nodelay(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """paho leaves Nagle on; with it a small PUBLISH can wait ~40 ms for the ACK of the previous one. Both MQTT
    connections of a gateway, the publisher's and the command processor's, must set TCP_NODELAY (the broker's own
    `set_tcp_nodelay` does nothing for the gateway's side). The broker's log names the client of each local port."""
    site = site_config(tmp_path / "journal", mosquitto.url)
    site = site.model_copy(update={"commands": site.commands.model_copy(update={"enabled": True}),
                                   "metrics": site.metrics.model_copy(update={"port": 0})})
    sink = sink_for(site)
    commands = build_commands(site, [], sink)
    assert commands is not None
    gateway = Gateway(site, sink, [], commands=commands)
    publisher_id, processor_id = site.client_id, f"{site.client_id}-cmd"

    def connections() -> dict[str, int] | None:
        ports, nodelay = _client_ports(mosquitto), _tcp_nodelay_of_connections_to(mosquitto.port)
        clients = (publisher_id, processor_id)
        if not all(client in ports and ports[client] in nodelay for client in clients):
            return None
        return {client: nodelay[ports[client]] for client in clients}

    async with asyncio.TaskGroup() as tg:
        tg.create_task(gateway.run())
        try:
            await asyncio.wait_for(commands.subscribed.wait(), 10)
            await wait_until(lambda: sink.stats.connected, 10, what="publisher connected")
            seen = await wait_until(connections, 10, what="both gateway connections in the broker log and open here")
        finally:
            gateway.stop()
    assert seen == {publisher_id: 1, processor_id: 1}, "TCP_NODELAY of the gateway's sockets (0 = Nagle on)"


async def test_puback_marks_taken_by_a_cancelled_marker_still_reach_the_journal(tmp_path: Path) -> None:
    """At shutdown the marker task is cancelled; if its write was still queued behind another job on the
    journal's thread, cancelling it used to drop marks already taken from the outbox."""
    written: list[list[int]] = []

    class RecordingJournal(Journal):  # the real journal, recording what reaches it
        def mark_delivered(self, seqs: Sequence[int], now: float) -> int:
            written.append(list(seqs))
            return super().mark_delivered(seqs, now)

    site = site_config(tmp_path / "journal", "mqtt://127.0.0.1:1")
    executor = ThreadPoolExecutor(max_workers=1)
    journal = RecordingJournal(journal_path(site), site=site.site.id, max_bytes=10**9, retention=3600.0)
    sink = sink_for(site, journal=journal, executor=executor)
    await sink.load_state()  # opens the journal
    sink.outbox.marks.append(7)  # a PUBACKed event waiting to be marked
    busy = executor.submit(time.sleep, 0.3)  # the journal thread is busy (e.g. a commit)
    marker = asyncio.create_task(sink._flush_marks())
    await asyncio.sleep(0)  # the marker takes the mark and queues its write
    assert sink.outbox.marks == []
    marker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await marker
    await asyncio.wrap_future(busy)
    await asyncio.get_running_loop().run_in_executor(executor, lambda: None)  # after the queued jobs
    executor.shutdown(wait=True)
    assert written == [[7]]
