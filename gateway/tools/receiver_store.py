"""The receiver's durable store: the events it holds and, per site, which seqs those are.

A receiver confirms an event to the gateway only after this store committed it (SQLite, WAL,
`synchronous=FULL`), so that "confirmed" means "held by the meldkamer" across a crash of the receiver.
After a restart the receiver resumes from here: its position per site (a SeqTracker) is reloaded, so it
neither reports stored events as new nor loses track of its gaps.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.tools.seqtrack import SeqTracker

SCHEMA = """
CREATE TABLE IF NOT EXISTS positions (
    site TEXT PRIMARY KEY, up_to INTEGER NOT NULL, above TEXT NOT NULL, written_off TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    site TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL, received_at REAL NOT NULL,
    payload TEXT NOT NULL, PRIMARY KEY (site, seq)
);
"""


@dataclass(frozen=True, slots=True)
class Received:
    """One event to store: validated, of a known site, not held yet."""

    site: str
    seq: int
    event_id: str
    payload: str


class ReceiverStore:
    """Runs on one thread (the receiver's writer executor); every method is one transaction."""

    def __init__(self, directory: Path, receiver: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{receiver}.receiver.sqlite3"
        self._db: sqlite3.Connection | None = None

    def open(self) -> dict[str, SeqTracker]:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        self._db = db
        trackers = {}
        for site, up_to, above, written_off in db.execute("SELECT site, up_to, above, written_off FROM positions"):
            trackers[site] = SeqTracker(up_to, json.loads(above), [tuple(r) for r in json.loads(written_off)])
        return trackers

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("receiver store is not open")
        return self._db

    def store(self, events: Sequence[Received], positions: dict[str, SeqTracker]) -> None:
        """The events and the sites' new positions, atomically."""
        db = self.db
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO events (site, seq, event_id, received_at, payload) VALUES (?, ?, ?, ?, ?)",
                [(e.site, e.seq, e.event_id, now, e.payload) for e in events],
            )
            db.executemany(
                "INSERT OR REPLACE INTO positions (site, up_to, above, written_off) VALUES (?, ?, ?, ?)",
                [(site, t.up_to, json.dumps(t.above), json.dumps(t.written_off)) for site, t in positions.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def count(self, site: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events WHERE site = ?", (site,)).fetchone()[0])

    def event_ids(self, site: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT event_id FROM events WHERE site = ? ORDER BY seq", (site,))]
