"""`gcmk-gateway walktest`: the walk-test report for the installer's sign-off, from the journal.

During commissioning the installer walks the building and triggers every detector, door and button; the
gateway journals what it saw. This report lists for each configured point whether it was seen in alarm and
in restore since a given time (counts, first and last time, the event types seen), and which points were
never exercised, as a table, CSV or HTML. It only reads the journal (gateway.delivery.journal
`read_events_since`), so it can run while the gateway runs.

A state point counts as exercised once it was seen in alarm and in restore (any alarm type of the point:
its own, a fault, one of its other_alarms); a momentary point (access events, arm/disarm) once it raised any
event. `point_unavailable` and `comm_loss` are supervision, not a walk: they are shown, but never count.
"""

from __future__ import annotations

import csv
import html
import io
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.config.models import PointConfig, SiteConfig
from gateway.config.types import parse_duration
from gateway.delivery.journal import read_events_since
from gateway.delivery.sink import journal_path
from gateway.domain.event import Event, utcnow
from gateway.domain.taxonomy import EventState, EventType

SUPERVISION = frozenset({EventType.POINT_UNAVAILABLE, EventType.COMM_LOSS})
COLUMNS = (
    "point",
    "name",
    "device",
    "zone",
    "tenant",
    "type",
    "status",
    "alarms",
    "restores",
    "first_alarm",
    "last_restore",
    "types_seen",
    "blind_reports",
)


@dataclass
class PointWalk:
    """What the journal shows for one point since the start of the walk test."""

    point: PointConfig
    alarms: list[Event] = field(default_factory=list)  # alarms and (momentary points) info events
    restores: list[Event] = field(default_factory=list)
    blind: int = 0  # point_unavailable alarms: the point could not be read at all

    @property
    def status(self) -> str:
        if self.point.kind == "momentary":
            return "exercised" if self.alarms else "NOT EXERCISED"
        if self.alarms and self.restores:
            return "exercised"
        if self.alarms:
            return "alarm only, no restore"
        if self.restores:
            return "restore only"
        return "NOT EXERCISED"

    @property
    def exercised(self) -> bool:
        return self.status == "exercised"

    def row(self, zone: ZoneInfo) -> dict[str, str]:
        def local(events: list[Event], pick: int) -> str:
            return events[pick].detected_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if events else ""

        p = self.point
        return {
            "point": p.id,
            "name": p.name,
            "device": p.device,
            "zone": p.zone,
            "tenant": p.tenant,
            "type": p.type.value,
            "status": self.status,
            "alarms": str(len(self.alarms)),
            "restores": str(len(self.restores)),
            "first_alarm": local(self.alarms, 0),
            "last_restore": local(self.restores, -1),
            "types_seen": " ".join(sorted({e.type.value for e in [*self.alarms, *self.restores]})),
            "blind_reports": str(self.blind),
        }


@dataclass
class WalkReport:
    site: SiteConfig
    since: datetime
    points: list[PointWalk]
    at: datetime = field(default_factory=utcnow)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.site.site.timezone)

    @property
    def unexercised(self) -> list[PointWalk]:
        return [p for p in self.points if not p.exercised]

    def rows(self) -> list[dict[str, str]]:
        return [p.row(self.zone) for p in self.points]

    def summary(self) -> str:
        done = len(self.points) - len(self.unexercised)
        since = self.since.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S %Z")
        return f"{self.site.site.id}: {done} of {len(self.points)} point(s) exercised since {since}"

    def table(self) -> str:
        head = ("POINT", "TYPE", "STATUS", "ALARMS", "RESTORES", "FIRST ALARM", "LAST RESTORE")
        keys = ("point", "type", "status", "alarms", "restores", "first_alarm", "last_restore")
        rows = [tuple(r[k] for k in keys) for r in self.rows()]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
        lines += ["", self.summary()]
        if self.unexercised:
            lines.append("not exercised: " + ", ".join(p.point.id for p in self.unexercised))
        return "\n".join(lines)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return out.getvalue()

    def to_html(self) -> str:
        def cells(values: list[str], tag: str) -> str:
            return "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values)

        body = "\n".join(
            f'<tr class="{"ok" if r["status"] == "exercised" else "open"}">{cells([r[c] for c in COLUMNS], "td")}</tr>'
            for r in self.rows()
        )
        title = html.escape(f"Walk test {self.site.site.id} ({self.site.site.name})")
        made = self.at.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S %Z")
        return f"""<!DOCTYPE html>
<html lang="nl"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{border:1px solid #999;padding:2px 6px}}
tr.open td{{background:#fdd}} tr.ok td{{background:#dfd}}</style></head>
<body><h1>{title}</h1>
<p>{html.escape(self.summary())}. Report made {html.escape(made)} from the gateway's journal.</p>
<table><thead><tr>{cells(list(COLUMNS), "th")}</tr></thead>
<tbody>
{body}
</tbody></table>
<p>Installer: ____________________ &nbsp; Date: __________ &nbsp; Signature: ____________________</p>
</body></html>
"""


def walk_report(site: SiteConfig, events: list[Event], since: datetime) -> WalkReport:
    """The report from journaled events (those before `since` or of unconfigured points are ignored)."""
    walks = {p.id: PointWalk(p) for p in site.points}
    for event in events:
        walk = walks.get(event.point.id)
        if walk is None or event.detected_at < since:
            continue
        if event.type in SUPERVISION:
            if event.type is EventType.POINT_UNAVAILABLE and event.state is EventState.ALARM:
                walk.blind += 1
            continue
        if event.state is EventState.RESTORE:
            walk.restores.append(event)
        elif event.state is EventState.ALARM or walk.point.kind == "momentary":
            walk.alarms.append(event)
    return WalkReport(site, since, list(walks.values()))


def parse_since(text: str, site: SiteConfig, now: datetime | None = None) -> datetime:
    """An ISO time (without a zone: the site's local time) or a duration back from now ('2h', '90m')."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            return (now or utcnow()) - timedelta(seconds=parse_duration(text))
        except ValueError:
            raise ValueError(f"--since {text!r}: not an ISO time (2026-12-01T09:00) or a duration (2h)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(site.site.timezone))
    return moment


def run_walktest(
    site: SiteConfig, since: datetime, *, journal_dir: Path | None, csv: Path | None, html: Path | None
) -> int:
    """Print the table, write CSV or HTML if asked; 0 when every point was exercised, else 1."""
    path = journal_path(site) if journal_dir is None else journal_dir / journal_path(site).name
    report = walk_report(site, read_events_since(path, since), since)
    print(report.table())
    for target, text in ((csv, report.to_csv), (html, report.to_html)):
        if target is not None:
            target.write_text(text(), encoding="utf-8")
            print(f"written to {target}", file=sys.stderr)
    return 0 if not report.unexercised else 1
