"""Readings at offsets from a fixed start, and events as (point, type, state), for normaliser tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.core.ports import Quality, Reading
from gateway.domain.state import Batch
from tests.support.sites import minimal_site

SITE = minimal_site()
T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def read(point: str, value: object, seconds: float, quality: Quality = Quality.GOOD, **kw: object) -> Reading:
    return Reading(point, value, quality, at(seconds), **kw)  # type: ignore[arg-type]


def events(batch: Batch) -> list[tuple[str, str, str]]:
    return [(e.point.id, e.type.value, e.state.value) for e in batch.events]
