"""The ports of the core: what adapters hand in, where events go, and what operators can read.

An adapter never builds events: it reports raw readings (and device reachability) to a `ReadingSink`.
The normaliser decides what is an alarm. `submit` returns only once the resulting events are durably
accepted (journaled), so an adapter may acknowledge a device's notification after it returns; `submit_many`
does the same for a batch (the changes of one poll) with one journal commit for all of them. The
`EventSink` is the other half: it journals batches and delivers them. `Health` and `DeviceMetrics` are how
components and adapters report to the operator endpoints without those knowing any component's type.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from gateway.config.models import SiteConfig
from gateway.core.histogram import Buckets
from gateway.domain.event import Credential, Event, Notification
from gateway.domain.state import Batch, DeviceState, PointState
from gateway.domain.values import RawValue


class Quality(StrEnum):
    GOOD = "good"
    BAD = "bad"  # the value could not be read (device silent, malformed reply): never a restore
    # The device answers but says this point does not exist (BACnet unknown-object / unknown-property, Modbus
    # exception 01-03): a blind point, raised as a point_unavailable alarm with the reason in `text`.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation of one configured point."""

    point_id: str
    value: RawValue | None
    quality: Quality
    detected_at: datetime
    occurred_at: datetime | None = None  # the device's own time stamp, when it gives one
    # Distinguishes two occurrences with the same value (e.g. two consecutive access grants);
    # momentary points emit an event whenever (value, occurrence) changes.
    occurrence: str | None = None
    credential: Credential | None = None
    notification: Notification | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Reachability of one device, as its adapter's supervision judges it."""

    device_id: str
    online: bool
    at: datetime
    reason: str = ""
    detail: dict[str, str] = field(default_factory=dict)


class ReadingSink(Protocol):
    async def submit(self, reading: Reading) -> None:
        """Hand on one reading; returns when its events (if any) are durably accepted. Raises NotAccepted
        when they are not (journal failure): nothing of the reading was taken, offer it again later."""

    async def submit_many(self, readings: Sequence[Reading]) -> None:
        """Hand on several readings as ONE unit, in order (e.g. the changes of one poll): their events are
        journaled together (one commit, one fsync) and the call returns when all are durable. All or nothing:
        NotAccepted means none was taken (offer them all again, in the same order). Readings of one point
        may repeat; they count in the order given."""

    async def device_status(self, status: DeviceStatus) -> None:
        """Report a device going offline or coming back; returns when its event is accepted."""


class Adapter(Protocol):
    """A long-running protocol adapter. `run` returns only when cancelled (or raises on a fatal error)."""

    name: str

    async def run(self, sink: ReadingSink) -> None: ...


@runtime_checkable
class Reconfigurable(Protocol):
    """An adapter that can adopt a new site config while running (gateway/app/reload.py), starting and
    stopping only `devices` (added, removed or changed); its other devices keep running."""

    async def reconfigure(self, site: SiteConfig, devices: Collection[str]) -> None: ...


class EventSink(Protocol):
    """Where normalised events go: the journal + MQTT delivery in production, stdout for commissioning."""

    async def load_state(self) -> tuple[list[PointState], list[DeviceState]]:
        """The persisted state table (empty for a sink without memory)."""

    async def accept(self, batch: Batch) -> Sequence[Event]:
        """Durably accept a batch; returns its events with `seq` assigned, in order. Raises NotAccepted
        (JournalError) when the batch is not durable. The pipeline runs it as a task of its own that a stopped
        caller does not cancel (gateway/core/pipeline.py): it must end by itself, with the batch durable or
        refused (DeliverySink fails what is still queued when it stops)."""

    async def run(self) -> None:
        """The sink's long-running work (delivery); returns only when cancelled."""

    async def close(self) -> None:
        """Finish in-flight work on a clean shutdown (flush, publish offline status)."""


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What a replay request got: queued (first..last) or refused with a reason code."""

    ok: bool
    reason: str | None
    detail: str
    first_seq: int | None = None
    last_seq: int | None = None


@runtime_checkable
class Replayer(Protocol):
    """A sink that can publish journaled events again on request (the meldkamer's `gcmk.replay.v1`)."""

    async def replay(self, from_seq: int, to_seq: int | None) -> ReplayOutcome: ...


# --- what operators read -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthReport:
    """One component's own verdict for /readyz: ready or not, and why, in an operator's words."""

    ok: bool
    detail: str


@runtime_checkable
class Health(Protocol):
    """A component that can say whether it is ready (connected, writable, running)."""

    name: str

    def health(self) -> HealthReport: ...


# Counters an adapter may report per device: metric `gcmk_device_<name>_total` with this help text.
DEVICE_COUNTERS: dict[str, str] = {
    "polls": "Poll cycles of a polled device",
    "failed_polls": "Poll cycles in which at least one request failed",
    "poll_overruns": "Poll slots skipped because a poll (or back-pressure) ran past them",
    "poll_lateness_seconds": "Summed delay of poll starts after their due time (rate = mean lateness)",
    "readings": "Readings the adapter handed to the gateway",
    "cov_notifications": "BACnet COV notifications received",
    "event_notifications": "BACnet event notifications received",
    "duplicate_notifications": "BACnet confirmed notifications received again (device retries), answered once",
    "resyncs": "BACnet alarm-state resynchronisations (GetEventInformation and reads after (re)connect)",
    "stale_reads": "BACnet read answers dropped because a newer notification for the object had arrived",
    "unknown_subscription_notifications": "BACnet COV notifications for no current subscription (answered, ignored)",
}
# Gauges an adapter may report per device: metric `gcmk_device_<name>`.
DEVICE_GAUGES: dict[str, str] = {
    "cov_subscriptions_active": "BACnet COV subscriptions currently active",
    "polled_fallback_objects": "BACnet objects polled because the device refused COV for them",
    "points_unavailable": "Configured points the device says do not exist (unknown object/property, exception 02)",
}


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """What an adapter knows about one device at scrape time. Names in `counters` and `gauges` are keys of
    DEVICE_COUNTERS and DEVICE_GAUGES; `last_contact` is Unix time."""

    online: bool | None
    last_contact: float | None = None
    errors: Mapping[str, int] = field(default_factory=dict)
    counters: Mapping[str, float] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)
    poll_durations: Buckets | None = None


@runtime_checkable
class DeviceMetrics(Protocol):
    """An adapter's per-device view for /metrics (device id -> snapshot)."""

    protocol: str

    def device_metrics(self) -> Mapping[str, DeviceSnapshot]: ...
