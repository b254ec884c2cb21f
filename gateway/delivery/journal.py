"""The durable store-and-forward journal: SQLite in WAL mode with `synchronous=FULL`.

An event counts as received only once its commit returned: `commit` writes a whole group of batches
(events + the normaliser's state rows) in ONE transaction, assigning `seq` gap-free per site from a
counter kept in the same database, so numbering survives restarts and pruning. Delivered events are kept
for the retention period (audit, replay), then pruned. Beyond the disk bound only `info` events are shed
(never command audit records: see `sheddable`).

The class is synchronous. SQL runs on one thread only (the delivery sink's journal thread, through an
executor, never on the event loop); `plan` (numbering, serialising: pure Python, no SQL) runs on the loop's
thread so that the journal thread spends its time in SQLite's C code, which releases the GIL. Each commit
is a constant number of SQLite calls whatever its size (multi-row INSERT, JSON parameters).

The file records its schema version (`meta.schema_version`). `open` creates a new journal at SCHEMA_VERSION,
migrates an older one step by step (MIGRATIONS: one transaction per step, so a file is always at a version
it really has), and refuses one written by a newer gateway (JournalVersionError): this release cannot know
what that one changed, and the file may hold undelivered alarms, so it is left untouched.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gateway.core.events import make_event
from gateway.domain.errors import NotAccepted
from gateway.domain.event import Event, PointRef, SourceRef
from gateway.domain.state import NORMAL, UNKNOWN, Batch, DeviceState, PointState
from gateway.domain.taxonomy import Category, EventState, EventType

log = structlog.get_logger(__name__)

# The version of the file's tables. Any change to them raises it by one, with a step in MIGRATIONS (below)
# that brings a journal from the previous version to this one, and _SCHEMA describing the new version.
SCHEMA_VERSION = 3
PRUNE_CHUNK = 100  # rows per DELETE: one chunk holds the journal thread a few milliseconds (bench/bench_prune.py)
# The disk bound is measured (one SQLite call) only when an over-estimate of the growth since the last
# measurement could have crossed it, and at least every MEASURE_EVERY commits.
MEASURE_EVERY = 64
ROW_OVERHEAD = 256  # bytes per event row besides its payload (columns, b-tree and index entries), generous

# Version 1. A new journal is created from the current version's text; a migration step never uses it (it
# changes with the next version): each step carries the statements of its own version.
_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    category TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload TEXT NOT NULL,
    journaled_at REAL NOT NULL,
    link_down INTEGER NOT NULL,
    delivered_at REAL,
    detected_at REAL
);
CREATE INDEX IF NOT EXISTS events_undelivered ON events(seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS events_delivered ON events(delivered_at) WHERE delivered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS points (
    point_id TEXT PRIMARY KEY,
    condition TEXT NOT NULL,
    value TEXT,
    since TEXT NOT NULL,
    last_key TEXT,
    as_of_seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    published_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, online INTEGER NOT NULL, since TEXT NOT NULL);
"""
# Version 2: meldkamer confirmation. `delivered_at` now means confirmed by every required receiver (or the
# PUBACK with `delivery.confirm: broker`); `published_at` / `publishes` record PUBACKs, so that an event
# published but unconfirmed is published again after the confirm timeout; per receiver its cumulative
# confirmation and the isolated seqs it confirmed beyond it.
_V2_CHANGES = """
ALTER TABLE events ADD COLUMN published_at REAL;
ALTER TABLE events ADD COLUMN publishes INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS events_unconfirmed ON events(published_at)
    WHERE delivered_at IS NULL AND published_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS confirmations (receiver TEXT PRIMARY KEY, up_to_seq INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS confirmed_seqs (receiver TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (receiver, seq));
"""
# Version 3: delivery per path (SIA DC-09 receivers beside the MQTT path, docs/dc09.md). The MQTT path keeps its
# columns (`delivered_at` = confirmed on MQTT); each further path has a cursor (every seq up to it was handled:
# ACKed, DUH'd, or not routed to it) and one outcome row per event it sent. An event may be pruned only when
# it is delivered on MQTT and every configured path's cursor has passed it. `dc09_numbers` is the site's zone
# and area table: numbers assigned when first seen, never deleted, so never given to another point.
_V3_CHANGES = """
CREATE TABLE IF NOT EXISTS paths (
    path TEXT PRIMARY KEY,
    up_to_seq INTEGER NOT NULL,
    at REAL NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    duh INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS path_outcomes (
    seq INTEGER NOT NULL, path TEXT NOT NULL, outcome TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (seq, path)
);
CREATE TABLE IF NOT EXISTS dc09_numbers (
    kind TEXT NOT NULL, key TEXT NOT NULL, number INTEGER NOT NULL, assigned_at REAL NOT NULL,
    PRIMARY KEY (kind, key), UNIQUE (kind, number)
);
"""
_SCHEMA = _SCHEMA_1 + _V2_CHANGES + _V3_CHANGES  # the tables of SCHEMA_VERSION
NO_PATH_FLOOR = 1 << 62  # the path floor when MQTT is the only path (SQLite integers are 64-bit)
MAX_REPUBLISH_FACTOR = 32  # the confirm timeout doubles per publication of an event, up to this factor


