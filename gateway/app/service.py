"""The gateway process: one TaskGroup owns the adapters, the debounce timer and the sink.

Shutdown order on SIGTERM/SIGINT: the command processor takes no more commands and lets each running one
finish or restore (a pulse relocks, its result journaled and published); then the adapters stop (nothing new
comes in); then the sink finishes its in-flight work (`close`: flush the journal, publish `offline`); then
everything is cancelled; exit 0.
A component that crashes is restarted with backoff; one that keeps crashing, or the sink, takes the
service down loudly (non-zero exit, so systemd restarts it) -- never a silently dead task.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry

from gateway.commands.processor import CommandProcessor
from gateway.config.models import SiteConfig
from gateway.core.lifecycle import start
from gateway.core.normaliser import Normaliser
from gateway.core.pipeline import Pipeline
from gateway.core.ports import Adapter, DeviceMetrics, EventSink, Health, HealthReport
from gateway.delivery.dc09_path import Dc09Path
from gateway.delivery.stats import JOURNAL_STALL, DeliveryStats
from gateway.domain.errors import SiteConfigFault
from gateway.domain.event import utcnow
from gateway.ops.health import OperatorEndpoints
from gateway.ops.http import Action, OperatorServer
from gateway.ops.metrics import GatewayCollector, ReloadStats, Sources, site_hash
from gateway.ops.sdnotify import SystemdNotifier
from gateway.ops.systemd import ServiceView, SystemdSupervision

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
    # True while a component runs; False while it is down (crashed, waiting to be restarted, or ended).
    up: dict[str, bool] = field(default_factory=dict)

    async def run(
        self,
        name: str,
        component: Callable[[], Awaitable[None]],
        *,
        restart: bool = True,
        stopping: asyncio.Event | None = None,
    ) -> None:
        """Run `component`; once `stopping` is set, returning is how a component is meant to end."""
        crashes: list[float] = []
        backoff = self.policy.backoff_initial
        while True:
            try:
                self.up[name] = True
                await component()
                if stopping is not None and stopping.is_set():
                    return
                raise RuntimeError(f"{name} returned unexpectedly")
            except asyncio.CancelledError:
                raise
            except SiteConfigFault as fault:  # restarting cannot help: stop now, in one line
                self.up[name] = False
                log.error("site config cannot work; stopping the gateway", component=name, problem=str(fault))
                raise
            except Exception as exc:
                self.up[name] = False
                now = time.monotonic()
                crashes = [t for t in crashes if now - t < self.policy.window] + [now]
                if not restart or len(crashes) > self.policy.max_restarts:
                    log.error("component failed; stopping the gateway", component=name, exc_info=exc)
                    raise ComponentFailed(f"{name} failed: {exc!r}") from exc
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.error("component crashed; restarting", component=name, in_s=round(backoff, 2), exc_info=exc)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.policy.backoff_max)


@dataclass
class Inputs:
    """What the heartbeat says about the gateway's inputs: a device counts as online only while the adapter
    that reads it runs. During an adapter's restart loop its devices are unknown, not "still online", and
    `ok` is false, so a heartbeat never says all is well while an input is down."""

    normaliser: Normaliser
    supervisor: Supervisor
    adapters: Sequence[Adapter]

    def _running(self, adapter: Adapter) -> bool:
        return self.supervisor.up.get(adapter.name, False)

    def ok(self) -> bool:
        return all(self._running(a) for a in self.adapters)

    def devices_online(self) -> tuple[int, int]:
        """(online, total) over the configured devices, counting only those of running adapters."""
        down = {a.protocol for a in self.adapters if isinstance(a, DeviceMetrics) and not self._running(a)}
        online = 0
        for device_id, protocol in self.normaliser.device_protocols().items():
            if protocol not in down and self.normaliser.device_online(device_id):
                online += 1
        return online, len(self.normaliser.device_protocols())


class Reloads(Protocol):
    """The config-reload component (gateway/app/reload.py: Reloader), when the gateway has a site file."""

    name: str
    stats: ReloadStats

    def request(self) -> None: ...

    def actions(self) -> dict[str, Action]: ...

    async def run(self) -> None: ...


class Gateway:
    """One building's gateway: runs the normaliser's pipeline, the sink, the adapters, the command processor
    and the operator endpoints it is given (gateway/app/wiring.py builds them), until stopped."""

    name = "gateway"

    def __init__(
        self,
        site: SiteConfig,
        sink: EventSink,
        adapters: Sequence[Adapter],
        *,
        normaliser: Normaliser | None = None,
        commands: CommandProcessor | None = None,
        supervisor: Supervisor | None = None,
        delivery: DeliveryStats | None = None,
        config_hash: str = "",
        paths: Sequence[Dc09Path] = (),
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.site = site
        self.sink = sink
        self.adapters = list(adapters)
        self.normaliser = normaliser or Normaliser(site, epoch=utcnow())
        self.pipeline = Pipeline(self.normaliser, sink)
        self.supervisor = supervisor or Supervisor()
        self.commands = commands
        self.delivery = delivery  # the delivery sink's counters, for /metrics (None for stdout or a test sink)
        self.paths = list(paths)  # DC-09 delivery paths beside MQTT (docs/dc09.md), on the sink's journal
        self.config_hash = config_hash  # of the site file as deployed (metric gcmk_config_info)
        self.operator: OperatorServer | None = None  # /metrics, /healthz, /readyz
        self.notifier = notifier  # systemd's notify socket (Type=notify), None when not run by systemd
        self.reloader: Reloads | None = None  # SIGHUP and POST /-/reload (set by gateway/app/wiring.py)
        self.stopping = asyncio.Event()
        self.started = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()

    def request_reload(self) -> None:
        """SIGHUP: reload the site config (gateway/app/reload.py); without a site file there is nothing to read."""
        if self.reloader is None:
            log.warning("reload requested, but this gateway was not started from a site file; ignored")
        else:
            self.reloader.request()

    def health(self) -> HealthReport:
        if not self.started.is_set():
            return HealthReport(False, "starting")
        if self.stopping.is_set():
            return HealthReport(False, "stopping")
        blind = self.normaliser.unavailable_points()
        if blind:  # still ready (the other points report), but not all well: say which device is half blind
            per_device = ", ".join(f"{device}: {len(points)}" for device, points in sorted(blind.items()))
            return HealthReport(True, f"running; points unavailable (the device says they do not exist): {per_device}")
        return HealthReport(True, "running")

    @property
    def operator_port(self) -> int | None:
        """Port of /metrics, /healthz, /readyz once bound (site.metrics.port 0 = OS-chosen)."""
        return None if self.operator is None else self.operator.port

    def endpoints(self, components: Sequence[str]) -> OperatorEndpoints:
        """The operator endpoints over this gateway's parts: each read through its protocol, none sniffed."""
        sources = Sources(
            site=self.site,
            config_hash=self.config_hash or site_hash(self.site),
            normaliser=self.normaliser.stats,
            device_online=self.normaliser.device_online,
            accepted=lambda: self.pipeline.accepted,
            restarts=self.supervisor.restarts,
            up=self.supervisor.up,
            components=components,
            adapters=[a for a in self.adapters if isinstance(a, DeviceMetrics)],
            delivery=self.delivery,
            commands=self.commands.stats if self.commands is not None else None,
            paths=[p.stats for p in self.paths],
            reload=self.reloader.stats if self.reloader is not None else None,
        )
        registry = CollectorRegistry(auto_describe=False)
        registry.register(GatewayCollector(sources))
        health: list[Health] = [self]
        if isinstance(self.sink, Health):
            health.append(self.sink)
        return OperatorEndpoints(registry, health)

    async def run(self) -> None:
        points, devices = await self.sink.load_state()
        self.normaliser.load(points, devices)
        log.info(
            "gateway starting", site=self.site.site.id, devices=len(self.site.devices), points=len(self.site.points)
        )
        async with asyncio.TaskGroup() as tg:
            sink_task = tg.create_task(
                self.supervisor.run("sink", self.sink.run, restart=False, stopping=self.stopping)
            )
            components = ["sink", "debounce-timer", "operator-http", *(a.name for a in self.adapters)]
            components.extend(p.name for p in self.paths)
            if self.commands is not None:
                components.append(self.commands.name)
            if self.notifier is not None:
                components.append(SystemdSupervision.name)
            reloader = self.reloader
            if reloader is not None:
                components.append(reloader.name)
            self.operator = OperatorServer(
                self.endpoints(components).routes(),
                self.site.metrics.listen,
                self.site.metrics.port,
                actions=reloader.actions() if reloader is not None else None,
            )
            operator = self.operator
            _port: int
            operator_task: asyncio.Task[None]
            _port, operator_task = await start(
                tg, lambda status: self.supervisor.run("operator-http", lambda: operator.serve(status))
            )
            inputs = [tg.create_task(self.supervisor.run("debounce-timer", self.pipeline.run_debounce_timer))]
            for adapter in self.adapters:
                inputs.append(tg.create_task(self.supervisor.run(adapter.name, _bind(adapter, self.pipeline))))
            if self.commands is not None:
                inputs.append(tg.create_task(self.supervisor.run(self.commands.name, self.commands.run)))
            for path in self.paths:  # stopped with the inputs: the sink closes the journal they use after them
                inputs.append(tg.create_task(self.supervisor.run(path.name, path.run, stopping=self.stopping)))
            if reloader is not None:
                inputs.append(tg.create_task(self.supervisor.run(reloader.name, reloader.run)))
            systemd = self._systemd_supervision(tg)  # READY=1 once started; watchdog and status until the end
            self.started.set()
            await self.stopping.wait()
            log.info("gateway stopping: commands first, then the adapters, then the sink")
            if self.commands is not None:  # a pulsed door relocks while its adapter is still running
                await self.commands.drain()
            await _cancel_and_wait(inputs)
            await self.sink.close()
            sink_task.cancel()
            operator_task.cancel()
            if systemd is not None:
                systemd.cancel()
        log.info("gateway stopped", site=self.site.site.id)

    def _systemd_supervision(self, tg: asyncio.TaskGroup) -> asyncio.Task[None] | None:
        if self.notifier is None:
            return None
        inputs = Inputs(self.normaliser, self.supervisor, self.adapters)
        delivery = self.delivery
        view = ServiceView(
            inputs.devices_online,
            mqtt_connected=None if delivery is None else lambda: delivery.connected,
            undelivered=None if delivery is None else lambda: delivery.journal_depth,
            confirming=self.site.delivery.confirm == "meldkamer",
            journal_stalled_for=None if delivery is None else delivery.journal_stalled_for,
            journal_stall=JOURNAL_STALL,
        )
        supervision = SystemdSupervision(self.notifier, view, started=self.started, stopping=self.stopping)
        return tg.create_task(self.supervisor.run(supervision.name, supervision.run))


async def _cancel_and_wait(tasks: list[asyncio.Task[None]], round_s: float = 1.0) -> None:
    """Cancel tasks and wait for them, cancelling again while any is left: on Python 3.11 a cancel that
    arrives in the same loop iteration as a reply can be swallowed inside a library's `wait_for`."""
    pending = {t for t in tasks if not t.done()}
    rounds = 0
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=round_s)
        rounds += 1
        if pending:
            log.warning("tasks still running after cancel; cancelling again", tasks=len(pending), rounds=rounds)


def _bind(adapter: Adapter, pipeline: Pipeline) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await adapter.run(pipeline)

    return run


async def run_until_signalled(gateway: Gateway) -> None:
    """Run the gateway; SIGTERM and SIGINT stop it cleanly, SIGHUP reloads the site config."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    try:
        await gateway.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
