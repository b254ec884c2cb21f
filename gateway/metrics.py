"""Prometheus metrics of one gateway, computed at scrape time from the components' plain stats objects.

Components keep counters as plain attributes (no prometheus_client in hot paths, nothing to keep in sync);
`GatewayCollector.collect` reads them when /metrics is scraped and yields metric families on the gateway's
own `CollectorRegistry` (never the global one, so several gateways can live in one test process). Labels
are low-cardinality only: site, device, protocol, category, type, error class, component -- never event
ids, point names, credentials or free text. Names follow Prometheus conventions: `gcmk_` prefix, `_total`
for counters, base units (`_seconds`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from gateway import __version__
from gateway.commands_stats import CommandStats
from gateway.config.models import BacnetDevice, SiteConfig
from gateway.delivery_stats import DeliveryStats
from gateway.histogram import Buckets
from gateway.http import Response
from gateway.normaliser import NormaliserStats

if TYPE_CHECKING:
    from adapters.bacnet.plan import DeviceCounters
    from adapters.modbus.stats import DeviceStats
    from gateway.service import Gateway


@runtime_checkable
class PollingAdapter(Protocol):
    """The Modbus adapter's view for metrics: per-device polling stats."""

    @property
    def stats(self) -> Mapping[str, DeviceStats]: ...


@runtime_checkable
class CountingAdapter(Protocol):
    """The BACnet adapter's view for metrics: per-device counters."""

    @property
    def counters(self) -> Mapping[str, DeviceCounters]: ...


def _empty() -> Mapping[str, Any]:
    return {}


@dataclass
class Sources:
    """Live references to everything the exporter reads; nothing here is copied at construction."""

    site: SiteConfig
    config_hash: str
    normaliser: NormaliserStats
    version: str = __version__
    device_online: Callable[[str], bool | None] = lambda _device: None
    accepted: Callable[[], int] = lambda: 0
    restarts: Mapping[str, int] = field(default_factory=dict)
    components: Sequence[str] = ()
    modbus: Callable[[], Mapping[str, DeviceStats]] = _empty
    bacnet: Callable[[], Mapping[str, DeviceCounters]] = _empty
    delivery: DeliveryStats | None = None
    commands: CommandStats | None = None
    started_at: float = field(default_factory=time.time)

    @classmethod
    def of_gateway(cls, gateway: Gateway, components: Sequence[str] = ()) -> Sources:
        modbus = [a for a in gateway.adapters if isinstance(a, PollingAdapter)]
        bacnet = [a for a in gateway.adapters if isinstance(a, CountingAdapter)]
        delivery = getattr(gateway.sink, "stats", None)
        return cls(
            site=gateway.site,
            config_hash=gateway.config_hash or site_hash(gateway.site),
            normaliser=gateway.normaliser.stats,
            device_online=gateway.normaliser.device_online,
            accepted=lambda: gateway.pipeline.accepted,
            restarts=gateway.supervisor.restarts,
            components=components,
            modbus=lambda: {k: v for a in modbus for k, v in a.stats.items()},
            bacnet=lambda: {k: v for a in bacnet for k, v in a.counters.items()},
            delivery=delivery if isinstance(delivery, DeliveryStats) else None,
            commands=gateway.commands.stats if gateway.commands is not None else None,
        )


def site_hash(site: SiteConfig) -> str:
    """Stand-in for the config-file hash when none was given: a hash of the validated config."""
    return hashlib.sha256(site.model_dump_json().encode()).hexdigest()[:16]


