"""Local bacpypes3 object classes for the simulated security devices.

bacpypes3.local lacks life-safety, access-door and access-point objects and gives multi-state values a
COV criterion that needs a cov-increment; these small subclasses add the local-object machinery (property
monitors, COV detection) to the standard object definitions.
"""

from __future__ import annotations

from typing import Any

from bacpypes3.basetypes import EventTransitionBits, TimeStamp
from bacpypes3.local.cov import AccessDoorCriteria, COVDetection, GenericCriteria
from bacpypes3.local.object import Object as _Local
from bacpypes3.object import AccessDoorObject as _AccessDoor
from bacpypes3.object import AccessPointObject as _AccessPoint
from bacpypes3.object import BinaryInputObject as _BinaryInput
from bacpypes3.object import BinaryValueObject as _BinaryValue
from bacpypes3.object import LifeSafetyPointObject as _LifeSafetyPoint
from bacpypes3.object import LifeSafetyZoneObject as _LifeSafetyZone
from bacpypes3.object import MultiStateValueObject as _MultiStateValue
from bacpypes3.object import NotificationClassObject as _NotificationClass
from bacpypes3.primitivedata import Time

NOTIFICATION_CLASS = 1


class SimBinaryInput(_Local, _BinaryInput):  # type: ignore[misc]
    _cov_criteria = GenericCriteria


class SimBinaryValue(_Local, _BinaryValue):  # type: ignore[misc]
    _cov_criteria = GenericCriteria


class SimMultiStateValue(_Local, _MultiStateValue):  # type: ignore[misc]
    _cov_criteria = GenericCriteria


class SimLifeSafetyPoint(_Local, _LifeSafetyPoint):  # type: ignore[misc]
    _cov_criteria = GenericCriteria


class SimLifeSafetyZone(_Local, _LifeSafetyZone):  # type: ignore[misc]
    _cov_criteria = GenericCriteria


class SimAccessDoor(_Local, _AccessDoor):  # type: ignore[misc]
    _cov_criteria = AccessDoorCriteria


class AccessEventCriteria(COVDetection):  # type: ignore[misc]
    """bacpypes3's AccessPointCriteria reports properties it does not track (and then fails): track them."""

    properties_tracked = ("accessEventTime", "statusFlags", "accessEvent", "accessEventTag", "accessEventCredential")
    properties_reported = ("accessEvent", "statusFlags", "accessEventTag", "accessEventTime", "accessEventCredential")
    monitored_property_reference = "accessEvent"


class SimAccessPoint(_Local, _AccessPoint):  # type: ignore[misc]
    _cov_criteria = AccessEventCriteria


class SimNotificationClass(_Local, _NotificationClass):  # type: ignore[misc]
    """Priorities and ack-required per transition (to-offnormal, to-fault, to-normal), and the recipients."""


def _event_properties() -> dict[str, Any]:
    never = TimeStamp(time=Time((255, 255, 255, 255)))
    return {
        "eventState": "normal",
        "notificationClass": NOTIFICATION_CLASS,
        "eventEnable": EventTransitionBits([1, 1, 1]),
        "ackedTransitions": EventTransitionBits([1, 1, 1]),
        "notifyType": "alarm",
        "eventTimeStamps": [never, never, never],
        "eventDetectionEnable": True,
    }


def make_object(object_type: str, instance: int, name: str) -> Any:
    """A local object of `object_type` ('binary-input', ...) in its quiet state, with intrinsic reporting."""
    common: dict[str, Any] = {
        "objectIdentifier": (object_type, instance),
        "objectName": name,
        "outOfService": False,
        "reliability": "no-fault-detected",
        **_event_properties(),
    }
    if object_type == "binary-input":
        return SimBinaryInput(presentValue="inactive", polarity="normal", **common)
    if object_type == "binary-value":
        return SimBinaryValue(presentValue="inactive", **common)
    if object_type == "multi-state-value":
        return SimMultiStateValue(presentValue=1, numberOfStates=16, **common)
    if object_type in ("life-safety-point", "life-safety-zone"):
        cls = SimLifeSafetyPoint if object_type == "life-safety-point" else SimLifeSafetyZone
        return cls(
            presentValue="quiet",
            trackingValue="quiet",
            mode="armed",
            acceptedModes=["armed", "disarmed"],
            silenced="unsilenced",
            operationExpected="none",
            **common,
        )
    if object_type == "access-door":
        return SimAccessDoor(
            presentValue="lock",
            relinquishDefault="lock",
            doorStatus="closed",
            doorAlarmState="normal",
            doorPulseTime=30,
            doorExtendedPulseTime=60,
            doorOpenTooLongTime=300,
            **common,
        )
    if object_type == "access-point":
        return SimAccessPoint(
            authenticationStatus="not-ready",
            activeAuthenticationPolicy=0,
            numberOfAuthenticationPolicies=0,
            accessEvent="none",
            accessEventTag=0,
            accessEventTime=TimeStamp(sequenceNumber=0),
            accessEventCredential={"objectIdentifier": ("access-credential", 0)},
            accessDoors=[],
            priorityForWriting=16,
            **common,
        )
    raise ValueError(f"the BACnet simulator does not serve {object_type!r} objects")
