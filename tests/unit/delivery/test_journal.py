"""The SQLite journal on its own: numbering, atomic batches, state table, delivery marks, retention, disk bound."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.delivery.journal import Journal, JournalError, sheddable
from gateway.domain.event import Event
from gateway.domain.state import Batch, DeviceState
from gateway.domain.taxonomy import Category, EventState, EventType
from tests.support.delivery_harness import make_event, point_state


def journal(tmp_path: Path, **kwargs: float) -> Journal:
    j = Journal(
        tmp_path / "j.sqlite3",
        site="test-site",
        max_bytes=int(kwargs.get("max_bytes", 1 << 30)),
        retention=kwargs.get("retention", 7 * 86400.0),
    )
    j.open()
    return j


def test_seq_is_gap_free_per_site_and_survives_reopen(tmp_path: Path) -> None:
    j = journal(tmp_path)
    first = j.commit([Batch(events=(make_event(1), make_event(2))), Batch(events=(make_event(3),))], now=1.0,
                     link_down=False)
    assert [[e.seq for e in b] for b in first.per_batch] == [[1, 2], [3]]
    assert [e.text for b in first.per_batch for e in b] == ["n=1", "n=2", "n=3"]
    j.close()
    j = journal(tmp_path)
    again = j.commit([Batch(events=(make_event(4),))], now=2.0, link_down=False)
    assert [e.seq for e in again.per_batch[0]] == [4]
    # pruning every row must not restart numbering: the counter lives in its own table
    j.mark_delivered([1, 2, 3, 4], now=3.0)
    j.retention = 0.0
    assert j.prune(now=10.0) == 4
    j.close()
    j = journal(tmp_path)
    assert j.commit([Batch(events=(make_event(5),))], now=11.0, link_down=False).per_batch[0][0].seq == 5
    assert j.depth == 1


def test_failed_commit_rolls_back_events_and_numbering(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.commit([Batch(events=(make_event(1),))], now=1.0, link_down=False)
    j.db.execute("CREATE TRIGGER boom BEFORE INSERT ON devices BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    bad = Batch(events=(make_event(2),), devices=(DeviceState("panel-1", False, make_event(0).detected_at),))
    with pytest.raises(JournalError):
        j.commit([bad], now=2.0, link_down=False)
    assert j.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1  # the event went with the batch
    j.db.execute("DROP TRIGGER boom")
    assert j.commit([Batch(events=(make_event(3),))], now=3.0, link_down=False).per_batch[0][0].seq == 2


def test_state_rows_persist_with_their_events_and_track_publication(tmp_path: Path) -> None:
    j = journal(tmp_path)
    alarm = point_state("pir-01", "burglary", 1)
    result = j.commit(
        [Batch(events=(make_event(1),), points=(alarm,), devices=(DeviceState("panel-1", True, alarm.since),))],
        now=1.0,
        link_down=False,
    )
    assert [(s.point_id, s.condition, s.version, s.as_of_seq) for s in result.states] == [("pir-01", "burglary", 1, 1)]
    j.commit([Batch(points=(point_state("pir-01", "normal", 0),))], now=2.0, link_down=False)
    j.close()
    j = journal(tmp_path)
    points, devices = j.load_state()
    assert [(p.point_id, p.condition, p.value) for p in points] == [("pir-01", "normal", 0)]
    assert [(d.device_id, d.online) for d in devices] == [("panel-1", True)]
    assert [(d.point_id, d.version) for d in j.dirty_states()] == [("pir-01", 2)]
    j.mark_states_published([("pir-01", 1)])
    assert [d.version for d in j.dirty_states()] == [2]  # an older PUBACK does not clear a newer state
    j.mark_states_published([("pir-01", 2)])
    assert j.dirty_states() == []


def test_delivery_marks_reading_back_and_retention(tmp_path: Path) -> None:
    j = journal(tmp_path, retention=100.0)
    j.commit([Batch(events=tuple(make_event(i) for i in range(10)))], now=1.0, link_down=True)
    assert j.depth == 10
    assert j.mark_delivered([1, 2, 5], now=50.0) == 3
    assert j.mark_delivered([1], now=51.0) == 0  # marking twice does not count twice
    assert j.depth == 7
    assert j.first_undelivered_seq() == 3
    page = j.read_undelivered(3, 3)
    assert [r.seq for r in page] == [3, 4, 6]
    assert all(r.link_down and '"buffered":false' in r.payload for r in page)
    assert j.oldest_undelivered_at() == 1.0
    assert j.prune(now=120.0) == 0  # delivered at 50, retention 100: kept for audit
    assert j.prune(now=151.0) == 3
    assert [e.seq for e in j.events()] == [3, 4, 6, 7, 8, 9, 10]


def test_numbering_survives_pruning_every_event_and_a_reopen(tmp_path: Path) -> None:
    """A commit of events alone is one statement (no meta row per commit): the highest seq is kept in meta
    when events are deleted, so numbering goes on after everything was pruned."""
    j = journal(tmp_path, retention=1.0)
    j.commit([Batch(events=tuple(make_event(i) for i in range(3)))], now=1.0, link_down=False)
    j.mark_delivered([1, 2, 3], now=2.0)
    assert j.prune(now=10.0) == 3 and j.events() == []
    j.close()
    j.open()
    assert j.last_seq == 3
    result = j.commit([Batch(events=(make_event(4),))], now=11.0, link_down=False)
    assert [e.seq for e in result.per_batch[0]] == [4]
    j.close()
    j.open()  # without pruning, the rows themselves carry the highest seq
    assert j.last_seq == 4


def test_disk_bound_sheds_only_info_events_and_announces_it(tmp_path: Path) -> None:
    j = journal(tmp_path, max_bytes=1 << 20)
    granted = EventType.ACCESS_GRANTED
    kinds = [(granted, EventState.INFO), (EventType.BURGLARY, EventState.ALARM),
             (EventType.BURGLARY, EventState.RESTORE), (EventType.COMM_LOSS, EventState.ALARM),
             (EventType.COMMAND, EventState.INFO)]
    submitted = {k: 0 for k in kinds}
    shed = 0
    for round_ in range(480):  # ~2.4 MB of undelivered events against a 1 MiB bound
        batch = Batch(events=tuple(audit_of_door(round_) if t is EventType.COMMAND else make_event(round_, t, s)
                                   for t, s in kinds))
        for k in kinds:
            submitted[k] += 1
        shed += j.commit([batch], now=float(round_), link_down=True).shed
    assert shed > 0 and j.shed_total == shed and j.shedding
    rows = j.db.execute("SELECT payload FROM events ORDER BY seq").fetchall()
    kept = [Event.from_json(r[0]) for r in rows]
    count = {k: sum(1 for e in kept if (e.type, e.state) == k) for k in kinds}
    assert count[(granted, EventState.INFO)] == submitted[(granted, EventState.INFO)] - shed
    for k in kinds[1:]:
        assert count[k] == submitted[k], f"{k} must never be shed"
    announcements = [e for e in kept if e.type is EventType.INFO_SHED]
    assert len(announcements) == 1 and announcements[0].state is EventState.ALARM
    assert not sheddable(announcements[0])
    # Once delivered events can be given up, the journal is below its bound again: one restore.
    j.mark_delivered(list(range(1, j.last_seq + 1)), now=1e6)
    result = j.commit([Batch(events=(make_event(0, granted, EventState.INFO),))], now=1e6, link_down=False)
    assert result.shed == 0 and not j.shedding
    assert [e.type for e in result.per_batch[0]] == [granted]
    assert [(r.seq, '"state":"restore"' in r.payload) for r in result.journaled][-1][1]


def audit_of_door(n: int) -> Event:
    """A command audit record as gateway.commands.processor makes it for a door: info, in the access category."""
    return make_event(n, EventType.COMMAND, EventState.INFO).model_copy(update={"category": Category.ACCESS})


def test_command_audit_records_are_never_sheddable() -> None:
    assert sheddable(make_event(1, EventType.ACCESS_GRANTED, EventState.INFO))
    assert not sheddable(audit_of_door(1))
    assert not sheddable(make_event(1, EventType.COMMAND, EventState.INFO))  # supervision category
    assert not sheddable(make_event(1, EventType.PERIODIC_TEST, EventState.INFO))  # supervision
    assert not sheddable(make_event(1, EventType.DOOR_FORCED, EventState.ALARM))


def test_detection_time_is_journaled_and_read_back(tmp_path: Path) -> None:
    j = journal(tmp_path)
    event = make_event(1)
    detected = event.detected_at.timestamp()
    (item,) = j.commit([Batch(events=(event,))], now=detected + 5.0, link_down=False).journaled
    assert item.detected_at == detected and item.journaled_at == detected + 5.0
    (paged,) = j.read_undelivered(1, 10)
    assert paged.detected_at == pytest.approx(detected)


def test_wal_and_full_sync(tmp_path: Path) -> None:
    j = journal(tmp_path)
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    j.close()
    with pytest.raises(JournalError):
        _ = j.db


# The journal's SQL needs of the SQLite that Python is linked against: the `->>` operator (3.38.0), UPDATE ... FROM
# (3.33.0), upserts (3.24.0) and the JSON functions (json_each, json_group_array: built in since 3.38.0).
JOURNAL_NEEDS_SQLITE = (3, 38, 0)


def test_the_linked_sqlite_has_what_the_journal_needs() -> None:
    assert sqlite3.sqlite_version_info >= JOURNAL_NEEDS_SQLITE, (
        f"SQLite {sqlite3.sqlite_version} is linked; the journal needs >= 3.38.0 (->>, UPDATE FROM, JSON functions)"
    )
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
        db.execute("INSERT INTO t VALUES ('a', 1) ON CONFLICT(k) DO UPDATE SET v = excluded.v")
        db.execute("UPDATE t SET v = j.value->>1 FROM json_each(?) AS j WHERE t.k = j.value->>0", ('[["a", 7]]',))
        assert db.execute("SELECT json_group_array(json_array(k, v)) FROM t").fetchone()[0] == '[["a",7]]'
    finally:
        db.close()


def test_a_data_dir_that_cannot_be_made_is_a_journal_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be\n")
    journal = Journal(blocker / "journal" / "site.sqlite3", site="s", max_bytes=10_000_000, retention=86400.0)
    with pytest.raises(JournalError, match=r"cannot create the journal directory .*/state/journal: Not a directory"):
        journal.open()
