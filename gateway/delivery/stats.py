"""Counters of the delivery path, kept as plain attributes so the metrics endpoint can export them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gateway.core.histogram import LATENCY_BUCKETS, Buckets

JOURNAL_STALL = 5.0  # seconds the journal's thread may take for a job before the journal counts as stalled


@dataclass(slots=True)
class DeliveryStats:
    connected: bool = False  # MQTT session up (CONNACK received, not yet lost)
    insecure: bool = False  # plain TCP without TLS (site.mqtt.insecure): should be 0 in production
    protocol: str = ""  # "5" or "3.1.1" once negotiated
    published: int = 0  # events acknowledged by the broker (PUBACK)
    published_states: int = 0  # retained point states acknowledged
    heartbeats: int = 0
    publish_errors: int = 0  # publishes that failed or timed out (the session is then re-established)
    connects: int = 0  # successful connections
    reconnects: int = 0  # successful connections after the first
    connect_errors: int = 0
    last_error: str = ""
    # refusals by the broker, by reason (a reason code's name in snake_case, e.g. "not_authorized"; a publish the
    # broker answered by closing the connection: "connection_closed")
    connect_refused: dict[str, int] = field(default_factory=dict)  # CONNACK refusals
    publish_refused: dict[str, int] = field(default_factory=dict)  # PUBACK reason code >= 0x80 (event not marked)
    refused_connect: bool = False  # the last connection attempt was refused (until a CONNACK accepts one)
    refused_topics: set[str] = field(default_factory=set)  # topics refused and not accepted since
    commits: int = 0  # journal transactions (each one fsync)
    journal_write_failures: int = 0  # journal writes that failed: commits, PUBACK marks, confirmations
    committed_batches: int = 0
    journaled: int = 0  # events journaled (incl. shed announcements)
    shed: int = 0  # info events shed because of the disk bound (this process)
    journal_depth: int = 0  # events not yet acknowledged by the broker
    oldest_undelivered_age: float | None = None  # seconds
    last_seq: int = 0
    # monotonic time since which the sink's probe waits for the journal's thread (None: it answered): a hung
    # disk or fsync shows here, not only as a missing commit (gateway/delivery/sink.py `_prober`)
    journal_waiting_since: float | None = None
    # meldkamer confirmation (delivery.confirm: meldkamer)
    published_seq: int = 0  # highest seq the broker acknowledged (PUBACK)
    confirmed_seq: int = 0  # every seq up to this one is confirmed by all required receivers
    confirmed: int = 0  # events that became delivered by a confirmation
    confirmations: int = 0  # confirmation documents applied
    confirmations_invalid: int = 0  # unparsable, of another site, or from a receiver not in delivery.receivers
    redelivered: int = 0  # events handed to the outbox again (unconfirmed in time, or replayed)
    replays: int = 0  # replay requests served
    # the event's detection (`detected_at`) -> PUBACK, in seconds: a bounded window of recent samples (for
    # percentiles) and cumulative buckets of every sample since start (the Prometheus histogram)
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=10_000), repr=False)
    latency_buckets: Buckets = field(default_factory=lambda: Buckets(LATENCY_BUCKETS), repr=False)

    def journal_stalled_for(self, now: float) -> float:
        """Seconds the journal's thread has not finished the probe (0 while it keeps up); `now` is monotonic."""
        since = self.journal_waiting_since
        return 0.0 if since is None else max(0.0, now - since)

    def observe_latency(self, seconds: float) -> None:
        self.latency.append(seconds)
        self.latency_buckets.observe(seconds)


@dataclass(slots=True)
class PathStats:
    """One DC-09 delivery path (gateway/delivery/dc09_path.py), for the metrics endpoint."""

    path: str  # journal name, "dc09:<receiver id>"
    receiver: str
    insecure: bool = False  # unencrypted messages (insecure: true)
    up: bool = False  # the receiver answered the last exchange (ACK, NAK, DUH, or a NULL's ACK)
    last_ack_at: float | None = None  # epoch seconds of the last ACK (message or NULL)
    unacknowledged: int = 0  # routed events beyond the path's cursor (refreshed every second)
    oldest_unacknowledged_age: float | None = None  # seconds since the oldest of them was journaled
    acked: int = 0  # events ACKed (this process)
    duh: int = 0  # events answered DUH: recorded, never resent
    unmapped: int = 0  # events the DC-09 mapping could not express: recorded, skipped
    faults: int = 0  # path_fault alarms raised
    fault_active: bool = False
    cursor: int = 0  # every seq up to this one handled by the path
    # by reason (gateway/dc09/transmitter.py); the two the alert watches exist from the start at 0, so that
    # increase() sees their first one (a series that appears at 1 has no increase)
    replies_ignored: dict[str, int] = field(default_factory=lambda: {"foreign_account": 0, "unencrypted_ack": 0})
