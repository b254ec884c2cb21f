"""Counters of the command processor, kept plain so gateway/ops/metrics.py can export them at scrape time."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from gateway.core.histogram import LATENCY_BUCKETS, Buckets


@dataclass
class CommandStats:
    results: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, status) -> count
    refusals: Counter[str] = field(default_factory=Counter)  # reason -> count
    failures: Counter[str] = field(default_factory=Counter)  # reason -> count
    replays: int = 0
    messages: int = 0
    retained_ignored: int = 0  # retained deliveries on the command topic: never commands
    connected: bool = False
    connects: int = 0
    last_error: str | None = None
    subscription_refused: str | None = None  # why the broker refused the command subscription, while it does
    latency_buckets: Buckets = field(default_factory=lambda: Buckets(LATENCY_BUCKETS))  # receipt to result
    latency_recent: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def result(self, action: str | None, status: str, reason: str | None) -> None:
        self.results[(action or "unknown", status)] += 1
        if status == "refused":
            self.refusals[reason or "unknown"] += 1
        elif status == "failed":
            self.failures[reason or "unknown"] += 1

    def latency(self, seconds: float) -> None:
        """Receipt to final result (refused, executed or failed)."""
        self.latency_buckets.observe(seconds)
        self.latency_recent.append(seconds)
