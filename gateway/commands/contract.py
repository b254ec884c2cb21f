"""The command contract with the meldkamer: topics, the command and result documents, and the pure checks.

Everything here is pure (no I/O, the time is passed in), so property tests can throw arbitrary payloads at
`parse_command` and `check_command`: a payload is either a valid `CommandDoc` or a `Refusal`, never an
exception. The stateful checks (replay, rate limit) live in gateway/commands/processor.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from gateway.config.models import CommandAction, PointAction, PointConfig, SiteConfig
from gateway.domain.event import Timestamp

COMMANDS = "gcmk/v1/{site}/commands"
COMMAND_RESULTS = "gcmk/v1/{site}/command-results"
COMMAND_CHANNELS = {"commands": COMMANDS, "command-results": COMMAND_RESULTS}
COMMAND_SCHEMA = "gcmk.command.v1"
RESULT_SCHEMA = "gcmk.command-result.v1"
MAX_PAYLOAD = 8192  # bytes; a command is a few hundred

Status = Literal["accepted", "executed", "failed", "refused"]
# Refusal reasons (before any device is touched) and failure reasons (the device did not do it).
REFUSALS = (
    "malformed", "commands_disabled", "unknown_point", "action_not_allowed", "expired", "not_yet_valid",
    "ttl_too_long", "duration_not_allowed", "duration_too_long", "rate_limited", "shutting_down",
    "pruned", "beyond_last_seq", "replay_unavailable",
)
FAILURES = ("device_offline", "device_error", "verification_mismatch", "timeout", "interrupted", "internal_error")


def commands_topic(site: str) -> str:
    return COMMANDS.format(site=site)


def results_topic(site: str) -> str:
    return COMMAND_RESULTS.format(site=site)


_Text = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


class CommandDoc(BaseModel):
    """`gcmk.command.v1`, sent by the meldkamer on `gcmk/v1/{site}/commands` (QoS 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["gcmk.command.v1"] = Field("gcmk.command.v1", alias="schema")
    command_id: _Text = Field(description="the meldkamer's id; unique per command, the key for idempotency")
    point_id: _Text = Field(description="site-config id of the target point")
    action: CommandAction
    issued_at: AwareDatetime
    expires_at: AwareDatetime = Field(description="not executed after this (plus the configured clock skew)")
    operator: _Text = Field(description="who gave the command (recorded in the audit log)")
    reason: str | None = Field(None, max_length=500, description="free text for the audit log")
    duration: float | None = Field(
        None, gt=0, le=3600, allow_inf_nan=False, description="pulse only: seconds; default per point"
    )


class ReplayDoc(BaseModel):
    """`gcmk.replay.v1`, sent by a receiver of the meldkamer on `gcmk/v1/{site}/commands` (QoS 1): publish the
    journaled events `from_seq`..`to_seq` again (`to_seq` absent: up to the last one). Checked like a command
    (validity window, idempotency by command_id, rate limit, audit); answered on the results topic with what
    was sent, or refused with why not (`pruned`: below the first seq still journaled; `beyond_last_seq`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["gcmk.replay.v1"] = Field(alias="schema")
    command_id: _Text = Field(description="unique per request, the key for idempotency")
    from_seq: int = Field(ge=1)
    to_seq: int | None = Field(None, ge=1, description="absent: up to the last journaled seq")
    issued_at: AwareDatetime
    expires_at: AwareDatetime = Field(description="not executed after this (plus the configured clock skew)")
    operator: _Text = Field(description="who asked (a receiver's id for automatic requests)")
    reason: str | None = Field(None, max_length=500, description="free text for the audit log")

    @property
    def action(self) -> str:
        return "replay"

    @property
    def point_id(self) -> None:
        return None


class CommandResultDoc(BaseModel):
    """`gcmk.command-result.v1`, published on `gcmk/v1/{site}/command-results` (QoS 1, not retained).

    A command gets `accepted` and then `executed` or `failed`; or only `refused`. A repeated command_id is
    answered with the stored last result, flagged `replay`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["gcmk.command-result.v1"] = Field("gcmk.command-result.v1", alias="schema")
    site: str
    command_id: str | None = Field(None, description="absent only when the payload had no usable command_id")
    point_id: str | None = None
    action: str | None = None
    status: Status
    reason: str | None = Field(None, description="refusal or failure reason code (see docs/commands.md)")
    detail: str | None = Field(None, description="human-readable detail")
    replay: bool = Field(False, description="answer to a command_id seen before: the stored result, re-sent")
    received_at: Timestamp
    at: Timestamp = Field(description="when this result was decided")
    audit_seq: int | None = Field(None, description="seq of the audit event journaled for this result")
    first_seq: int | None = Field(None, description="replay: the lowest seq re-published, or still journaled")
    last_seq: int | None = Field(None, description="replay: the highest seq re-published, or journaled")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


def command_schemas() -> dict[str, dict[str, Any]]:
    """JSON schemas of the two documents, for the AsyncAPI contract."""
    return {
        "CommandDoc": CommandDoc.model_json_schema(by_alias=True),
        "CommandResultDoc": CommandResultDoc.model_json_schema(by_alias=True, mode="serialization"),
        "ReplayDoc": ReplayDoc.model_json_schema(by_alias=True),
    }


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a command is not executed; `command_id` etc. are echoed when they could be read."""

    reason: str
    detail: str
    command_id: str | None = None
    point_id: str | None = None
    action: str | None = None


def parse_command(payload: bytes | bytearray | str) -> CommandDoc | ReplayDoc | Refusal:
    """Payload -> command, or a `malformed` refusal. Never raises."""
    if len(payload) > MAX_PAYLOAD:
        return Refusal("malformed", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return Refusal("malformed", f"not JSON: {str(exc)[:200]}")
    if not isinstance(data, dict):
        return Refusal("malformed", "a command is a JSON object")
    echo = {key: _short(data.get(key)) for key in ("command_id", "point_id", "action")}
    try:
        if data.get("schema") == "gcmk.replay.v1":
            return ReplayDoc.model_validate(data)
        return CommandDoc.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        return Refusal("malformed", f"{where}: {first['msg']}"[:300], **echo)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # defensive: never a crash
        return Refusal("malformed", f"invalid command: {type(exc).__name__}", **echo)


def _short(value: object) -> str | None:
    """An echoed field only if it is a printable string of sane length (it goes into logs and results)."""
    if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
        return value
    return None


def check_command(cmd: CommandDoc, site: SiteConfig, now: datetime) -> tuple[PointConfig, PointAction] | Refusal:
    """The stateless checks, in order: enabled, known point, allowed action, validity window, duration."""
    cfg = site.commands

    def refuse(reason: str, detail: str) -> Refusal:
        return Refusal(reason, detail, cmd.command_id, cmd.point_id, cmd.action)

    if not cfg.enabled:
        return refuse("commands_disabled", "this gateway is read-only (commands.enabled is false)")
    point = next((p for p in site.points if p.id == cmd.point_id), None)
    if point is None:
        return refuse("unknown_point", f"no point '{cmd.point_id}' at site {site.site.id}")
    action = point.action(cmd.action)
    if action is None:
        allowed = ", ".join(a.action for a in point.actions) or "none"
        return refuse("action_not_allowed", f"point {point.id} allows: {allowed}")
    try:
        return _check_window(cmd, action, cfg.clock_skew, cfg.max_ttl, now) or (point, action)
    except OverflowError:  # a date at the end of the calendar plus the skew
        return refuse("malformed", "issued_at / expires_at out of range")


def check_replay(doc: ReplayDoc, site: SiteConfig, now: datetime) -> Refusal | None:
    """The stateless checks of a replay request: its seq range and validity window (not `commands.enabled`:
    a replay touches no device, so a read-only gateway serves it too)."""
    if doc.to_seq is not None and doc.to_seq < doc.from_seq:
        return Refusal("malformed", "to_seq is below from_seq", doc.command_id, None, "replay")
    try:
        return _window(doc, site.commands.clock_skew, site.commands.max_ttl, now)
    except OverflowError:
        return Refusal("malformed", "issued_at / expires_at out of range", doc.command_id, None, "replay")


def _window(doc: CommandDoc | ReplayDoc, clock_skew: float, max_ttl: float, now: datetime) -> Refusal | None:
    def refuse(reason: str, detail: str) -> Refusal:
        return Refusal(reason, detail, doc.command_id, doc.point_id, doc.action)

    skew = timedelta(seconds=clock_skew)
    if doc.expires_at <= doc.issued_at:
        return refuse("malformed", "expires_at must be later than issued_at")
    if now > doc.expires_at + skew:
        return refuse("expired", f"expired at {doc.expires_at.isoformat()}")
    if doc.issued_at > now + skew:
        return refuse("not_yet_valid", f"issued_at {doc.issued_at.isoformat()} is in the future")
    if (doc.expires_at - doc.issued_at).total_seconds() > max_ttl:
        return refuse("ttl_too_long", f"expires_at - issued_at exceeds max_ttl {max_ttl:g}s")
    return None


def _check_window(
    cmd: CommandDoc, action: PointAction, clock_skew: float, max_ttl: float, now: datetime
) -> Refusal | None:
    def refuse(reason: str, detail: str) -> Refusal:
        return Refusal(reason, detail, cmd.command_id, cmd.point_id, cmd.action)

    if (refused := _window(cmd, clock_skew, max_ttl, now)) is not None:
        return refused
    if cmd.duration is not None:
        if cmd.action != "pulse":
            return refuse("duration_not_allowed", "duration applies to pulse only")
        if cmd.duration > action.pulse_max:
            return refuse("duration_too_long", f"duration {cmd.duration:g}s exceeds {action.pulse_max:g}s")
    return None
