"""Hot reload of the site config (SIGHUP, POST /-/reload): validate completely, then apply all or nothing.

A reload reads the gateway's own site file and overlays again with `load_validated`, the same path as a
start. Any problem (a file:line error, or a change that needs a restart: gateway/config/diff.py) refuses the
whole reload: the old config keeps running, the problems are logged, `gcmk_config_last_reload_successful` is
0 and a `config_reload_failed` event goes to the meldkamer. Otherwise, in this order:

1. the final events of what the new config removes (restores with `cause`, for points or devices that end in
   alarm) and the `config_changed` audit event (old and new hash, summary) are journaled as one batch; the
   pipeline holds every reading meanwhile (one commit), so the events before `config_changed` in seq were
   made under the old config and those after it under the new one. A journal that refuses the batch refuses
   the reload, with nothing changed;
2. synchronously, with no await in between (so no reading sees a mix): the normaliser takes the new config,
   carrying every other point's state over by id; the command processor checks commands against it; the
   retained status carries the new hash;
3. the adapters start and stop the added, changed and removed devices one by one; the others never stop.

An applied reload, also one of an unchanged file, then renews the MQTT sessions (publisher and command
processor) if what they authenticate with changed since they were last renewed (or since the start): the
credential settings or the bytes of the TLS and password files (`credentials_fingerprint`). Each session ends
cleanly and reconnects with the files read again, so rotating them on disk needs a reload, not a restart;
a reload that changes no credential (a tenant move, an unchanged file, a POST /-/reload loop) leaves the
sessions up. The new credentials are read once first: if they cannot be read the reload is refused and the
running sessions are left alone.

Reloads run one at a time, in the order asked, in this component's task (supervised like the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

import structlog

from gateway.app.service import Gateway
from gateway.config.diff import SiteDiff, diff_sites
from gateway.config.models import MqttConfig
from gateway.config.source import SiteSource
from gateway.core.events import make_event
from gateway.core.normaliser import Step, device_key, point_key
from gateway.core.ports import Reconfigurable
from gateway.delivery.journal import JournalError
from gateway.domain.errors import ConfigError, NotAccepted, SiteConfigFault
from gateway.domain.event import Event, PointRef, SourceRef, utcnow
from gateway.domain.state import Batch
from gateway.domain.taxonomy import EventState, EventType
from gateway.mqtt.client import ClientFactory, credentials_fingerprint
from gateway.ops.http import Action, Response
from gateway.ops.metrics import ReloadStats, site_hash

log = structlog.get_logger(__name__)

QUEUED_MAX = 8  # reload requests waiting; beyond, SIGHUP is dropped (a queued reload reads the newest file)
TEXT_MAX = 1000  # characters of an event's text


@runtime_checkable
class ShowsConfigHash(Protocol):
    """A sink whose status document carries the config hash (gateway.delivery.sink.DeliverySink)."""

    def use_config_hash(self, config_hash: str) -> None: ...


@runtime_checkable
class RenewsMqtt(Protocol):
    """A component with an MQTT session (the delivery sink's publisher, the command processor): reconnects
    cleanly with the credentials read again."""

    def renew_mqtt(self, mqtt: MqttConfig) -> None: ...


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload did: applied (with the diff's summary) or refused (with every reason)."""

    applied: bool
    config_hash: str  # in force after the attempt (the old one when refused)
    summary: str
    problems: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))


