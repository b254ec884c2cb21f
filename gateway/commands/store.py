"""The durable record of commands: each command_id with its latest result, surviving restarts.

Why its own SQLite file next to the journal (`<data_dir>/<site>.commands.sqlite3`): a repeated command_id
must be answered from the record even after a restart, a command interrupted by a crash must be reported
as such, and results that could not be published (link down) are published on the next connection. The
journal holds the audit trail; this table only answers "have we seen this id, and what came of it".
All calls run on one worker thread so the event loop never waits on an fsync.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.config.models import SiteConfig
from gateway.domain.errors import GatewayError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    result TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
)
"""


class CommandStoreError(GatewayError):
    """The command record could not be read or written."""


@dataclass(frozen=True, slots=True)
class Stored:
    command_id: str
    status: str
    result: str  # the CommandResultDoc JSON last decided for this command
    published: bool


def store_path(site: SiteConfig) -> Path:
    return site.journal.data_dir / f"{site.site.id}.commands.sqlite3"


class CommandStore:
    def __init__(self, path: Path, *, retention: float) -> None:
        self.path = path
        self.retention = retention
        self._db: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcmk-commands")

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise CommandStoreError(f"command record {self.path}: {exc}") from exc

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_SCHEMA)
        db.execute("DELETE FROM commands WHERE updated_at < ? AND status != 'accepted'",
                   (time.time() - self.retention,))
        self._db = db

    async def close(self) -> None:
        """Closes the database; `open` (or any call) opens it again (the supervisor may restart the owner)."""
        await self._call(self._close)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._open()
        assert self._db is not None
        return self._db

    async def get(self, command_id: str) -> Stored | None:
        row = await self._call(self._get, command_id)
        return None if row is None else Stored(row[0], row[1], row[2], bool(row[3]))

    def _get(self, command_id: str) -> tuple[str, str, str, int] | None:
        row: tuple[str, str, str, int] | None = self._conn().execute(
            "SELECT command_id, status, result, published FROM commands WHERE command_id = ?", (command_id,)
        ).fetchone()
        return row

    async def put(self, command_id: str, status: str, result: str) -> None:
        """Records the latest result of a command (durable when this returns), as not yet published."""
        await self._call(self._put, command_id, status, result)

    def _put(self, command_id: str, status: str, result: str) -> None:
        self._conn().execute(
            "INSERT INTO commands (command_id, status, result, published, updated_at) VALUES (?, ?, ?, 0, ?)"
            " ON CONFLICT(command_id) DO UPDATE SET status = excluded.status, result = excluded.result,"
            " published = 0, updated_at = excluded.updated_at",
            (command_id, status, result, time.time()),
        )

    async def mark_published(self, command_id: str, result: str) -> None:
        await self._call(self._mark_published, command_id, result)

    def _mark_published(self, command_id: str, result: str) -> None:
        self._conn().execute(
            "UPDATE commands SET published = 1 WHERE command_id = ? AND result = ?", (command_id, result)
        )

    async def unpublished(self) -> list[Stored]:
        rows = await self._call(self._select, "published = 0")
        return [Stored(r[0], r[1], r[2], bool(r[3])) for r in rows]

    async def interrupted(self) -> list[Stored]:
        """Commands accepted by an earlier run that never got their final result (a crash mid-command)."""
        rows = await self._call(self._select, "status = 'accepted'")
        return [Stored(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def _select(self, where: str) -> list[tuple[str, str, str, int]]:
        rows: list[tuple[str, str, str, int]] = self._conn().execute(
            f"SELECT command_id, status, result, published FROM commands WHERE {where} ORDER BY updated_at"
        ).fetchall()
        return rows
