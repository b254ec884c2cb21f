"""Conversions between bacpypes3 values and what the gateway reports: plain ints and enumeration names.

Site configs write raw values as BACnet names ('active', 'alarm', 'forced-open', 'denied-unknown-
credential'), so every enumerated value is reported by its bacpypes3 name string; numbers stay ints.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.constructeddata import Choice
from bacpypes3.primitivedata import ObjectType
from bacpypes3.vendor import get_vendor_info

from gateway.domain.event import Credential, Notification
from gateway.domain.values import RawValue

# Properties a COV notification carries, per object type (bacpypes3.local.cov criteria, clause 13.1).
_COV_DEFAULT = frozenset({"present-value", "status-flags"})
COV_PROPERTIES: dict[str, frozenset[str]] = {
    "access-door": frozenset({"present-value", "status-flags", "door-alarm-state"}),
    "access-point": frozenset(
        {"access-event", "status-flags", "access-event-tag", "access-event-time", "access-event-credential"}
    ),
}
# The property whose value an intrinsic event notification reports (its event values' "new state").
EVENT_PROPERTY: dict[str, str] = {"access-door": "door-alarm-state"}
ACCESS_POINT_EXTRAS = ("access-event-tag", "access-event-credential")


def cov_properties(object_type: str) -> frozenset[str]:
    return COV_PROPERTIES.get(object_type, _COV_DEFAULT)


def event_property(object_type: str) -> str:
    return EVENT_PROPERTY.get(object_type, "present-value")


def property_name(identifier: Any) -> str:
    """PropertyIdentifier (or int / name) -> 'present-value'."""
    if isinstance(identifier, int):  # a PropertyIdentifier is an int: cached (every COV value asks)
        return _property_name(int(identifier))
    return str(PropertyIdentifier(identifier))


@functools.lru_cache(maxsize=1024)
def _property_name(number: int) -> str:
    return str(PropertyIdentifier(number))


@functools.lru_cache(maxsize=1024)
def property_type(object_type: str, prop: str) -> Any:
    """The bacpypes3 datatype of a standard property, or None (cached: every COV value asks)."""
    try:
        object_class = get_vendor_info(0).get_object_class(ObjectType(object_type))
        if object_class is None:
            return None
        return object_class.get_property_type(PropertyIdentifier(prop))
    except (ValueError, KeyError, AttributeError):
        return None


def to_raw(value: Any) -> RawValue:
    """A decoded bacpypes3 value as a plain int or enumeration name."""
    asn1 = getattr(value, "asn1", None)
    if isinstance(asn1, str):
        return asn1
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    return str(value)


def chosen(choice: Any) -> tuple[str, Any] | None:
    """(name, value) of the element a bacpypes3 Choice (PropertyStates, TimeStamp, ...) holds, or None.

    Public API only: `dict_contents()` lists the elements that are set, and a Choice sets exactly one.
    """
    contents = choice.dict_contents() if hasattr(choice, "dict_contents") else None
    if not contents:
        return None
    name = next(iter(contents))
    return name, getattr(choice, name, None)


def choice_value(choice: Any) -> Any:
    """The selected element of a bacpypes3 Choice (PropertyStates, NotificationParameters, ...)."""
    selected = chosen(choice)
    return None if selected is None else selected[1]


# --- device clocks ---------------------------------------------------------------------------------------
#
# BACnet date-times carry no zone: a panel stamps its local wall-clock time. The site config names the zone
# (site.timezone, a device's own timezone:); a device that reports UTC_Offset and Daylight_Savings_Status
# is checked against it at every (re)connect (DeviceClock.of_device).
#
# UTC_Offset (ASHRAE 135 clause 12.11.25, Device object): minutes between local STANDARD time and UTC,
# positive west of Greenwich, negative east; it is subtracted from UTC to get local standard time. So
# UTC = local standard time + UTC_Offset: a Dutch panel has -60, and in summer (Daylight_Savings_Status
# TRUE) its wall clock is one hour further ahead (UTC = local + UTC_Offset - 60 min).
UTC_OFFSET_LIMIT = 1440  # minutes, the property's range in 135-2020
DAYLIGHT_SAVING = timedelta(hours=1)  # BACnet has no property for the amount; one hour everywhere in Europe


@dataclass(frozen=True)
class DeviceClock:
    """How one device's zone-less time stamps map to UTC: its zone (an IANA zone, or a fixed offset that the
    device itself reported) and where that came from ('site', 'device-config', 'device')."""

    zone: tzinfo
    source: str = "site"

    @classmethod
    def of_device(
        cls, configured: tzinfo, utc_offset: int | None, daylight_savings: bool | None, now: datetime
    ) -> DeviceClock:
        """The clock given what the device says about itself at `now` (aware).

        If the device's offset (from UTC_Offset, plus an hour when Daylight_Savings_Status is TRUE) equals the
        configured zone's offset at `now`, the device keeps that zone's rules: the zone is used, so stamps on
        either side of a DST change (a resynced summer alarm read in winter, or a session that outlives the
        change) convert correctly. If it differs (a panel on UTC, or one that never switches to summer time),
        the device's own offset is used as a fixed offset until the next (re)connect reads it again. Without
        Daylight_Savings_Status only the standard offsets are compared. Without UTC_Offset (or out of range)
        the configured zone applies.
        """
        if utc_offset is None or not -UTC_OFFSET_LIMIT <= utc_offset <= UTC_OFFSET_LIMIT:
            return cls(configured, "site")
        standard = timedelta(minutes=-utc_offset)  # east of UTC, as Python counts offsets
        local = now.astimezone(configured)
        zone_offset = local.utcoffset() or timedelta(0)
        if daylight_savings is None:
            device_offset, expected = standard, zone_offset - (local.dst() or timedelta(0))
        else:
            device_offset = standard + (DAYLIGHT_SAVING if daylight_savings else timedelta(0))
            expected = zone_offset
        if device_offset == expected:
            return cls(configured, "site")
        return cls(timezone(device_offset), "device")

    def to_utc(self, local: datetime, received: datetime) -> datetime:
        """A naive local wall-clock time of this device as an aware UTC datetime.

        Repeated hour (autumn, 03:00 -> 02:00: 02:30 happens twice): the meaning closer to `received`, the
        gateway's receive time, which is right for a live event (stamped just before it is received); a tie
        takes the earlier. Skipped hour (spring, 02:00 -> 03:00: 02:30 never happens on a clock that follows
        the zone): the stamp comes from a clock that has not switched yet, so it is read with the offset
        before the switch (02:30 -> 01:30 UTC on 2026-03-29 in Europe/Amsterdam).
        """
        first = local.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = local.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if first == second:
            return first
        if first.astimezone(self.zone).replace(tzinfo=None) != local:
            return first  # skipped hour: fold=0 is the offset before the transition (PEP 495)
        return min((first, second), key=lambda moment: abs(moment - received))

    def local_now(self, now: datetime) -> datetime:
        """`now` (aware) as this device's naive wall-clock time, for time stamps the gateway sends."""
        return now.astimezone(self.zone).replace(tzinfo=None)


