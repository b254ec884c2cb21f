"""The readiness contract and the background-lifecycle mixin of gateway/core/lifecycle.py."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.lifecycle import RunsInBackground, StartFailed, TaskStatus, start


async def test_start_returns_what_the_component_reported_once_ready() -> None:
    served = asyncio.Event()

    async def serve(task_status: TaskStatus[int]) -> None:
        task_status.started(4711)
        served.set()
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as tg:
        value, task = await start(tg, serve)
        assert value == 4711
        assert not task.done()
        task.cancel()


async def test_start_raises_what_the_component_raised_before_it_was_ready() -> None:
    async def serve(task_status: TaskStatus[int]) -> None:
        raise OSError("address in use")

    with pytest.raises(ExceptionGroup) as caught:  # the TaskGroup reports the crash as well
        async with asyncio.TaskGroup() as tg:
            with pytest.raises(OSError, match="address in use"):
                await start(tg, serve)
    assert caught.group_contains(OSError)


async def test_start_fails_for_a_component_that_ends_without_being_ready() -> None:
    async def serve(task_status: TaskStatus[int]) -> None:
        return

    async with asyncio.TaskGroup() as tg:
        with pytest.raises(StartFailed):
            await start(tg, serve)


class Component(RunsInBackground):
    def __init__(self, fail: bool = False) -> None:
        self.log: list[str] = []
        self.fail = fail
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.log.append("run")
        self.running.set()
        if self.fail:
            raise RuntimeError("crashed")
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.log.append("close")


async def test_async_with_runs_the_component_and_closes_it_before_cancelling() -> None:
    component = Component()
    async with component:
        await asyncio.wait_for(component.running.wait(), 5)
    assert component.log == ["run", "close"]


async def test_a_crash_in_the_background_surfaces_in_the_owner() -> None:
    component = Component(fail=True)
    with pytest.raises(ExceptionGroup) as caught:
        async with component:
            await asyncio.wait_for(asyncio.Event().wait(), 5)  # cancelled by the crash, long before 5 s
    assert caught.group_contains(RuntimeError, match="crashed")
