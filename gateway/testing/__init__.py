"""Test support for code built on the gateway core, shipped with it (like `structlog.testing`).

- `CollectingSink`: an in-memory `EventSink` that numbers and keeps events and state rows.
- `CollectingReadings`: an in-memory `ReadingSink` that keeps what an adapter reports (optionally passing it on).
- `wait_until`: await a condition that nothing notifies about, with a timeout that says what was awaited.
- `FakeClock`: a settable clock of aware UTC datetimes, to pass as `clock=`.
- `LoopExceptionCatcher`: records what the event loop reports as unhandled ("Task exception was never
  retrieved", "Exception in callback ...") so a test can fail on it instead of only logging it.

Nothing here may import beyond `gateway.domain`, `gateway.core`, `gateway.config` and the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import linecache
import os
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from gateway.core.ports import DeviceStatus, Quality, Reading, ReadingSink
from gateway.domain.event import Event
from gateway.domain.state import Batch, DeviceState, PointState
from gateway.domain.values import RawValue

__all__ = [
    "CollectingReadings",
    "CollectingSink",
    "FakeClock",
    "LoopExceptionCatcher",
    "wait_until",
]

T = TypeVar("T")

RECHECK = 0.05  # seconds: how often the sinks' wait_for re-checks a condition between notifications
_FIXED_START = datetime(2025, 1, 1, tzinfo=UTC)

LoopExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def _describe(condition: Callable[..., object]) -> str:
    """`condition` for a failure message: its name and, for a function, where it is defined and that line."""
    name = getattr(condition, "__qualname__", None) or repr(condition)
    code = getattr(condition, "__code__", None)
    if code is None:
        return name
    where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    line = linecache.getline(code.co_filename, code.co_firstlineno).strip()
    return f"{name} at {where}: {line}" if line else f"{name} at {where}"


async def wait_until(
    condition: Callable[[], T | None],
    timeout: float = 10.0,  # noqa: ASYNC109 -- a poll with a deadline, not a wrapper around one await
    *,
    interval: float = 0.01,
    what: str | None = None,
) -> T:
    """Wait until `condition()` is truthy and return its value; for conditions nothing notifies about
    (counters, simulator request logs). Checked every `interval` seconds; raises TimeoutError naming the
    condition (or `what`) after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := condition()):
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"{what or _describe(condition)}: not met within {timeout:g}s")
        await asyncio.sleep(min(interval, remaining))
    return result


async def _wait_on(changed: asyncio.Condition, check: Callable[[], T | None], within: float) -> T:
    """Wait until `check()` is truthy: re-checked whenever `changed` is notified, and every RECHECK seconds
    for conditions outside the sink."""
    async with asyncio.timeout(within), changed:
        while not (result := check()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), RECHECK)
        return result


class CollectingSink:
    """An `EventSink` that numbers and keeps every event and state row, and records the calls it got.

    `load_state` returns the rows kept so far, so one instance serves as the journal across a restart.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.points: dict[str, PointState] = {}
        self.devices: dict[str, DeviceState] = {}
        self.calls: list[str] = []  # "run" and "close", in the order they came
        self.changed = asyncio.Condition()  # notified on every accepted batch

    async def load_state(self) -> tuple[list[PointState], list[DeviceState]]:
        return list(self.points.values()), list(self.devices.values())

    async def accept(self, batch: Batch) -> Sequence[Event]:
        numbered = [e.with_seq(len(self.events) + i + 1) for i, e in enumerate(batch.events)]
        self.events.extend(numbered)
        self.points.update({p.point_id: p for p in batch.points})
        self.devices.update({d.device_id: d for d in batch.devices})
        async with self.changed:
            self.changed.notify_all()
        return numbered

    async def run(self) -> None:
        self.calls.append("run")
        await asyncio.Future()

    async def close(self) -> None:
        self.calls.append("close")

    def of(self, point_id: str) -> list[tuple[str, str]]:
        """(type, state) of the events of one point (or device), in order."""
        return [(e.type.value, e.state.value) for e in self.events if e.point.id == point_id]

    async def wait_for(self, predicate: Callable[[list[Event]], object], within: float = 10.0) -> list[Event]:
        """Wait until `predicate(events)` is truthy and return the events; fail after `within` seconds."""
        try:
            await _wait_on(self.changed, lambda: predicate(self.events), within)
        except TimeoutError:
            seen = [(e.point.id, e.type.value, e.state.value) for e in self.events[-10:]]
            raise TimeoutError(
                f"{_describe(predicate)}: not met within {within:g}s; {len(self.events)} events, the last: {seen}"
            ) from None
        return self.events


class CollectingReadings:
    """A `ReadingSink` that keeps every reading and device status, in order, and lets a test wait for them.

    With `forward`, each report is first handed to that sink (e.g. the pipeline), so this is a tap that
    records what an adapter hands on; the record is made once the forward sink has returned.
    """

    def __init__(self, forward: ReadingSink | None = None) -> None:
        self.forward = forward
        self.readings: list[Reading] = []
        self.statuses: list[DeviceStatus] = []
        self.log: list[Reading | DeviceStatus] = []  # both, in the order they came
        self.changed = asyncio.Condition()  # notified on every reading and status

    async def submit(self, reading: Reading) -> None:
        if self.forward is not None:
            await self.forward.submit(reading)
        async with self.changed:
            self.readings.append(reading)
            self.log.append(reading)
            self.changed.notify_all()

    async def submit_many(self, readings: Sequence[Reading]) -> None:
        """Forwarded as one batch; without `forward`, reading by reading through `submit` (so a subclass that
        overrides `submit` sees each one)."""
        if self.forward is None:
            for reading in readings:
                await self.submit(reading)
            return
        await self.forward.submit_many(readings)
        async with self.changed:
            self.readings.extend(readings)
            self.log.extend(readings)
            self.changed.notify_all()

    async def device_status(self, status: DeviceStatus) -> None:
        if self.forward is not None:
            await self.forward.device_status(status)
        async with self.changed:
            self.statuses.append(status)
            self.log.append(status)
            self.changed.notify_all()

    def of(self, point_id: str) -> list[Reading]:
        """The readings of one point, in order."""
        return [r for r in self.readings if r.point_id == point_id]

    def latest(self) -> dict[str, Reading]:
        """The last reading of every point that has one."""
        return {r.point_id: r for r in self.readings}

    def good_value(self, point_id: str) -> RawValue | None:
        """The value of the point's last reading if that was good, else None."""
        readings = self.of(point_id)
        if not readings or readings[-1].quality is not Quality.GOOD:
            return None
        return readings[-1].value

    async def wait_for(self, predicate: Callable[[], T | None], within: float = 10.0) -> T:
        """Wait until `predicate()` is truthy and return its value: re-checked on every reading and status, and
        every 50 ms for conditions outside the sink (adapter counters, simulator state)."""
        try:
            return await _wait_on(self.changed, predicate, within)
        except TimeoutError:
            raise TimeoutError(
                f"{_describe(predicate)}: not met within {within:g}s; "
                f"{len(self.readings)} readings, {len(self.statuses)} statuses"
            ) from None

    async def wait_reading(self, point_id: str, value: RawValue, within: float = 10.0, after: int = 0) -> Reading:
        """The first reading of `point_id` with `value` from index `after` of `readings` on, once it came."""

        def found() -> Reading | None:
            return next((r for r in self.readings[after:] if r.point_id == point_id and r.value == value), None)

        try:
            return await _wait_on(self.changed, found, within)
        except TimeoutError:
            seen = [r.value for r in self.of(point_id)]
            raise TimeoutError(
                f"no reading {value!r} of {point_id} within {within:g}s (after #{after}); its values: {seen}"
            ) from None


