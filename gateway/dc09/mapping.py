"""Normalised event -> DC-09 message: SIA DC-03 (`SIA-DCS`) or Contact ID DC-05 (`ADM-CID`).

The codes themselves come from the one taxonomy table (`gateway.domain.taxonomy`: Contact ID event and
qualifier, SIA alarm/restore code) through the event's own `codes`; this module only lays them out:

- SIA-DCS: `N` (new event) + `ri<area>` + (for access events with a user) `id<user>` + code + zone number,
  e.g. `Nri1/BA001`, `Nid17/ri2/DG012`. DC-03 puts the door or zone in the address and the user in `id`.
- ADM-CID: qualifier (1 new / 3 restore) + event code, partition (2 digits), zone or user (3 digits), e.g.
  `1130 01 001`. Contact ID 421/422 (access denied/granted) report the user in the zone field, as DC-05
  defines (so do 401 open/close and 121 duress); without a numeric user they report the zone.
- Extended data: only `[H<time of occurrence>]` (DC-09's standard "time of occurrence" field, UTC) when the
  device's time differs from the detection time; one block at most, because pysiaalarm (the receiver behind
  Home Assistant) reads a single xdata block after an ADM-CID message and NAKs more.
"""

from __future__ import annotations

from datetime import UTC
from typing import Literal

from gateway.dc09.frame import TIMESTAMP_FORMAT
from gateway.dc09.transmitter import Message
from gateway.domain.event import Event
from gateway.domain.taxonomy import Category

Format = Literal["sia-dcs", "adm-cid"]
TOKENS: dict[str, Literal["SIA-DCS", "ADM-CID"]] = {"sia-dcs": "SIA-DCS", "adm-cid": "ADM-CID"}
# Contact ID events whose 3-digit field is the user, not the zone, when the event carries a user.
CID_USER_EVENTS = frozenset({"421", "422", "401", "121"})
CID_MAX_ZONE = 999
CID_MAX_PARTITION = 99
SIA_MAX_ZONE = 9999
SIA_MAX_AREA = 999
OCCURRENCE_SLACK = 1.0  # seconds: occurred_at this close to detected_at is not worth an [H...] block


def user_number(event: Event) -> int | None:
    """The event's user as a DC-09 number: the credential's user if it is a number, else the card number
    if that is one; None when neither is (DC-09 user fields are numeric)."""
    if event.credential is None:
        return None
    for value in (event.credential.user, event.credential.credential):
        if value is not None and value.strip().isdigit():
            return int(value.strip())
    return None


def _check(name: str, value: int, high: int) -> None:
    if not 0 <= value <= high:
        raise ValueError(f"DC-09 {name} {value} outside 0-{high}")


def sia_data(event: Event, *, zone_no: int, area_no: int) -> str:
    """The SIA-DCS data after `#acct|`: `N[id<user>/]ri<area>/<code><zone:03>`."""
    _check("zone", zone_no, SIA_MAX_ZONE)
    _check("area", area_no, SIA_MAX_AREA)
    user = user_number(event) if event.category is Category.ACCESS else None
    user_part = f"id{user}/" if user is not None else ""
    return f"N{user_part}ri{area_no}/{event.codes.sia}{zone_no:03d}"


def cid_data(event: Event, *, zone_no: int, area_no: int) -> str:
    """The ADM-CID data after `#acct|`: `QEEE PP ZZZ` (qualifier + event, partition, zone or user)."""
    _check("Contact ID zone", zone_no, CID_MAX_ZONE)
    _check("Contact ID partition", area_no, CID_MAX_PARTITION)
    cid = event.codes.contact_id
    user = user_number(event) if cid.event in CID_USER_EVENTS else None
    field = user if user is not None and user <= CID_MAX_ZONE else zone_no
    return f"{cid.qualifier}{cid.event} {area_no:02d} {field:03d}"


def extended_data(event: Event) -> tuple[str, ...]:
    """`[H...]` with the device's time of occurrence when it differs from the detection time."""
    if abs((event.occurred_at - event.detected_at).total_seconds()) <= OCCURRENCE_SLACK:
        return ()
    return ("H" + event.occurred_at.astimezone(UTC).strftime(TIMESTAMP_FORMAT),)


def dc09_message(event: Event, *, fmt: Format, account: str, zone_no: int, area_no: int) -> Message:
    """The DC-09 message for `event` in `fmt`, for `account`, with the point's zone number (1-999 for
    Contact ID) and the tenant's area / partition number (1-99 for Contact ID, 0 = whole system)."""
    data = (
        sia_data(event, zone_no=zone_no, area_no=area_no)
        if fmt == "sia-dcs"
        else cid_data(event, zone_no=zone_no, area_no=area_no)
    )
    return Message(TOKENS[fmt], account.upper(), data, extended_data(event))
