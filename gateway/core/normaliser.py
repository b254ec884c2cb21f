"""Readings in, events out: pure, protocol-free and synchronous (time comes in with the readings).

Each state point is in one *condition*: `normal`, `unknown` (never seen) or the event type it is in alarm
for (its own type, `fault`/`fire_trouble`, or one of `other_alarms`). Leaving a non-normal condition emits
its restore and entering one emits its alarm, so alarm and restore alternate per point and type however
often a value is polled. A change must hold for the point's debounce time before it counts. Bad quality
(a silent device, an unreadable reply) changes nothing: no false restore. Momentary points (access
events, arm/disarm) emit one event per new occurrence instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from gateway.config.models import PointConfig, SiteConfig
from gateway.core.events import make_event
from gateway.core.ports import DeviceStatus, Quality, Reading
from gateway.domain.event import Event, PointRef, SourceRef
from gateway.domain.state import NORMAL, UNKNOWN, Batch, DeviceState, PointState
from gateway.domain.taxonomy import TYPES, Category, EventState, EventType
from gateway.domain.values import RawValue

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Pending:
    condition: str
    reading: Reading


@dataclass(slots=True)
class _Live:
    """The in-memory state of one point: the persisted part plus quality and a pending change."""

    state: PointState
    quality: Quality = Quality.BAD
    pending: _Pending | None = None


@dataclass(slots=True)
class NormaliserStats:
    readings: int = 0
    unknown_points: int = 0
    unmapped_values: int = 0
    suppressed_flaps: int = 0
    # events made, by (device, category, type): the "received" stage of the metrics
    events: Counter[tuple[str, str, str]] = field(default_factory=Counter)


class Normaliser:
    def __init__(self, site: SiteConfig, *, epoch: datetime) -> None:
        self._site = site
        self._points = {p.id: p for p in site.points}
        self._devices = {d.id: d for d in site.devices}
        self._addresses = {d.id: d.address_text for d in site.devices}
        self._classifiers = {p.id: _classifier(p) for p in site.points if p.kind == "state"}
        self._momentary = {p.id: {str(e.value): e for e in p.events} for p in site.points if p.kind == "momentary"}
        self._live = {p.id: _Live(PointState(p.id, UNKNOWN, None, epoch)) for p in site.points}
        self._online: dict[str, bool | None] = {d.id: None for d in site.devices}
        self._device_since: dict[str, datetime] = {d.id: epoch for d in site.devices}
        self.stats = NormaliserStats()

    # --- state table ---------------------------------------------------------------------------------

    def load(self, points: Iterable[PointState], devices: Iterable[DeviceState]) -> None:
        """Adopt the persisted state table; rows of points or devices no longer configured are ignored."""
        for row in points:
            if row.point_id in self._live:
                self._live[row.point_id] = _Live(row)
        for dev in devices:
            if dev.device_id in self._online:
                self._online[dev.device_id] = dev.online
                self._device_since[dev.device_id] = dev.since

    def point_state(self, point_id: str) -> PointState:
        return self._live[point_id].state

    def quality(self, point_id: str) -> Quality:
        return self._live[point_id].quality

    def device_online(self, device_id: str) -> bool | None:
        return self._online[device_id]

    def devices_online(self) -> tuple[int, int]:
        """(online, total) as the last device statuses said (gateway.app.service.Inputs adds liveness)."""
        return sum(1 for v in self._online.values() if v), len(self._online)

    def device_protocols(self) -> dict[str, str]:
        """Device id -> protocol, for every configured device."""
        return {d.id: d.protocol for d in self._devices.values()}

    # --- readings --------------------------------------------------------------------------------------

    def process(self, reading: Reading) -> Batch:
        self.stats.readings += 1
        point = self._points.get(reading.point_id)
        if point is None:
            self.stats.unknown_points += 1
            log.warning("reading for unknown point ignored", point=reading.point_id)
            return Batch()
        live = self._live[point.id]
        if reading.quality is Quality.BAD or reading.value is None:
            live.quality = Quality.BAD
            live.pending = None
            return Batch()
        live.quality = Quality.GOOD
        if point.kind == "momentary":
            return self._momentary_reading(point, live, reading)
        condition = self._classify(point, reading.value)
        if condition == live.state.condition:
            if live.pending is not None:
                self.stats.suppressed_flaps += 1
            live.pending = None
            return Batch()
        if live.state.condition == UNKNOWN and condition == NORMAL:
            return self._transition(point, live, condition, reading, reading.detected_at)
        if live.pending is None or live.pending.condition != condition:
            live.pending = _Pending(condition, reading)
        return self._confirm_if_due(point, live, reading.detected_at)

    def tick(self, now: datetime) -> Batch:
        """Confirm pending changes whose debounce time has passed by `now`."""
        batches = [
            self._confirm_if_due(self._points[pid], live, now)
            for pid, live in self._live.items()
            if live.pending is not None
        ]
        return _merge(batches)

    def next_due(self) -> datetime | None:
        due = [
            live.pending.reading.detected_at + timedelta(seconds=self._points[pid].debounce)
            for pid, live in self._live.items()
            if live.pending is not None
        ]
        return min(due, default=None)

    def _confirm_if_due(self, point: PointConfig, live: _Live, now: datetime) -> Batch:
        pending = live.pending
        if pending is None or now - pending.reading.detected_at < timedelta(seconds=point.debounce):
            return Batch()
        live.pending = None
        return self._transition(point, live, pending.condition, pending.reading, now)

    def _classify(self, point: PointConfig, value: RawValue) -> str:
        condition = self._classifiers[point.id].get(_key(value))
        if condition is None:
            self.stats.unmapped_values += 1
            log.warning("unmapped raw value treated as fault", point=point.id, value=value)
            return _fault_type(point).value
        return condition

    def _transition(
        self, point: PointConfig, live: _Live, condition: str, reading: Reading, detected_at: datetime
    ) -> Batch:
        previous = live.state.condition
        occurred = reading.occurred_at or reading.detected_at
        live.state = PointState(point.id, condition, reading.value, occurred, live.state.last_key)
        events = []
        if previous not in (NORMAL, UNKNOWN):
            events.append(self._point_event(point, EventType(previous), EventState.RESTORE, reading, detected_at))
        if condition != NORMAL:
            events.append(self._point_event(point, EventType(condition), EventState.ALARM, reading, detected_at))
        return Batch(events=tuple(events), points=(live.state,))

    def _momentary_reading(self, point: PointConfig, live: _Live, reading: Reading) -> Batch:
        key = f"{_key(reading.value)}\x1f{reading.occurrence or ''}"
        previous = live.state.last_key
        if key == previous:
            return Batch()
        live.state = PointState(point.id, NORMAL, reading.value, reading.occurred_at or reading.detected_at, key)
        mapped = self._momentary[point.id].get(_key(reading.value))
        # The first value ever seen is history, not news, unless the device marks it as an occurrence.
        if mapped is None or (previous is None and reading.occurrence is None):
            return Batch(points=(live.state,))
        state = EventState.ALARM if mapped.state == "alarm" else EventState.INFO
        event = self._point_event(point, mapped.type, state, reading, reading.detected_at, mapped.priority)
        return Batch(events=(event,), points=(live.state,))

    def _point_event(
        self,
        point: PointConfig,
        event_type: EventType,
        state: EventState,
        reading: Reading,
        detected_at: datetime,
        priority: int | None = None,
    ) -> Event:
        own = event_type is point.type
        device = self._devices[point.device]
        return self._event(
            tenant=point.tenant,
            category=point.effective_category if own else TYPES[event_type].category,
            event_type=event_type,
            state=state,
            priority=priority or (point.effective_priority if own else TYPES[event_type].priority),
            point=PointRef(id=point.id, name=point.name, zone=point.zone, location=point.location),
            source=SourceRef(
                protocol=device.protocol,
                device_id=device.id,
                address=self._addresses[device.id],
                ref=point.source.ref,
                raw=reading.value,
            ),
            occurred_at=reading.occurred_at or reading.detected_at,
            detected_at=detected_at,
            commissioning=point.commissioning,
            reading=reading,
        )

    # --- devices ---------------------------------------------------------------------------------------

    def device_status(self, status: DeviceStatus) -> Batch:
        """One comm_loss alarm when a device goes offline, one restore when it returns."""
        device = self._devices.get(status.device_id)
        if device is None:
            log.warning("status for unknown device ignored", device=status.device_id)
            return Batch()
        previous = self._online[device.id]
        if not status.online:
            for pid, live in self._live.items():
                if self._points[pid].device == device.id:
                    live.quality = Quality.BAD
                    live.pending = None
        if previous is status.online or (previous is None and status.online):
            self._online[device.id] = status.online
            return Batch()
        self._online[device.id] = status.online
        self._device_since[device.id] = status.at
        event = self._event(
            tenant=None,
            category=Category.SUPERVISION,
            event_type=EventType.COMM_LOSS,
            state=EventState.RESTORE if status.online else EventState.ALARM,
            priority=TYPES[EventType.COMM_LOSS].priority,
            point=PointRef(id=device.id, name=device.name),
            source=SourceRef(protocol=device.protocol, device_id=device.id, address=self._addresses[device.id]),
            occurred_at=status.at,
            detected_at=status.at,
            commissioning=False,
            text=status.reason or None,
        )
        return Batch(events=(event,), devices=(DeviceState(device.id, status.online, status.at),))

    def _event(
        self,
        *,
        tenant: str | None,
        category: Category,
        event_type: EventType,
        state: EventState,
        priority: int,
        point: PointRef,
        source: SourceRef,
        occurred_at: datetime,
        detected_at: datetime,
        commissioning: bool,
        reading: Reading | None = None,
        text: str | None = None,
    ) -> Event:
        self.stats.events[(source.device_id, category.value, event_type.value)] += 1
        return make_event(
            site=self._site.site.id,
            tenant=tenant,
            category=category,
            event_type=event_type,
            state=state,
            priority=priority,
            point=point,
            source=source,
            occurred_at=occurred_at,
            detected_at=detected_at,
            commissioning=commissioning,
            credential=reading.credential if reading else None,
            notification=reading.notification if reading else None,
            text=(reading.text if reading else None) or text,
        )


def _key(value: RawValue | None) -> str:
    """Compare raw values as text, so a config's `1` matches a device's 1 and `active` matches 'active'."""
    return str(int(value)) if isinstance(value, bool) else str(value)


def _fault_type(point: PointConfig) -> EventType:
    return EventType.FIRE_TROUBLE if point.effective_category is Category.FIRE else EventType.FAULT


def _classifier(point: PointConfig) -> dict[str, str]:
    table = {_key(v): NORMAL for v in point.normal}
    table.update({_key(v): point.type.value for v in point.alarm})
    table.update({_key(v): _fault_type(point).value for v in point.fault})
    for event_type, values in point.other_alarms.items():
        table.update({_key(v): event_type.value for v in values})
    return table


def _merge(batches: Iterable[Batch]) -> Batch:
    events: list[Event] = []
    points: list[PointState] = []
    devices: list[DeviceState] = []
    for batch in batches:
        events.extend(batch.events)
        points.extend(batch.points)
        devices.extend(batch.devices)
    return Batch(tuple(events), tuple(points), tuple(devices))
