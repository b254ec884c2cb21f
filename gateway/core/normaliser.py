"""Readings in, events out: pure, protocol-free and synchronous (time comes in with the readings).

Each state point is in one *condition*: `normal`, `unknown` (never seen) or the event type it is in alarm
for (its own type, `fault`/`fire_trouble`, or one of `other_alarms`). Leaving a non-normal condition emits
its restore and entering one emits its alarm, so alarm and restore alternate per point and type however
often a value is polled. A change must hold for the point's debounce time before it counts. Bad quality
(a silent device, an unreadable reply) changes nothing: no false restore. Momentary points (access
events, arm/disarm) emit one event per new occurrence instead.

A point the device says does not exist (quality `unavailable`) is blind, which is an alarm, not silence: one
`point_unavailable` alarm (the reason in its text) when it becomes so, its restore with the first good
reading after. It is tracked apart from the condition (a blind point in alarm stays in alarm: no false
restore) and persisted as a device-state row keyed `unavailable:<point id>`, so a restart neither raises
it again nor forgets its restore.

Transactional: `offer`, `offer_tick` and `offer_status` apply a step at once and return it as a `Step`: the
batch for the sink plus the before-images of what it changed. The caller (the pipeline) `commit`s it once
the sink durably accepted the batch, or `rollback`s it when the sink did not: the points and the device are
then as if the step never happened, so the same reading offered again is a change again (nothing consumed
before it is durable). `process`, `tick` and `device_status` are the same steps committed at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
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
    unavailable: bool = False  # a point_unavailable alarm is open for it


Key = tuple[str, str]  # ("point", id) or ("device", id): what a step may change
UNAVAILABLE_PREFIX = "unavailable:"  # device-state rows that persist a point's open point_unavailable alarm


def unavailable_key(point_id: str) -> str:
    return UNAVAILABLE_PREFIX + point_id


def point_key(point_id: str) -> Key:
    return ("point", point_id)


def device_key(device_id: str) -> Key:
    return ("device", device_id)


@dataclass(frozen=True, slots=True)
class Step:
    """One normaliser step, already applied: `batch` for the sink, and how to take the step back.

    `points` are the before-images (state, quality, pending, unavailable) of the points it changed,
    `devices` those of the devices (online, since); `keys` names both, so that a caller can keep other steps
    off them until this one is committed or rolled back.
    """

    batch: Batch = field(default_factory=Batch)
    points: tuple[tuple[str, PointState, Quality, _Pending | None, bool], ...] = ()
    devices: tuple[tuple[str, bool | None, datetime], ...] = ()

    @property
    def keys(self) -> tuple[Key, ...]:
        return (*(point_key(p[0]) for p in self.points), *(device_key(d[0]) for d in self.devices))


@dataclass(slots=True)
class NormaliserStats:
    readings: int = 0
    unknown_points: int = 0
    unmapped_values: int = 0
    suppressed_flaps: int = 0
    # events of committed steps, by (device, category, type): the "received" stage of the metrics
    events: Counter[tuple[str, str, str]] = field(default_factory=Counter)


class Normaliser:
    def __init__(self, site: SiteConfig, *, epoch: datetime) -> None:
        self._live: dict[str, _Live] = {}
        self._online: dict[str, bool | None] = {}
        self._device_since: dict[str, datetime] = {}
        self._configure(site, epoch, ended=())
        self.stats = NormaliserStats()

    def _configure(self, site: SiteConfig, epoch: datetime, ended: Iterable[str]) -> None:
        """Take `site` as the config; live state is carried over by point id and device id, except for
        the points in `ended` (replaced by a point of another kind), which start unknown like new ones."""
        ended = set(ended)
        self._site = site
        self._points = {p.id: p for p in site.points}
        self._devices = {d.id: d for d in site.devices}
        self._addresses = {d.id: d.address_text for d in site.devices}
        self._classifiers = {p.id: _classifier(p) for p in site.points if p.kind == "state"}
        self._momentary = {p.id: {str(e.value): e for e in p.events} for p in site.points if p.kind == "momentary"}
        live = self._live
        self._live = {
            p.id: live[p.id] if p.id in live and p.id not in ended else _Live(PointState(p.id, UNKNOWN, None, epoch))
            for p in site.points
        }
        online, since = self._online, self._device_since
        self._online = {d.id: online.get(d.id) for d in site.devices}
        self._device_since = {d.id: since.get(d.id, epoch) for d in site.devices}

    # --- reconfiguration (gateway/app/reload.py) ---------------------------------------------------------

    def reconfigure(self, site: SiteConfig, now: datetime, ended: Iterable[str] = ()) -> None:
        """Adopt a new site config at once (synchronous: no reading can come between). Points and devices
        in both configs keep their condition, quality and pending change, so an alarm active during the
        reload is neither repeated nor restored; new points start unknown, like at a start. Call
        `ending_step` first for what the new config removes."""
        self._configure(site, now, ended)

    def ending_step(self, site: SiteConfig, now: datetime, ended: Iterable[str] = ()) -> Step:
        """The final events for what `site` (the new config) removes, not yet applied: a restore with `cause`
        point_removed for every ended point in alarm (the ids in `ended` are ended too: replaced by a point of
        another kind), and a comm_loss restore with cause device_removed for every removed device that is
        offline. The ended points' state rows become unknown, so that a point added again later starts afresh.
        The step changes nothing here (no before-images: nothing to roll back); the reload has the pipeline
        hold every point's key while it is journaled (`Pipeline.apply(step, hold=...)`)."""
        keep = {p.id for p in site.points} - set(ended)
        events: list[Event] = []
        rows: list[PointState] = []
        blind_rows: list[DeviceState] = []
        for pid, live in self._live.items():
            if pid in keep:
                continue
            rows.append(PointState(pid, UNKNOWN, None, now))
            if live.unavailable:  # its point_unavailable alarm ends with it, or it would stay open for ever
                reading = Reading(pid, None, live.quality, now, text="point removed from the site config")
                point = self._points[pid]
                blind = self._point_event(point, EventType.POINT_UNAVAILABLE, EventState.RESTORE, reading, now)
                events.append(blind.model_copy(update={"cause": "point_removed"}))
                blind_rows.append(DeviceState(unavailable_key(pid), True, now))
            condition = live.state.condition
            if condition in (NORMAL, UNKNOWN) or self._points[pid].kind != "state":
                continue
            reading = Reading(pid, live.state.value, live.quality, now)
            text = "point removed from the site config by a reload: its alarm ends unobserved"
            event = self._point_event(self._points[pid], EventType(condition), EventState.RESTORE, reading, now)
            events.append(event.model_copy(update={"cause": "point_removed", "text": text, "occurred_at": now}))
        devices_left = {d.id for d in site.devices}
        for device_id, online in self._online.items():
            if device_id not in devices_left and online is False:
                event = self._comm_loss(device_id, EventState.RESTORE, now, "device removed from the site config")
                events.append(event.model_copy(update={"cause": "device_removed"}))
        return Step(Batch(tuple(events), tuple(rows), tuple(blind_rows)))

    # --- state table ---------------------------------------------------------------------------------

    def load(self, points: Iterable[PointState], devices: Iterable[DeviceState]) -> None:
        """Adopt the persisted state table; rows of points or devices no longer configured are ignored."""
        for row in points:
            if row.point_id in self._live:
                self._live[row.point_id] = _Live(row)
        for dev in devices:
            if dev.device_id.startswith(UNAVAILABLE_PREFIX):
                live = self._live.get(dev.device_id.removeprefix(UNAVAILABLE_PREFIX))
                if live is not None:
                    live.unavailable = not dev.online
            elif dev.device_id in self._online:
                self._online[dev.device_id] = dev.online
                self._device_since[dev.device_id] = dev.since

    def point_state(self, point_id: str) -> PointState:
        return self._live[point_id].state

    def quality(self, point_id: str) -> Quality:
        return self._live[point_id].quality

    def unavailable_points(self) -> dict[str, list[str]]:
        """Device id -> its points with an open point_unavailable alarm (for health)."""
        blind: dict[str, list[str]] = {}
        for pid, live in self._live.items():
            if live.unavailable:
                blind.setdefault(self._points[pid].device, []).append(pid)
        return blind

    def device_online(self, device_id: str) -> bool | None:
        return self._online[device_id]

    def devices_online(self) -> tuple[int, int]:
        """(online, total) as the last device statuses said (gateway.app.service.Inputs adds liveness)."""
        return sum(1 for v in self._online.values() if v), len(self._online)

    def device_protocols(self) -> dict[str, str]:
        """Device id -> protocol, for every configured device."""
        return {d.id: d.protocol for d in self._devices.values()}

    # --- steps: apply, then commit or roll back ---------------------------------------------------------

    def commit(self, step: Step) -> None:
        """The sink accepted the step's batch: count its events (the step itself is applied already)."""
        for event in step.batch.events:
            self.stats.events[(event.source.device_id, event.category.value, event.type.value)] += 1

    def rollback(self, step: Step) -> None:
        """The sink did not accept the step's batch: the points and devices it changed are as before it.

        Exact only if no other step changed them since (the pipeline keeps other steps off `step.keys`
        until this one is settled)."""
        for point_id, state, quality, pending, unavailable in step.points:
            live = self._live[point_id]
            live.state, live.quality, live.pending, live.unavailable = state, quality, pending, unavailable
        for device_id, online, since in step.devices:
            self._online[device_id] = online
            self._device_since[device_id] = since

    def pending_keys(self) -> tuple[Key, ...]:
        """What `offer_tick` may change: the points with a debounced change pending."""
        return tuple(point_key(pid) for pid, live in self._live.items() if live.pending is not None)

    def status_keys(self, status: DeviceStatus) -> tuple[Key, ...]:
        """What `offer_status(status)` may change: the device, and its points when it goes offline."""
        if status.device_id not in self._devices:
            return ()
        if status.online:
            return (device_key(status.device_id),)
        points = (point_key(p.id) for p in self._site.points if p.device == status.device_id)
        return (device_key(status.device_id), *points)

    # --- readings --------------------------------------------------------------------------------------

    def process(self, reading: Reading) -> Batch:
        """`offer` and commit at once (for callers without a sink that can refuse)."""
        step = self.offer(reading)
        self.commit(step)
        return step.batch

    def offer(self, reading: Reading) -> Step:
        """Apply one reading; the step's batch holds the events it caused (see the module docstring)."""
        live = self._live.get(reading.point_id)
        if live is None:
            self._step_reading(reading)
            return Step()
        before = (reading.point_id, live.state, live.quality, live.pending, live.unavailable)
        batch = self._step_reading(reading)
        return Step(batch, (before,)) if batch else Step()

    def offer_many(self, readings: Iterable[Reading]) -> Step:
        """Apply readings in order as ONE step (one batch for the sink, one commit or rollback for all).

        Every point's before-image is taken before its first reading, also for a reading that makes no event
        (a debounce starting), so a rollback returns each point to where it was before the hand-over: all or
        nothing (a point may appear more than once)."""
        batches: list[Batch] = []
        befores: dict[str, tuple[str, PointState, Quality, _Pending | None, bool]] = {}
        for reading in readings:
            live = self._live.get(reading.point_id)
            if live is not None and reading.point_id not in befores:
                befores[reading.point_id] = (reading.point_id, live.state, live.quality, live.pending, live.unavailable)
            step = self.offer(reading)
            if step.batch:
                batches.append(step.batch)
        if not batches:
            return Step()
        return Step(batches[0] if len(batches) == 1 else _merge(batches), tuple(befores.values()))

    def _step_reading(self, reading: Reading) -> Batch:
        self.stats.readings += 1
        point = self._points.get(reading.point_id)
        if point is None:
            self.stats.unknown_points += 1
            log.warning("reading for unknown point ignored", point=reading.point_id)
            return Batch()
        live = self._live[point.id]
        pending = live.pending
        if pending is not None and reading.quality is Quality.GOOD and reading.value is not None:
            due = pending.reading.detected_at + timedelta(seconds=point.debounce)
            if reading.detected_at >= due:
                # It held for its debounce time before this reading came (readings are changes), so it counts
                # whatever this one says: the timer was late, or its step was rolled back. (A bad reading
                # changes nothing, as ever: it drops the pending change.)
                confirmed = self._confirm_if_due(point, live, due)
                return _merge([confirmed, self._step_reading_of(point, live, reading)])
        return self._step_reading_of(point, live, reading)

    def _step_reading_of(self, point: PointConfig, live: _Live, reading: Reading) -> Batch:
        if reading.quality is Quality.UNAVAILABLE:
            live.quality = Quality.BAD
            live.pending = None
            return self._unavailable(point, live, reading, True)
        if reading.quality is Quality.BAD or reading.value is None:
            live.quality = Quality.BAD
            live.pending = None
            return Batch()
        live.quality = Quality.GOOD
        if live.unavailable:  # readable again: the restore first, then what the value says
            return _merge([self._unavailable(point, live, reading, False), self._step_reading_of(point, live, reading)])
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

    def _unavailable(self, point: PointConfig, live: _Live, reading: Reading, blind: bool) -> Batch:
        """Open (blind) or close the point's point_unavailable alarm; nothing if it is so already."""
        if live.unavailable == blind:
            return Batch()
        live.unavailable = blind
        state = EventState.ALARM if blind else EventState.RESTORE
        # the restore's text says why it is one (a good reading carries no reason)
        source = reading if blind else replace(reading, text="readable again", notification=None, credential=None)
        event = self._point_event(point, EventType.POINT_UNAVAILABLE, state, source, reading.detected_at)
        row = DeviceState(unavailable_key(point.id), not blind, reading.occurred_at or reading.detected_at)
        return Batch(events=(event,), devices=(row,))

    def tick(self, now: datetime) -> Batch:
        """`offer_tick` and commit at once."""
        step = self.offer_tick(now)
        self.commit(step)
        return step.batch

    def offer_tick(self, now: datetime) -> Step:
        """Confirm pending changes whose debounce time has passed by `now`."""
        befores = []
        batches = []
        for pid, live in self._live.items():
            if live.pending is None:
                continue
            before = (pid, live.state, live.quality, live.pending, live.unavailable)
            batch = self._confirm_if_due(self._points[pid], live, now)
            if batch:
                befores.append(before)
                batches.append(batch)
        return Step(_merge(batches), tuple(befores)) if batches else Step()

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
        # A change still being debounced is over once the point took its condition from a later reading
        # (unknown -> normal is taken at once): confirmed later, it would be an alarm the point is not in.
        live.pending = None
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
        """`offer_status` and commit at once."""
        step = self.offer_status(status)
        self.commit(step)
        return step.batch

    def offer_status(self, status: DeviceStatus) -> Step:
        """One comm_loss alarm when a device goes offline, one restore when it returns.

        Rolled back, only the device's online state returns: its points keep the bad quality and the lost
        pending changes of an offline report, which holds whether or not the journal took it."""
        device = self._devices.get(status.device_id)
        if device is None:
            log.warning("status for unknown device ignored", device=status.device_id)
            return Step()
        before = (device.id, self._online[device.id], self._device_since[device.id])
        batch = self._step_status(device.id, status)
        return Step(batch, devices=(before,)) if batch else Step()

    def _step_status(self, device_id: str, status: DeviceStatus) -> Batch:
        device = self._devices[device_id]
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
        state = EventState.RESTORE if status.online else EventState.ALARM
        event = self._comm_loss(device.id, state, status.at, status.reason or None)
        return Batch(events=(event,), devices=(DeviceState(device.id, status.online, status.at),))

    def _comm_loss(self, device_id: str, state: EventState, at: datetime, text: str | None) -> Event:
        device = self._devices[device_id]
        return self._event(
            tenant=None,
            category=Category.SUPERVISION,
            event_type=EventType.COMM_LOSS,
            state=state,
            priority=TYPES[EventType.COMM_LOSS].priority,
            point=PointRef(id=device.id, name=device.name),
            source=SourceRef(protocol=device.protocol, device_id=device.id, address=self._addresses[device.id]),
            occurred_at=at,
            detected_at=at,
            commissioning=False,
            text=text,
        )

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


def decode(point: PointConfig, value: RawValue) -> str | None:
    """What one raw value means for the point, as the normaliser decides it: for a state point its condition
    (`normal` or an event type), for a momentary point the event type it raises; None when the point's config
    maps the value to nothing (a state point then goes to `fault`). For commissioning (`gcmk-gateway check`)."""
    if point.kind == "momentary":
        event = {_key(e.value): e for e in point.events}.get(_key(value))
        return None if event is None else event.type.value
    return _classifier(point).get(_key(value))


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