def time_stamp_local(stamp: Any) -> datetime | None:
    """A BACnet TimeStamp as the naive local date-time it states, when it is a complete date-time, else None."""
    date_time = getattr(stamp, "dateTime", None) if stamp is not None else None
    if date_time is None:
        return None  # a time of day or a sequence number (a device without a calendar clock)
    try:
        year, month, day, _dow = date_time.date
        hour, minute, second, hundredths = date_time.time
        if 255 in (year, month, day, hour, minute, second):
            return None
        return datetime(1900 + year, month, day, hour, minute, second, 10_000 * (hundredths % 100))
    except (TypeError, ValueError):
        return None


def time_stamp_datetime(stamp: Any, clock: DeviceClock, received: datetime) -> datetime | None:
    """A BACnet TimeStamp as an aware UTC datetime (see DeviceClock.to_utc), or None when it has no date-time."""
    local = time_stamp_local(stamp)
    return None if local is None else clock.to_utc(local, received)


def time_stamp_text(stamp: Any) -> str | None:
    """The device's time stamp as reported: its local date-time without a zone, or 'sequenceNumber:17'."""
    if stamp is None:
        return None
    local = time_stamp_local(stamp)
    if local is not None:
        return local.isoformat()
    selected = chosen(stamp)
    return None if selected is None or selected[1] is None else f"{selected[0]}:{selected[1]}"


def event_new_value(event_values: Any) -> Any:
    """The new value an event notification reports (change-of-state / change-of-life-safety), or None."""
    if event_values is None:
        return None
    params = choice_value(event_values)
    new_state = getattr(params, "newState", None)
    if new_state is None:
        return None
    if isinstance(new_state, Choice):  # PropertyStates
        return choice_value(new_state)
    return new_state


def notification_of(request: Any) -> Notification:
    """The gateway's record of an Event Notification request (confirmed or unconfirmed)."""
    from_state = getattr(request, "fromState", None)
    message = getattr(request, "messageText", None)
    ack = getattr(request, "ackRequired", None)
    return Notification(
        priority=int(request.priority),
        ack_required=bool(ack) if ack is not None else False,
        from_state=None if from_state is None else str(from_state),
        to_state=str(request.toState),
        message=None if message is None else str(message),
        time_stamp=time_stamp_text(request.timeStamp),
        notification_class=int(request.notificationClass),
    )


def credential_of(reference: Any) -> Credential | None:
    """access-event-credential (a DeviceObjectReference) -> Credential('access-credential,7')."""
    object_id = getattr(reference, "objectIdentifier", None)
    if object_id is None:
        return None
    return Credential(credential=f"{object_id[0]},{object_id[1]}")
