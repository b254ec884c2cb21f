"""`wait_event`: a bounded wait for an event that a cancellation always ends, unlike `wait_for(event.wait())`
on Python 3.11, which swallows a cancel that arrives in the iteration in which the event was set."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.lifecycle import wait_event


async def test_true_when_set_false_after_the_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True


async def test_a_cancel_in_the_iteration_the_event_is_set_ends_a_loop_around_it() -> None:
    """The shape of a heartbeat loop: woken by the event or the interval, until cancelled."""
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await wait_event(event, 10)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop waits (one iteration: the idiom, not a delay)
    event.set()
    task.cancel()  # in the same iteration: wait_for would return the result and the loop would go on
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert rounds == 0
