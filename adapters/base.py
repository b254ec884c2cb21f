"""What every protocol adapter hands to the gateway, and the interface it hands it through.

An adapter never builds events: it reports raw readings (and device reachability) to a `ReadingSink`.
The normaliser decides what is an alarm. `submit` returns only once the resulting events are durably
accepted (journaled), so an adapter may acknowledge a device's notification after it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from gateway.config.types import RawValue
from gateway.event import Credential, Notification


class Quality(StrEnum):
    GOOD = "good"
    BAD = "bad"  # the value could not be read (device silent, malformed reply): never a restore


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation of one configured point."""

    point_id: str
    value: RawValue | None
    quality: Quality
    detected_at: datetime
    occurred_at: datetime | None = None  # the device's own time stamp, when it gives one
    # Distinguishes two occurrences with the same value (e.g. two consecutive access grants);
    # momentary points emit an event whenever (value, occurrence) changes.
    occurrence: str | None = None
    credential: Credential | None = None
    notification: Notification | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Reachability of one device, as its adapter's supervision judges it."""

    device_id: str
    online: bool
    at: datetime
    reason: str = ""
    detail: dict[str, str] = field(default_factory=dict)


class ReadingSink(Protocol):
    async def submit(self, reading: Reading) -> None:
        """Hand on one reading; returns when its events (if any) are durably accepted."""

    async def device_status(self, status: DeviceStatus) -> None:
        """Report a device going offline or coming back; returns when its event is accepted."""


class Adapter(Protocol):
    """A long-running protocol adapter. `run` returns only when cancelled (or raises on a fatal error)."""

    name: str

    async def run(self, sink: ReadingSink) -> None: ...
