"""The reference receiver, fed crafted streams: gaps, duplicates, invalid payloads, lost sites."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.delivery.contract import HeartbeatDoc, StatusDoc
from gateway.domain.event import Event, PointRef, SourceRef, make_codes, new_event_id
from gateway.domain.taxonomy import Category, EventState, EventType
from gateway.tools.receiver import ReceiverState

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def _event(seq: int, site: str = "hoftoren", **update: object) -> Event:
    event = Event(
        event_id=new_event_id(), seq=seq, site=site, tenant="ocw", category=Category.INTRUSION,
        type=EventType.BURGLARY, state=EventState.ALARM, priority=2,
        codes=make_codes(EventType.BURGLARY, EventState.ALARM),
        point=PointRef(id="pir-1", name="PIR 1"), source=SourceRef(protocol="modbus", device_id="p", address="a"),
        occurred_at=T0, detected_at=T0,
    )
    return event.model_copy(update=update)


def _feed(state: ReceiverState, topic: str, payload: str | bytes, mono: float = 0.0, delay_ms: float = 5) -> list[str]:
    data = payload.encode() if isinstance(payload, str) else payload
    notices = state.on_message(topic, data, received=T0 + timedelta(milliseconds=delay_ms), mono=mono)
    return [n.kind for n in notices]


def test_gaps_are_found_and_reordering_is_not_a_gap() -> None:
    state = ReceiverState()
    for seq in (1, 2, 5, 3, 7):
        assert _feed(state, "gcmk/v1/hoftoren/events/intrusion", _event(seq).to_json()) == ["event"]
    assert state.sites["hoftoren"].missing_seqs() == [4, 6]
    _feed(state, "gcmk/v1/hoftoren/events/intrusion", _event(4).to_json())
    _feed(state, "gcmk/v1/hoftoren/events/intrusion", _event(6).to_json())
    summary = state.summary()["sites"]["hoftoren"]
    assert summary["seq_gaps"] == [] and summary["events"] == 7
    assert summary["latency_ms_p50"] == 5.0


def test_duplicates_by_event_id_are_counted_once() -> None:
    state = ReceiverState()
    event = _event(1)
    assert _feed(state, "gcmk/v1/hoftoren/events/intrusion", event.to_json()) == ["event"]
    assert _feed(state, "gcmk/v1/hoftoren/events/intrusion", event.to_json()) == ["duplicate"]
    summary = state.summary()["sites"]["hoftoren"]
    assert (summary["events"], summary["duplicates"]) == (1, 1)


def test_invalid_events_are_counted_not_fatal() -> None:
    state = ReceiverState()
    assert _feed(state, "gcmk/v1/hoftoren/events/intrusion", b"{not json") == ["invalid"]
    bad = _event(1).to_json().replace('"priority":2', '"priority":9')
    assert _feed(state, "gcmk/v1/hoftoren/events/intrusion", bad) == ["invalid"]
    assert _feed(state, "gcmk/v1/hoftoren/events/fire", _event(2, site="resident").to_json()) == ["invalid"]
    assert state.sites["hoftoren"].invalid == 3


def _heartbeat(seq: int) -> str:
    return HeartbeatDoc(site="hoftoren", at=T0, interval=5, last_seq=seq, journal_depth=0,
                        oldest_undelivered_age=None, published_seq=seq, confirmed_seq=seq, devices_online=3,
                        devices_total=3, inputs_ok=True,
                        journal_ok=True, info_shed=0).to_json()


def test_a_site_whose_heartbeats_stop_is_lost_and_found_again() -> None:
    state = ReceiverState(lost_after=12)
    assert _feed(state, "gcmk/v1/hoftoren/heartbeat", _heartbeat(1), mono=100) == ["heartbeat"]
    assert state.check(111) == []
    (lost,) = state.check(112.5)
    assert (lost.kind, lost.site) == ("lost", "hoftoren")
    assert state.check(130) == [], "reported once"
    assert _feed(state, "gcmk/v1/hoftoren/heartbeat", _heartbeat(2), mono=131) == ["heartbeat", "found"]


def test_an_offline_status_is_a_lost_site() -> None:
    state = ReceiverState()
    doc = StatusDoc(site="hoftoren", status="offline", reason="connection lost", version="0.1.0",
                    config_hash="abc", started_at=T0)
    assert _feed(state, "gcmk/v1/hoftoren/status", doc.to_json()) == ["status", "lost"]
    assert state.summary()["sites"]["hoftoren"]["lost"] is True


def test_site_filter_ignores_other_sites() -> None:
    state = ReceiverState(site="resident")
    assert _feed(state, "gcmk/v1/hoftoren/events/intrusion", _event(1).to_json()) == []
    assert state.sites == {}

