"""Operator metrics end to end: a real gateway polling the Modbus simulator, scraped over HTTP.

The counters must move as an alarm is raised and a device goes silent, the exposition must pass
`promtool check metrics`, and with the delivery sink /readyz must follow the MQTT link.
"""

from __future__ import annotations

import asyncio
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from adapters.modbus import ModbusAdapter, PollTuning
from gateway import __version__
from gateway.app.service import Gateway
from gateway.core.histogram import Buckets
from gateway.core.normaliser import Normaliser, NormaliserStats
from gateway.core.ports import EventSink
from gateway.delivery.sink import DeliverySink
from gateway.delivery.stats import DeliveryStats, PathStats
from gateway.domain.event import Event, utcnow
from gateway.ops.metrics import GatewayCollector, Sources
from gateway.testing import CollectingSink
from simulators.control import Fault
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.metrics import StaticDevices
from tests.support.modbus_site import device, point, site_doc, site_of, with_overlay
from tests.support.mosquitto import Mosquitto, mosquitto
from tests.support.promtool import promtool

__all__ = ["mosquitto"]  # the fixture

HOST = "127.0.0.1"


# --- scraping ------------------------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Scrape:
    status: int
    body: str

    @property
    def samples(self) -> Samples:
        out: Samples = {}
        for family in text_string_to_metric_families(self.body):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample of `name` whose labels include `labels`; None if there is none."""
        want = set(labels.items())
        found = [v for (n, ls), v in self.samples.items() if n == name and want <= ls]
        assert len(found) <= 1, f"{name}{labels} is ambiguous: {found}"
        return found[0] if found else None


def _get(port: int, path: str) -> Scrape:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as response:
            return Scrape(response.status, response.read().decode())
    except urllib.error.HTTPError as error:
        return Scrape(error.code, error.read().decode())


async def get(port: int, path: str = "/metrics") -> Scrape:
    return await asyncio.to_thread(_get, port, path)


async def scrape_until(
    port: int, predicate: Callable[[Scrape], bool], path: str = "/metrics", within: float = 20.0
) -> Scrape:
    """Scrape until `predicate` holds (metrics have no change notification); fail after `within` s."""
    last: Scrape | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = await get(port, path)
                if predicate(last):
                    return last
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"condition not met within {within}s; last scrape:\n{last and last.body}") from None


@asynccontextmanager
async def running(gateway: Gateway) -> AsyncIterator[int]:
    """Run the gateway in a TaskGroup; yields the operator port; stops it cleanly afterwards."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gateway.run())
        async with asyncio.timeout(10):
            await gateway.started.wait()
            assert gateway.operator is not None
        assert gateway.operator_port
        try:
            yield gateway.operator_port
        finally:
            gateway.stop()


# --- a small Modbus building -----------------------------------------------------------------------------------


def _doc(**site: Any) -> dict[str, Any]:
    doc = site_doc(
        [device("panel", poll_interval=0.1, timeout=0.08, offline_after_failures=3)],
        [
            point("pir-1", "panel", "holding", 100, bit=0),
            point("tamper", "panel", "coil", 0, type="tamper"),
        ],
    )
    doc["metrics"] = {"listen": HOST, "port": 0}
    doc["delivery"] = {"confirm": "broker"}  # no confirming receiver here: the PUBACK delivers
    doc.update(site)
    return doc


def _check_metrics(body: str) -> None:
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=body.encode(), capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


async def test_counters_move_as_an_alarm_is_raised_and_a_device_goes_silent() -> None:
    doc = _doc()
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        site = with_overlay(doc, sim.overlay())
        sink = CollectingSink()
        adapter = ModbusAdapter(site, tuning=PollTuning(backoff_cap=0.3))
        gateway = Gateway(site, sink, [adapter], config_hash="0123abcd")
        async with running(gateway) as port:
            labels = {"site": "modbus-test", "device": "panel", "protocol": "modbus"}
            quiet = await scrape_until(
                port,
                lambda s: (
                    s.value("gcmk_device_up", **labels) == 1
                    and (s.value("gcmk_device_polls_total", **labels) or 0) >= 2
                ),
            )
            assert quiet.value("gcmk_events_received_total", type="burglary") is None  # a quiet building
            assert quiet.value("gcmk_config_info", site="modbus-test", config_hash="0123abcd") == 1
            assert quiet.value("gcmk_build_info", version=__version__) == 1
            assert quiet.value("gcmk_component_restarts_total", component="modbus") == 0

            await sim.raise_alarm("pir-1")
            await sink.wait_for(lambda ev: _has(ev, "pir-1", "alarm"))
            alarm = await get(port)
            received = {"site": "modbus-test", "device": "panel", "category": "intrusion", "type": "burglary"}
            assert alarm.value("gcmk_events_received_total", **received) == 1
            assert alarm.value("gcmk_events_accepted_total") == 1
            assert (alarm.value("gcmk_readings_total") or 0) > (quiet.value("gcmk_readings_total") or 0)
            polls = alarm.value("gcmk_device_poll_duration_seconds_count", **labels) or 0
            assert polls >= 2
            assert alarm.value("gcmk_device_poll_duration_seconds_bucket", le="+Inf", **labels) == polls
            contact = alarm.value("gcmk_device_last_contact_timestamp_seconds", **labels)
            assert contact is not None and abs(contact - utcnow().timestamp()) < 30

            await sim.inject("panel", Fault("silent"))
            await sink.wait_for(lambda ev: _has(ev, "panel", "alarm", "comm_loss"))
            down = await get(port)
            assert down.value("gcmk_device_up", **labels) == 0
            assert (down.value("gcmk_device_errors_total", error="DeviceTimeout", **labels) or 0) >= 3
            lost = {"site": "modbus-test", "device": "panel", "category": "supervision", "type": "comm_loss"}
            assert down.value("gcmk_events_received_total", **lost) == 1
            assert down.value("gcmk_events_accepted_total") == 2
            assert (down.value("gcmk_device_polls_total", **labels) or 0) > (
                alarm.value("gcmk_device_polls_total", **labels) or 0
            )

            assert (await get(port, "/healthz")).status == 200
            ready = await get(port, "/readyz")
            assert (ready.status, ready.body.strip()) == (200, "gateway: running")
            head = await get(port, "/nope")
            assert head.status == 404
        _check_metrics(down.body)
    finally:
        await sim.stop()