class JournalError(NotAccepted):
    """The journal could not be opened or written (disk full, I/O error, corrupt file). A NotAccepted: a batch
    whose commit failed is not consumed, its readings are offered again."""


class JournalVersionError(JournalError):
    """The journal file has a schema version newer than this gateway's: written by a newer release."""

    def __init__(self, path: Path, found: int, supported: int) -> None:
        super().__init__(
            f"journal {path} has schema version {found}, newer than the versions up to {supported} this gateway"
            f" release knows: it was written by a newer release. Run that release (or a newer one) again; do"
            f" not delete the file, it may hold undelivered events. To go back to this release, first let the"
            f" newer one deliver everything (journal depth 0), then move the file aside"
        )
        self.path = path
        self.found = found
        self.supported = supported


# --- schema versions ---------------------------------------------------------------------------------------

Migration = Callable[[sqlite3.Connection], None]


def _statements(script: str) -> list[str]:
    """A script as single statements: `executescript` would COMMIT the migration's transaction first."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def _tables(db: sqlite3.Connection) -> set[str]:
    return {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _unversioned_to_1(db: sqlite3.Connection) -> None:
    """0 -> 1. Version 0 is a journal that does not record its version: written before the journal did, or
    interrupted between creating its tables and recording the version. Creates what is missing of version
    1; `events.detected_at` was the last column added before versions were recorded."""
    if "events" in _tables(db):
        columns = {str(row[1]) for row in db.execute("PRAGMA table_info(events)")}
        if "detected_at" not in columns:
            db.execute("ALTER TABLE events ADD COLUMN detected_at REAL")
    for statement in _statements(_SCHEMA_1):
        db.execute(statement)


def _1_to_2(db: sqlite3.Connection) -> None:
    """1 -> 2: meldkamer confirmation. Events a version-1 gateway marked delivered on PUBACK stay delivered
    (they were published then); undelivered ones are published again and confirmed from now on."""
    for statement in _statements(_V2_CHANGES):
        db.execute(statement)
    db.execute("UPDATE events SET published_at = delivered_at, publishes = 1 WHERE delivered_at IS NOT NULL")


def _2_to_3(db: sqlite3.Connection) -> None:
    """2 -> 3: delivery per path. No path but MQTT existed: nothing to convert; a path configured later starts
    at the journal's last seq then (see `Journal.open`)."""
    for statement in _statements(_V3_CHANGES):
        db.execute(statement)


# MIGRATIONS[n] brings a journal from schema version n to n + 1 (inside a transaction of `migrate`, which
# records the new version in the same transaction; a step must not COMMIT).
MIGRATIONS: tuple[Migration, ...] = (_unversioned_to_1, _1_to_2, _2_to_3)
assert len(MIGRATIONS) == SCHEMA_VERSION, "one migration step per schema version"


def stored_version(db: sqlite3.Connection, path: Path) -> int | None:
    """The schema version of an open journal file; None for a new (empty) file, 0 for one that does not
    record its version."""
    tables = _tables(db)
    if not tables:
        return None
    if not tables & {"meta", "events"}:
        raise JournalError(f"{path} is an SQLite database but not a journal (no meta or events table)")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() if "meta" in tables else None
    if row is None:
        return 0
    try:
        return int(row[0])
    except ValueError:
        raise JournalError(f"journal {path}: schema_version {row[0]!r} is not a number (damaged file?)") from None


def migrate(db: sqlite3.Connection, path: Path, found: int, steps: Sequence[Migration] = MIGRATIONS) -> int:
    """Brings a journal from schema version `found` to `len(steps)`, one transaction per step holding the
    step and its new version number; returns the version reached. A failing step rolls back to the version
    before it and raises JournalError."""
    for version in range(found, len(steps)):
        try:
            with _Transaction(db):
                steps[version](db)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version + 1),))
        except sqlite3.Error as exc:
            raise JournalError(
                f"cannot migrate journal {path} from schema version {version} to {version + 1}: {exc}"
            ) from exc
        log.info("journal migrated", path=str(path), from_version=version, to_version=version + 1)
    return max(found, len(steps))


@dataclass(frozen=True, slots=True)
class Journaled:
    """One committed event as the publisher needs it: JSON ready to send (with seq, buffered false)."""

    seq: int
    event_id: str
    category: str
    priority: int
    payload: str
    journaled_at: float  # wall clock (epoch seconds): survives restarts
    link_down: bool  # the MQTT link was down when it was journaled: it will be delivered late
    detected_at: float = 0.0  # the event's detected_at (epoch seconds): end-to-end latency starts there


@dataclass(frozen=True, slots=True)
class StateDoc:
    """A point's current state to publish retained; `version` increments on each change."""

    point_id: str
    condition: str
    value: int | str | None
    since: datetime
    as_of_seq: int
    version: int


@dataclass(slots=True)
class CommitResult:
    per_batch: list[list[Event]] = field(default_factory=list)  # the callers' events with seq
    journaled: list[Journaled] = field(default_factory=list)  # everything committed, incl. announcements
    states: list[StateDoc] = field(default_factory=list)
    shed: int = 0


