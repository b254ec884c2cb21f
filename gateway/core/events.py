"""The one event factory: normaliser, journal (shed announcements) and command audit all make events here.

It fills what every event derives from its type and state (a fresh event id, the taxonomy's category and
default priority, the Contact ID / SIA codes), so no caller spells the `Event` constructor out again.
"""

from __future__ import annotations

from datetime import datetime

from gateway.domain.event import (
    Credential,
    EndCause,
    Event,
    Notification,
    PointRef,
    SourceRef,
    make_codes,
    new_event_id,
)
from gateway.domain.taxonomy import TYPES, Category, EventState, EventType


def make_event(
    *,
    site: str,
    event_type: EventType,
    state: EventState,
    point: PointRef,
    source: SourceRef,
    occurred_at: datetime,
    detected_at: datetime,
    tenant: str | None = None,
    category: Category | None = None,
    priority: int | None = None,
    commissioning: bool = False,
    credential: Credential | None = None,
    notification: Notification | None = None,
    text: str | None = None,
    cause: EndCause | None = None,
) -> Event:
    """An event without seq (the sink assigns it at commit). Category and priority default to the taxonomy's."""
    info = TYPES[event_type]
    return Event(
        event_id=new_event_id(),
        site=site,
        tenant=tenant,
        category=info.category if category is None else category,
        type=event_type,
        state=state,
        priority=info.priority if priority is None else priority,
        codes=make_codes(event_type, state),
        point=point,
        source=source,
        occurred_at=occurred_at,
        detected_at=detected_at,
        commissioning=commissioning,
        credential=credential,
        notification=notification,
        text=text,
        cause=cause,
    )
