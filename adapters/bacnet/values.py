"""Conversions between bacpypes3 values and what the gateway reports: plain ints and enumeration names.

Site configs write raw values as BACnet names ('active', 'alarm', 'forced-open', 'denied-unknown-
credential'), so every enumerated value is reported by its bacpypes3 name string; numbers stay ints.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bacpypes3.basetypes import PropertyIdentifier
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
    return str(PropertyIdentifier(identifier))


def property_type(object_type: str, prop: str) -> Any:
    """The bacpypes3 datatype of a standard property, or None."""
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


def choice_value(choice: Any) -> Any:
    """The selected element of a bacpypes3 Choice (PropertyStates, TimeStamp, ...)."""
    name = getattr(choice, "_choice", None)
    return None if name is None else getattr(choice, name, None)


def time_stamp_datetime(stamp: Any) -> datetime | None:
    """A BACnet TimeStamp as an aware UTC datetime when it is a complete date-time, else None.

    Devices report local time without a zone; the simulated ones (and the site convention) use UTC.
    """
    if stamp is None or getattr(stamp, "_choice", None) != "dateTime":
        return None
    date_time = stamp.dateTime
    try:
        year, month, day, _dow = date_time.date
        hour, minute, second, hundredths = date_time.time
        if 255 in (year, month, day, hour, minute, second):
            return None
        return datetime(1900 + year, month, day, hour, minute, second, 10_000 * (hundredths % 100), tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def time_stamp_text(stamp: Any) -> str | None:
    if stamp is None:
        return None
    moment = time_stamp_datetime(stamp)
    if moment is not None:
        return moment.isoformat().replace("+00:00", "Z")
    value = choice_value(stamp)
    return None if value is None else f"{stamp._choice}:{value}"


def event_new_value(event_values: Any) -> Any:
    """The new value an event notification reports (change-of-state / change-of-life-safety), or None."""
    if event_values is None:
        return None
    params = choice_value(event_values)
    new_state = getattr(params, "newState", None)
    if new_state is None:
        return None
    if getattr(new_state, "_choice", None) is not None:  # PropertyStates is a Choice
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
