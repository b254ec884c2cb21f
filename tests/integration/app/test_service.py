"""The gateway core: supervision of components, debounce timer, clean shutdown order."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from gateway.app.service import ComponentFailed, Gateway, RestartPolicy, Supervisor
from gateway.config.models import SiteConfig
from gateway.core.ports import Quality, Reading, ReadingSink
from gateway.testing import CollectingSink, wait_until
from tests.support.sites import minimal_site


def _site_with_debounce(seconds: float) -> SiteConfig:
    site = minimal_site()
    points = [p.model_copy(update={"debounce": seconds}) if p.id == "smoke-1" else p for p in site.points]
    return site.model_copy(update={"points": points})


class ScriptedAdapter:
    """Submits a fixed list of readings, then waits; crashes its first `crashes` runs."""

    name = "scripted"

    def __init__(
        self, readings: list[tuple[str, object]], crashes: int = 0, log: list[str] | None = None
    ) -> None:
        self.readings = readings
        self.crashes = crashes
        self.runs = 0
        self.cancelled = False
        self.log = log if log is not None else []  # "adapter cancelled" once its cancellation has arrived

    async def run(self, sink: ReadingSink) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise ConnectionResetError("simulated crash")
        for point, value in self.readings:
            await sink.submit(Reading(point, value, Quality.GOOD, datetime.now(UTC)))  # type: ignore[arg-type]
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            self.cancelled = True
            self.log.append("adapter cancelled")
            raise


FAST = RestartPolicy(max_restarts=3, window=60, backoff_initial=0.01, backoff_max=0.02)


async def test_debounce_timer_confirms_a_change_no_further_reading_arrives_for() -> None:
    sink = CollectingSink()
    adapter = ScriptedAdapter([("smoke-1", "quiet"), ("smoke-1", "alarm")])
    gateway = Gateway(_site_with_debounce(0.3), sink, [adapter])
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gateway.run())
        started = time.monotonic()
        events = await sink.wait_for(lambda ev: any(e.point.id == "smoke-1" for e in ev))
        assert time.monotonic() - started >= 0.25, "confirmed before the debounce time"
        assert [(e.type.value, e.state.value, e.seq) for e in events] == [("fire", "alarm", 1)]
        gateway.stop()


async def test_a_crashed_component_is_restarted_with_backoff() -> None:
    sink = CollectingSink()
    adapter = ScriptedAdapter([("pir-01", 1)], crashes=2)
    gateway = Gateway(minimal_site(), sink, [adapter], supervisor=Supervisor(FAST))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gateway.run())
        await sink.wait_for(lambda ev: len(ev) == 1)
        assert gateway.supervisor.restarts == {"scripted": 2}
        gateway.stop()


async def test_a_component_that_keeps_crashing_takes_the_gateway_down_loudly() -> None:
    gateway = Gateway(minimal_site(), CollectingSink(), [ScriptedAdapter([], crashes=100)],
                      supervisor=Supervisor(FAST))
    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(gateway.run(), timeout=10)
    assert info.group_contains(ComponentFailed)


async def test_an_adapter_that_returns_is_treated_as_crashed() -> None:
    class Quitter:
        name = "quitter"

        async def run(self, sink: ReadingSink) -> None:
            return None

    gateway = Gateway(minimal_site(), CollectingSink(), [Quitter()], supervisor=Supervisor(FAST))
    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(gateway.run(), timeout=10)
    assert info.group_contains(ComponentFailed, match="returned unexpectedly")


class LoggingSink(CollectingSink):
    """A CollectingSink that writes its close into a log shared with the adapters."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def close(self) -> None:
        self.log.append("sink closed")
        await super().close()


async def test_stop_cancels_adapters_before_closing_the_sink() -> None:
    log: list[str] = []  # one ordered record of both steps
    sink = LoggingSink(log)
    adapter = ScriptedAdapter([], log=log)
    gateway = Gateway(minimal_site(), sink, [adapter])
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 5)
    await wait_until(lambda: adapter.runs == 1)
    gateway.stop()
    await asyncio.wait_for(task, 10)
    assert log == ["adapter cancelled", "sink closed"], "the adapters must have stopped before the sink closes"
    assert sink.calls == ["run", "close"]


async def test_shutdown_cancels_again_a_task_that_swallowed_its_cancel() -> None:
    class Stubborn:
        """Swallows the first cancel, as asyncio.wait_for can on Python 3.11."""

        name = "stubborn"
        cancels = 0

        async def run(self, sink: ReadingSink) -> None:
            while True:
                try:
                    await asyncio.Future()
                except asyncio.CancelledError:
                    self.cancels += 1
                    if self.cancels > 1:
                        raise

    adapter = Stubborn()
    gateway = Gateway(minimal_site(), CollectingSink(), [adapter])
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 5)
    gateway.stop()
    await asyncio.wait_for(task, 10)
    assert adapter.cancels == 2
