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
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from gateway import __version__
from gateway.commands.stats import CommandStats
from gateway.config.models import SiteConfig
from gateway.core.histogram import Buckets
from gateway.core.normaliser import NormaliserStats
from gateway.core.ports import DEVICE_COUNTERS, DEVICE_GAUGES, DeviceMetrics, DeviceSnapshot
from gateway.delivery.stats import DeliveryStats, PathStats


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
    up: Mapping[str, bool] = field(default_factory=dict)  # supervised components running right now
    components: Sequence[str] = ()
    adapters: Sequence[DeviceMetrics] = ()
    delivery: DeliveryStats | None = None
    commands: CommandStats | None = None
    paths: Sequence[PathStats] = ()  # DC-09 delivery paths
    started_at: float = field(default_factory=time.time)
    reload: ReloadStats | None = None  # when the gateway can reload its config; its hash then wins


@dataclass
class ReloadStats:
    """Config reloads (SIGHUP, POST /-/reload, `gcmk-gateway reload`): the hash in force and the outcomes.
    The start counts as a successful load, as in Prometheus' own `prometheus_config_last_reload_*`."""

    config_hash: str
    last_successful: bool = True
    last_success_at: float = field(default_factory=time.time)
    applied: int = 0
    failed: int = 0

    def succeeded(self, config_hash: str, at: float) -> None:
        self.config_hash = config_hash
        self.last_successful = True
        self.last_success_at = at
        self.applied += 1

    def refused(self) -> None:
        self.last_successful = False
        self.failed += 1


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
        if src.paths:
            yield from _path_metrics(site, src.paths)
        restarts = CounterMetricFamily(
            "gcmk_component_restarts",
            "Crashes of a supervised component that were restarted",
            labels=["site", "component"],
        )
        up = GaugeMetricFamily(
            "gcmk_component_up",
            "1 while a supervised component runs, 0 while it is down or restarting",
            labels=["site", "component"],
        )
        for name in sorted({*src.components, *src.restarts}):
            restarts.add_metric([site, name], src.restarts.get(name, 0))
            up.add_metric([site, name], 1.0 if src.up.get(name, False) else 0.0)
        yield restarts
        yield up

    # --- families ----------------------------------------------------------------------------------------

    def _info(self, site: str) -> Iterator[Metric]:
        src = self.sources
        yield InfoMetricFamily(
            "gcmk_build",
            "Version of the gateway software",
            {"version": src.version, "python": platform.python_version()},
        )
        config_hash = src.reload.config_hash if src.reload is not None else src.config_hash
        yield InfoMetricFamily("gcmk_config", "Site config in force", {"site": site, "config_hash": config_hash})
        if src.reload is not None:
            yield _gauge(
                "gcmk_config_last_reload_successful",
                "1 if the last config load (start or reload) was applied, 0 if it was refused",
                site,
                float(src.reload.last_successful),
            )
            yield _gauge(
                "gcmk_config_last_reload_success_timestamp_seconds",
                "Unix time of the last config load that was applied (the start counts)",
                site,
                src.reload.last_success_at,
            )
            reloads = CounterMetricFamily(
                "gcmk_config_reloads", "Config reloads by outcome (applied, failed)", labels=["site", "outcome"]
            )
            reloads.add_metric([site, "applied"], src.reload.applied)
            reloads.add_metric([site, "failed"], src.reload.failed)
            yield reloads
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
        snapshots: dict[str, tuple[str, DeviceSnapshot]] = {}
        for adapter in src.adapters:
            for device_id, snapshot in adapter.device_metrics().items():
                snapshots[device_id] = (adapter.protocol, snapshot)
        labels = ["site", "device", "protocol"]
        up = GaugeMetricFamily("gcmk_device_up", "1 if the device answers, else 0", labels=labels)
        contact = GaugeMetricFamily(
            "gcmk_device_last_contact_timestamp_seconds", "Unix time of the last successful exchange", labels=labels
        )
        errors = CounterMetricFamily("gcmk_device_errors", "Failed requests by error class", labels=[*labels, "error"])
        durations = HistogramMetricFamily(
            "gcmk_device_poll_duration_seconds", "Duration of one poll cycle", labels=labels
        )
        counters = {
            name: CounterMetricFamily(f"gcmk_device_{name}", doc, labels=labels)
            for name, doc in DEVICE_COUNTERS.items()
        }
        gauges = {
            name: GaugeMetricFamily(f"gcmk_device_{name}", doc, labels=labels) for name, doc in DEVICE_GAUGES.items()
        }
        for device in src.site.devices:
            protocol, snapshot = snapshots.get(device.id, (device.protocol, DeviceSnapshot(online=None)))
            key = [site, device.id, protocol]
            online = src.device_online(device.id)
            online = snapshot.online if snapshot.online is not None else online
            if snapshot.last_contact is not None:
                contact.add_metric(key, snapshot.last_contact)
            if snapshot.poll_durations is not None:
                _add_histogram(durations, key, snapshot.poll_durations)
            for error, n in sorted(snapshot.errors.items()):
                errors.add_metric([*key, error], n)
            for name, value in snapshot.counters.items():
                counters[name].add_metric(key, value)
            for name, value in snapshot.gauges.items():
                gauges[name].add_metric(key, value)
            up.add_metric(key, 1.0 if online else 0.0)
        yield from (up, contact, errors, durations)
        yield from counters.values()
        yield from gauges.values()

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
            "gcmk_journal_depth",
            "Journaled events not yet delivered (unconfirmed by the receivers; with confirm: broker, no PUBACK)",
            site,
            stats.journal_depth,
        )
        yield _gauge(
            "gcmk_journal_oldest_undelivered_age_seconds",
            "Age of the oldest event not yet delivered (0 when none)",
            site,
            self._oldest_age(stats),
        )
        yield from _confirmation_metrics(site, stats)
        yield _counter("gcmk_journal_commits", "Journal transactions", site, stats.commits)
        yield _counter(
            "gcmk_journal_write_failures",
            "Journal writes that failed (commits, PUBACK marks, confirmations): disk full, I/O error, read-only",
            site,
            stats.journal_write_failures,
        )
        yield _gauge(
            "gcmk_journal_stalled_seconds",
            "How long the journal's thread has not finished a job (0 while it keeps up): a disk hanging in fsync",
            site,
            stats.journal_stalled_for(time.monotonic()),
        )
        yield _gauge("gcmk_journal_last_seq", "Highest seq assigned", site, stats.last_seq)
        yield _gauge("gcmk_mqtt_connected", "1 while the MQTT session is up", site, float(stats.connected))
        yield _counter("gcmk_mqtt_connects", "Successful MQTT connections", site, stats.connects)
        yield _counter("gcmk_mqtt_reconnects", "Successful MQTT connections after the first", site, stats.reconnects)
        yield _counter("gcmk_mqtt_connect_errors", "Failed MQTT connection attempts", site, stats.connect_errors)
        yield _counter("gcmk_mqtt_publish_errors", "Publishes that failed or timed out", site, stats.publish_errors)
        for name, doc, counts in (
            ("gcmk_mqtt_connect_refused", "Connections the broker refused (CONNACK), by reason", stats.connect_refused),
            (
                "gcmk_mqtt_publish_refused",
                "Publishes the broker refused (PUBACK reason code >= 0x80, or closing the connection before the"
                " PUBACK), by reason; the event stays in the journal and is sent again",
                stats.publish_refused,
            ),
        ):
            refusals = CounterMetricFamily(name, doc, labels=["site", "reason"])
            for reason, n in sorted(counts.items()):
                refusals.add_metric([site, reason], n)
            yield refusals
        refused = GaugeMetricFamily(
            "gcmk_mqtt_refused",
            "1 while the broker refuses the gateway: stage connect (the last CONNACK a refusal) or publish"
            " (a refused topic not accepted since)",
            labels=["site", "stage"],
        )
        refused.add_metric([site, "connect"], float(stats.refused_connect))
        refused.add_metric([site, "publish"], float(bool(stats.refused_topics)))
        yield refused
        yield _counter("gcmk_mqtt_heartbeats", "Heartbeats published", site, stats.heartbeats)
        yield _counter("gcmk_mqtt_states_published", "Retained point states acknowledged", site, stats.published_states)
        latency = HistogramMetricFamily(
            "gcmk_event_delivery_latency_seconds", "Event detection (detected_at) until PUBACK", labels=["site"]
        )
        _add_histogram(latency, [site], stats.latency_buckets)
        yield latency


