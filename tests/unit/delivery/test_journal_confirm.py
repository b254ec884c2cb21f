"""Journal schema 2: published vs delivered, the receivers' confirmations, re-publication, replay ranges."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.delivery.journal import SCHEMA_VERSION, Journal, parse_page
from gateway.domain.state import Batch
from gateway.domain.taxonomy import EventType
from tests.support.delivery_harness import make_event


def journal(tmp_path: Path, events: int = 0) -> Journal:
    j = Journal(tmp_path / "j.sqlite3", site="test-site", max_bytes=1 << 30, retention=3600.0)
    j.open()
    if events:
        j.commit([Batch(events=(make_event(i),)) for i in range(events)], now=1.0, link_down=False)
    return j


def test_a_puback_publishes_only_a_confirmation_delivers(tmp_path: Path) -> None:
    j = journal(tmp_path, events=5)
    assert j.mark_published([1, 2, 3], now=10.0) == 3
    assert j.depth == 5, "published is not delivered"
    assert j.published_up_to() == 3
    assert j.confirm("meldkamer", 2, [], ["meldkamer"], now=11.0) == 2
    assert (j.depth, j.confirmed_seq, j.first_undelivered_seq()) == (3, 2, 3)


def test_every_required_receiver_must_confirm_and_isolated_seqs_count(tmp_path: Path) -> None:
    j = journal(tmp_path, events=6)
    required = ["a", "b"]
    assert j.confirm("a", 4, [6], required, now=1.0) == 0, "b has confirmed nothing yet"
    # 1, 2: both prefixes; 4: a's prefix and b's isolated seq; 6: isolated at both
    assert j.confirm("b", 2, [4, 6], required, now=2.0) == 4
    assert j.confirmed_seq == 2
    assert j.confirm("b", 4, [], required, now=3.0) == 1  # 3
    assert (j.depth, j.first_undelivered_seq()) == (1, 5)
    assert j.confirm("a", 1, [], required, now=4.0) == 0, "a confirmation never moves back"
    assert j.confirmed_up_to(required) == 4


def test_unconfirmed_events_come_back_after_the_timeout_doubling_per_publication(tmp_path: Path) -> None:
    j = journal(tmp_path, events=3)
    j.commit([Batch(events=(make_event(9, EventType.FIRE),))], now=1.0, link_down=False)  # seq 4, priority 1
    j.mark_published([1, 2, 3, 4], now=100.0)
    assert parse_page(j.read_unconfirmed_json(now=105.0, timeout=10.0, limit=10)) == []
    due = [e.seq for e in parse_page(j.read_unconfirmed_json(now=110.0, timeout=10.0, limit=10))]
    assert due == [4, 1, 2, 3], "priority 1-2 first, then in seq order"
    j.mark_published([1], now=110.0)  # published a second time: next due after 2 x timeout
    again = [e.seq for e in parse_page(j.read_unconfirmed_json(now=125.0, timeout=10.0, limit=10))]
    assert 1 not in again and again == [4, 2, 3]
    assert 1 in [e.seq for e in parse_page(j.read_unconfirmed_json(now=130.0, timeout=10.0, limit=10))]
    j.confirm("meldkamer", 4, [], ["meldkamer"], now=131.0)
    assert parse_page(j.read_unconfirmed_json(now=1e6, timeout=10.0, limit=10)) == []


def test_replay_ranges_and_the_first_seq_still_journaled(tmp_path: Path) -> None:
    j = journal(tmp_path, events=10)
    assert [e.seq for e in parse_page(j.read_range_json(3, 6, 100))] == [3, 4, 5, 6]
    j.confirm("meldkamer", 4, [], ["meldkamer"], now=0.0)  # delivered long ago
    assert j.prune(now=10_000.0) == 4
    assert j.first_seq() == 5


def test_pruning_is_one_bounded_chunk_per_call(tmp_path: Path) -> None:
    j = journal(tmp_path, events=25)
    j.mark_delivered(list(range(1, 26)), now=0.0)
    chunks = []
    while (n := j.prune(now=10_000.0, chunk=10)) > 0:
        chunks.append(n)
    assert chunks == [10, 10, 5]


def test_a_version_1_journal_is_migrated_and_keeps_what_was_delivered(tmp_path: Path) -> None:
    j = journal(tmp_path, events=3)
    j.mark_delivered([1], now=5.0)
    j.close()
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    with db:  # back to what a version-1 gateway wrote
        db.execute("DROP TABLE confirmations")
        db.execute("DROP TABLE confirmed_seqs")
        db.execute("DROP INDEX events_unconfirmed")
        db.execute("ALTER TABLE events DROP COLUMN published_at")
        db.execute("ALTER TABLE events DROP COLUMN publishes")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    j = journal(tmp_path)
    assert j.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert j.depth == 2 and j.published_up_to() == 1
    assert j.confirm("meldkamer", 3, [], ["meldkamer"], now=6.0) == 2
