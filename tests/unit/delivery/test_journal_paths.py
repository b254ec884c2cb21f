"""Journal schema 3: delivery per path (MQTT plus each DC-09 receiver) and the DC-09 zone/area table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.delivery.journal import SCHEMA_VERSION, Journal, NumberConflict, PathMark
from gateway.domain.state import Batch
from tests.support.delivery_harness import make_event

PATH = "dc09:ats"


def journal(tmp_path: Path, *, paths: tuple[str, ...] = (PATH,), events: int = 0, retention: float = 10.0) -> Journal:
    j = Journal(tmp_path / "j.sqlite3", site="test-site", max_bytes=1 << 30, retention=retention, paths=paths)
    j.open()
    if events:
        j.commit([Batch(events=(make_event(i),)) for i in range(events)], now=1.0, link_down=False)
    return j


def test_a_version_2_journal_is_migrated_and_a_new_path_starts_at_its_last_seq(tmp_path: Path) -> None:
    j = journal(tmp_path, paths=(), events=3)
    j.mark_delivered([1, 2], now=5.0)
    j.close()
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    with db:  # back to what a version-2 gateway wrote
        for table in ("paths", "path_outcomes", "dc09_numbers"):
            db.execute(f"DROP TABLE {table}")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()

    j = journal(tmp_path)
    assert SCHEMA_VERSION == 3
    assert j.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    assert (j.last_seq, j.depth) == (3, 1), "events and MQTT delivery kept"
    assert j.path_cursor(PATH) == 3, "a path configured now carries what comes next, not the delivered history"
    j.commit([Batch(events=(make_event(9),))], now=6.0, link_down=False)
    assert j.path_cursor(PATH) == 3 and j.path_backlog(PATH, "1", ()) == (1, 6.0)
    j.close()


def test_an_event_is_pruned_only_when_mqtt_and_every_path_are_done(tmp_path: Path) -> None:
    j = journal(tmp_path, paths=(PATH, "dc09:second"))
    j.commit([Batch(events=(make_event(i),)) for i in range(4)], now=1.0, link_down=False)
    j.mark_delivered([1, 2, 3, 4], now=2.0)  # MQTT done for all four
    assert j.prune(now=100.0) == 0, "no DC-09 path has sent anything yet"
    j.mark_path(PATH, PathMark(3, [(1, "acked"), (2, "duh"), (3, "acked")]), now=3.0)
    assert j.prune(now=100.0) == 0, "the second path still holds them"
    j.mark_path("dc09:second", PathMark(2, [(1, "acked"), (2, "acked")]), now=3.0)
    assert j.prune(now=100.0) == 2, "seq 1-2: MQTT and both paths done"
    assert [e.seq for e in j.events()] == [3, 4]
    assert j.path_outcomes(PATH) == [(3, "acked")], "outcome rows go with their events"
    assert j.db.execute("SELECT acked, duh FROM paths WHERE path = ?", (PATH,)).fetchone() == (2, 1)
    j.close()


def test_an_event_a_path_passed_waits_for_mqtt(tmp_path: Path) -> None:
    j = journal(tmp_path, events=2)
    j.mark_path(PATH, PathMark(2, [(1, "acked"), (2, "acked")]), now=3.0)
    assert j.prune(now=100.0) == 0, "not confirmed on MQTT"
    j.confirm("meldkamer", 1, [], ["meldkamer"], now=4.0)
    assert j.prune(now=100.0) == 1
    j.close()


def test_the_cursor_and_outcomes_survive_a_restart_and_never_move_back(tmp_path: Path) -> None:
    j = journal(tmp_path, events=3)
    j.mark_path(PATH, PathMark(2, [(2, "acked")]), now=3.0)  # seq 1 was not routed to the path
    j.mark_path(PATH, PathMark(1), now=4.0)
    j.close()
    j = journal(tmp_path)
    assert j.path_cursor(PATH) == 2
    assert j.path_outcomes(PATH) == [(2, "acked")]
    assert j.path_backlog(PATH, "1", ()) == (1, 1.0)
    j.close()


def test_a_path_not_configured_when_opened_is_an_error(tmp_path: Path) -> None:
    j = journal(tmp_path, paths=())
    with pytest.raises(Exception, match="no delivery path 'dc09:ats'"):
        j.path_cursor(PATH)
    j.close()


def keys(*points: str, **overrides: int) -> list[tuple[str, int | None, str]]:
    return [(p, overrides.get(p), f"points[{i}].dc09_zone") for i, p in enumerate(points)]


def test_zone_numbers_are_kept_when_points_are_added_reordered_or_removed(tmp_path: Path) -> None:
    j = journal(tmp_path)
    assert j.assign_dc09_numbers("zone", keys("a", "b", "c"), 999, now=1.0) == {"a": 1, "b": 2, "c": 3}
    # reordered, one removed, one added in front: the old ones keep theirs, the new one gets the lowest free
    # number that was never given (b's 2 is not reused)
    assert j.assign_dc09_numbers("zone", keys("new", "c", "a"), 999, now=2.0) == {"new": 4, "c": 3, "a": 1}
    j.close()
    j = journal(tmp_path)
    assert j.assign_dc09_numbers("zone", keys("a", "b"), 999, now=3.0) == {"a": 1, "b": 2}, "b is back: same zone"
    assert j.dc09_numbers("zone") == {"a": 1, "b": 2, "c": 3, "new": 4}
    assert j.assign_dc09_numbers("area", keys("jv", "az"), 99, now=3.0) == {"jv": 1, "az": 2}, "areas apart"
    j.close()


def test_overrides_win_and_derived_numbers_avoid_them(tmp_path: Path) -> None:
    j = journal(tmp_path)
    assert j.assign_dc09_numbers("zone", keys("a", "b", "c", b=1, c=3), 999, now=1.0) == {"a": 2, "b": 1, "c": 3}
    assert j.dc09_numbers("zone") == {"a": 2}, "an override is not stored: removing it derives a number then"
    with pytest.raises(NumberConflict, match=r"points\[1\].dc09_zone: zone number 2 is already 'a'"):
        j.assign_dc09_numbers("zone", keys("a", "x", x=2), 999, now=2.0)
    assert j.assign_dc09_numbers("zone", keys("a", "x", a=7, x=2), 999, now=2.0) == {"a": 7, "x": 2}
    with pytest.raises(NumberConflict, match="no free zone number up to 3"):
        j.assign_dc09_numbers("zone", keys("a", "p", "q", "r"), 3, now=3.0)
    assert j.dc09_numbers("zone") == {"a": 2}, "a refused assignment stores nothing"
    j.close()
