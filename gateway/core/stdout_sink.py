"""The commissioning sink (`gcmk-gateway run --sink stdout`): events as JSON lines, no journal."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from gateway.domain.event import Event
from gateway.domain.state import Batch, DeviceState, PointState


class StdoutSink:
    """Prints each event as one JSON line. Seq numbers are gap-free but not durable: no journal here."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._seq = 0

    async def load_state(self) -> tuple[list[PointState], list[DeviceState]]:
        return [], []

    async def accept(self, batch: Batch) -> Sequence[Event]:
        numbered = []
        for event in batch.events:
            self._seq += 1
            numbered.append(event.with_seq(self._seq))
            self._stream.write(numbered[-1].to_json() + "\n")
        self._stream.flush()
        return numbered

    async def run(self) -> None:
        await asyncio.Future()  # nothing to deliver in the background; wait to be cancelled

    async def close(self) -> None:
        self._stream.flush()