class Reloader:
    """The gateway's config-reload component: `request()` (SIGHUP) or `http_reload` (POST /-/reload)."""

    name = "config-reload"

    def __init__(self, gateway: Gateway, source: SiteSource, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.gateway = gateway
        self.source = source
        self.stats = ReloadStats(gateway.config_hash or site_hash(gateway.site))
        self._clock = clock
        self._queue: asyncio.Queue[asyncio.Future[ReloadOutcome] | None] = asyncio.Queue(QUEUED_MAX)
        self._credentials = _fingerprint(gateway.site.mqtt)  # of the sessions' credentials (None: unknown)

    def request(self) -> None:
        """Ask for a reload (from a signal handler: returns at once; the outcome is logged)."""
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            log.warning("config_reload_already_queued", detail="a queued reload will read the newest file")

    def actions(self) -> dict[str, Action]:
        return {"/-/reload": self.http_reload}

    async def http_reload(self) -> Response:
        """POST /-/reload: reload now and answer the outcome as JSON (200 applied, 409 refused)."""
        done: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(done)
        except asyncio.QueueFull:
            return Response(503, b'{"error": "too many reloads queued"}\n', "application/json")
        outcome = await done
        return Response(200 if outcome.applied else 409, (outcome.to_json() + "\n").encode(), "application/json")

    async def run(self) -> None:
        """Runs until cancelled: one reload per request, in order."""
        while True:
            waiter = await self._queue.get()
            try:
                outcome = await self.reload()
            except Exception as exc:  # a bug or an unforeseen error: this reload fails, the gateway goes on
                log.exception("config_reload_crashed")
                self.stats.refused()
                why = f"the reload failed: {type(exc).__name__}: {exc}"
                outcome = ReloadOutcome(False, self.stats.config_hash, why)
            if waiter is not None and not waiter.done():
                waiter.set_result(outcome)  # the HTTP caller always gets an answer

    async def reload(self) -> ReloadOutcome:
        notifier = self.gateway.notifier
        if notifier is not None:
            notifier.reloading()  # systemd: RELOADING=1 ... READY=1
        try:
            return await self._reload()
        finally:
            if notifier is not None:
                notifier.ready()

    async def _reload(self) -> ReloadOutcome:
        gateway = self.gateway
        old_hash = self.stats.config_hash
        log.info("config_reload_started", site_file=str(self.source.site), config_hash=old_hash)
        try:
            loaded = await asyncio.to_thread(self.source.load)  # parsing hundreds of points: off the loop
        except ConfigError as exc:
            return await self._refused("the new site config is invalid", tuple(exc.problems))
        new = loaded.config
        diff = diff_sites(gateway.site, new)
        if diff.restart:
            return await self._refused("the new site config needs a restart", diff.restart)
        renewing = self._renewing()
        credentials = self._credentials
        if renewing:
            try:
                await asyncio.to_thread(ClientFactory(new.mqtt).check)  # reads files: off the loop
            except ConfigError as exc:
                return await self._refused("the MQTT credentials cannot be read", tuple(exc.problems))
            credentials = await asyncio.to_thread(_fingerprint, new.mqtt)
            if credentials is not None and credentials == self._credentials:
                renewing = []  # the sessions already use exactly these: a renewal would only interrupt them
        if diff.kind == "none" and loaded.hash == old_hash:
            self.stats.succeeded(old_hash, time.time())
            self._renew(renewing, new.mqtt, credentials)
            log.info("config_reload_unchanged", config_hash=old_hash, mqtt_renewed=len(renewing))
            return ReloadOutcome(True, old_hash, "no change")

        numbered = []
        for path in gateway.paths:  # DC-09 zone numbers for new points, before any of their events is sent
            try:
                numbered.append((path, await path.numbers_for(new)))
            except SiteConfigFault as exc:
                return await self._refused("the DC-09 zone numbers of the new site config conflict", (str(exc),))
            except JournalError as exc:
                return await self._refused("the journal could not assign DC-09 zone numbers", (str(exc),))

        now = self._clock()
        held = [*(point_key(p.id) for p in gateway.site.points), *(device_key(d.id) for d in gateway.site.devices)]
        await gateway.pipeline.settle(held)  # no step in flight on any point or device
        ending = gateway.normaliser.ending_step(new, now, diff.points_replaced)  # no await from here ...
        audit = self._event(EventType.CONFIG_CHANGED, now, f"config {old_hash} -> {loaded.hash}: {diff.summary()}")
        step = Step(Batch((*ending.batch.events, audit), ending.batch.points, ending.batch.devices))
        try:
            await gateway.pipeline.apply(step, hold=held)  # ... until the pipeline holds every key
        except NotAccepted as exc:
            return await self._refused("the journal did not take the reload's events", (str(exc),), journal=False)
        # Applied from here on. No await until the normaliser, commands and status have the new config.
        gateway.normaliser.reconfigure(new, now, diff.points_replaced)
        gateway.site = new
        gateway.config_hash = loaded.hash
        if gateway.commands is not None:
            gateway.commands.use_site(new)
        for path, site_numbers in numbered:
            path.use_site(new, site_numbers)
        if isinstance(gateway.sink, ShowsConfigHash):
            gateway.sink.use_config_hash(loaded.hash)
        self.stats.succeeded(loaded.hash, time.time())
        self._renew(renewing, new.mqtt, credentials)
        await self._restart_devices(diff)
        log.info(
            "config_reload_applied",
            old_hash=old_hash,
            config_hash=loaded.hash,
            kind=diff.kind,
            diff=diff.summary(),
            mqtt_renewed=len(renewing),
        )
        return ReloadOutcome(True, loaded.hash, diff.summary())

    def _renewing(self) -> list[RenewsMqtt]:
        parts = (self.gateway.sink, self.gateway.commands)
        return [part for part in parts if isinstance(part, RenewsMqtt)]

    def _renew(self, parts: list[RenewsMqtt], mqtt: MqttConfig, credentials: str | None) -> None:
        """Each MQTT session ends cleanly and reconnects with the credentials as they are on disk now."""
        for part in parts:
            part.renew_mqtt(mqtt)
        if parts:
            self._credentials = credentials

    async def _restart_devices(self, diff: SiteDiff) -> None:
        devices = (*diff.devices_added, *diff.devices_changed, *diff.devices_removed)
        for adapter in self.gateway.adapters:
            if not isinstance(adapter, Reconfigurable):
                continue
            try:
                await adapter.reconfigure(self.gateway.site, devices)
            except Exception as exc:  # the config is applied; say loudly which devices did not follow
                name = getattr(adapter, "name", type(adapter).__name__)
                log.exception("config_reload_devices_failed", adapter=name, devices=list(devices))
                text = f"reload applied, but {name} could not restart {', '.join(devices)}: {exc}"
                event = self._event(EventType.CONFIG_RELOAD_FAILED, self._clock(), text)
                with contextlib.suppress(NotAccepted):
                    await self.gateway.pipeline.apply(Step(Batch((event,))))

    async def _refused(self, why: str, problems: tuple[str, ...], *, journal: bool = True) -> ReloadOutcome:
        """Nothing applied: logged line by line, counted, and (if the journal takes it) told to the meldkamer."""
        self.stats.refused()
        old_hash = self.stats.config_hash
        log.error("config_reload_failed", reason=why, problems=len(problems), config_hash=old_hash)
        for problem in problems:
            log.error("config_reload_problem", problem=problem)
        if journal:
            text = f"reload refused, still running config {old_hash}: {why}: " + "; ".join(problems)
            event = self._event(EventType.CONFIG_RELOAD_FAILED, self._clock(), text)
            try:
                await self.gateway.pipeline.apply(Step(Batch((event,))))
            except NotAccepted as exc:
                log.error("config_reload_failed_not_journaled", error=str(exc))
        return ReloadOutcome(False, old_hash, why, problems)

    def _event(self, event_type: EventType, now: datetime, text: str) -> Event:
        return make_event(
            site=self.gateway.site.site.id,
            event_type=event_type,
            state=EventState.INFO,
            point=PointRef(id="gateway.config", name="site config"),
            source=SourceRef(protocol="gateway", device_id="gateway", address=str(self.source.site)),
            occurred_at=now,
            detected_at=now,
            text=text[:TEXT_MAX],
        )


def _fingerprint(mqtt: MqttConfig) -> str | None:
    """The credentials' digest, or None if a file cannot be read now (then the next reload renews)."""
    try:
        return credentials_fingerprint(mqtt)
    except OSError:
        return None
