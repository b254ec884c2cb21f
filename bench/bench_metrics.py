"""Benchmark: cost of one /metrics scrape, which runs synchronously on the gateway's event loop.

A building of N Modbus devices (default 50) with filled stats: errors of 3 classes, events of 3 types per
device, 15 new poll-duration samples per device between scrapes (1 s polling, 15 s scrape interval), the
delivery stats with 150 new latency samples. Two phases in one run:
  1. baseline: the same series held in prometheus_client's own instrumented metrics (Counter, Gauge,
     Histogram with labels) on a registry, rendered by generate_latest;
  2. GatewayCollector computing everything from the stats objects at scrape time, rendered the same way.
Reported: median and p99 per scrape, the ratio to the baseline, and the number of series.

    .venv/bin/python bench/bench_metrics.py
    .venv/bin/python bench/bench_metrics.py --devices 200 --scrapes 500
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client import Counter as PCounter
from prometheus_client import Gauge as PGauge
from prometheus_client import Histogram as PHistogram

from adapters.modbus.stats import DeviceStats
from gateway.config.models import SiteConfig
from gateway.core.histogram import LATENCY_BUCKETS, POLL_BUCKETS
from gateway.core.normaliser import NormaliserStats
from gateway.core.ports import DeviceSnapshot
from gateway.delivery.stats import DeliveryStats
from gateway.ops.metrics import GatewayCollector, Sources

ERRORS = ("DeviceTimeout", "DeviceRejected", "MalformedReply")
TYPES = (("intrusion", "burglary"), ("tamper", "tamper"), ("supervision", "comm_loss"))


def site(devices: int) -> SiteConfig:
    doc: dict[str, Any] = {
        "version": 1,
        "site": {"id": "bench", "name": "Bench", "address": "Benchstraat 1"},
        "tenants": [{"id": "jv", "name": "JenV"}],
        "zones": [{"id": "z", "name": "Zone", "tenant": "jv"}],
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "insecure": True},
        "journal": {"data_dir": "/tmp/bench"},
        "devices": [
            {"protocol": "modbus", "id": f"d{i}", "name": f"D{i}", "host": "127.0.0.1", "port": 1000 + i}
            for i in range(devices)
        ],
        "points": [
            {
                "id": f"p{i}",
                "name": f"P{i}",
                "device": f"d{i}",
                "tenant": "jv",
                "zone": "z",
                "type": "burglary",
                "source": {"protocol": "modbus", "table": "coil", "address": 0},
                "alarm": [1],
                "normal": [0],
            }
            for i in range(devices)
        ],
    }
    return SiteConfig.model_validate(doc)


class _Devices:
    """The Modbus adapter's DeviceMetrics view over plain stats objects (no devices in this benchmark)."""

    protocol = "modbus"

    def __init__(self, stats: dict[str, DeviceStats]) -> None:
        self.stats = stats

    def device_metrics(self) -> dict[str, DeviceSnapshot]:
        return {device_id: s.snapshot() for device_id, s in self.stats.items()}


def fill(stats: dict[str, DeviceStats], delivery: DeliveryStats, rng: random.Random) -> None:
    """What 15 s of a 1 s poll schedule adds."""
    for s in stats.values():
        for _ in range(15):
            s.record_poll(rng.uniform(0.005, 0.2), 0.0, ok=True)
        s.errors[rng.choice(ERRORS)] += 1
    for _ in range(150):
        delivery.published += 1
        delivery.latency.append(rng.uniform(0.01, 0.5))


def baseline_registry(cfg: SiteConfig, rng: random.Random) -> CollectorRegistry:
    registry = CollectorRegistry()
    labels = ["site", "device", "protocol"]
    up = PGauge("gcmk_device_up", "up", labels, registry=registry)
    contact = PGauge("gcmk_device_last_contact_timestamp_seconds", "c", labels, registry=registry)
    polls = PCounter("gcmk_device_polls", "p", labels, registry=registry)
    errors = PCounter("gcmk_device_errors", "e", [*labels, "error"], registry=registry)
    durations = PHistogram("gcmk_device_poll_duration_seconds", "d", labels, buckets=POLL_BUCKETS, registry=registry)
    events = PCounter("gcmk_events_received", "r", ["site", "device", "category", "type"], registry=registry)
    latency = PHistogram(
        "gcmk_event_delivery_latency_seconds", "l", ["site"], buckets=LATENCY_BUCKETS, registry=registry
    )
    for device in cfg.devices:
        key = ("bench", device.id, "modbus")
        up.labels(*key).set(1)
        contact.labels(*key).set(time.time())
        polls.labels(*key).inc(15)
        durations.labels(*key).observe(rng.uniform(0.005, 0.2))
        for error in ERRORS:
            errors.labels(*key, error).inc()
        for category, type_ in TYPES:
            events.labels("bench", device.id, category, type_).inc()
    latency.labels("bench").observe(0.1)
    return registry


def scrape(registry: CollectorRegistry) -> tuple[float, bytes]:
    started = time.perf_counter()
    body = generate_latest(registry)
    return time.perf_counter() - started, body


def series(body: bytes) -> int:
    return sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))


def report(name: str, times: list[float], series: int) -> float:
    times.sort()
    median = statistics.median(times)
    p99 = times[int(len(times) * 0.99) - 1]
    print(f"{name:<28} median {median * 1e3:7.2f} ms   p99 {p99 * 1e3:7.2f} ms   {series} series")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=500)
    args = parser.parse_args()
    rng = random.Random(1)
    cfg = site(args.devices)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # the collector exports no _created samples either: same series count

    baseline = baseline_registry(cfg, rng)
    stats = {d.id: DeviceStats(d.id, online=True) for d in cfg.devices}
    delivery = DeliveryStats(connected=True, journal_depth=3, oldest_undelivered_age=1.0)
    normaliser = NormaliserStats(events=Counter({(d.id, c, t): 1 for d in cfg.devices for c, t in TYPES}))
    sources = Sources(cfg, "bench", normaliser, adapters=[_Devices(stats)], delivery=delivery, components=("sink",))
    registry = CollectorRegistry()
    registry.register(GatewayCollector(sources))
    fill(stats, delivery, rng)
    generate_latest(registry)  # the first scrape ingests whatever the deques held at start
    # Alternate the two phases scrape by scrape, so that both see the same load from other processes.
    base_times, ours_times = [], []
    base_body = ours_body = b""
    for _ in range(args.scrapes):
        took, base_body = scrape(baseline)
        base_times.append(took)
        fill(stats, delivery, rng)  # not timed: the components' own work
        took, ours_body = scrape(registry)
        ours_times.append(took)
    base = report("baseline (instrumented)", base_times, series(base_body))
    ours = report("GatewayCollector", ours_times, series(ours_body))
    print(f"ratio collector/baseline: {ours / base:.2f} (the collector's time includes ingesting new samples)")


if __name__ == "__main__":
    main()
