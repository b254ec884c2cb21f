"""The journal file's schema version: recorded when created, older files migrated step by step, a file written
by a newer release refused at open (untouched, with a message naming the file, both versions and what to do)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.delivery.journal import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Journal,
    JournalError,
    JournalVersionError,
    Migration,
    migrate,
)
from gateway.domain.state import Batch
from tests.support.delivery_harness import SITE, make_event

# The journal as it was before it recorded a schema version (version 0): no detected_at column yet.
UNVERSIONED_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, category TEXT NOT NULL, state TEXT NOT NULL,
    priority INTEGER NOT NULL, payload TEXT NOT NULL, journaled_at REAL NOT NULL, link_down INTEGER NOT NULL,
    delivered_at REAL
);
CREATE TABLE points (
    point_id TEXT PRIMARY KEY, condition TEXT NOT NULL, value TEXT, since TEXT NOT NULL, last_key TEXT,
    as_of_seq INTEGER NOT NULL, version INTEGER NOT NULL, published_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE devices (device_id TEXT PRIMARY KEY, online INTEGER NOT NULL, since TEXT NOT NULL);
"""


def new_journal(path: Path) -> Journal:
    return Journal(path, site=SITE, max_bytes=1 << 30, retention=7 * 86400.0)


def schema_version(path: Path) -> str | None:
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else str(row[0])
    finally:
        db.close()


def write_unversioned_journal(path: Path, *, version_row: str | None) -> list[str]:
    """A version-0 journal holding events 1 and 2 (1 delivered) and meta.last_seq 2; returns their ids."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(UNVERSIONED_SCHEMA)
    ids = []
    for seq in (1, 2):
        event = make_event(seq).with_seq(seq)
        ids.append(str(event.event_id))
        db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (seq, str(event.event_id), event.category.value, event.state.value, event.priority, event.to_json(),
             1000.0 + seq, 1100.0 if seq == 1 else None),
        )
    db.execute("INSERT INTO meta VALUES ('last_seq', '2')")
    if version_row is not None:
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (version_row,))
    db.close()
    return ids


def test_a_new_journal_records_the_current_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = new_journal(path)
    j.open()
    j.commit([Batch(events=(make_event(1),))], now=1.0, link_down=False)
    j.close()
    assert schema_version(path) == str(SCHEMA_VERSION)
    j.open()  # reopening a current journal changes nothing
    assert j.last_seq == 1
    j.close()
    assert schema_version(path) == str(SCHEMA_VERSION)
    assert len(MIGRATIONS) == SCHEMA_VERSION


def test_a_journal_of_a_newer_release_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = new_journal(path)
    j.open()
    j.commit([Batch(events=(make_event(1),))], now=1.0, link_down=False)
    j.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    j.close()
    before = path.read_bytes()

    with pytest.raises(JournalVersionError) as info:
        j.open()
    error = info.value
    assert isinstance(error, JournalError)  # callers that handle journal errors handle this one too
    assert (error.path, error.found, error.supported) == (path, SCHEMA_VERSION + 1, SCHEMA_VERSION)
    message = str(error)
    assert f"journal {path} has schema version {SCHEMA_VERSION + 1}" in message, message
    assert f"up to {SCHEMA_VERSION}" in message and "written by a newer release" in message, message
    assert "Run that release" in message and "do not delete the file" in message, message
    assert path.read_bytes() == before, "a refused journal is not written to"
    assert schema_version(path) == str(SCHEMA_VERSION + 1)
    with pytest.raises(JournalError, match="not open"):
        _ = j.db  # the connection was closed, not kept half-open


@pytest.mark.parametrize("version_row", [None, "0"], ids=["no-version-recorded", "version-0"])
def test_an_older_journal_is_migrated_keeping_its_events_and_numbering(
    tmp_path: Path, version_row: str | None
) -> None:
    path = tmp_path / "j.sqlite3"
    ids = write_unversioned_journal(path, version_row=version_row)
    j = new_journal(path)
    j.open()
    assert schema_version(path) == str(SCHEMA_VERSION)
    columns = {row[1] for row in j.db.execute("PRAGMA table_info(events)")}
    assert "detected_at" in columns
    assert (j.last_seq, j.depth) == (2, 1)
    (undelivered,) = j.read_undelivered(1, 10)
    assert (undelivered.seq, undelivered.event_id) == (2, ids[1])
    assert undelivered.detected_at == undelivered.journaled_at == 1002.0  # no detection time before migration
    assert [str(e.event_id) for e in j.events()] == ids
    (new,) = j.commit([Batch(events=(make_event(3),))], now=2000.0, link_down=False).per_batch[0]
    assert new.seq == 3
    j.close()
    j.open()  # migrated once: the second open finds the current version
    assert j.last_seq == 3
    j.close()


def test_migration_runs_the_missing_steps_in_order_one_transaction_each(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    ran: list[int] = []

    def step(n: int) -> Migration:
        def run(conn: sqlite3.Connection) -> None:
            assert conn.in_transaction, "each step runs inside the migration's transaction"
            ran.append(n)
            conn.execute(f"CREATE TABLE t{n} (x)")

        return run

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE t3 (x)")
        conn.execute("SELECT * FROM no_such_table")

    steps = [step(0), step(1), step(2)]
    assert migrate(db, tmp_path / "m.sqlite3", 1, steps) == 3
    assert ran == [1, 2], "steps below the file's version are skipped"
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"

    with pytest.raises(JournalError, match=r"from schema version 3 to 4: no such table"):
        migrate(db, tmp_path / "m.sqlite3", 3, [*steps, broken])
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    assert not db.execute("SELECT name FROM sqlite_master WHERE name = 't3'").fetchall(), "the step rolled back"
    assert not db.in_transaction
    db.close()


def test_a_damaged_version_or_a_foreign_database_is_refused(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.sqlite3"
    write_unversioned_journal(damaged, version_row="zwei")
    with pytest.raises(JournalError, match=r"schema_version 'zwei' is not a number"):
        new_journal(damaged).open()

    foreign = tmp_path / "foreign.sqlite3"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE commands (id TEXT)")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match=r"not a journal"):
        new_journal(foreign).open()
    db = sqlite3.connect(foreign)
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"commands"}
    db.close()
