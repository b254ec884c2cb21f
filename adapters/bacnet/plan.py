"""What the adapter keeps per device and per configured object: counters, watches, COV plans."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.bacnet.values import cov_properties
from gateway.config.models import PointConfig
from gateway.config.types import RawValue

_process_ids = itertools.count(1)


def next_process_id() -> int:
    """Subscriber process ids, unique in this process, so a COV notification finds its object."""
    return next(_process_ids)


def transition_index(event_state: str) -> int:
    """Index into event-time-stamps / acked-transitions: 0 to-offnormal, 1 to-fault, 2 to-normal."""
    return {"normal": 2, "fault": 1}.get(event_state, 0)


def transition_state(object_type: str, index: int) -> str:
    """The event state a transition leads to (life-safety objects alarm as life-safety-alarm)."""
    offnormal = "life-safety-alarm" if object_type.startswith("life-safety-") else "offnormal"
    return (offnormal, "fault", "normal")[index]


@dataclass
class DeviceCounters:
    """Plain numbers per device, for the metrics exporter."""

    online: bool | None = None
    cov_subscriptions_active: int = 0
    polled_objects: int = 0
    cov_notifications: int = 0
    event_notifications: int = 0
    readings: int = 0
    resyncs: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by error class name
    last_contact: datetime | None = None


@dataclass
class Watch:
    """One configured point: which object/property it reads and what was last reported."""

    point: PointConfig
    object_id: str
    object_type: str
    prop: str
    reported: tuple[RawValue, str | None] | None = None
    last_event: tuple[Any, Any] | None = None  # (to-state, time stamp) of the transition awaiting acknowledgement


@dataclass
class ObjectPlan:
    """One configured object: its watches and whether COV serves them."""

    object_id: str
    object_type: str
    watches: list[Watch]
    process_id: int
    cov: bool = False  # currently subscribed

    def cov_watches(self) -> list[Watch]:
        return [w for w in self.watches if w.prop in cov_properties(self.object_type)]
