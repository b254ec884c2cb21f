"""The normaliser: edges not polls, debounce, bad quality, momentary points, comm loss, persisted state."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.normaliser import Normaliser
from gateway.core.ports import DeviceStatus, Quality
from gateway.domain.event import Event
from gateway.domain.taxonomy import EventState, EventType
from tests.support.readings import SITE, T0
from tests.support.readings import at as _at
from tests.support.readings import events as _events
from tests.support.readings import read as _read


def test_an_alarm_seen_by_many_polls_is_one_alarm_and_one_restore() -> None:
    norm = Normaliser(SITE, epoch=T0)
    seen: list[tuple[str, str, str]] = []
    values = [0, 0, 1, 1, 1, 1, 0, 0, 0]
    for t, value in enumerate(values):
        seen += _events(norm.process(_read("pir-01", value, t)))
    assert seen == [("pir-01", "burglary", "alarm"), ("pir-01", "burglary", "restore")]


def test_event_fields_come_from_the_point_config_and_the_code_table() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_read("pir-03", 0, 0))
    (event,) = norm.process(_read("pir-03", 1, 1, occurred_at=_at(0.5))).events
    assert (event.site, event.tenant, event.category.value, event.priority) == ("test-site", "jv", "intrusion", 2)
    assert (event.point.zone, event.source.device_id, event.source.ref) == ("jv-1", "panel-1", "holding:100.2")
    assert (event.codes.contact_id.event, event.codes.contact_id.qualifier, event.codes.sia) == ("130", "1", "BA")
    assert event.occurred_at == _at(0.5)
    assert event.detected_at == _at(1)
    assert Event.from_json(event.to_json()) == event


def test_other_conditions_restore_the_previous_one_first() -> None:
    norm = Normaliser(SITE, epoch=T0)
    batches = [norm.process(_read("door-1", v, t)) for t, v in enumerate(
        ["normal", "forced-open", "door-open-too-long", "tamper", "door-fault", "normal"])]
    flat = [e for b in batches for e in _events(b)]
    assert flat == [
        ("door-1", "door_forced", "alarm"),
        ("door-1", "door_forced", "restore"), ("door-1", "door_held_open", "alarm"),
        ("door-1", "door_held_open", "restore"), ("door-1", "tamper", "alarm"),
        ("door-1", "tamper", "restore"), ("door-1", "fault", "alarm"),
        ("door-1", "fault", "restore"),
    ]


def test_fault_of_a_fire_point_is_fire_trouble_and_unmapped_values_are_faults() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_read("smoke-1", "quiet", 0))
    norm.process(_read("smoke-1", "fault", 1))
    assert _events(norm.tick(_at(3.1))) == [("smoke-1", "fire_trouble", "alarm")]
    norm.process(_read("pir-01", 0, 0))
    assert _events(norm.process(_read("pir-01", 7, 1))) == [("pir-01", "fault", "alarm")]
    assert norm.stats.unmapped_values == 1


def test_debounce_confirms_by_timer_and_ignores_short_flaps() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_read("smoke-1", "quiet", 0))
    assert not norm.process(_read("smoke-1", "alarm", 10))
    assert norm.next_due() == _at(12)
    assert not norm.tick(_at(11.9))
    assert _events(norm.tick(_at(12))) == [("smoke-1", "fire", "alarm")]
    # the restore is debounced as well: not emitted by the reading, but by the timer once it has held 2 s
    assert _events(norm.process(_read("smoke-1", "quiet", 20))) == [], "a restore is debounced like an alarm"
    assert norm.next_due() == _at(22)
    assert not norm.tick(_at(21.9))
    assert _events(norm.tick(_at(22))) == [("smoke-1", "fire", "restore")]
    # a flap shorter than the debounce time: nothing
    assert not norm.process(_read("smoke-1", "alarm", 30))
    assert not norm.process(_read("smoke-1", "quiet", 31))
    assert not norm.tick(_at(40))
    assert norm.stats.suppressed_flaps == 1


def test_bad_quality_never_restores_and_comm_loss_is_one_alarm_and_one_restore() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_read("pir-01", 1, 0))
    offline = norm.device_status(DeviceStatus("panel-1", online=False, at=_at(1), reason="timeout"))
    assert _events(offline) == [("panel-1", "comm_loss", "alarm")]
    assert offline.events[0].tenant is None and offline.events[0].text == "timeout"
    assert not norm.device_status(DeviceStatus("panel-1", online=False, at=_at(2)))
    assert not norm.process(_read("pir-01", None, 3, Quality.BAD))
    assert norm.quality("pir-01") is Quality.BAD
    assert norm.devices_online() == (0, 2)
    back = norm.device_status(DeviceStatus("panel-1", online=True, at=_at(4)))
    assert _events(back) == [("panel-1", "comm_loss", "restore")]
    # the alarm is still on after the outage: no event; it cleared meanwhile: its restore
    assert not norm.process(_read("pir-01", 1, 5))
    assert _events(norm.process(_read("pir-01", 0, 6))) == [("pir-01", "burglary", "restore")]


def test_a_device_unreachable_from_the_start_raises_comm_loss_but_reaching_it_is_silent() -> None:
    norm = Normaliser(SITE, epoch=T0)
    assert not norm.device_status(DeviceStatus("fire-1", online=True, at=_at(0)))
    assert _events(norm.device_status(DeviceStatus("panel-1", online=False, at=_at(0)))) == [
        ("panel-1", "comm_loss", "alarm")]


def test_state_survives_a_restart_through_the_state_rows() -> None:
    first = Normaliser(SITE, epoch=T0)
    rows = [*first.process(_read("pir-01", 1, 0)).points, *first.process(_read("pir-02", 1, 0)).points]
    devices = first.device_status(DeviceStatus("fire-1", online=False, at=_at(1))).devices
    second = Normaliser(SITE, epoch=_at(100))
    second.load(rows, devices)
    assert not second.process(_read("pir-01", 1, 101)), "still in alarm: no duplicate alarm"
    assert _events(second.process(_read("pir-02", 0, 101))) == [("pir-02", "burglary", "restore")]
    assert _events(second.device_status(DeviceStatus("fire-1", online=True, at=_at(102)))) == [
        ("fire-1", "comm_loss", "restore")]


def test_momentary_points_emit_per_occurrence_with_the_credential() -> None:
    from gateway.domain.event import Credential

    norm = Normaliser(SITE, epoch=T0)
    assert not norm.process(_read("badge-1", "granted", 0)).events, "the first value seen is history"
    cred = Credential(credential="12345", user="j.jansen")
    (denied,) = norm.process(_read("badge-1", "denied-unknown-credential", 1, occurrence="7", credential=cred)).events
    assert (denied.type, denied.state, denied.credential) == (EventType.ACCESS_DENIED, EventState.INFO, cred)
    assert not norm.process(_read("badge-1", "denied-unknown-credential", 2, occurrence="7")), "a re-read"
    assert len(norm.process(_read("badge-1", "denied-unknown-credential", 3, occurrence="8")).events) == 1
    assert _events(norm.process(_read("badge-1", "granted", 4))) == [("badge-1", "access_granted", "info")]


# --- properties ----------------------------------------------------------------------------------------

POINT_VALUES = {
    "pir-01": [0, 1, 5],
    "door-1": ["normal", "forced-open", "door-open-too-long", "tamper", "door-fault", "bogus"],
    "smoke-1": ["quiet", "alarm", "fault"],
}
step = st.one_of(
    st.tuples(st.just("read"), st.sampled_from(sorted(POINT_VALUES)), st.integers(0, 5), st.booleans(),
              st.floats(0, 3)),
    st.tuples(st.just("tick"), st.just(""), st.just(0), st.just(True), st.floats(0, 3)),
    st.tuples(st.just("device"), st.sampled_from(["panel-1", "fire-1"]), st.just(0), st.booleans(), st.floats(0, 3)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=80))
def test_alarm_and_restore_alternate_per_point_and_bad_quality_never_restores(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    norm = Normaliser(SITE, epoch=T0)
    now = 0.0
    history: dict[tuple[str, str], list[str]] = defaultdict(list)
    for kind, target, index, flag, dt in steps:
        now += dt
        if kind == "read":
            values = POINT_VALUES[target]
            quality = Quality.GOOD if flag else Quality.BAD
            batch = norm.process(_read(target, values[index % len(values)], now, quality))
            if quality is Quality.BAD:
                assert not batch, "bad quality changed something"
        elif kind == "tick":
            batch = norm.tick(_at(now))
        else:
            batch = norm.device_status(DeviceStatus(target, online=flag, at=_at(now)))
            assert all(e.type is EventType.COMM_LOSS for e in batch.events)
        for event in batch.events:
            history[(event.point.id, event.type.value)].append(event.state.value)
    for key, states in history.items():
        expected = ["alarm", "restore"] * len(states)
        assert states == expected[: len(states)], (key, states)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 1.99), min_size=1, max_size=30), st.lists(st.floats(0, 1.99), max_size=30))
def test_flaps_shorter_than_the_debounce_time_produce_no_event(durations: list[float], ticks: list[float]) -> None:
    norm = Normaliser(SITE, epoch=T0)  # smoke-1 debounces 2 s
    assert not norm.process(_read("smoke-1", "quiet", 0)).events
    now = 1.0
    for duration, tick_offset in zip(durations, ticks + [0.0] * len(durations), strict=False):
        assert not norm.process(_read("smoke-1", "alarm", now))
        assert not norm.tick(_at(now + min(tick_offset, duration)))
        now += duration
        assert not norm.process(_read("smoke-1", "quiet", now))
        now += 0.5
    assert not norm.tick(_at(now + 100))
