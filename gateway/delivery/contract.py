"""The contract with the meldkamer: topic names and the documents published besides events.

docs/asyncapi.yaml documents exactly these (a test checks that the two agree), so any change here is a
change of the contract and needs a new topic version (`gcmk/v2/...`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.domain.event import Timestamp

ROOT = "gcmk/v1"

# Channel address templates (AsyncAPI 3 parameters in braces).
EVENTS = ROOT + "/{site}/events/{category}"
STATE = ROOT + "/{site}/state/{point_id}"
STATUS = ROOT + "/{site}/status"
HEARTBEAT = ROOT + "/{site}/heartbeat"
CONFIRM = ROOT + "/{site}/confirm"
CHANNELS = {"events": EVENTS, "state": STATE, "status": STATUS, "heartbeat": HEARTBEAT, "confirm": CONFIRM}
MAX_CONFIRM_SEQS = 1_000  # isolated seqs beyond up_to_seq in one confirmation

CONTENT_TYPE = "application/json"


def event_topic(site: str, category: str) -> str:
    return EVENTS.format(site=site, category=category)


def state_topic(site: str, point_id: str) -> str:
    return STATE.format(site=site, point_id=point_id)


def status_topic(site: str) -> str:
    return STATUS.format(site=site)


def heartbeat_topic(site: str) -> str:
    return HEARTBEAT.format(site=site)


def confirm_topic(site: str) -> str:
    return CONFIRM.format(site=site)


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class StatusDoc(_Doc):
    """Retained on the status topic: `online` on connect; `offline` as the MQTT will and on clean stop."""

    schema_: Literal["gcmk.status.v1"] = Field("gcmk.status.v1", alias="schema")
    site: str
    status: Literal["online", "offline"]
    # "reconnecting": a reload renews the session (credentials read again); `online` follows once connected
    reason: Literal["connected", "connection lost", "shutdown", "reconnecting"]
    version: str = Field(description="gateway software version")
    config_hash: str = Field(description="hash of the effective site config")
    started_at: Timestamp = Field(description="when the gateway process started")
    at: Timestamp | None = Field(None, description="when this document was published (none in the will)")
    last_seq: int | None = Field(None, description="last journaled seq at publication (none in the will)")
    published_seq: int | None = Field(None, description="highest seq the broker acknowledged (none in the will)")
    confirmed_seq: int | None = Field(
        None, description="every seq up to this one is confirmed by the receivers (none in the will)"
    )


class HeartbeatDoc(_Doc):
    """Published every supervision.heartbeat_interval; missing heartbeats mean the gateway or link is down."""

    schema_: Literal["gcmk.heartbeat.v1"] = Field("gcmk.heartbeat.v1", alias="schema")
    site: str
    at: Timestamp
    interval: float = Field(description="seconds until the next heartbeat")
    last_seq: int = Field(description="last journaled seq")
    journal_depth: int = Field(
        description="journaled events not yet delivered: unconfirmed by the receivers (confirm: meldkamer), or"
        " without PUBACK (confirm: broker)"
    )
    oldest_undelivered_age: float | None = Field(description="seconds; none when nothing is undelivered")
    published_seq: int = Field(description="highest seq the broker acknowledged (PUBACK)")
    confirmed_seq: int = Field(description="every seq up to this one is confirmed by all required receivers")
    devices_online: int = Field(description="devices answering, counted only while their adapter runs")
    devices_total: int
    inputs_ok: bool = Field(description="every protocol adapter runs (false while one is down or restarting)")
    journal_ok: bool = Field(
        description="the journal is writable and keeps up (false after a failed write until one succeeds, and while"
        " its thread has not finished a job for 5 s: a hung disk)"
    )
    info_shed: int = Field(description="info events shed because of the journal's disk bound, in total")


class PointStateDoc(_Doc):
    """Retained per point: its current condition, so a restarting meldkamer sees at once what is in alarm."""

    schema_: Literal["gcmk.state.v1"] = Field("gcmk.state.v1", alias="schema")
    site: str
    point_id: str
    condition: str = Field(description="normal, unknown (never read), or the event type it is in alarm for")
    in_alarm: bool
    value: int | str | None = Field(description="last raw value")
    since: Timestamp
    as_of_seq: int = Field(description="last seq journaled when this state was recorded")
    version: int = Field(description="increments with each change of the point")


class ConfirmDoc(_Doc):
    """Published by a receiving side on the confirm topic (QoS 1, not retained) once it has STORED events
    durably: every seq <= `up_to_seq` is held, and so is each seq in `seqs` (beyond it, out of order). Only
    this makes an event delivered at the gateway (with `delivery.confirm: meldkamer`); a broker's PUBACK
    does not. Cumulative, so a lost confirmation is repaired by the next one."""

    schema_: Literal["gcmk.confirm.v1"] = Field("gcmk.confirm.v1", alias="schema")
    site: str
    receiver: str = Field(min_length=1, max_length=64, description="the receiver's id (delivery.receivers)")
    up_to_seq: int = Field(ge=0, description="every seq up to and including this one is stored")
    seqs: list[int] = Field(
        default_factory=list, max_length=MAX_CONFIRM_SEQS, description="stored seqs beyond up_to_seq"
    )
    at: Timestamp | None = Field(None, description="when the receiver sent this")


def document_schemas() -> dict[str, dict[str, Any]]:
    """JSON schemas of the non-event documents (the event schema is gateway.domain.event.event_json_schema())."""
    return {
        "status": StatusDoc.model_json_schema(by_alias=True, mode="serialization"),
        "heartbeat": HeartbeatDoc.model_json_schema(by_alias=True, mode="serialization"),
        "state": PointStateDoc.model_json_schema(by_alias=True, mode="serialization"),
        "confirm": ConfirmDoc.model_json_schema(by_alias=True, mode="serialization"),
    }
