"""A journal on a disk that fails on demand, for the journal-failure tests.

Two kinds, as the `failing_disk` fixture's parameter:
- `disk_full`: the journal lives on a small tmpfs of its own (`mount -t tmpfs`, needs root: skipped where
  mounting is not permitted). `fail()` fills it up with a filler file, so SQLite's next write gets a real
  ENOSPC ("database or disk is full"); `recover()` deletes the filler. Nothing in the journal is faked.
- `io_error`: a `Journal` whose connection is wrapped: while failing, every writing statement raises
  sqlite3.OperationalError("disk I/O error"), as a dying disk does; the journal maps it to JournalError
  like any other SQLite error. Reads go through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.models import SiteConfig
from gateway.delivery.journal import Journal
from gateway.delivery.sink import journal_path

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN", "CREATE", "DROP")


class _FailingConnection:
    """Passes everything to the real connection, except writing statements while `disk.failing`."""

    def __init__(self, db: sqlite3.Connection, disk: FailingDisk) -> None:
        self._db = db
        self._disk = disk

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self._disk.failing and sql.lstrip().upper().startswith(self._disk.statements):
            self._disk.refused += 1
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class _IoErrorJournal(Journal):
    def __init__(self, disk: FailingDisk, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._disk = disk

    def open(self) -> None:
        super().open()
        self._db = _FailingConnection(self.db, self._disk)  # type: ignore[assignment]


class FailingDisk:
    """See the module docstring. `path` is the journal's data_dir; `journal(site)` the journal to hand to
    DeliverySink(journal=...)."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.path = root / "disk"
        self.path.mkdir(parents=True)
        self.failing = False
        self.refused = 0  # io_error: writing statements refused
        self.statements = WRITES  # io_error: the statements that fail (e.g. only BEGIN and UPDATE: the marks)
        self._mounted = False
        self._filler = self.path / "filler"

    def mount(self) -> None:
        if self.kind != "disk_full":
            return
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "gcmk-test-journal", str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs for the disk-full test (needs root): {result.stderr.strip()}")
        self._mounted = True

    def unmount(self) -> None:
        if self._mounted:
            # lazy: a test that failed half-way may leave the journal open; the tmpfs goes once it is closed
            subprocess.run(["umount", "-l", str(self.path)], check=True)
            self._mounted = False

    def journal(self, site: SiteConfig) -> Journal:
        args = (journal_path(site),)
        kwargs: dict[str, Any] = {
            "site": site.site.id,
            "max_bytes": site.journal.max_bytes,
            "retention": site.journal.retention,
        }
        if self.kind == "io_error":
            return _IoErrorJournal(self, *args, **kwargs)
        return Journal(*args, **kwargs)

    def fail(self) -> None:
        self.failing = True
        if self.kind == "disk_full":
            fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:  # 4 KiB at a time: tmpfs allocates whole pages, so nothing is left over
                    os.write(fd, bytes(4096))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
            finally:
                os.close(fd)

    def recover(self) -> None:
        self.failing = False
        if self.kind == "disk_full":
            self._filler.unlink()


@contextlib.contextmanager
def failing_disk_of(kind: str, root: Path) -> Iterator[FailingDisk]:
    disk = FailingDisk(kind, root)
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()


@pytest.fixture(params=["disk_full", "io_error"])
def failing_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FailingDisk]:
    with failing_disk_of(str(request.param), tmp_path) as disk:
        yield disk
