"""SeqTracker: gaps in O(gaps), duplicates without a set of every id, write-offs that are reported."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from gateway.tools.seqtrack import SeqTracker


def test_in_order_keeps_only_the_prefix() -> None:
    t = SeqTracker()
    assert all(t.add(s) for s in range(1, 1001))
    assert (t.up_to, t.above, t.gaps()) == (1000, [], [])


def test_out_of_order_then_filled() -> None:
    t = SeqTracker()
    for s in (1, 2, 5, 3, 7):
        assert t.add(s)
    assert t.gaps() == [(4, 4), (6, 6)] and t.up_to == 3
    assert not t.add(5) and not t.add(2), "duplicates are recognised above and below the prefix"
    t.add(4)
    t.add(6)
    assert (t.up_to, t.above, t.gaps()) == (7, [], [])


def test_a_written_off_gap_moves_the_prefix_and_is_reported() -> None:
    t = SeqTracker()
    for s in (1, 2, 6, 7):
        t.add(s)
    t.write_off(3, 5)
    assert (t.up_to, t.above, t.written_off) == (7, [], [(3, 5)])
    assert not t.add(4)


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=400), st.randoms())
def test_matches_a_plain_set(seqs: list[int], rnd: random.Random) -> None:
    t = SeqTracker()
    held: set[int] = set()
    rnd.shuffle(seqs)
    for s in seqs:
        assert t.add(s) == (s not in held)
        held.add(s)
    top = max(held, default=0)
    assert t.missing() == sorted(set(range(1, top + 1)) - held)
    assert t.highest == top


def test_merge_takes_in_a_position_held_elsewhere() -> None:
    from gateway.tools.seqtrack import SeqTracker

    tracker = SeqTracker()
    for seq in (1, 2, 7, 12):
        tracker.add(seq)
    tracker.merge(8, [10])
    assert (tracker.up_to, tracker.above, tracker.gaps()) == (8, [10, 12], [(9, 9), (11, 11)])
    assert tracker.written_off == [], "held by the tier, not given up"
    tracker.merge(3)
    assert tracker.up_to == 8, "an older position changes nothing"