@dataclass(slots=True)
class Plan:
    """A commit prepared by `Journal.plan`, written by `Journal.write`."""

    result: CommitResult
    over: bool  # beyond the disk bound: info events shed
    last_seq: int  # before this plan, to roll back to
    versions: dict[str, int] = field(default_factory=dict)  # point versions before this plan
    rows: list[list[object]] = field(default_factory=list)
    growth: int = 0  # over-estimate of the bytes this plan adds to the database
    points: list[list[object]] = field(default_factory=list)
    devices: list[list[object]] = field(default_factory=list)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def sheddable(event: Event) -> bool:
    """Only information events may be shed; alarms, restores and supervision events never, and neither
    the audit records of operator commands (`command`, info, some in the access category)."""
    return (
        event.state is EventState.INFO
        and event.category is not Category.SUPERVISION
        and event.type is not EventType.COMMAND
    )


class NumberConflict(JournalError):
    """The site config's DC-09 numbers cannot be reconciled with the journal's zone table (an override that
    another point already holds, or the numbering range exhausted): a config problem, raised before sending."""

    def __init__(self, config_path: str, problem: str) -> None:
        super().__init__(f"{config_path}: {problem}")
        self.config_path = config_path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class PathMark:
    """Progress of one path: every seq up to `up_to_seq` is handled; `outcomes` are the events it sent."""

    up_to_seq: int
    outcomes: Sequence[tuple[int, str]] = ()  # (seq, "acked" | "duh" | "unmapped")
    # The DC-09 message sequence number last used, kept with the outcome: a restarted path goes on from it (a
    # receiver takes a repeated number from the same account for a retransmission and may drop the message).
    message_seq: int | None = None