class FakeClock:
    """A clock that stands still until told: `now()` (or calling it) gives an aware UTC datetime.

    Pass the instance as `clock=` where a `Callable[[], datetime]` is expected, `clock.timestamp` where Unix
    time is. Starts at `start` (default 2025-01-01T00:00:00Z, so tests are reproducible).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = _FIXED_START
        self.set(start or _FIXED_START)

    def now(self) -> datetime:
        return self._now

    def __call__(self) -> datetime:
        return self._now

    def timestamp(self) -> float:
        """The current time as Unix time, for clocks like `time.time`."""
        return self._now.timestamp()

    def set(self, when: datetime) -> None:
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"FakeClock needs an aware datetime, got {when!r}")
        self._now = when.astimezone(UTC)

    def advance(self, seconds: float) -> datetime:
        """Move the clock on by `seconds` (backwards if negative); returns the new time."""
        self._now += timedelta(seconds=seconds)
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now.isoformat()})"


class LoopExceptionCatcher:
    """Records every context an event loop hands its exception handler, so a test can fail on them.

    asyncio only logs "Task exception was never retrieved", "Future exception was never retrieved" and
    "Exception in callback ..."; while installed, this handler keeps them in `contexts` instead, and `check()`
    raises AssertionError listing them. `uninstall()` restores the loop's previous handler. As a context
    manager it installs on entry, and on exit checks (unless the block raised) and uninstalls.

    "never retrieved" is reported when the future is garbage collected: `check()` runs `gc.collect()` first.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._previous: LoopExceptionHandler | None = None
        self._installed = False
        self.contexts: list[dict[str, Any]] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("LoopExceptionCatcher: not installed and no loop given")
        return self._loop

    def install(self) -> Self:
        """Install on the given loop, or the running loop if none was given."""
        if self._installed:
            raise RuntimeError("LoopExceptionCatcher: already installed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._record)
        self._installed = True
        return self

    def uninstall(self) -> None:
        """Restore the handler the loop had before `install()`; a no-op if not installed."""
        if self._installed:
            self.loop.set_exception_handler(self._previous)
            self._installed = False

    def _record(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def check(self, *, collect: bool = True) -> None:
        """Raise AssertionError if the loop reported anything; with `collect`, first run the garbage collector
        so futures nobody awaited report their exception now."""
        if collect:
            gc.collect()
        if self.contexts:
            reports = "\n".join(f"--- {i} ---\n{_describe_context(c)}" for i, c in enumerate(self.contexts, 1))
            raise AssertionError(f"the event loop reported {len(self.contexts)} unhandled exception(s):\n{reports}")

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self.check()
        finally:
            self.uninstall()

    async def __aenter__(self) -> Self:
        return self.install()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _describe_context(context: dict[str, Any]) -> str:
    """One exception-handler context as text: the message, what it concerns, and the exception's traceback."""
    lines = [str(context.get("message") or "unhandled exception in the event loop")]
    for key in ("task", "future", "handle", "protocol", "transport", "socket", "asyncgen"):
        if key in context:
            lines.append(f"{key}: {_safe_repr(context[key])}")
    exc = context.get("exception")
    if isinstance(exc, BaseException):
        lines.append("".join(traceback.format_exception(exc)).rstrip())
    return "\n".join(lines)


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not hide the report
        return f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= 500 else text[:500] + "..."
