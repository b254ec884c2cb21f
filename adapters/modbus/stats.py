"""Per-device polling counters, kept as plain attributes so the metrics exporter can read them."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from gateway.core.histogram import POLL_BUCKETS, Buckets
from gateway.core.ports import DeviceSnapshot


@dataclass
class DeviceStats:
    """What one device's poller has done so far. Durations and lateness are in seconds."""

    device_id: str
    polls: int = 0
    failed_polls: int = 0
    overruns: int = 0  # schedule slots skipped because a poll (or back-pressure) ran past them
    requests: int = 0
    readings: int = 0  # readings handed to the sink
    errors: Counter[str] = field(default_factory=Counter)  # by error class name, e.g. "DeviceTimeout"
    consecutive_failures: int = 0
    online: bool | None = None  # None until the first poll decided
    poll_durations: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    poll_lateness: deque[float] = field(default_factory=lambda: deque(maxlen=4096))  # start - due time
    duration_sum: float = 0.0
    lateness_sum: float = 0.0
    poll_duration_buckets: Buckets = field(default_factory=lambda: Buckets(POLL_BUCKETS))  # all polls, for /metrics
    last_contact: float | None = None  # Unix time of the last answered request
    points_unavailable: int = 0  # configured points whose address the device rejects (exception 01-03)

    def record_poll(self, duration: float, lateness: float, ok: bool) -> None:
        self.polls += 1
        if not ok:
            self.failed_polls += 1
        self.poll_durations.append(duration)
        self.poll_duration_buckets.observe(duration)
        self.poll_lateness.append(lateness)
        self.lateness_sum += max(0.0, lateness)
        self.duration_sum += duration

    def snapshot(self) -> DeviceSnapshot:
        """For /metrics (gateway.core.ports.DeviceMetrics)."""
        return DeviceSnapshot(
            online=self.online,
            last_contact=self.last_contact,
            errors=dict(self.errors),
            counters={
                "polls": self.polls,
                "failed_polls": self.failed_polls,
                "poll_overruns": self.overruns,
                "poll_lateness_seconds": self.lateness_sum,
                "readings": self.readings,
            },
            gauges={"points_unavailable": self.points_unavailable},
            poll_durations=self.poll_duration_buckets,
        )
