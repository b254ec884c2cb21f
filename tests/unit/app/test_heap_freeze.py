"""`gcmk-gateway run` freezes its heap once the gateway has started (gateway/cli/main.py): what the start built
lives as long as the process, and a full collection that walks it stalls the loop 30-140 ms (bench_bacnet.py
--no-gc-freeze). The effect is the bench's to show; this holds the wiring."""

from __future__ import annotations

import asyncio
import gc

from gateway.cli.main import _freeze_once_started


async def test_the_heap_is_frozen_once_the_gateway_has_started_not_before() -> None:
    started = asyncio.Event()
    gc.unfreeze()
    try:
        freezing = asyncio.create_task(_freeze_once_started(started))
        await asyncio.sleep(0)  # it waits (one iteration: the idiom, not a delay)
        assert gc.get_freeze_count() == 0 and not freezing.done()
        started.set()
        await asyncio.wait_for(freezing, 10)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
