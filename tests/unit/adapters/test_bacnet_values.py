"""BACnet boundary helpers: error translation and value conversion (no network)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from bacpypes3.apdu import AbortPDU, Error, RejectPDU
from bacpypes3.basetypes import (
    BinaryPV,
    DateTime,
    DoorAlarmState,
    LifeSafetyState,
    NotificationParameters,
    NotificationParametersChangeOfState,
    PropertyStates,
    TimeStamp,
)

from adapters.bacnet.errors import guarded, translate
from adapters.bacnet.values import DeviceClock, event_new_value, time_stamp_datetime, time_stamp_text, to_raw
from gateway.domain.errors import ConfigurationFault, DeviceBusy, DeviceRejected, DeviceTimeout


def test_enumerations_become_their_names_and_numbers_stay_ints() -> None:
    assert to_raw(BinaryPV("active")) == "active"
    assert to_raw(LifeSafetyState("holdup")) == "holdup"
    assert to_raw(DoorAlarmState(2)) == "door-open-too-long"
    assert to_raw(3) == 3


def test_time_stamps_are_local_time_of_the_device_clock() -> None:
    stamp = TimeStamp(dateTime=DateTime(datetime(2026, 3, 1, 12, 30, 5, 250000)))
    received = datetime(2026, 3, 1, 11, 30, 6, tzinfo=UTC)
    amsterdam = DeviceClock(ZoneInfo("Europe/Amsterdam"))
    # winter: CET, UTC+1
    assert time_stamp_datetime(stamp, amsterdam, received) == datetime(2026, 3, 1, 11, 30, 5, 250000, tzinfo=UTC)
    assert time_stamp_datetime(stamp, DeviceClock(UTC), received) == datetime(2026, 3, 1, 12, 30, 5, 250000, tzinfo=UTC)
    assert time_stamp_text(stamp) == "2026-03-01T12:30:05.250000"  # as the device reported it: no zone
    sequence = TimeStamp(sequenceNumber=17)
    assert time_stamp_datetime(sequence, amsterdam, received) is None  # no clock on the device: detection time
    assert time_stamp_text(sequence) == "sequenceNumber:17"
    time_only = TimeStamp(time=(12, 30, 5, 0))
    assert time_stamp_datetime(time_only, amsterdam, received) is None
    assert time_stamp_text(time_only) == "time:12:30:05.00"
    unspecified = TimeStamp(dateTime=DateTime(date=(255, 255, 255, 255), time=(255, 255, 255, 255)))
    assert time_stamp_datetime(unspecified, amsterdam, received) is None


def test_event_values_give_the_new_state() -> None:
    params = NotificationParameters(
        changeOfState=NotificationParametersChangeOfState(
            newState=PropertyStates(doorAlarmState="forced-open"), statusFlags=[1, 0, 0, 0]
        )
    )
    assert to_raw(event_new_value(params)) == "forced-open"
    assert event_new_value(None) is None


def test_errors_rejects_and_aborts_are_translated() -> None:
    unknown = translate("d1", Error(service_choice=12, errorClass="object", errorCode="unknown-object"))
    assert isinstance(unknown, ConfigurationFault) and unknown.code == "unknown-object"
    refused = translate("d1", Error(service_choice=5, errorClass="services", errorCode="cov-subscription-failed"))
    assert type(refused) is DeviceRejected
    busy = translate("d1", Error(service_choice=12, errorClass="device", errorCode="operational-problem"))
    assert isinstance(busy, DeviceBusy)
    assert isinstance(translate("d1", RejectPDU(reason="unrecognized-service")), ConfigurationFault)
    assert isinstance(translate("d1", AbortPDU(reason="no-response")), DeviceTimeout)


async def test_guarded_turns_base_exceptions_and_silence_into_device_errors() -> None:
    async def failing() -> None:
        raise Error(service_choice=12, errorClass="property", errorCode="unknown-property")

    with pytest.raises(ConfigurationFault):  # would escape `except Exception` untranslated
        await guarded("d1", 1.0, failing())
    with pytest.raises(DeviceTimeout):
        await guarded("d1", 0.01, asyncio.Event().wait())
