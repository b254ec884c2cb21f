"""The outbox's ordering rules without a broker: seq order, urgent first after an outage, resume, buffered."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from gateway.delivery.journal import Journaled, StateDoc
from gateway.delivery.outbox import Outbox, Outgoing


def journaled(seq: int, priority: int = 3, at: float = 100.0) -> Journaled:
    payload = json.dumps({"seq": seq, "buffered": False}, separators=(",", ":"))
    return Journaled(seq, f"id-{seq}", "technical", priority, payload, at, False)


class FakeJournal:
    def __init__(self) -> None:
        self.rows: dict[int, Journaled] = {}
        self.reads = 0

    async def read(self, start: int, limit: int) -> list[Journaled]:
        self.reads += 1
        return [self.rows[s] for s in sorted(self.rows) if s >= start][:limit]


def outbox(journal: FakeJournal, now: float = 100.5, **kwargs: int) -> Outbox:
    box = Outbox("test-site", journal.read, clock=lambda: now, **kwargs)
    box.start(1, 0, [])
    return box


def commit(box: Outbox, journal: FakeJournal, *items: Journaled) -> None:
    for item in items:
        journal.rows[item.seq] = item
    box.committed(items, [])


async def take(box: Outbox, n: int) -> list[Outgoing]:
    return [await asyncio.wait_for(box.next(), 1) for _ in range(n)]


async def test_seq_order_and_ack_marks() -> None:
    journal = FakeJournal()
    box = outbox(journal)
    box.link(True)
    commit(box, journal, *(journaled(s) for s in range(1, 6)))
    sent = await take(box, 5)
    assert [o.seq for o in sent] == [1, 2, 3, 4, 5]
    assert not any(o.buffered for o in sent) and journal.reads == 0  # steady state never reads back
    for o in sent:
        box.acked(o)
    assert box.take_marks() == ([1, 2, 3, 4, 5], [])
    await asyncio.wait_for(box.drained(), 1)


async def test_lost_session_resends_from_the_oldest_unacknowledged() -> None:
    journal = FakeJournal()
    box = outbox(journal)
    box.link(True)
    commit(box, journal, *(journaled(s) for s in range(1, 7)))
    sent = await take(box, 4)
    box.acked(sent[0])
    box.acked(sent[2])  # 2 and 4 still in flight when the link drops
    box.link(False)
    box.lost()
    box.link(True)
    again = await take(box, 4)
    assert [o.seq for o in again] == [2, 3, 4, 5]  # 3 is sent again too: at-least-once, same event
    assert '"seq":2' in again[0].payload


async def test_urgent_events_overtake_a_backlog_and_are_not_sent_twice() -> None:
    journal = FakeJournal()
    box = outbox(journal, now=200.0)  # everything below is 100 s old: a backlog, all buffered
    commit(box, journal, *(journaled(s) for s in range(1, 5)))
    commit(box, journal, journaled(5, priority=1, at=199.9))  # a fire alarm, link still down
    box.link(True)
    sent = await take(box, 5)
    assert [o.seq for o in sent] == [5, 1, 2, 3, 4]
    assert sent[0].urgent and not sent[0].buffered  # fresh: published 0.1 s after hand-off
    assert all(o.buffered and '"buffered":true' in o.payload for o in sent[1:])
    with pytest.raises(TimeoutError):  # seq 5 is not sent a second time when the cursor reaches it
        await asyncio.wait_for(box.next(), 0.2)


async def test_pages_from_the_journal_when_memory_overflowed() -> None:
    journal = FakeJournal()
    box = outbox(journal, recent_max=10, page=7)
    commit(box, journal, *(journaled(s) for s in range(1, 31)))  # only 21..30 still in memory
    box.link(True)
    sent = await take(box, 30)
    assert [o.seq for o in sent] == list(range(1, 31))
    assert journal.reads >= 3


def state(point_id: str, version: int, condition: str = "burglary") -> StateDoc:
    return StateDoc(point_id, condition, 1, datetime(2026, 12, 1, tzinfo=UTC), version, version)


async def test_fresh_events_go_before_point_states_and_a_waiting_state_only_in_its_latest_version() -> None:
    """An alarm flood: the events are the record (2 s to confirmation), a state is a picture. States committed
    with fresh events wait behind them; a point's state replaced meanwhile is published once, as the latest."""
    journal = FakeJournal()
    box = outbox(journal)
    box.link(True)
    for seq in range(1, 4):
        journal.rows[seq] = journaled(seq)
    box.committed([journaled(1), journaled(2)], [state("pir-1", 1), state("pir-2", 1)])
    box.committed([journaled(3)], [state("pir-1", 2, "normal")])
    sent = await take(box, 5)
    assert [(o.kind, o.seq or o.point) for o in sent] == [
        ("event", 1),
        ("event", 2),
        ("event", 3),
        ("state", ("pir-2", 1)),
        ("state", ("pir-1", 2)),  # changed again while waiting: once, the latest, in the order of change
    ]
    assert json.loads(sent[4].payload)["condition"] == "normal", "only the latest state of pir-1"


async def test_while_behind_states_still_go_first() -> None:
    """Draining a backlog (events older than buffered_after): the current picture before the old events."""
    journal = FakeJournal()
    box = outbox(journal, now=200.0)  # the events were journaled at 100.0: 100 s behind
    box.link(True)
    commit(box, journal, *(journaled(s) for s in range(1, 4)))
    first = await take(box, 1)
    assert first[0].kind == "event"  # the first pick finds out that the cursor is behind
    box.committed([], [state("pir-1", 1)])
    sent = await take(box, 3)
    assert [o.kind for o in sent] == ["state", "event", "event"]