def _confirmation_metrics(site: str, stats: DeliveryStats) -> Iterator[Metric]:
    yield _gauge(
        "gcmk_delivery_published_seq", "Highest seq the broker acknowledged (PUBACK)", site, stats.published_seq
    )
    yield _gauge(
        "gcmk_delivery_confirmed_seq",
        "Every seq up to this one is confirmed by all required receivers",
        site,
        stats.confirmed_seq,
    )
    yield _counter("gcmk_events_confirmed", "Events delivered by the receivers' confirmations", site, stats.confirmed)
    yield _counter("gcmk_confirmations", "Confirmation documents applied", site, stats.confirmations)
    yield _counter(
        "gcmk_confirmations_invalid",
        "Confirmations ignored: unparsable, of another site, or from a receiver not in delivery.receivers",
        site,
        stats.confirmations_invalid,
    )
    yield _counter(
        "gcmk_events_redelivered",
        "Events published again: unconfirmed within the confirm timeout, or replayed on request",
        site,
        stats.redelivered,
    )
    yield _counter("gcmk_replays", "Replay requests served", site, stats.replays)


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
    yield _gauge(
        "gcmk_commands_subscription_refused",
        "1 while the broker refuses the command subscription (SUBACK failure: its ACL?)",
        site,
        float(stats.subscription_refused is not None),
    )
    yield _counter(
        "gcmk_command_retained_ignored",
        "Retained messages on the command topic, ignored (commands are never retained)",
        site,
        stats.retained_ignored,
    )


