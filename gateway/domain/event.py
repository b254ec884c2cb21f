"""The normalised event `gcmk.event.v1`: the one schema the meldkamer receives, whatever the hardware.

An `Event` is built by the normaliser without `seq`; the journal assigns `seq` when it commits the event
(gap-free per site), so only journaled events carry one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import uuid6
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from gateway.domain.taxonomy import TYPES, Category, EventState, EventType, contact_id_qualifier, sia_code

SCHEMA_ID = "gcmk.event.v1"


def format_time(value: datetime) -> str:
    """RFC 3339, UTC, millisecond precision, 'Z' suffix."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(format_time, return_type=str, when_used="json")]


def new_event_id() -> UUID:
    """UUIDv7: time-ordered, so ids sort roughly by creation and index well."""
    return UUID(str(uuid6.uuid7()))


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContactIdCode(_Model):
    event: str = Field(pattern=r"^\d{3}$", description="Contact ID event code")
    qualifier: Literal["1", "3", "6"] = Field(description="1 new, 3 restore, 6 still present")


class Codes(_Model):
    contact_id: ContactIdCode
    sia: str = Field(pattern=r"^[A-Z]{2}$", description="SIA DC-03 event code")


class PointRef(_Model):
    id: str
    name: str
    zone: str | None = None
    location: str = ""


class SourceRef(_Model):
    protocol: Literal["bacnet", "modbus", "gateway"]
    device_id: str
    address: str = Field(description="device network address (host:port or serial line)")
    ref: str = Field("", description="BACnet object/property or Modbus table:address.bit")
    raw: int | str | None = Field(None, description="the raw value as read")


class Credential(_Model):
    credential: str | None = Field(None, description="card or credential number as the device reports it")
    user: str | None = Field(None, description="user name or number as the device reports it")


class Notification(_Model):
    """Details of a BACnet event notification, kept for acknowledgement and for the operator."""

    priority: int = Field(ge=0, le=255, description="BACnet priority, lower = more urgent")
    ack_required: bool
    from_state: str | None = None
    to_state: str
    message: str | None = None
    time_stamp: str | None = Field(None, description="the device's time stamp as reported")
    notification_class: int | None = None


# Why the gateway ended an alarm itself (docs/operations.md, "Reloading the site config").
EndCause = Literal["point_removed", "device_removed"]


class Event(_Model):
    """One normalised alarm, restore or information event."""

    schema_: Literal["gcmk.event.v1"] = Field("gcmk.event.v1", alias="schema")
    event_id: UUID = Field(description="UUIDv7, stable across retries: the meldkamer de-duplicates on it")
    seq: int | None = Field(None, ge=1, description="per site, gap-free, assigned when journaled")
    site: str
    tenant: str | None = Field(None, description="tenant id; none (absent) for site-level (gateway) events")
    category: Category
    type: EventType
    state: EventState
    priority: int = Field(ge=1, le=5, description="1 = most urgent")
    codes: Codes
    point: PointRef
    source: SourceRef
    occurred_at: Timestamp = Field(description="device time when given, else detection time")
    detected_at: Timestamp = Field(description="when the gateway saw it")
    buffered: bool = Field(False, description="delivered late (held back during an outage)")
    redelivered: bool = Field(
        False, description="published again: unconfirmed by the receiving side in time, or replayed on request"
    )
    commissioning: bool = Field(False, description="point or site in test mode")
    credential: Credential | None = None
    notification: Notification | None = None
    text: str | None = Field(None, description="human-readable detail, e.g. the fault reason")
    cause: EndCause | None = Field(
        None,
        description="set only on a restore the gateway made itself because a config reload removed the point"
        " (point_removed) or its device (device_removed) while it was in alarm: the alarm ends unobserved,"
        " the device did not report normal",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def with_seq(self, seq: int) -> Event:
        return self.model_copy(update={"seq": seq})

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    @classmethod
    def from_json(cls, data: str | bytes) -> Event:
        return cls.model_validate_json(data)


def make_codes(event_type: EventType, state: EventState) -> Codes:
    return Codes(
        contact_id=ContactIdCode(event=TYPES[event_type].contact_id, qualifier=contact_id_qualifier(event_type, state)),
        sia=sia_code(event_type, state),
    )


def event_json_schema() -> dict[str, Any]:
    schema = Event.model_json_schema(by_alias=True, mode="serialization")
    schema["$id"] = f"urn:{SCHEMA_ID}"
    schema["title"] = SCHEMA_ID
    return schema