class GatewayCollector:
    """A prometheus_client collector; see the module docstring. Keeps only the approximate age of the
    oldest undelivered event between heartbeats."""

    def __init__(self, sources: Sources, clock: Callable[[], float] = time.time) -> None:
        self.sources = sources
        self._clock = clock
        self._age_seen: tuple[float, float] | None = None  # (reported age, clock when first seen)

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        site = src.site.site.id
        yield from self._info(site)
        yield from self._events(site)
        yield from self._devices(site)
        if src.delivery is not None:
            yield from self._delivery(site, src.delivery)
        if src.commands is not None:
            yield from _command_metrics(site, src.commands)
        restarts = CounterMetricFamily(
            "gcmk_component_restarts",
            "Crashes of a supervised component that were restarted",
            labels=["site", "component"],
        )
        for name in sorted({*src.components, *src.restarts}):
            restarts.add_metric([site, name], src.restarts.get(name, 0))
        yield restarts

    # --- families ----------------------------------------------------------------------------------------

    def _info(self, site: str) -> Iterator[Metric]:
        src = self.sources
        yield InfoMetricFamily(
            "gcmk_build",
            "Version of the gateway software",
            {"version": src.version, "python": platform.python_version()},
        )
        yield InfoMetricFamily("gcmk_config", "Site config in force", {"site": site, "config_hash": src.config_hash})
        yield _gauge("gcmk_start_time_seconds", "Unix time the gateway started", site, src.started_at)
        tls_disabled = src.delivery.insecure if src.delivery is not None else not src.site.mqtt.uses_tls
        yield _gauge(
            "gcmk_mqtt_tls_disabled", "1 if the MQTT link runs without TLS (insecure: true)", site, float(tls_disabled)
        )

    def _events(self, site: str) -> Iterator[Metric]:
        stats = self.sources.normaliser
        received = CounterMetricFamily(
            "gcmk_events_received",
            "Events made by the normaliser, before the journal",
            labels=["site", "device", "category", "type"],
        )
        for (device, category, type_), n in sorted(stats.events.items()):
            received.add_metric([site, device, category, type_], n)
        yield received
        yield _counter("gcmk_events_accepted", "Events durably accepted by the sink", site, self.sources.accepted())
        yield _counter("gcmk_readings", "Readings processed by the normaliser", site, stats.readings)
        yield _counter(
            "gcmk_readings_unknown_point", "Readings for points not in the config", site, stats.unknown_points
        )
        yield _counter(
            "gcmk_readings_unmapped_value", "Readings whose raw value no condition maps", site, stats.unmapped_values
        )
        yield _counter(
            "gcmk_flaps_suppressed", "Changes that reverted within their debounce time", site, stats.suppressed_flaps
        )

    def _devices(self, site: str) -> Iterator[Metric]:
        src = self.sources
        modbus, bacnet = src.modbus(), src.bacnet()
        labels = ["site", "device", "protocol"]
        up = GaugeMetricFamily("gcmk_device_up", "1 if the device answers, else 0", labels=labels)
        contact = GaugeMetricFamily(
            "gcmk_device_last_contact_timestamp_seconds", "Unix time of the last successful exchange", labels=labels
        )
        errors = CounterMetricFamily("gcmk_device_errors", "Failed requests by error class", labels=[*labels, "error"])
        polls = CounterMetricFamily("gcmk_device_polls", "Poll cycles of a polled device", labels=labels)
        durations = HistogramMetricFamily(
            "gcmk_device_poll_duration_seconds", "Duration of one poll cycle", labels=labels
        )
        cov = GaugeMetricFamily(
            "gcmk_device_cov_subscriptions_active", "BACnet COV subscriptions currently active", labels=labels
        )
        for device in src.site.devices:
            protocol = "bacnet" if isinstance(device, BacnetDevice) else "modbus"
            key = [site, device.id, protocol]
            online = src.device_online(device.id)
            last: float | None = None
            if (stats := modbus.get(device.id)) is not None:
                online = stats.online if stats.online is not None else online
                last = stats.last_contact
                polls.add_metric(key, stats.polls)
                _add_histogram(durations, key, stats.poll_duration_buckets)
                for error, n in sorted(stats.errors.items()):
                    errors.add_metric([*key, error], n)
            if (counters := bacnet.get(device.id)) is not None:
                online = counters.online if counters.online is not None else online
                last = _timestamp(counters.last_contact)
                cov.add_metric(key, counters.cov_subscriptions_active)
                for error, n in sorted(counters.errors.items()):
                    errors.add_metric([*key, error], n)
            up.add_metric(key, 1.0 if online else 0.0)
            if last is not None:
                contact.add_metric(key, last)
        yield from (up, contact, errors, polls, durations, cov)

    def _oldest_age(self, stats: DeliveryStats) -> float:
        """The sink refreshes `oldest_undelivered_age` only when it builds a heartbeat, i.e. while MQTT is
        connected. While the value stands still and events wait, the oldest one ages in real time (nothing
        is delivered then), so extrapolate from when this value was first seen."""
        if stats.journal_depth <= 0:
            self._age_seen = None
            return 0.0
        reported = stats.oldest_undelivered_age or 0.0
        now = self._clock()
        if self._age_seen is None or self._age_seen[0] != reported:
            self._age_seen = (reported, now)
        return reported + (now - self._age_seen[1])

    def _delivery(self, site: str, stats: DeliveryStats) -> Iterator[Metric]:
        yield _counter("gcmk_events_journaled", "Events committed to the journal (fsync'd)", site, stats.journaled)
        yield _counter("gcmk_events_published", "Events acknowledged by the broker (PUBACK)", site, stats.published)
        yield _counter("gcmk_events_shed", "Info events shed at the journal's disk bound", site, stats.shed)
        yield _gauge(
            "gcmk_journal_depth", "Journaled events not yet acknowledged by the broker", site, stats.journal_depth
        )
        yield _gauge(
            "gcmk_journal_oldest_undelivered_age_seconds",
            "Age of the oldest event not yet acknowledged (0 when none)",
            site,
            self._oldest_age(stats),
        )
        yield _counter("gcmk_journal_commits", "Journal transactions", site, stats.commits)
        yield _gauge("gcmk_journal_last_seq", "Highest seq assigned", site, stats.last_seq)
        yield _gauge("gcmk_mqtt_connected", "1 while the MQTT session is up", site, float(stats.connected))
        yield _counter("gcmk_mqtt_connects", "Successful MQTT connections", site, stats.connects)
        yield _counter("gcmk_mqtt_reconnects", "Successful MQTT connections after the first", site, stats.reconnects)
        yield _counter("gcmk_mqtt_connect_errors", "Failed MQTT connection attempts", site, stats.connect_errors)
        yield _counter("gcmk_mqtt_publish_errors", "Publishes that failed or timed out", site, stats.publish_errors)
        yield _counter("gcmk_mqtt_heartbeats", "Heartbeats published", site, stats.heartbeats)
        yield _counter("gcmk_mqtt_states_published", "Retained point states acknowledged", site, stats.published_states)
        latency = HistogramMetricFamily(
            "gcmk_event_delivery_latency_seconds", "Event detection (detected_at) until PUBACK", labels=["site"]
        )
        _add_histogram(latency, [site], stats.latency_buckets)
        yield latency