def _path_metrics(site: str, paths: Sequence[PathStats]) -> Iterator[Metric]:
    """Per DC-09 path (label `receiver`): state, last ACK, what waits, DUH and faults."""
    labels = ["site", "receiver"]
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "up": GaugeMetricFamily("gcmk_dc09_up", "1 while the DC-09 receiver answers, else 0", labels=labels),
        "ack": GaugeMetricFamily(
            "gcmk_dc09_last_ack_timestamp_seconds",
            "Unix time of the receiver's last ACK (message or NULL)",
            labels=labels,
        ),
        "unacked": GaugeMetricFamily(
            "gcmk_dc09_unacknowledged", "Events routed to the receiver and not yet ACKed (or DUH'd)", labels=labels
        ),
        "age": GaugeMetricFamily(
            "gcmk_dc09_oldest_unacknowledged_age_seconds",
            "Age of the oldest event routed to the receiver and not yet ACKed (0 when none)",
            labels=labels,
        ),
        "fault": GaugeMetricFamily(
            "gcmk_dc09_path_fault", "1 while a path_fault alarm of the receiver is active", labels=labels
        ),
        "insecure": GaugeMetricFamily(
            "gcmk_dc09_encryption_disabled", "1 if the path sends unencrypted messages (insecure: true)", labels=labels
        ),
        "acked": CounterMetricFamily("gcmk_dc09_acked", "Events the receiver ACKed", labels=labels),
        "duh": CounterMetricFamily(
            "gcmk_dc09_duh", "Events the receiver answered DUH (not processed; recorded, never resent)", labels=labels
        ),
        "unmapped": CounterMetricFamily(
            "gcmk_dc09_unmapped", "Events the DC-09 mapping could not express (recorded, skipped)", labels=labels
        ),
        "faults": CounterMetricFamily("gcmk_dc09_path_faults", "path_fault alarms raised", labels=labels),
    }
    ignored = CounterMetricFamily(
        "gcmk_dc09_replies_ignored",
        "Replies not taken as the answer to the frame sent (malformed, another seq or account, a plain ACK on an"
        " encrypted path), by reason",
        labels=[*labels, "reason"],
    )
    for stats in paths:
        key = [site, stats.receiver]
        families["up"].add_metric(key, float(stats.up))
        if stats.last_ack_at is not None:
            families["ack"].add_metric(key, stats.last_ack_at)
        families["unacked"].add_metric(key, stats.unacknowledged)
        families["age"].add_metric(key, stats.oldest_unacknowledged_age or 0.0)
        families["fault"].add_metric(key, float(stats.fault_active))
        families["insecure"].add_metric(key, float(stats.insecure))
        families["acked"].add_metric(key, stats.acked)
        families["duh"].add_metric(key, stats.duh)
        families["unmapped"].add_metric(key, stats.unmapped)
        families["faults"].add_metric(key, stats.faults)
        for reason, count in sorted(stats.replies_ignored.items()):
            ignored.add_metric([*key, reason], count)
    yield from families.values()
    yield ignored


def _add_histogram(family: HistogramMetricFamily, labels: list[str], buckets: Buckets) -> None:
    family.add_metric(labels, buckets.cumulative(), buckets.sum)
