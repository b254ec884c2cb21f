"""The gateway process: one TaskGroup owns the adapters, the debounce timer and the sink.

Shutdown order on SIGTERM/SIGINT: adapters stop first (nothing new comes in), then the sink finishes its
in-flight work (`close`: flush the journal, publish `offline`), then everything is cancelled; exit 0.
A component that crashes is restarted with backoff; one that keeps crashing, or the sink, takes the
service down loudly (non-zero exit, so systemd restarts it) -- never a silently dead task.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from adapters.base import Adapter
from gateway.config.models import BacnetDevice, ModbusDevice, SiteConfig
from gateway.event import utcnow
from gateway.normaliser import Normaliser
from gateway.pipeline import Pipeline
from gateway.sinks import EventSink

log = structlog.get_logger(__name__)


class ComponentFailed(RuntimeError):
    """A supervised component crashed more often than its restart budget allows."""


@dataclass
class RestartPolicy:
    max_restarts: int = 5  # within `window` seconds; one more is fatal
    window: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 10.0


@dataclass
class Supervisor:
    """Runs long-lived components, restarting crashed ones within a budget. A component that returns on
    its own counts as crashed too: none of them is meant to end before it is cancelled."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    restarts: dict[str, int] = field(default_factory=dict)

    async def run(self, name: str, component: Callable[[], Awaitable[None]], *, restart: bool = True) -> None:
        crashes: list[float] = []
        backoff = self.policy.backoff_initial
        while True:
            try:
                await component()
                raise RuntimeError(f"{name} returned unexpectedly")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = time.monotonic()
                crashes = [t for t in crashes if now - t < self.policy.window] + [now]
                if not restart or len(crashes) > self.policy.max_restarts:
                    log.error("component failed; stopping the gateway", component=name, exc_info=exc)
                    raise ComponentFailed(f"{name} failed: {exc!r}") from exc
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.error("component crashed; restarting", component=name, in_s=round(backoff, 2), exc_info=exc)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.policy.backoff_max)


def build_adapters(site: SiteConfig) -> list[Adapter]:
    """One adapter per protocol present in the site config."""
    adapters: list[Adapter] = []
    if any(isinstance(d, ModbusDevice) for d in site.devices):
        from adapters.modbus import ModbusAdapter

        adapters.append(ModbusAdapter(site))
    if any(isinstance(d, BacnetDevice) for d in site.devices):
        from adapters.bacnet import BacnetAdapter

        adapters.append(BacnetAdapter(site))
    return adapters


class Gateway:
    """One building's gateway: wire normaliser, pipeline, sink and adapters, run until stopped."""

    def __init__(
        self,
        site: SiteConfig,
        sink: EventSink,
        adapters: list[Adapter] | None = None,
        *,
        normaliser: Normaliser | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.site = site
        self.sink = sink
        self.adapters = build_adapters(site) if adapters is None else adapters
        self.normaliser = normaliser or Normaliser(site, epoch=utcnow())
        self.pipeline = Pipeline(self.normaliser, sink)
        self.supervisor = supervisor or Supervisor()
        self.stopping = asyncio.Event()
        self.started = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        points, devices = await self.sink.load_state()
        self.normaliser.load(points, devices)
        log.info(
            "gateway starting", site=self.site.site.id, devices=len(self.site.devices), points=len(self.site.points)
        )
        async with asyncio.TaskGroup() as tg:
            sink_task = tg.create_task(self.supervisor.run("sink", self.sink.run, restart=False))
            inputs = [tg.create_task(self.supervisor.run("debounce-timer", self.pipeline.run_debounce_timer))]
            for adapter in self.adapters:
                inputs.append(tg.create_task(self.supervisor.run(adapter.name, _bind(adapter, self.pipeline))))
            self.started.set()
            await self.stopping.wait()
            log.info("gateway stopping: adapters first, then the sink")
            for task in inputs:
                task.cancel()
            await asyncio.wait(inputs)
            await self.sink.close()
            sink_task.cancel()
        log.info("gateway stopped", site=self.site.site.id)


def _bind(adapter: Adapter, pipeline: Pipeline) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await adapter.run(pipeline)

    return run


async def run_until_signalled(gateway: Gateway) -> None:
    """Run the gateway; SIGTERM and SIGINT stop it cleanly."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    try:
        await gateway.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
