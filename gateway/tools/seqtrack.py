"""Which seqs of one site a receiver holds: a contiguous prefix plus the few seqs received beyond it.

Memory and time are O(gaps), not O(max seq): everything up to `up_to` is known to be held, and only seqs
above it (received out of order, while a gap waits to be filled) are kept individually. A duplicate is any
seq at or below the prefix or already above it, so de-duplication needs no set of every event id ever seen.
Seqs that can never arrive (the gateway says they were pruned) are `written_off`: the prefix moves past them
and they are reported, never silently skipped.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

MAX_ABOVE = 100_000  # seqs held beyond the prefix at most; beyond that the oldest gap is written off


@dataclass
class SeqTracker:
    up_to: int = 0  # every seq 1..up_to is held (or written off)
    above: list[int] = field(default_factory=list)  # sorted seqs > up_to + 1 that are held
    written_off: list[tuple[int, int]] = field(default_factory=list)  # (first, last) ranges given up

    def add(self, seq: int) -> bool:
        """Record `seq`; False if it was held already (a duplicate)."""
        if seq <= self.up_to:
            return False
        index = bisect.bisect_left(self.above, seq)
        if index < len(self.above) and self.above[index] == seq:
            return False
        if seq == self.up_to + 1:
            self.up_to = seq
            self._advance()
        else:
            self.above.insert(index, seq)
            if len(self.above) > MAX_ABOVE:
                first, _last = self.gaps()[0]
                self.write_off(first, self.above[0] - 1)
        return True

    def gaps(self) -> list[tuple[int, int]]:
        """Missing ranges (first, last) below the highest held seq."""
        missing: list[tuple[int, int]] = []
        expected = self.up_to + 1
        for seq in self.above:
            if seq > expected:
                missing.append((expected, seq - 1))
            expected = seq + 1
        return missing

    def missing(self) -> list[int]:
        return [seq for first, last in self.gaps() for seq in range(first, last + 1)]

    @property
    def highest(self) -> int:
        return self.above[-1] if self.above else self.up_to

    def write_off(self, first: int, last: int) -> None:
        """Give up on first..last (pruned at the gateway): the prefix may move past them."""
        if last < first or last <= self.up_to:
            return
        first = max(first, self.up_to + 1)
        self.written_off.append((first, last))
        if first == self.up_to + 1:
            self.up_to = last
            self.above = [s for s in self.above if s > last]
            self._advance()

    def merge(self, up_to: int, seqs: list[int] | tuple[int, ...] = ()) -> None:
        """Take in a position held elsewhere (another member of a receiver tier confirmed it, or the gateway's
        heartbeat says the tier confirmed everything up to `up_to`): those seqs are held, by the tier."""
        if up_to > self.up_to:
            self.up_to = up_to
            self.above = [s for s in self.above if s > up_to]
            self._advance()
        for seq in seqs:
            self.add(seq)

    def _advance(self) -> None:
        taken = 0
        while taken < len(self.above) and self.above[taken] == self.up_to + 1:
            self.up_to += 1
            taken += 1
        if taken:
            del self.above[:taken]
