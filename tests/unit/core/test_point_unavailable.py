"""Blind points: a point the device says does not exist is one point_unavailable alarm, restored once readable."""

from __future__ import annotations

from gateway.core.normaliser import Normaliser, unavailable_key
from gateway.core.ports import DeviceStatus, Quality, Reading
from gateway.domain.taxonomy import Category, EventType
from gateway.testing import CollectingSink
from tests.support.readings import SITE, T0
from tests.support.readings import at as _at
from tests.support.readings import events as _events
from tests.support.readings import read as _read

REASON = "binary-input,99/present-value: the device says unknown-object"


def _blind(point: str, seconds: float) -> Reading:
    return _read(point, None, seconds, Quality.UNAVAILABLE, text=REASON)


def test_a_blind_point_is_one_alarm_with_the_reason_and_one_restore_when_readable() -> None:
    norm = Normaliser(SITE, epoch=T0)
    first = norm.process(_blind("pir-01", 0))
    again = norm.process(_blind("pir-01", 1))
    assert _events(first) == [("pir-01", "point_unavailable", "alarm")]
    assert _events(again) == []
    (alarm,) = first.events
    assert alarm.text == REASON
    assert (alarm.category, alarm.priority, alarm.codes.contact_id.event, alarm.codes.sia) == (
        Category.SUPERVISION,
        2,
        "380",
        "UT",
    )
    assert alarm.point.zone == "jv-1" and alarm.tenant == "jv"
    assert norm.unavailable_points() == {"panel-1": ["pir-01"]}
    back = norm.process(_read("pir-01", 0, 2))
    assert _events(back) == [("pir-01", "point_unavailable", "restore")]
    assert back.events[0].codes.sia == "UJ"
    assert norm.unavailable_points() == {}


def test_a_blind_point_in_alarm_stays_in_alarm_and_its_value_counts_once_readable() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_read("pir-01", 0, 0))
    assert _events(norm.process(_read("pir-01", 1, 1))) == [("pir-01", "burglary", "alarm")]
    assert _events(norm.process(_blind("pir-01", 2))) == [("pir-01", "point_unavailable", "alarm")]
    assert norm.point_state("pir-01").condition == EventType.BURGLARY.value  # no false restore
    assert _events(norm.process(_read("pir-01", 0, 3))) == [
        ("pir-01", "point_unavailable", "restore"),
        ("pir-01", "burglary", "restore"),
    ]


def test_offline_device_does_not_repeat_the_alarm_when_it_returns_still_blind() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_blind("pir-01", 0))
    norm.device_status(DeviceStatus("panel-1", False, _at(1)))
    norm.device_status(DeviceStatus("panel-1", True, _at(2)))
    assert _events(norm.process(_blind("pir-01", 3))) == []


def test_the_open_alarm_survives_a_restart_through_the_state_table() -> None:
    sink = CollectingSink()
    norm = Normaliser(SITE, epoch=T0)
    batch = norm.process(_blind("pir-01", 0))
    assert [d.device_id for d in batch.devices] == [unavailable_key("pir-01")]
    sink.devices.update({d.device_id: d for d in batch.devices})
    restarted = Normaliser(SITE, epoch=T0)
    restarted.load([], sink.devices.values())
    assert _events(restarted.process(_blind("pir-01", 5))) == []
    assert _events(restarted.process(_read("pir-01", 0, 6))) == [("pir-01", "point_unavailable", "restore")]


def test_a_rolled_back_step_raises_the_alarm_again() -> None:
    norm = Normaliser(SITE, epoch=T0)
    step = norm.offer(_blind("pir-01", 0))
    norm.rollback(step)
    assert norm.unavailable_points() == {}
    assert _events(norm.offer(_blind("pir-01", 1)).batch) == [("pir-01", "point_unavailable", "alarm")]
