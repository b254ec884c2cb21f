"""A simulated device's own record of what it did: every change it made, with its time, as JSON lines.

The chaos drill (bench/chaos.py) compares what the meldkamer's receiver holds with this log, not with what
the gateway says it saw: a change the gateway never noticed is missing from the gateway's own records too.
Each line is flushed when written, so the log is complete up to the last change whatever happens to the
process that reads it. Times are wall-clock (`time.time()`), comparable with the events' `detected_at`
and the receiver's `received_at` on the same machine.

Kinds of line:
- `change`: the device now holds `value` for `point`; `t` was taken just before the write (no reader can have
  seen the value earlier), `t_done` just after it. A write of the value the point already held (e.g. the
  normal values a simulator sets at start) is logged too: `changes()` leaves such repeats out.
- anything else a writer adds for diagnosis (`start`, `held`, `settled`, `stop`), ignored by `changes()`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gateway.domain.values import RawValue


@dataclass(frozen=True, slots=True)
class Change:
    """One change a simulated device made, read back from a truth log."""

    t: float
    t_done: float
    point: str
    value: RawValue


class TruthLog:
    """Appends JSON lines to `path` (created, or appended to); each line is flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out: IO[str] | None = path.open("a", encoding="utf-8")

    def write(self, kind: str, **fields: Any) -> None:
        if self._out is None:
            return
        self._out.write(json.dumps({"kind": kind, **fields}, separators=(",", ":")) + "\n")
        self._out.flush()

    def change(self, point: str, value: RawValue, t: float, t_done: float | None = None) -> None:
        self.write("change", t=t, t_done=time.time() if t_done is None else t_done, point=point, value=value)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of a truth log (a torn last line, should the writer have died mid-write, is left out)."""
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def changes(path: Path) -> list[Change]:
    """The `change` lines of a truth log in the order they were made, without writes that repeated the value
    a point already held. A point's first line is its initial value."""
    out: list[Change] = []
    held: dict[str, RawValue] = {}
    for r in records(path):
        if r.get("kind") != "change":
            continue
        point, value = str(r["point"]), r["value"]
        if point in held and held[point] == value:
            continue
        held[point] = value
        out.append(Change(float(r["t"]), float(r["t_done"]), point, value))
    return out