def _has(events: list[Event], point_id: str, state: str, type_: str | None = None) -> bool:
    return any(
        e.point.id == point_id and e.state.value == state and (type_ is None or e.type.value == type_) for e in events
    )


async def test_readyz_follows_the_mqtt_link_and_delivery_counters_move(tmp_path: Path, mosquitto: Mosquitto) -> None:


    doc = _doc(
        mqtt={"url": mosquitto.url, "insecure": True},
        journal={"data_dir": str(tmp_path / "journal")},
        supervision={"heartbeat_interval": 0.2},
    )
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        site = with_overlay(doc, sim.overlay())
        normaliser = Normaliser(site, epoch=utcnow())
        delivery = DeliverySink(site, config_hash="feed", version=__version__, devices=normaliser.devices_online)
        sink = delivery
        adapter = ModbusAdapter(site, tuning=PollTuning(backoff_cap=0.3))
        gateway = Gateway(
            site, sink, [adapter], normaliser=normaliser, delivery=delivery.stats, config_hash="feed"
        )
        async with running(gateway) as port:
            ready = await scrape_until(port, lambda s: s.status == 200, path="/readyz")
            assert "mqtt connected" in ready.body
            await sim.raise_alarm("pir-1")
            up = await scrape_until(port, lambda s: (s.value("gcmk_events_published_total") or 0) >= 1)
            assert up.value("gcmk_events_journaled_total") == 1
            assert up.value("gcmk_mqtt_connected") == 1
            assert up.value("gcmk_mqtt_tls_disabled") == 1
            assert up.value("gcmk_event_delivery_latency_seconds_count") == 1
            assert up.value("gcmk_events_shed_total") == 0
            await scrape_until(port, lambda s: (s.value("gcmk_mqtt_heartbeats_total") or 0) >= 2)

            mosquitto.stop()
            not_ready = await scrape_until(port, lambda s: s.status == 503, path="/readyz")
            assert "mqtt not connected" in not_ready.body
            down = await get(port)
            assert down.value("gcmk_mqtt_connected") == 0
            await sim.raise_alarm("tamper")  # journaled while the broker is away
            await scrape_until(port, lambda s: (s.value("gcmk_journal_depth") or 0) >= 1)

            mosquitto.start()
            back = await scrape_until(
                port,
                lambda s: (s.value("gcmk_mqtt_reconnects_total") or 0) >= 1 and s.value("gcmk_journal_depth") == 0,
                within=30,
            )
            assert (back.value("gcmk_events_published_total") or 0) >= 2
            assert back.value("gcmk_event_delivery_latency_seconds_count") == back.value("gcmk_events_published_total")
            assert (await get(port, "/readyz")).status == 200
        _check_metrics(back.body)
    finally:
        await sim.stop()


# --- histogram building blocks ---------------------------------------------------------------------------------


