"""The meldkamer-side reference receiver: what a control room must check on every message it gets.

`ReceiverState` is pure (messages and clock readings in, notices out) so tests can feed it crafted
streams. Per site it validates events against `gcmk.event.v1`, de-duplicates by seq (QoS 1 and
re-publication may deliver an event twice; seq is unique per site, so the window is the tracker's, not a
set of every id ever seen), finds seq gaps in O(gaps) (tolerating reordering: live alarms may overtake a
draining backlog), tracks the retained status and the heartbeat, and declares a site lost when its
heartbeats stop for longer than `lost_after` or its status turns offline. `gateway.tools.receiver_link`
connects it to a broker, stores what it receives and confirms it.
"""

from __future__ import annotations

import json
import statistics
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from gateway.delivery.contract import ROOT, HeartbeatDoc, PointStateDoc, StatusDoc
from gateway.domain.event import Event
from gateway.tools.seqtrack import SeqTracker

LATENCY_SAMPLES = 10_000  # per site: the latest, for p50 / p99 (bounded memory)


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the receiver wants an operator to see."""

    kind: str  # event, duplicate, invalid, status, lost, found, heartbeat
    site: str
    text: str
    event: Event | None = None


@dataclass
class SiteView:
    site: str
    status: StatusDoc | None = None
    heartbeat: HeartbeatDoc | None = None
    heartbeat_mono: float | None = None
    lost: bool = False
    events: int = 0
    duplicates: int = 0
    invalid: int = 0
    buffered: int = 0
    redelivered: int = 0
    seqs: SeqTracker = field(default_factory=SeqTracker)
    first_seq: int | None = None  # the lowest seq received (the receiver may start mid-stream)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    in_alarm: dict[str, str] = field(default_factory=dict)  # point id -> condition, from retained state

    def missing_seqs(self) -> list[int]:
        """Seqs absent between the lowest received and the highest received."""
        low = self.first_seq or 1
        return [seq for seq in self.seqs.missing() if seq >= low]


class ReceiverState:
    def __init__(self, *, lost_after: float = 15.0, site: str | None = None) -> None:
        self.lost_after = lost_after
        self.site_filter = site
        self.sites: dict[str, SiteView] = {}
        self.unparsable = 0

    def view(self, site: str) -> SiteView:
        if site not in self.sites:
            self.sites[site] = SiteView(site)
        return self.sites[site]

    def on_message(self, topic: str, payload: bytes, *, received: datetime, mono: float) -> list[Notice]:
        parts = topic.split("/")
        if len(parts) < 4 or "/".join(parts[:2]) != ROOT:
            return []
        site, kind = parts[2], parts[3]
        if self.site_filter and site != self.site_filter:
            return []
        view = self.view(site)
        try:
            if kind == "events":
                return self._event(view, payload, received)
            if kind == "status":
                return self._status(view, payload, mono)
            if kind == "heartbeat":
                return self._heartbeat(view, payload, mono)
            if kind == "state":
                self._state(view, payload)
                return []
        except (ValidationError, ValueError) as exc:
            view.invalid += 1
            return [Notice("invalid", site, f"{topic}: {_first_line(exc)}")]
        return []

    def _event(self, view: SiteView, payload: bytes, received: datetime) -> list[Notice]:
        event = Event.model_validate_json(payload)
        if event.site != view.site:
            raise ValueError(f"event of site '{event.site}' on the topic of '{view.site}'")
        if event.seq is None:
            raise ValueError("event without seq")
        if not view.seqs.add(event.seq):
            view.duplicates += 1
            return [Notice("duplicate", view.site, f"duplicate of seq {event.seq}", event)]
        view.first_seq = event.seq if view.first_seq is None else min(view.first_seq, event.seq)
        view.events += 1
        view.buffered += event.buffered
        view.redelivered += event.redelivered
        view.latencies_ms.append((received - event.detected_at).total_seconds() * 1000)
        return [Notice("event", view.site, describe(event), event)]

    def _status(self, view: SiteView, payload: bytes, mono: float) -> list[Notice]:
        if not payload:  # a cleared retained status
            return []
        view.status = StatusDoc.model_validate_json(payload)
        notices = [Notice("status", view.site, f"{view.status.status} ({view.status.reason})")]
        if view.status.status == "offline" and not view.lost:
            view.lost = True
            notices.append(Notice("lost", view.site, f"gateway offline: {view.status.reason}"))
        elif view.status.status == "online":
            view.heartbeat_mono = mono  # the heartbeat clock starts when the gateway comes online
            if view.lost:
                view.lost = False
                notices.append(Notice("found", view.site, "gateway online again"))
        return notices

    def _heartbeat(self, view: SiteView, payload: bytes, mono: float) -> list[Notice]:
        view.heartbeat = HeartbeatDoc.model_validate_json(payload)
        view.heartbeat_mono = mono
        notices = [Notice("heartbeat", view.site, _heartbeat_text(view.heartbeat))]
        if view.lost and (view.status is None or view.status.status == "online"):
            view.lost = False
            notices.append(Notice("found", view.site, "heartbeats again"))
        return notices

    def _state(self, view: SiteView, payload: bytes) -> None:
        if not payload:
            return
        doc = PointStateDoc.model_validate_json(payload)
        if doc.in_alarm:
            view.in_alarm[doc.point_id] = doc.condition
        else:
            view.in_alarm.pop(doc.point_id, None)

    def check(self, mono: float) -> list[Notice]:
        """Declare sites lost whose heartbeats stopped; call periodically."""
        notices = []
        for view in self.sites.values():
            if view.heartbeat_mono is None or view.lost:
                continue
            silence = mono - view.heartbeat_mono
            if silence > self.lost_after:
                view.lost = True
                notices.append(Notice("lost", view.site, f"no heartbeat for {silence:.1f} s"))
        return notices

    def summary(self) -> dict[str, Any]:
        sites = {}
        for name, view in sorted(self.sites.items()):
            lat = sorted(view.latencies_ms)
            sites[name] = {
                "events": view.events,
                "duplicates": view.duplicates,
                "invalid": view.invalid,
                "buffered": view.buffered,
                "redelivered": view.redelivered,
                "seq_first": view.first_seq,
                "seq_last": view.seqs.highest or None,
                "seq_gaps": view.missing_seqs(),
                "status": view.status.status if view.status else None,
                "lost": view.lost,
                "in_alarm": sorted(view.in_alarm),
                "latency_ms_p50": round(_percentile(lat, 50), 1) if lat else None,
                "latency_ms_p99": round(_percentile(lat, 99), 1) if lat else None,
            }
        return {"sites": sites, "unparsable": self.unparsable}


def _percentile(ordered: list[float], pct: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(pct) - 1] if pct < 100 else ordered[-1]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _heartbeat_text(hb: HeartbeatDoc) -> str:
    return f"seq {hb.last_seq}, depth {hb.journal_depth}, devices {hb.devices_online}/{hb.devices_total} online"


def describe(event: Event) -> str:
    where = f"{event.point.name} ({event.point.id})"
    late = " [buffered]" if event.buffered else ""
    return f"#{event.seq} P{event.priority} {event.type.value} {event.state.value}: {where}{late}"


def print_notice(notice: Notice, *, as_json: bool) -> None:
    if as_json:
        record: dict[str, Any] = {"kind": notice.kind, "site": notice.site, "text": notice.text}
        if notice.event is not None:
            record["event"] = json.loads(notice.event.to_json())
        print(json.dumps(record), flush=True)
    elif notice.kind != "heartbeat":
        print(f"{notice.site:<14} {notice.kind:<9} {notice.text}", flush=True)
