"""The receiver's aiomqtt calls are bounded with asyncio.timeout (`_bounded`), not aiomqtt's own wait_for, which
on Python 3.11 swallows a cancel that arrives as the PUBACK completes: a loop of confirmations or announcements
then survives the link's stop and the receiver never ends."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from gateway.tools.receiver_link import _bounded


async def test_a_cancel_as_the_call_completes_ends_a_loop_around_it() -> None:
    acks: list[asyncio.Future[None]] = []

    async def publish() -> None:  # stands in for client.publish(..., timeout=math.inf): done at its PUBACK
        ack = asyncio.get_running_loop().create_future()
        acks.append(ack)
        await ack

    async def confirmations() -> None:
        while True:
            await _bounded(publish(), 10)

    task = asyncio.create_task(confirmations())
    await asyncio.sleep(0)  # it waits for the first PUBACK (one iteration: the idiom, not a delay)
    acks[0].set_result(None)
    task.cancel()  # in the same iteration as the PUBACK
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)


async def test_a_call_that_takes_too_long_is_an_mqtt_error() -> None:
    with pytest.raises(aiomqtt.MqttError, match="timed out"):
        await _bounded(asyncio.Event().wait(), 0.01)
