"""The normaliser across a config reload: state carried over by point id, final events for what is removed."""

from __future__ import annotations

from typing import Any

from gateway.config.models import SiteConfig
from gateway.core.normaliser import Normaliser
from gateway.core.ports import DeviceStatus, Quality
from gateway.domain.state import UNKNOWN
from tests.support.readings import SITE, T0, at
from tests.support.readings import events as _events
from tests.support.readings import read as _read


def _moved(**update: Any) -> SiteConfig:
    """pir-01..08 move from jv to az (zone jv-1 handed over); `update` replaces more fields of the site."""
    zones = [z.model_copy(update={"tenant": "az"}) if z.id == "jv-1" else z for z in SITE.zones]
    points = [p.model_copy(update={"tenant": "az"}) if p.zone == "jv-1" else p for p in SITE.points]
    return SITE.model_copy(update={"zones": zones, "points": points, **update})


def _in_alarm() -> Normaliser:
    norm = Normaliser(SITE, epoch=T0)
    for point in ("pir-01", "pir-02"):
        norm.process(_read(point, 0, 0))
        assert _events(norm.process(_read(point, 1, 1))) == [(point, "burglary", "alarm")]
    return norm


def test_an_alarm_active_during_the_reload_is_neither_repeated_nor_restored() -> None:
    norm = _in_alarm()
    new = _moved()
    assert not norm.ending_step(new, at(2)).batch.events
    norm.reconfigure(new, at(2))
    assert _events(norm.process(_read("pir-01", 1, 3))) == []  # the new adapter's first read: still in alarm
    (restore,) = norm.process(_read("pir-01", 0, 4)).events
    assert (restore.state.value, restore.tenant, restore.cause) == ("restore", "az", None)


def test_a_removed_point_in_alarm_ends_with_a_restore_caused_by_its_removal() -> None:
    norm = _in_alarm()
    new = _moved(points=[p for p in SITE.points if p.id not in ("pir-02", "pir-03")])
    norm.process(_read("pir-03", 0, 1))  # normal: removed without an event
    step = norm.ending_step(new, at(2))
    (event,) = step.batch.events
    assert (event.point.id, event.type.value, event.state.value) == ("pir-02", "burglary", "restore")
    assert (event.cause, event.tenant, event.codes.sia) == ("point_removed", "jv", "BH")  # as configured until now
    assert {row.point_id: row.condition for row in step.batch.points} == {"pir-02": UNKNOWN, "pir-03": UNKNOWN}
    assert step.keys == ()  # it changes nothing in the normaliser: nothing to roll back
    norm.reconfigure(new, at(2))
    assert _events(norm.process(_read("pir-02", 0, 3))) == []  # no longer configured: ignored
    assert norm.stats.unknown_points == 1


def test_a_removed_device_that_is_offline_ends_its_comm_loss() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.device_status(DeviceStatus("fire-1", True, at(0)))
    norm.device_status(DeviceStatus("fire-1", False, at(1)))
    new = SITE.model_copy(
        update={
            "devices": [d for d in SITE.devices if d.id != "fire-1"],
            "points": [p for p in SITE.points if p.device != "fire-1"],
        }
    )
    step = norm.ending_step(new, at(2))
    assert [(e.point.id, e.type.value, e.state.value, e.cause) for e in step.batch.events] == [
        ("fire-1", "comm_loss", "restore", "device_removed")
    ]
    norm.reconfigure(new, at(2))
    assert norm.device_protocols() == {"panel-1": "modbus"}


def test_a_new_point_starts_unknown_and_a_replaced_one_starts_again() -> None:
    norm = _in_alarm()
    pir = next(p for p in SITE.points if p.id == "pir-01")
    points = [p for p in SITE.points if p.id != "pir-01"] + [pir.model_copy(update={"id": "pir-99"})]
    points = [
        p.model_copy(update={"kind": "momentary", "alarm": [], "normal": [], "events": []}) if p.id == "pir-02" else p
        for p in points
    ]
    new = SITE.model_copy(update={"points": points})
    step = norm.ending_step(new, at(2), ended=["pir-02"])
    assert sorted((e.point.id, e.cause) for e in step.batch.events) == [
        ("pir-01", "point_removed"),
        ("pir-02", "point_removed"),
    ]
    norm.reconfigure(new, at(2), ended=["pir-02"])
    assert norm.point_state("pir-02").condition == UNKNOWN
    assert _events(norm.process(_read("pir-99", 0, 3))) == []  # unknown -> normal: no event, as at a start
    assert _events(norm.process(_read("pir-99", 1, 4))) == [("pir-99", "burglary", "alarm")]


def test_a_removed_blind_point_closes_its_point_unavailable_alarm() -> None:
    norm = Normaliser(SITE, epoch=T0)
    (alarm,) = norm.process(_read("pir-03", None, 1, Quality.UNAVAILABLE, text="no such object")).events
    assert (alarm.type.value, alarm.state.value) == ("point_unavailable", "alarm")
    new = SITE.model_copy(update={"points": [p for p in SITE.points if p.id != "pir-03"]})
    step = norm.ending_step(new, at(2))
    assert [(e.point.id, e.type.value, e.state.value, e.cause) for e in step.batch.events] == [
        ("pir-03", "point_unavailable", "restore", "point_removed")
    ]
    assert [(row.device_id, row.online) for row in step.batch.devices] == [("unavailable:pir-03", True)]
