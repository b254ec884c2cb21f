"""One readiness contract for long-running components: anyio's `TaskGroup.start()` pattern on asyncio.

A component's `serve(task_status)` does its setup (bind a port, open a journal, subscribe), then calls
`task_status.started(value)` and goes on serving until cancelled. `await start(tg, serve)` creates the task
in the caller's TaskGroup and returns that value (and the task, which asyncio needs for cancelling it: it
has no cancel scopes) once the component says it is ready, or raises what the component raised before that.
No component needs a `ready` event of its own, and no caller polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Self, TypeVar

T = TypeVar("T")


class TaskStatus(Generic[T]):
    """Handed to a component's `serve`: `started(value)` tells the starter that the component is ready."""

    def __init__(self) -> None:
        self._future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

    def started(self, value: T) -> None:
        if not self._future.done():
            self._future.set_result(value)

    @property
    def is_started(self) -> bool:
        return self._future.done()


class StartFailed(RuntimeError):
    """A component ended before it reported ready, without raising."""


async def start(
    tg: asyncio.TaskGroup, serve: Callable[[TaskStatus[T]], Awaitable[None]], *, name: str | None = None
) -> tuple[T, asyncio.Task[None]]:
    """Run `serve` as a task of `tg`; return the value it passes to `task_status.started`, and the task."""
    status: TaskStatus[T] = TaskStatus()

    async def run() -> None:
        await serve(status)

    task = tg.create_task(run(), name=name)
    waiters: list[asyncio.Future[object]] = [status._future, task]  # type: ignore[list-item]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if status.is_started:
        return status._future.result(), task
    if not task.cancelled() and (exc := task.exception()) is not None:
        raise exc
    raise StartFailed(f"{name or 'component'} ended before it was ready")


class RunsInBackground:
    """Mixin for a component with `run()` (its long-running work) and `close()` (a clean finish):
    `async with component:` runs `run()` in a TaskGroup that the context owns and closes it on exit, the way
    aiomqtt's client owns its background tasks. A crash of `run()` cancels the body of the `async with` and
    surfaces there: the task cannot die silently."""

    async def run(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self.__group = group
        self.__task = group.create_task(self.run(), name=f"{type(self).__name__}.run")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            if exc_info[0] is None:
                await self.close()
        finally:
            self.__task.cancel()
        await self.__group.__aexit__(*exc_info)


async def wait_event(event: asyncio.Event, within: float) -> bool:
    """`event.wait()` for at most `within` seconds: True if it was set, False after the timeout; a cancellation
    always ends it. Use it instead of `asyncio.wait_for(event.wait(), timeout)`, which on Python 3.11 swallows
    a cancellation that arrives in the loop iteration in which the event was set (its inner task is already
    done: it returns the result instead of raising). A loop around such a wait then survives the cancel and
    whoever awaits the task waits for ever: that hung the publisher's renewal on a reload (gateway/delivery/
    publisher.py). `asyncio.timeout` counts cancellation requests and turns only its own into TimeoutError."""
    try:
        async with asyncio.timeout(max(0.0, within)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
