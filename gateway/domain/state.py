"""The gateway's memory of what each point and device last was: the normaliser's state table.

The journal persists it in the same transaction as the events it caused, so after a restart the
normaliser reconciles against it: no duplicate alarm for a point still in alarm, and a restore for one
that cleared while the gateway was down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.domain.event import Event
from gateway.domain.values import RawValue

# A point's condition: NORMAL, UNKNOWN (never seen), or the value of the EventType it is in alarm for.
NORMAL = "normal"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PointState:
    point_id: str
    condition: str
    value: RawValue | None
    since: datetime
    # momentary points: the last (value, occurrence) key seen, so a re-read does not repeat an event
    last_key: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceState:
    device_id: str
    online: bool
    since: datetime


@dataclass(frozen=True, slots=True)
class Batch:
    """What one normaliser step produced: events plus the state rows to persist with them, atomically."""

    events: tuple[Event, ...] = ()
    points: tuple[PointState, ...] = ()
    devices: tuple[DeviceState, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.events or self.points or self.devices)