class Journal:
    """SQLite journal of one site. Not thread-safe: use it from one thread only. `paths` are the delivery
    paths besides MQTT (e.g. `dc09:meldkamer-ats`) that must each pass an event before it may be pruned."""

    def __init__(
        self, path: Path, *, site: str, max_bytes: int, retention: float, paths: Sequence[str] = ()
    ) -> None:
        self.path = Path(path)
        self.paths = tuple(paths)
        self.path_floor = NO_PATH_FLOOR  # every configured path has handled every seq up to this one
        self.site = site
        self.max_bytes = max_bytes
        self.retention = retention
        self._db: sqlite3.Connection | None = None
        self.last_seq = 0
        self.depth = 0  # undelivered events (with confirm: meldkamer, unconfirmed)
        self.confirmed_seq = 0  # every seq up to this one is confirmed by all required receivers
        self.shed_total = 0
        self.shedding = False
        self._page_size = 4096
        self._versions: dict[str, int] = {}
        self.over_bound = False  # measured after commits (and at open): the next plan sheds info events
        self._used = 0  # bytes in use at the last measurement
        self._growth = 0  # over-estimated bytes added since then
        self._unmeasured_commits = 0

    # --- lifecycle ---------------------------------------------------------------------------------------

    def open(self) -> None:
        """Opens the file, creating, migrating or refusing it by its schema version (see the module's
        docstring): JournalVersionError for a journal written by a newer release; JournalError naming the
        directory when it cannot be created or used (a file in its place, no permission, a read-only file
        system), so `run` says so in one line."""
        db: sqlite3.Connection | None = None
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # NotADirectoryError, FileExistsError, PermissionError, EROFS, ...
            raise JournalError(f"cannot create the journal directory {directory}: {exc.strerror or exc}") from None
        if not directory.is_dir():
            raise JournalError(f"cannot create the journal directory {directory}: it is a file, not a directory")
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            found = stored_version(db, self.path)  # before anything is written to the file
            if found is not None and found > SCHEMA_VERSION:
                raise JournalVersionError(self.path, found, SCHEMA_VERSION)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=8388608")
            if found is None:
                with _Transaction(db):
                    for statement in _statements(_SCHEMA):
                        db.execute(statement)
                    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            else:
                migrate(db, self.path, found)
            self._db = db
            self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            # meta.last_seq is written when events are deleted (pruning), not with every commit: the highest
            # seq is the larger of the two.
            max_seq = db.execute("SELECT MAX(seq) FROM events").fetchone()[0]
            self.last_seq = max(int(self._meta("last_seq", "0")), int(max_seq or 0))
            self.shed_total = int(self._meta("shed_total", "0"))
            self.shedding = self._meta("shedding", "0") == "1"
            self.depth = int(db.execute("SELECT COUNT(*) FROM events WHERE delivered_at IS NULL").fetchone()[0])
            self._versions = {str(r[0]): int(r[1]) for r in db.execute("SELECT point_id, version FROM points")}
            self._open_paths(time.time())
            self.over_bound = self._over_bound()
        except (sqlite3.Error, OSError, JournalError) as exc:
            self._db = None
            if db is not None:
                db.close()
            if isinstance(exc, JournalError):
                raise
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc

    def _open_paths(self, now: float) -> None:
        """A configured path seen for the first time starts at the last seq: it carries what comes from now
        on, not the history the MQTT path already delivered."""
        if self.paths:
            _insert_many(
                self.db,
                "INSERT OR IGNORE INTO paths (path, up_to_seq, at) VALUES",
                [[path, self.last_seq, now] for path in self.paths],
            )
        self._refresh_path_floor()

    def _refresh_path_floor(self) -> None:
        if not self.paths:
            self.path_floor = NO_PATH_FLOOR  # no path besides MQTT: never holds anything back
            return
        row = self.db.execute(
            "SELECT MIN(up_to_seq) FROM paths WHERE path IN (SELECT value FROM json_each(?))",
            (json.dumps(self.paths),),
        ).fetchone()
        self.path_floor = int(row[0]) if row and row[0] is not None else 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError("journal is not open")
        return self._db

    def _meta(self, key: str, default: str) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    # --- state table -------------------------------------------------------------------------------------

    def load_state(self) -> tuple[list[PointState], list[DeviceState]]:
        points = [
            PointState(
                point_id=row[0],
                condition=row[1],
                value=None if row[2] is None else json.loads(row[2]),
                since=datetime.fromisoformat(row[3]),
                last_key=row[4],
            )
            for row in self.db.execute("SELECT point_id, condition, value, since, last_key FROM points")
        ]
        devices = [
            DeviceState(device_id=row[0], online=bool(row[1]), since=datetime.fromisoformat(row[2]))
            for row in self.db.execute("SELECT device_id, online, since FROM devices")
        ]
        return points, devices

    def dirty_states(self) -> list[StateDoc]:
        """State rows changed since they were last published (PUBACK), e.g. before a restart."""
        rows = self.db.execute(
            "SELECT point_id, condition, value, since, as_of_seq, version FROM points"
            " WHERE version > published_version ORDER BY as_of_seq"
        )
        return [_state_doc(row) for row in rows]

    def mark_states_published(self, published: Iterable[tuple[str, int]]) -> None:
        rows = list(published)
        if not rows:
            return
        with self._transaction():
            self.db.execute(
                "UPDATE points SET published_version = MAX(published_version, j.value->>1)"
                " FROM json_each(?) AS j WHERE points.point_id = j.value->>0",
                (json.dumps(rows),),
            )

    # --- events ------------------------------------------------------------------------------------------

    def commit(
        self,
        batches: Sequence[Batch],
        *,
        now: float,
        link_down: bool,
        handed_at: Sequence[float] | None = None,
    ) -> CommitResult:
        """Journals a group of batches in one transaction (one fsync); returns what was committed."""
        plan = self.plan(batches, now=now, link_down=link_down, handed_at=handed_at)
        self.write(plan)
        return plan.result

    def plan(
        self,
        batches: Sequence[Batch],
        *,
        now: float,
        link_down: bool,
        handed_at: Sequence[float] | None = None,
    ) -> Plan:
        """The Python half of a commit (numbering, serialising; no SQL), for the event loop's thread.

        Splitting it from `write` keeps the journal thread in SQLite's C code, which runs without the GIL:
        a thread serialising events would contend for the GIL with the event loop at every system call.
        `handed_at` (per batch, default `now`) is when each batch was handed to the sink: the age used for
        `buffered` starts there (latency starts at each event's `detected_at`). Only one plan may be
        outstanding (the single writer).
        """
        plan = Plan(result=CommitResult(), over=self.over_bound, last_seq=self.last_seq)
        times = list(handed_at) if handed_at is not None else [now] * len(batches)
        over, number, per_batch = plan.over, self._number, plan.result.per_batch  # hot loop: locals
        for batch, at in zip(batches, times, strict=True):
            kept: list[Event] = []
            for event in batch.events:
                if over and sheddable(event):
                    plan.result.shed += 1
                    continue
                kept.append(number(event, at, link_down, plan))
            per_batch.append(kept)
            if batch.points or batch.devices:
                self._states(batch, plan)
        if plan.over != self.shedding:
            self._number(self._shed_announcement(plan.over, now), now, link_down, plan)
        return plan

    def write(self, plan: Plan) -> None:
        """The SQL half of a commit: one transaction, a constant number of SQLite calls whatever its size.

        Each SQLite call releases the GIL and must take it back from a busy event loop, so the common commit
        (events only, up to MAX_ROWS_PER_INSERT) is ONE statement, atomic and fsync'd on its own in
        autocommit mode; state rows, more events or a change of the shedding counters take a transaction.
        """
        meta: list[tuple[str, str]] = []
        if plan.result.shed:
            meta.append(("shed_total", str(self.shed_total + plan.result.shed)))
        if plan.over != self.shedding:
            meta.append(("shedding", "1" if plan.over else "0"))
        try:
            if len(plan.rows) <= MAX_ROWS_PER_INSERT and not (plan.points or plan.devices or meta):
                self._write(plan.rows, plan.points, plan.devices)  # one statement: its own transaction
            else:
                with self._transaction():
                    self._write(plan.rows, plan.points, plan.devices)
                    if meta:
                        self._set_meta_many(meta)
        except sqlite3.Error as exc:
            self.last_seq = plan.last_seq
            self._versions.update(plan.versions)
            raise JournalError(f"journal commit failed: {exc}") from exc
        self.shed_total += plan.result.shed
        self.shedding = plan.over
        self.depth += len(plan.result.journaled)
        self._growth += plan.growth
        self._unmeasured_commits += 1
        if self.over_bound or self._used + self._growth >= self.max_bytes or self._unmeasured_commits >= MEASURE_EVERY:
            try:
                self.over_bound = self._over_bound()
            except sqlite3.Error as exc:
                # The commit above is durable: failing its callers now would make them offer the same
                # readings again (a duplicate alarm). The bound is measured again with the next commit.
                log.error("journal_size_check_failed", error=str(exc))

    def _number(self, event: Event, at: float, link_down: bool, plan: Plan) -> Event:
        seq = self.last_seq = self.last_seq + 1
        numbered = event.with_seq(seq)
        payload = numbered.to_json()  # serialised once: journaled, and published as it is
        event_id = str(event.event_id)
        detected = event.detected_at.timestamp()
        category = event.category.value
        priority = event.priority
        plan.rows.append([seq, event_id, category, event.state.value, priority, payload, at, link_down, detected])
        plan.growth += 2 * len(payload) + ROW_OVERHEAD
        plan.result.journaled.append(Journaled(seq, event_id, category, priority, payload, at, link_down, detected))
        return numbered

    def _states(self, batch: Batch, plan: Plan) -> None:
        for point in batch.points:
            plan.versions.setdefault(point.point_id, self._versions.get(point.point_id, 0))
            version = self._versions.get(point.point_id, 0) + 1
            self._versions[point.point_id] = version
            value = None if point.value is None else json.dumps(point.value)
            plan.points.append(
                [point.point_id, point.condition, value, _iso(point.since), point.last_key, self.last_seq, version]
            )
            plan.result.states.append(
                StateDoc(point.point_id, point.condition, point.value, point.since, self.last_seq, version)
            )
        for device in batch.devices:
            plan.devices.append([device.device_id, int(device.online), _iso(device.since)])

    def _write(self, rows: list[list[object]], points: list[list[object]], devices: list[list[object]]) -> None:
        _insert_many(
            self.db,
            "INSERT INTO events (seq, event_id, category, state, priority, payload, journaled_at, link_down,"
            " detected_at) VALUES",
            rows,
        )
        _insert_many(
            self.db,
            "INSERT INTO points (point_id, condition, value, since, last_key, as_of_seq, version) VALUES",
            points,
            " ON CONFLICT(point_id) DO UPDATE SET condition = excluded.condition, value = excluded.value,"
            " since = excluded.since, last_key = excluded.last_key, as_of_seq = excluded.as_of_seq,"
            " version = excluded.version",
        )
        _insert_many(self.db, "INSERT OR REPLACE INTO devices (device_id, online, since) VALUES", devices)

    def _set_meta_many(self, items: list[tuple[str, str]]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO meta SELECT value->>0, value->>1 FROM json_each(?)", (json.dumps(items),)
        )

    def _shed_announcement(self, starting: bool, now: float) -> Event:
        at = datetime.fromtimestamp(now, UTC)
        state = EventState.ALARM if starting else EventState.RESTORE
        text = (
            f"journal disk bound of {self.max_bytes} bytes reached: info events are being shed"
            if starting
            else f"journal below its disk bound again; {self.shed_total} info events shed in total"
        )
        return make_event(
            site=self.site,
            event_type=EventType.INFO_SHED,
            state=state,
            point=PointRef(id="gateway.journal", name="gateway journal"),
            source=SourceRef(protocol="gateway", device_id="gateway", address=str(self.path)),
            occurred_at=at,
            detected_at=at,
            text=text,
        )

    def mark_delivered(self, seqs: Sequence[int], now: float) -> int:
        """Marks events published and delivered (`delivery.confirm: broker`: the PUBACK is enough); returns how
        many were newly delivered."""
        if not seqs:
            return 0
        with self._transaction():
            cursor = self.db.execute(
                "UPDATE events SET delivered_at = ?, published_at = ?, publishes = publishes + 1"
                " WHERE seq IN (SELECT value FROM json_each(?)) AND delivered_at IS NULL",
                (now, now, json.dumps(list(seqs))),
            )
            marked = cursor.rowcount
        return self._delivered(marked)

    def mark_published(self, seqs: Sequence[int], now: float) -> int:
        """PUBACKs under `delivery.confirm: meldkamer`: the broker has them, the receivers may not; the confirm
        timeout runs from now. Returns how many were marked."""
        if not seqs:
            return 0
        cursor = self.db.execute(
            "UPDATE events SET published_at = ?, publishes = publishes + 1"
            " WHERE seq IN (SELECT value FROM json_each(?)) AND delivered_at IS NULL",
            (now, json.dumps(list(seqs))),
        )
        return cursor.rowcount

    def confirm(self, receiver: str, up_to_seq: int, seqs: Sequence[int], required: Sequence[str], now: float) -> int:
        """A receiver's confirmation: records it (cumulative, never moving back) and marks delivered every
        event that all `required` receivers have confirmed. Returns how many became delivered."""
        db = self.db
        with self._transaction():
            db.execute(
                "INSERT INTO confirmations (receiver, up_to_seq, at) VALUES (?, ?, ?) ON CONFLICT (receiver) DO"
                " UPDATE SET up_to_seq = MAX(up_to_seq, excluded.up_to_seq), at = excluded.at",
                (receiver, up_to_seq, now),
            )
            floors = dict(db.execute("SELECT receiver, up_to_seq FROM confirmations"))
            own = int(floors[receiver])
            db.execute("DELETE FROM confirmed_seqs WHERE receiver = ? AND seq <= ?", (receiver, own))
            beyond = sorted({s for s in seqs if s > own})
            if beyond:
                _insert_many(
                    db, "INSERT OR IGNORE INTO confirmed_seqs (receiver, seq) VALUES", [[receiver, s] for s in beyond]
                )
            floor = min(int(floors.get(r, 0)) for r in required)
            marked = db.execute(
                "UPDATE events SET delivered_at = ? WHERE seq <= ? AND delivered_at IS NULL", (now, floor)
            ).rowcount
            if beyond:  # isolated seqs that every required receiver holds, by cumulative or isolated confirmation
                held = {
                    (str(r), int(q))
                    for r, q in db.execute(
                        "SELECT receiver, seq FROM confirmed_seqs WHERE seq IN (SELECT value FROM json_each(?))",
                        (json.dumps(beyond),),
                    )
                }
                done = [s for s in beyond if all(s <= int(floors.get(r, 0)) or (r, s) in held for r in required)]
                if done:
                    marked += db.execute(
                        "UPDATE events SET delivered_at = ? WHERE seq IN (SELECT value FROM json_each(?))"
                        " AND delivered_at IS NULL",
                        (now, json.dumps(done)),
                    ).rowcount
        self.confirmed_seq = floor
        return self._delivered(marked)

    def _delivered(self, marked: int) -> int:
        self.depth = max(0, self.depth - marked)
        if marked and self.over_bound:  # delivered events can now make room
            self.over_bound = self._over_bound()
        return marked

    def confirmed_up_to(self, required: Sequence[str]) -> int:
        """The highest seq up to which every required receiver has confirmed (refreshes `confirmed_seq`)."""
        floors = dict(self.db.execute("SELECT receiver, up_to_seq FROM confirmations"))
        self.confirmed_seq = min(int(floors.get(r, 0)) for r in required)
        return self.confirmed_seq

    def published_up_to(self) -> int:
        """The highest seq the broker has acknowledged (of those still journaled)."""
        row = self.db.execute("SELECT MAX(seq) FROM events WHERE published_at IS NOT NULL").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def read_unconfirmed_json(self, now: float, timeout: float, limit: int) -> str:
        """Events published but still unconfirmed whose confirm timeout ran out (it doubles with each
        publication, up to MAX_REPUBLISH_FACTOR): priority 1-2 first, then by seq. One JSON text."""
        row = self.db.execute(
            "SELECT json_group_array(json_array(seq, event_id, category, priority, payload, journaled_at,"
            " link_down, IFNULL(detected_at, journaled_at))) FROM (SELECT * FROM events"
            " WHERE delivered_at IS NULL AND published_at IS NOT NULL AND published_at <= ?"
            " AND published_at + ? * MIN(1 << MAX(publishes - 1, 0), ?) <= ?"
            " ORDER BY priority > 2, seq LIMIT ?)",
            (now - timeout, timeout, MAX_REPUBLISH_FACTOR, now, limit),
        ).fetchone()
        return str(row[0]) if row and row[0] else "[]"

    def read_range_json(self, from_seq: int, to_seq: int, limit: int) -> str:
        """Journaled events (delivered or not) in from_seq..to_seq, for a replay. One JSON text."""
        row = self.db.execute(
            "SELECT json_group_array(json_array(seq, event_id, category, priority, payload, journaled_at,"
            " link_down, IFNULL(detected_at, journaled_at)))"
            " FROM (SELECT * FROM events WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?)",
            (from_seq, to_seq, limit),
        ).fetchone()
        return str(row[0]) if row and row[0] else "[]"

    def first_seq(self) -> int:
        """The lowest seq still journaled (last_seq + 1 when none is)."""
        row = self.db.execute("SELECT MIN(seq) FROM events").fetchone()
        return int(row[0]) if row and row[0] is not None else self.last_seq + 1

    def read_undelivered(self, from_seq: int, limit: int) -> list[Journaled]:
        return parse_page(self.read_undelivered_json(from_seq, limit))

    def read_undelivered_json(self, from_seq: int, limit: int) -> str:
        """Undelivered events from `from_seq` on as one JSON text (one SQLite call; parse with parse_page
        on the caller's thread, so the journal thread holds the GIL as little as possible)."""
        row = self.db.execute(
            "SELECT json_group_array(json_array(seq, event_id, category, priority, payload, journaled_at,"
            " link_down, IFNULL(detected_at, journaled_at)))"
            " FROM (SELECT * FROM events WHERE delivered_at IS NULL AND seq >= ? ORDER BY seq LIMIT ?)",
            (from_seq, limit),
        ).fetchone()
        return str(row[0]) if row and row[0] else "[]"

    def first_undelivered_seq(self) -> int:
        row = self.db.execute("SELECT MIN(seq) FROM events WHERE delivered_at IS NULL").fetchone()
        return int(row[0]) if row and row[0] is not None else self.last_seq + 1

    def oldest_undelivered_at(self) -> float | None:
        row = self.db.execute(
            "SELECT journaled_at FROM events WHERE delivered_at IS NULL ORDER BY seq LIMIT 1"
        ).fetchone()
        return float(row[0]) if row else None

    def events(self, from_seq: int = 1, limit: int = 1_000) -> list[Event]:
        """Journaled events (delivered or not) for audit and replay."""
        rows = self.db.execute("SELECT payload FROM events WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit))
        return [Event.from_json(r[0]) for r in rows]

    # --- bounds ------------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes in use by the database (the file's free pages are reused, so they do not count)."""
        row = self.db.execute(
            "SELECT p.page_count - f.freelist_count FROM pragma_page_count() AS p, pragma_freelist_count() AS f"
        ).fetchone()
        return int(row[0]) * self._page_size

    def _over_bound(self) -> bool:
        self._growth = 0
        self._unmeasured_commits = 0
        self._used = self.used_bytes()
        if self._used < self.max_bytes:
            return False
        # Delivered events are the cheapest to give up: prune them (oldest first) before shedding anything.
        while self._used >= self.max_bytes:
            with self._transaction():
                self._keep_last_seq()
                cursor = self.db.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE delivered_at IS NOT NULL"
                    " AND seq <= ? ORDER BY seq LIMIT ?)",
                    (self.path_floor, PRUNE_CHUNK),
                )
                self._prune_outcomes()
            if cursor.rowcount == 0:
                return True
            self._used = self.used_bytes()
        return False

    def _keep_last_seq(self) -> None:
        """Before events are deleted: the highest committed seq goes to meta, so numbering survives even
        when every event row is pruned (open() takes the larger of meta and the rows)."""
        self.db.execute(
            "INSERT OR REPLACE INTO meta SELECT 'last_seq', MAX(IFNULL((SELECT MAX(seq) FROM events), 0),"
            " IFNULL((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_seq'), 0))"
        )

    def prune(self, now: float, chunk: int = PRUNE_CHUNK) -> int:
        """Deletes at most `chunk` delivered events older than the retention; returns how many. ONE bounded
        transaction: the caller repeats it while it returns `chunk`, with the journal thread free for
        commits in between (an alarm's commit never waits behind a whole prune)."""
        cutoff = now - self.retention
        with self._transaction():
            self._keep_last_seq()
            cursor = self.db.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE delivered_at IS NOT NULL"
                " AND delivered_at < ? AND seq <= ? ORDER BY delivered_at LIMIT ?)",
                (cutoff, self.path_floor, chunk),
            )
            if cursor.rowcount:
                self._prune_outcomes()
        if cursor.rowcount:  # the WAL pages of the delete are checkpointed here, not by the next alarm's commit
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return cursor.rowcount

    def _prune_outcomes(self) -> None:
        """Outcome rows go with their events (inside the pruning transaction)."""
        self.db.execute(
            "DELETE FROM path_outcomes WHERE seq < IFNULL((SELECT MIN(seq) FROM events),"
            " (SELECT MAX(up_to_seq) + 1 FROM paths))"
        )

    # --- delivery paths besides MQTT (SIA DC-09) ---------------------------------------------------------

    def path_cursor(self, path: str) -> int:
        """Every seq up to this one is handled by `path` (a configured path; see `_open_paths`)."""
        row = self.db.execute("SELECT up_to_seq FROM paths WHERE path = ?", (path,)).fetchone()
        if row is None:
            raise JournalError(f"journal {self.path}: no delivery path {path!r} (not configured when opened)")
        return int(row[0])

    def mark_path(self, path: str, mark: PathMark, now: float) -> None:
        """Records a path's progress durably, in one transaction: its cursor (never moving back) and the
        outcome of each event it sent."""
        acked = sum(1 for _seq, outcome in mark.outcomes if outcome == "acked")
        duh = sum(1 for _seq, outcome in mark.outcomes if outcome == "duh")
        with self._transaction():
            self.db.execute(
                "UPDATE paths SET up_to_seq = MAX(up_to_seq, ?), at = ?, acked = acked + ?, duh = duh + ?"
                " WHERE path = ?",
                (mark.up_to_seq, now, acked, duh, path),
            )
            if mark.message_seq is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"message_seq:{path}", str(mark.message_seq))
                )
            if mark.outcomes:
                _insert_many(
                    self.db,
                    "INSERT OR REPLACE INTO path_outcomes (seq, path, outcome, at) VALUES",
                    [[seq, path, outcome, now] for seq, outcome in mark.outcomes],
                )
        self._refresh_path_floor()
        if self.over_bound:  # events passed by every path can now make room
            self.over_bound = self._over_bound()

    def path_message_seq(self, path: str) -> int:
        """The DC-09 sequence number `path` last used (0: none yet)."""
        return int(self._meta(f"message_seq:{path}", "0"))

    def path_fault_active(self, path: str) -> bool:
        """A path_fault alarm of `path` was journaled and its restore not yet (survives restarts)."""
        return self._meta(f"path_fault:{path}", "0") == "1"

    def set_path_fault(self, path: str, active: bool) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"path_fault:{path}", "1" if active else "0"))

    def path_outcomes(self, path: str, from_seq: int = 1) -> list[tuple[int, str]]:
        """(seq, outcome) of the events `path` sent, from `from_seq` on (audit, tests)."""
        rows = self.db.execute(
            "SELECT seq, outcome FROM path_outcomes WHERE path = ? AND seq >= ? ORDER BY seq", (path, from_seq)
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    def path_backlog(self, path: str, where: str, params: Sequence[object]) -> tuple[int, float | None]:
        """Events beyond the path's cursor that its route (`where`: an SQL condition on the events table)
        selects: how many, and when the oldest was journaled."""
        row = self.db.execute(
            f"SELECT COUNT(*), MIN(journaled_at) FROM events WHERE seq > (SELECT up_to_seq FROM paths"
            f" WHERE path = ?) AND ({where})",
            (path, *params),
        ).fetchone()
        return int(row[0]), (None if row[1] is None else float(row[1]))

    # --- the DC-09 zone and area table -------------------------------------------------------------------

    def dc09_numbers(self, kind: str) -> dict[str, int]:
        """The stored (derived) numbers of `kind` ("zone": point ids, "area": tenant ids)."""
        rows = self.db.execute("SELECT key, number FROM dc09_numbers WHERE kind = ?", (kind,))
        return {str(r[0]): int(r[1]) for r in rows}

    def assign_dc09_numbers(
        self, kind: str, keys: Sequence[tuple[str, int | None, str]], limit: int, now: float
    ) -> dict[str, int]:
        """The effective number of each key: its override when the config gives one, else the number stored
        for it, else a new one: the lowest number from 1 that is neither stored (rows are never deleted, so a
        number is never given to a second key) nor an override of the config. `keys`: (key, override, the
        config path of the override). Raises NumberConflict when an override is another configured key's
        stored number, or `limit` is exceeded."""
        with self._transaction():
            stored = self.dc09_numbers(kind)
            holder = {number: key for key, number in stored.items()}
            overrides = {key: (number, where) for key, number, where in keys if number is not None}
            derived_in_use = {key for key, number, _where in keys if number is None}
            for key, (number, where) in overrides.items():
                other = holder.get(number)
                if other is not None and other != key and other in derived_in_use:
                    raise NumberConflict(
                        where,
                        f"{kind} number {number} is already {other!r}'s in the journal's {kind} table (gcmk-gateway"
                        f" dc09 zones): give {other!r} an override too, or choose a free number",
                    )
            taken = set(holder) | {number for number, _where in overrides.values()}
            result: dict[str, int] = {}
            new_rows: list[list[object]] = []
            candidate = 1
            for key, override, _where in keys:
                if override is not None:
                    result[key] = override
                    continue
                if key in stored:
                    result[key] = stored[key]
                    continue
                while candidate in taken:
                    candidate += 1
                if candidate > limit:
                    raise NumberConflict(
                        f"dc09 {kind}s", f"no free {kind} number up to {limit} for {key!r} (the table never reuses one)"
                    )
                taken.add(candidate)
                result[key] = candidate
                new_rows.append([kind, key, candidate, now])
            if new_rows:
                _insert_many(self.db, "INSERT INTO dc09_numbers (kind, key, number, assigned_at) VALUES", new_rows)
        return result

    # --- helpers -----------------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


MAX_ROWS_PER_INSERT = 500  # well under SQLite's limit of 32766 bound parameters


def _insert_many(db: sqlite3.Connection, head: str, rows: list[list[object]], tail: str = "") -> None:
    """Multi-row INSERT: one SQLite call per 500 rows (executemany would release the GIL once per row)."""
    for start in range(0, len(rows), MAX_ROWS_PER_INSERT):
        chunk = rows[start : start + MAX_ROWS_PER_INSERT]
        row = "(" + ",".join("?" * len(chunk[0])) + ")"
        params = [value for r in chunk for value in r]
        db.execute(f"{head} {','.join([row] * len(chunk))}{tail}", params)


def read_events_since(path: Path, since: datetime) -> list[Event]:
    """The journaled events detected at or after `since`, oldest first, read without writing anything (for
    reports such as the walk test). Safe while the gateway runs: a WAL reader does not block the writer.
    Events pruned after delivery (journal.retention) are gone."""
    if not path.is_file():
        raise JournalError(f"no journal at {path}")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {path}: {exc}") from exc
    try:
        rows = db.execute(
            "SELECT payload FROM events WHERE detected_at >= ? ORDER BY seq", (since.timestamp(),)
        ).fetchall()
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from exc
    finally:
        db.close()
    return [Event.from_json(row[0]) for row in rows]


def parse_page(text: str) -> list[Journaled]:
    return [Journaled(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7]) for r in json.loads(text)]


def _state_doc(row: Sequence[object]) -> StateDoc:
    raw = row[2]
    return StateDoc(
        point_id=str(row[0]),
        condition=str(row[1]),
        value=None if raw is None else json.loads(str(raw)),
        since=datetime.fromisoformat(str(row[3])),
        as_of_seq=int(str(row[4])),
        version=int(str(row[5])),
    )


def in_alarm(condition: str) -> bool:
    return condition not in (NORMAL, UNKNOWN)
