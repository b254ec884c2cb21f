"""Every event type x state x format -> DC-09 frame -> an independent decoder (pysiaalarm's parser, and
siadc09's strict one) reads back the codes of the taxonomy, the zone, the area / partition and the user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pysiaalarm import SIAAccount
from pysiaalarm.event import SIAEvent
from siadc09.message import parse_frame

from gateway.core.events import make_event
from gateway.dc09.frame import encode_message
from gateway.dc09.mapping import dc09_message
from gateway.domain.event import Credential, Event, PointRef, SourceRef
from gateway.domain.taxonomy import TYPES, Category, EventState, EventType, contact_id_qualifier, sia_code

T0 = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
KEY = b"ABCDEFGHIJKLMNOP"


def _event(
    event_type: EventType, state: EventState, *, credential: Credential | None = None, occurred: datetime = T0
) -> Event:
    return make_event(
        site="s1",
        event_type=event_type,
        state=state,
        point=PointRef(id="p1", name="Point 1", zone="z1"),
        source=SourceRef(protocol="modbus", device_id="d1", address="127.0.0.1:502"),
        occurred_at=occurred,
        detected_at=T0,
        tenant="t1",
        credential=credential,
    )


def _decode(message_token: str, data: str, xdata: tuple[str, ...], *, key: bytes | None) -> SIAEvent:
    frame = encode_message(
        message_token, 17, account="4711", receiver="1", prefix="0", data=data, xdata=xdata, timestamp=T0, key=key
    )
    account = SIAAccount("4711", key.decode() if key else None, allowed_timeband=None)
    event = SIAEvent.from_line(frame.decode("ascii").strip(), {"4711": account})
    assert isinstance(event, SIAEvent) and event.valid_message
    strict = parse_frame(frame, keys=key)  # CRC, length, envelope checked strictly
    assert strict.seq == 17 and strict.timestamp == T0
    return event


CASES = [(t, s) for t in EventType for s in EventState]


@pytest.mark.parametrize(("event_type", "state"), CASES, ids=[f"{t.value}-{s.value}" for t, s in CASES])
@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "aes128"])
def test_sia_dcs_round_trip(event_type: EventType, state: EventState, key: bytes | None) -> None:
    message = dc09_message(_event(event_type, state), fmt="sia-dcs", account="4711", zone_no=42, area_no=3)
    assert message.token == "SIA-DCS" and message.account == "4711"
    decoded = _decode(message.token, message.data, message.xdata, key=key)
    assert decoded.code == sia_code(event_type, state)
    assert decoded.ri == "3"  # DC-03 area (pysiaalarm and Home Assistant call it the zone)
    assert decoded.message == "042"  # the zone, the address after the event code
    assert decoded.id is None
    assert decoded.sia_code is not None, f"pysiaalarm does not know SIA code {decoded.code}"


@pytest.mark.parametrize(("event_type", "state"), CASES, ids=[f"{t.value}-{s.value}" for t, s in CASES])
@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "aes128"])
def test_adm_cid_round_trip(event_type: EventType, state: EventState, key: bytes | None) -> None:
    message = dc09_message(_event(event_type, state), fmt="adm-cid", account="4711", zone_no=42, area_no=3)
    assert message.token == "ADM-CID"
    decoded = _decode(message.token, message.data, message.xdata, key=key)
    assert decoded.event_type == TYPES[event_type].contact_id
    assert decoded.event_qualifier == contact_id_qualifier(event_type, state)
    assert decoded.event_qualifier == ("3" if state is EventState.RESTORE or event_type is EventType.ARMED else "1")
    assert (decoded.partition, decoded.ri) == ("03", "042")


@pytest.mark.parametrize("event_type", [t for t in EventType if TYPES[t].category is Category.ACCESS])
def test_access_events_carry_the_user(event_type: EventType) -> None:
    event = _event(event_type, EventState.ALARM, credential=Credential(credential="0012345", user="17"))
    sia = dc09_message(event, fmt="sia-dcs", account="4711", zone_no=12, area_no=1)
    decoded = _decode(sia.token, sia.data, sia.xdata, key=None)
    code = sia_code(event_type, EventState.ALARM)
    assert (decoded.id, decoded.ri, decoded.code, decoded.message) == ("17", "1", code, "012")
    cid = dc09_message(event, fmt="adm-cid", account="4711", zone_no=12, area_no=1)
    expected = "017" if TYPES[event_type].contact_id in {"421", "422"} else "012"  # 421/422 carry only the user
    assert _decode(cid.token, cid.data, cid.xdata, key=None).ri == expected


def test_non_numeric_user_falls_back_to_the_card_then_to_nothing() -> None:
    card = _event(EventType.ACCESS_GRANTED, EventState.INFO, credential=Credential(credential="884", user="Jansen"))
    assert dc09_message(card, fmt="sia-dcs", account="4711", zone_no=1, area_no=1).data == "Nid884/ri1/DG001"
    none = _event(EventType.ACCESS_DENIED, EventState.INFO, credential=Credential(credential="A1B2", user="Jansen"))
    assert dc09_message(none, fmt="sia-dcs", account="4711", zone_no=1, area_no=1).data == "Nri1/DD001"


def test_device_time_goes_in_the_standard_time_of_occurrence_field() -> None:
    late = _event(EventType.BURGLARY, EventState.ALARM, occurred=T0 - timedelta(minutes=5))
    for fmt in ("sia-dcs", "adm-cid"):
        message = dc09_message(late, fmt=fmt, account="4711", zone_no=1, area_no=1)  # type: ignore[arg-type]
        assert message.xdata == ("H08:55:00,12-01-2026",)
        decoded = _decode(message.token, message.data, message.xdata, key=KEY)
        assert decoded.x_data == "H08:55:00,12-01-2026"
    now = _event(EventType.BURGLARY, EventState.ALARM)
    assert dc09_message(now, fmt="sia-dcs", account="4711", zone_no=1, area_no=1).xdata == ()


def test_contact_id_limits_are_enforced() -> None:
    event = _event(EventType.FIRE, EventState.ALARM)
    with pytest.raises(ValueError, match="zone"):
        dc09_message(event, fmt="adm-cid", account="4711", zone_no=1000, area_no=1)
    with pytest.raises(ValueError, match="partition"):
        dc09_message(event, fmt="adm-cid", account="4711", zone_no=1, area_no=100)
    assert dc09_message(event, fmt="sia-dcs", account="4711", zone_no=1000, area_no=1).data == "Nri1/FA1000"


def test_account_is_upper_case_on_the_wire() -> None:
    message = dc09_message(
        _event(EventType.FIRE, EventState.ALARM), fmt="sia-dcs", account="ab12", zone_no=1, area_no=1
    )
    assert message.account == "AB12"
