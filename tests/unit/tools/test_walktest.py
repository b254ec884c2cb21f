"""The walk-test report: from a real journal, which points were seen in alarm and restore since a time, which
were never exercised, and its CSV / HTML export (through the CLI)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.core.normaliser import Normaliser
from gateway.core.ports import Quality
from gateway.delivery.journal import Journal, JournalError, read_events_since
from gateway.delivery.sink import journal_path
from gateway.tools.walktest import parse_since, walk_report
from tests.support.logs import configured_logging
from tests.support.readings import SITE, T0, at
from tests.support.readings import read as _read
from tests.support.sites import MINIMAL_SITE

SINCE = at(10)


def _walked_journal(directory: Path) -> Path:
    """A journal of the minimal site with a walk test from T0+10s on, and an older alarm of pir-04 before it."""
    norm = Normaliser(SITE, epoch=T0)
    readings = [
        *(_read(p, 0, 0) for p in ("pir-01", "pir-02", "pir-03", "pir-04")),
        _read("door-1", "normal", 0),
        _read("badge-1", "none", 0),
        _read("pir-04", 1, 5),  # before the walk test: does not count
        _read("pir-04", 0, 6),
        _read("pir-01", 1, 20),  # walked: alarm and restore, twice
        _read("pir-01", 0, 21),
        _read("pir-01", 1, 30),
        _read("pir-01", 0, 31),
        _read("pir-02", 1, 40),  # alarm, no restore yet
        _read("door-1", "forced-open", 45),  # another condition of the door: its own type
        _read("door-1", "normal", 46),
        _read("badge-1", "granted", 50, occurrence="7"),  # momentary: one event is enough
        _read("pir-03", None, 55, Quality.UNAVAILABLE, text="device panel-1 has no object ..."),  # blind
    ]
    path = journal_path(SITE).name
    journal = Journal(directory / path, site=SITE.site.id, max_bytes=1 << 30, retention=7 * 86400.0)
    journal.open()
    try:
        for i, reading in enumerate(readings):
            batch = norm.process(reading)
            if batch:
                journal.commit([batch], now=float(i), link_down=False)
    finally:
        journal.close()
    return directory / path


def test_report_lists_exercised_and_unexercised_points_with_counts(tmp_path: Path) -> None:
    events = read_events_since(_walked_journal(tmp_path), SINCE)
    report = walk_report(SITE, events, SINCE)
    rows = {r["point"]: r for r in report.rows()}
    assert (rows["pir-01"]["status"], rows["pir-01"]["alarms"], rows["pir-01"]["restores"]) == ("exercised", "2", "2")
    assert rows["pir-01"]["first_alarm"] == "2026-11-22 09:00:20"  # the site's local time (CET)
    assert rows["pir-01"]["last_restore"] == "2026-11-22 09:00:31"
    assert rows["pir-02"]["status"] == "alarm only, no restore"
    assert (rows["door-1"]["status"], rows["door-1"]["types_seen"]) == ("exercised", "door_forced")
    assert rows["badge-1"]["status"] == "exercised"
    assert (rows["pir-03"]["status"], rows["pir-03"]["blind_reports"]) == ("NOT EXERCISED", "1")  # blind is no walk
    assert rows["pir-04"]["status"] == "NOT EXERCISED"  # its alarm was before the walk test
    assert [p.point.id for p in report.unexercised] == [
        "pir-02",
        "pir-03",
        "pir-04",
        "pir-05",
        "pir-06",
        "pir-07",
        "pir-08",
        "smoke-1",
    ]
    assert report.summary() == "test-site: 3 of 11 point(s) exercised since 2026-11-22 09:00:10 CET"


def test_cli_writes_csv_and_html_and_exits_1_while_points_are_unexercised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _walked_journal(tmp_path)
    out_csv, out_html = tmp_path / "walk.csv", tmp_path / "walk.html"
    base = ["walktest", "--site", str(MINIMAL_SITE), "--journal", str(tmp_path), "--since", "2026-11-22T09:00:10"]
    with configured_logging():  # main() configures process-wide logging onto capsys' stream: put it back after
        assert main([*base, "--csv", str(out_csv)]) == 1
    table = capsys.readouterr().out
    (pir01,) = [line.split() for line in table.splitlines() if line.startswith("pir-01 ")]
    assert pir01[:5] == ["pir-01", "burglary", "exercised", "2", "2"]
    assert table.splitlines()[-1].startswith("not exercised: pir-02, pir-03, pir-04")
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text(encoding="utf-8"))))
    assert [r["point"] for r in rows][:3] == ["pir-01", "pir-02", "pir-03"]
    assert rows[0]["status"] == "exercised" and rows[0]["alarms"] == "2"
    with configured_logging():
        assert main([*base, "--html", str(out_html)]) == 1
    page = out_html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert '<tr class="ok"><td>pir-01</td>' in page and '<tr class="open"><td>pir-02</td>' in page
    assert "3 of 11 point(s) exercised" in page
    with configured_logging():
        assert main([*base[:-1], "yesterday"]) == 2
        assert main([*base[:3], "--journal", str(tmp_path / "elsewhere"), "--since", "2h"]) == 1
    errors = capsys.readouterr().err
    assert "--since 'yesterday': not an ISO time" in errors and "journal: no journal at" in errors


def test_since_is_the_sites_local_time_or_a_duration_back_from_now() -> None:
    assert parse_since("2026-11-22T09:00:10", SITE) == SINCE
    assert parse_since("2026-11-22T08:00:10+00:00", SITE) == SINCE
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_since("2h", SITE, now) == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="not an ISO time"):
        parse_since("yesterday", SITE)


def test_a_missing_journal_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal at"):
        read_events_since(tmp_path / "nothing.sqlite3", SINCE)