def _counter(name: str, doc: str, site: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["site"])
    family.add_metric([site], value)
    return family


def _gauge(name: str, doc: str, site: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["site"])
    family.add_metric([site], value)
    return family


def _command_metrics(site: str, stats: CommandStats) -> Iterator[Metric]:
    total = CounterMetricFamily(
        "gcmk_commands", "Commands answered, by action and final status", labels=["site", "action", "status"]
    )
    for (action, status), n in sorted(stats.results.items()):
        total.add_metric([site, action, status], n)
    refusals = CounterMetricFamily("gcmk_command_refusals", "Commands refused, by reason", labels=["site", "reason"])
    for reason, n in sorted(stats.refusals.items()):
        refusals.add_metric([site, reason], n)
    failures = CounterMetricFamily(
        "gcmk_command_failures", "Commands that failed, by reason", labels=["site", "reason"]
    )
    for reason, n in sorted(stats.failures.items()):
        failures.add_metric([site, reason], n)
    latency = HistogramMetricFamily(
        "gcmk_command_latency_seconds", "Command receipt until its final result", labels=["site"]
    )
    _add_histogram(latency, [site], stats.latency_buckets)
    yield from (total, refusals, failures, latency)
    yield _gauge("gcmk_commands_connected", "1 while the command subscription is up", site, float(stats.connected))
    yield _counter(
        "gcmk_command_retained_ignored",
        "Retained messages on the command topic, ignored (commands are never retained)",
        site,
        stats.retained_ignored,
    )


def _add_histogram(family: HistogramMetricFamily, labels: list[str], buckets: Buckets) -> None:
    family.add_metric(labels, buckets.cumulative(), buckets.sum)


def _timestamp(value: object) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


# --- readiness and the HTTP routes --------------------------------------------------------------------------


def readiness(gateway: Gateway) -> tuple[bool, str]:
    """Ready = started and not stopping; with the delivery sink also MQTT connected and journal writable."""
    if not gateway.started.is_set():
        return False, "starting"
    if gateway.stopping.is_set():
        return False, "stopping"
    stats = getattr(gateway.sink, "stats", None)
    if not isinstance(stats, DeliveryStats):
        return True, "running"  # stdout (commissioning) or a test sink: nothing to be connected to
    if not stats.connected:
        return False, f"mqtt not connected{': ' + stats.last_error if stats.last_error else ''}"
    writable, why = journal_writable(gateway)  # the DeliverySink's `journal_writable` verdict
    if not writable:
        return False, why
    return True, "mqtt connected, journal writable"


def journal_writable(gateway: Gateway) -> tuple[bool, str]:
    """The sink's own verdict if it offers one (`journal_writable`), else the file system's: the journal
    directory (and file, once created) accept writes."""
    verdict = getattr(gateway.sink, "journal_writable", None)
    if isinstance(verdict, bool):
        return verdict, "journal writable" if verdict else "journal not writable"
    data_dir = gateway.site.journal.data_dir
    journal = data_dir / f"{gateway.site.site.id}.journal.sqlite3"
    if not os.access(data_dir, os.W_OK | os.X_OK):
        return False, f"journal directory {data_dir} not writable"
    if journal.exists() and not os.access(journal, os.W_OK):
        return False, f"journal {journal.name} not writable"
    return True, "journal writable"


@dataclass
class OperatorEndpoints:
    """The registry and the three routes served by `gateway.http.OperatorServer`."""

    registry: CollectorRegistry
    ready: Callable[[], tuple[bool, str]]

    def routes(self) -> dict[str, Callable[[], Response]]:
        return {"/metrics": self.metrics, "/healthz": self.healthz, "/readyz": self.readyz}

    def metrics(self) -> Response:
        return Response(200, generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4)

    def healthz(self) -> Response:
        return Response(200, b"ok\n")  # answered by the event loop, so the process lives

    def readyz(self) -> Response:
        ok, why = self.ready()
        return Response(200 if ok else 503, (why + "\n").encode())


def operator_endpoints(gateway: Gateway, components: Sequence[str] = ()) -> OperatorEndpoints:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(Sources.of_gateway(gateway, components)))
    return OperatorEndpoints(registry, lambda: readiness(gateway))