def test_buckets_are_cumulative_and_end_with_inf() -> None:
    buckets = Buckets((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        buckets.observe(value)
    assert buckets.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert buckets.count == 4
    assert abs(buckets.sum - 3.65) < 1e-9
    with pytest.raises(ValueError):
        Buckets((1.0, 0.5))


def test_delivery_latency_buckets_count_every_sample_beyond_the_deque() -> None:
    stats = DeliveryStats()
    for _ in range(12_000):  # more than the deque of recent samples keeps
        stats.observe_latency(0.02)
    stats.observe_latency(400.0)
    assert len(stats.latency) == 10_000
    assert stats.latency_buckets.count == 12_001
    cumulative = dict(stats.latency_buckets.cumulative())
    assert cumulative["0.025"] == 12_000 and cumulative["300.0"] == 12_000 and cumulative["+Inf"] == 12_001


# --- readiness and the oldest-undelivered age, without servers ---------------------------------------------


def _gateway(sink: EventSink, data_dir: Path) -> Gateway:
    site = site_of(_doc(journal={"data_dir": str(data_dir)}))
    gateway = Gateway(site, sink, [])
    gateway.started.set()
    return gateway


async def test_readiness_needs_mqtt_connected_and_a_writable_journal(tmp_path: Path) -> None:
    site = site_of(_doc(journal={"data_dir": str(tmp_path)}))
    sink = DeliverySink(site, config_hash="h", version="v")
    gateway = _gateway(sink, tmp_path)
    ready = gateway.endpoints(["sink"]).readyz
    sink.stats.last_error = "ConnectionRefusedError: [Errno 111]"
    assert ready().status == 503
    assert ready().body == b"sink: mqtt not connected: ConnectionRefusedError: [Errno 111]\n"
    sink.stats.connected = True
    assert ready().body == b"sink: journal not writable\n"  # not opened yet
    await sink.load_state()  # opens the journal
    assert ready().status == 200
    assert ready().body == b"gateway: running; sink: mqtt connected, journal writable\n"
    gateway.stop()
    assert ready().body == b"gateway: stopping\n"
    await sink.close()
    assert ready().body == b"gateway: stopping; sink: journal not writable\n"


def test_readiness_of_a_sink_without_health_is_the_gateway_s(tmp_path: Path) -> None:
    gateway = _gateway(CollectingSink(), tmp_path)
    ready = gateway.endpoints([]).readyz
    assert (ready().status, ready().body) == (200, b"gateway: running\n")
    gateway.started.clear()
    assert (ready().status, ready().body) == (503, b"gateway: starting\n")


def test_oldest_undelivered_age_keeps_growing_while_the_sink_cannot_refresh_it(tmp_path: Path) -> None:
    now = [1000.0]
    stats = DeliveryStats(journal_depth=3, oldest_undelivered_age=5.0)
    site = site_of(_doc())
    collector = GatewayCollector(Sources(site, "h", NormaliserStats(), delivery=stats), clock=lambda: now[0])

    def age() -> float | None:
        registry = CollectorRegistry()
        registry.register(collector)
        return registry.get_sample_value("gcmk_journal_oldest_undelivered_age_seconds", {"site": "modbus-test"})

    assert age() == 5.0
    now[0] += 70  # broker away: no heartbeat refreshes the value
    assert age() == 75.0
    stats.oldest_undelivered_age = 2.0  # refreshed by a heartbeat after delivery of the older ones
    assert age() == 2.0
    stats.journal_depth = 0
    assert age() == 0.0


def test_histograms_come_from_the_owners_buckets_once_they_keep_them() -> None:
    """The stats owners' `poll_duration_buckets` / `latency_buckets` (gateway.core.histogram.Buckets), observed on
    every sample, are what the exporter reads, not the deques of recent samples."""
    from adapters.modbus.stats import DeviceStats

    site = site_of(_doc())
    poll = DeviceStats("panel", polls=1)
    poll.poll_durations.append(0.3)  # what the deque says ...
    poll.poll_duration_buckets = Buckets((0.1, 1.0))
    poll.poll_duration_buckets.observe(0.05)  # ... loses to the owner's buckets
    delivery = DeliveryStats(published=1)
    delivery.latency.append(9.0)
    delivery.latency_buckets = Buckets((1.0,))
    delivery.latency_buckets.observe(0.5)
    registry = CollectorRegistry()
    registry.register(
        GatewayCollector(
            Sources(
                site,
                "h",
                NormaliserStats(),
                adapters=[StaticDevices("modbus", {"panel": poll.snapshot()})],
                delivery=delivery,
            )
        )
    )
    labels = {"site": "modbus-test", "device": "panel", "protocol": "modbus"}
    assert registry.get_sample_value("gcmk_device_poll_duration_seconds_bucket", {**labels, "le": "0.1"}) == 1
    assert registry.get_sample_value("gcmk_device_poll_duration_seconds_sum", labels) == 0.05
    assert registry.get_sample_value("gcmk_event_delivery_latency_seconds_sum", {"site": "modbus-test"}) == 0.5


def test_dc09_replies_ignored_are_counted_by_reason(tmp_path: Path) -> None:
    """A reply not taken as the receiver's answer (malformed, another seq or account, a plain ACK on an encrypted
    path) is counted per receiver and reason: a spoofed or misrouted ACK shows on the dashboard."""
    path = PathStats("dc09:ats", "ats", replies_ignored={"unencrypted_ack": 2, "crc": 1})
    registry = CollectorRegistry()
    registry.register(GatewayCollector(Sources(site_of(_doc()), "h", NormaliserStats(), paths=[path])))

    def ignored(reason: str) -> float | None:
        labels = {"site": "modbus-test", "receiver": "ats", "reason": reason}
        return registry.get_sample_value("gcmk_dc09_replies_ignored_total", labels)

    assert (ignored("unencrypted_ack"), ignored("crc"), ignored("stale")) == (2.0, 1.0, None)
