"""What the adapter keeps per device and per configured object: counters, watches, COV plans."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapters.bacnet.values import ACCESS_POINT_EXTRAS, cov_properties
from gateway.config.models import PointConfig
from gateway.core.ports import DeviceSnapshot
from gateway.domain.values import RawValue

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
    stale_reads: int = 0  # read answers dropped because a notification for the object came in meanwhile
    # COV notifications from this device for a subscription this run of the adapter does not hold (left by an
    # earlier run, or a process id that does not match the object): answered unknown-subscription, not
    # routed. Not (yet) in the snapshot: /metrics takes only the names of gateway.core.ports.DEVICE_COUNTERS.
    unknown_subscription_notifications: int = 0
    points_unavailable: int = 0  # configured points the device says do not exist (reported unavailable)
    errors: Counter[str] = field(default_factory=Counter)  # by error class name
    last_contact: datetime | None = None

    def snapshot(self, duplicate_notifications: int = 0) -> DeviceSnapshot:
        """For /metrics (gateway.core.ports.DeviceMetrics); duplicates are counted by the application."""
        return DeviceSnapshot(
            online=self.online,
            last_contact=self.last_contact.timestamp() if self.last_contact is not None else None,
            errors=dict(self.errors),
            counters={
                "readings": self.readings,
                "cov_notifications": self.cov_notifications,
                "event_notifications": self.event_notifications,
                "duplicate_notifications": duplicate_notifications,
                "resyncs": self.resyncs,
                "stale_reads": self.stale_reads,
                "unknown_subscription_notifications": self.unknown_subscription_notifications,
            },
            gauges={
                "cov_subscriptions_active": self.cov_subscriptions_active,
                "polled_fallback_objects": self.polled_objects,
                "points_unavailable": self.points_unavailable,
            },
        )


@dataclass
class Watch:
    """One configured point: which object/property it reads and what was last reported."""

    point: PointConfig
    object_id: str
    object_type: str
    prop: str
    reported: tuple[RawValue, str | None] | None = None
    last_event: tuple[Any, Any] | None = None  # (to-state, time stamp) of the transition awaiting acknowledgement
    # Notifications received for this property so far. A read snapshots it when the request starts: if it
    # changed by the time the answer is reported, a newer notification was already handled and the answer
    # (possibly read before that change) must not override it.
    notified: int = 0

    def refs(self) -> list[tuple[str, str]]:
        """The (object, property) pairs a read of this point needs (an access event also needs its tag)."""
        refs = [(self.object_id, self.prop)]
        if self.object_type == "access-point" and self.prop == "access-event":
            refs.extend((self.object_id, extra) for extra in ACCESS_POINT_EXTRAS)
        return refs


@dataclass
class ObjectPlan:
    """One configured object: its watches and whether COV serves them."""

    object_id: str
    object_type: str
    watches: list[Watch]
    process_id: int
    cov: bool = False  # currently subscribed
    subscribed_until: float | None = None  # loop time the last SubscribeCOV sent would lapse at the device

    def cov_watches(self) -> list[Watch]:
        return [w for w in self.watches if w.prop in cov_properties(self.object_type)]


@dataclass(frozen=True)
class StaleSubscription:
    """A COV subscription an earlier run of the adapter may have left on a device, alive until `until`
    (loop time: the last SubscribeCOV sent plus its lifetime). A new run cancels it once the device answers."""

    object_id: str
    process_id: int
    until: float


# ReadPropertyMultiple answers are kept small enough for one APDU of 480 bytes (the smallest size common
# on BACnet/IP devices), so no device has to segment them: bacpypes3's segmented responses break when the
# first segment ack is late (AssertionError in ServerSSM.segmented_response_timeout), and many panels do
# not segment at all. Sizes are estimates of the encoded answer, generous on purpose.
RPM_ANSWER_BUDGET = 400
_OBJECT_OVERHEAD = 8  # object identifier plus the list-of-results opening and closing tags
_PROPERTY_OVERHEAD = 6  # property identifier plus the read-result opening and closing tags
_VALUE_SIZE = {
    "access-event-time": 20,
    "access-event-credential": 16,
    "event-time-stamps": 60,
    "status-flags": 4,
}
_SMALL_VALUE = 8  # enumerations, unsigned, real, boolean, bit strings of a few bits, an error
_UNKNOWN_VALUE = 64  # any property not known to be small (names, descriptions, lists)
_SMALL_PROPERTIES = frozenset(
    {
        "present-value",
        "mode",
        "door-alarm-state",
        "access-event",
        "access-event-tag",
        "event-state",
        "tracking-value",
        "door-status",
        "lock-status",
        "reliability",
        "out-of-service",
        "acked-transitions",
        "system-status",
        "operation-expected",
        "silenced",
        "maintenance-required",
    }
)


def answer_size(prop: str) -> int:
    """Estimated bytes one property adds to a ReadPropertyMultiple answer."""
    value = _VALUE_SIZE.get(prop, _SMALL_VALUE if prop in _SMALL_PROPERTIES else _UNKNOWN_VALUE)
    return _PROPERTY_OVERHEAD + value


def read_batches(watches: list[Watch], budget: int = RPM_ANSWER_BUDGET) -> list[list[Watch]]:
    """Split watches into ReadPropertyMultiple requests whose answers stay within `budget` bytes.

    A point's refs stay in one request (an access event and its tag belong together); a point that alone
    exceeds the budget gets a request of its own.
    """
    batches: list[list[Watch]] = []
    current: list[Watch] = []
    objects: set[str] = set()
    refs: set[tuple[str, str]] = set()
    size = 0
    for watch in watches:
        new_refs = [r for r in watch.refs() if r not in refs]
        extra = sum(answer_size(prop) for _obj, prop in new_refs)
        if watch.object_id not in objects:
            extra += _OBJECT_OVERHEAD
        if current and size + extra > budget:
            batches.append(current)
            current, objects, refs, size = [], set(), set(), 0
            new_refs = watch.refs()
            extra = _OBJECT_OVERHEAD + sum(answer_size(prop) for _obj, prop in new_refs)
        current.append(watch)
        objects.add(watch.object_id)
        refs.update(new_refs)
        size += extra
    if current:
        batches.append(current)
    return batches
