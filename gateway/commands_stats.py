"""Counters of the command processor, kept plain so the metrics module can export them.

Export suggestion: `gcmk_commands_total{action,status}` from `results`, `gcmk_command_refusals_total{reason}`
and `gcmk_command_failures_total{reason}`, `gcmk_command_latency_seconds` (histogram: `latency_buckets`,
`latency_sum`, `latency_count`, receipt to final result), `gcmk_commands_connected` (0/1).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class CommandStats:
    results: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, status) -> count
    refusals: Counter[str] = field(default_factory=Counter)  # reason -> count
    failures: Counter[str] = field(default_factory=Counter)  # reason -> count
    replays: int = 0
    messages: int = 0
    connected: bool = False
    connects: int = 0
    last_error: str | None = None
    # cumulative histogram counts per upper bound in LATENCY_BOUNDS, then +Inf
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    latency_recent: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def result(self, action: str | None, status: str, reason: str | None) -> None:
        self.results[(action or "unknown", status)] += 1
        if status == "refused":
            self.refusals[reason or "unknown"] += 1
        elif status == "failed":
            self.failures[reason or "unknown"] += 1

    def latency(self, seconds: float) -> None:
        """Receipt to final result (refused, executed or failed)."""
        self.latency_sum += seconds
        self.latency_count += 1
        self.latency_recent.append(seconds)
        for index, bound in enumerate(LATENCY_BOUNDS):
            if seconds <= bound:
                self.latency_buckets[index] += 1
        self.latency_buckets[-1] += 1
