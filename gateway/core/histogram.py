"""Cumulative histogram buckets that components fill and the metrics endpoint exports.

Prometheus histograms must count every observation since the process started: a window of recent samples
(a deque) cannot be turned into buckets whose counts only ever grow. `Buckets` is the cheap thing a hot
path calls `observe()` on; the stats owners keep one next to their deque of recent samples.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# seconds; one Modbus/BACnet poll on a LAN or a serial line (5 ms .. 5 s)
POLL_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# seconds; detection/hand-off -> PUBACK, including minutes of backlog after a broker outage
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Buckets:
    """Counts per upper bound (`le`), kept non-cumulative and summed on export; plus count and sum."""

    __slots__ = ("_counts", "bounds", "count", "sum")

    def __init__(self, bounds: Sequence[float] = POLL_BUCKETS) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)) or math.isinf(bounds[-1]):
            raise ValueError("bucket bounds must be finite, strictly increasing and not empty")
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs ending with +Inf, as `HistogramMetricFamily` wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += n
            out.append(("+Inf" if math.isinf(bound) else _le(bound), float(running)))
        return out


def _le(bound: float) -> str:
    return repr(bound) if bound != int(bound) else f"{bound:.1f}"
