"""BacnetAdapter: the site's BACnet/IP devices behind one local bacpypes3 application."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import structlog

from adapters.bacnet.app import GatewayApplication, start_application
from adapters.bacnet.client import object_key
from adapters.bacnet.plan import DeviceCounters, ObjectPlan, StaleSubscription
from adapters.bacnet.session import DeviceSession
from gateway.config.models import BacnetDevice, BacnetLocal, SiteConfig
from gateway.core.ports import DeviceSnapshot, ReadingSink
from gateway.domain.errors import ConfigurationFault, DeviceUnreachable, SiteConfigFault

# Seconds a stopping adapter (or a reload's removed devices) waits for its COV cancellations: under the 1 s after
# which the gateway's stop cancels its components again (gateway/app/service.py).
CANCEL_ON_STOP = 0.8


class _NotReady(Exception):
    """A notification arrived while the application was binding, before the device sessions exist."""


class BacnetAdapter:
    """Implements gateway.core.ports.Adapter for every BACnet device of the site.

    Commands for the commands issue: `acknowledge(point_id, source)` and `write(point_id, value, ...)`.
    Per-device counters are in `counters` (device id -> DeviceCounters).
    """

    name = "bacnet"
    protocol = "bacnet"

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self.devices = [d for d in site.devices if isinstance(d, BacnetDevice)]
        self.local = site.bacnet or BacnetLocal()
        self.port: int | None = None  # bound UDP port, once running
        self.sessions: dict[str, DeviceSession] = {}
        self._app: GatewayApplication | None = None
        self._by_process: dict[int, tuple[DeviceSession, ObjectPlan]] = {}
        self._by_address: dict[tuple[str, int], DeviceSession] = {}
        self._by_instance: dict[int, DeviceSession] = {}
        # per device: COV subscriptions the last run may have left on it, for the next run to cancel
        self._stale: dict[str, list[StaleSubscription]] = {}
        self.unknown_cov_notifications = 0  # for no subscription of the running adapter (all devices)
        self._ready = asyncio.Event()
        self.log = structlog.get_logger(__name__).bind(site=site.site.id)
        # while running: the task group the sessions run in, their sink, and each device's session task
        self._tg: asyncio.TaskGroup | None = None
        self._sink: ReadingSink | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def duplicate_notifications(self) -> int:
        """Device retries of confirmed notifications already handled (answered again, not handled again)."""
        return self._app.recent.duplicates if self._app is not None else 0

    @property
    def counters(self) -> dict[str, DeviceCounters]:
        return {device_id: session.counters for device_id, session in self.sessions.items()}

    def device_metrics(self) -> dict[str, DeviceSnapshot]:
        """gateway.core.ports.DeviceMetrics: notifications, duplicates, resyncs, stale reads, COV vs polled."""
        retries = self._app.recent.by_source if self._app is not None else {}
        return {
            device_id: session.counters.snapshot(_retries_from(retries, session.device.address, session.device.port))
            for device_id, session in self.sessions.items()
        }

    async def run(self, sink: ReadingSink) -> None:
        if not self.devices:
            await asyncio.Event().wait()  # nothing to do, but an adapter runs until cancelled
        timeout = max(d.timeout for d in self.devices)
        try:
            app, self.port = await start_application(self.local, self, apdu_timeout=timeout)
        except TimeoutError:
            raise SiteConfigFault(
                "bacnet.address",
                f"cannot bind BACnet/IP on {self.local.address}:{self.local.port} (address not on this host,"
                " or the port is taken)",
            ) from None
        self._app = app
        self.log.info("bacnet.started", address=self.local.address, port=self.port, devices=len(self.devices))
        try:
            # A run after a crash or cancellation (the Supervisor calls run() again on this object) starts from
            # fresh sessions and routing maps: nothing may reach the previous run's sessions, whose sink is the
            # previous one. Fresh plans bring new subscriber process ids, so the previous run's subscriptions,
            # alive on the devices until they lapse, are unknown here (answered unknown-subscription, counted);
            # each session cancels them once its device answers.
            stale, self._stale = self._stale, {}
            self._route(
                {
                    device.id: DeviceSession(app, self.site, device, sink, stale.get(device.id))
                    for device in self.devices
                }
            )
            self._ready.set()
            async with asyncio.TaskGroup() as tg:
                self._tg, self._sink = tg, sink
                for session in self.sessions.values():
                    self._tasks[session.device.id] = tg.create_task(session.run(), name=f"bacnet:{session.device.id}")
                await asyncio.Event().wait()  # sessions come and go with reloads; the adapter runs until cancelled
        finally:
            self._ready.clear()
            self._tg, self._sink = None, None
            self._tasks.clear()
            self._app = None
            self._stale = _left(self.sessions.values())  # pruned in place as the devices confirm
            try:
                await _cancel_left(self.sessions, self._stale)
            finally:
                self._stale = {device_id: pending for device_id, pending in self._stale.items() if pending}
                app.close_quietly()
                await app.stop_handlers()

    # --- reload (gateway/app/reload.py) ------------------------------------------------------------------

    async def reconfigure(self, site: SiteConfig, devices: Collection[str]) -> None:
        """Adopt `site`, restarting only the named devices (added, removed or changed); the other sessions
        keep their subscriptions and keep answering notifications. Added devices start first (new before old:
        a point moved to another device is watched there before its old device stops), then each changed
        device's session is replaced: the old one stops first (one device, one session: both would subscribe
        and resync the same objects) and hands its live COV subscriptions to the new one, which cancels them
        once its device answers; then removed devices stop and cancel their subscriptions (bounded, like a stop)."""
        old = {d.id: d for d in self.devices}
        self.site = site
        self.devices = [d for d in site.devices if isinstance(d, BacnetDevice)]
        new = {d.id: d for d in self.devices}
        if self._app is None or self._tg is None:  # not running: the next run builds sessions from self.devices
            return
        touched = set(devices)
        for device_id in [d for d in new if d in touched and d not in old]:
            self._start_session(new[device_id], None)
        for device_id in [d for d in new if d in touched and d in old]:
            self._start_session(new[device_id], await self._stop_session(device_id))
        removed = {d: self.sessions[d] for d in old if d in touched and d not in new and d in self.sessions}
        for device_id in removed:
            await self._stop_session(device_id)
        await _cancel_left(removed, _left(removed.values()))  # what is not cancelled lapses on the device

    def _start_session(self, device: BacnetDevice, stale: list[StaleSubscription] | None) -> None:
        assert self._app is not None and self._tg is not None and self._sink is not None
        session = DeviceSession(self._app, self.site, device, self._sink, stale)
        self._route({**self.sessions, device.id: session})
        self._tasks[device.id] = self._tg.create_task(session.run(), name=f"bacnet:{device.id}")
        self.log.info("bacnet.device_started", device=device.id)

    async def _stop_session(self, device_id: str) -> list[StaleSubscription]:
        task = self._tasks.pop(device_id, None)
        while task is not None and not task.done():
            task.cancel()  # again if a cancel was swallowed inside the library (Python 3.11)
            await asyncio.wait({task}, timeout=1.0)
        session = self.sessions.get(device_id)
        self._route({k: v for k, v in self.sessions.items() if k != device_id})
        self.log.info("bacnet.device_stopped", device=device_id)
        return session.subscriptions_left() if session is not None else []

    def _route(self, sessions: dict[str, DeviceSession]) -> None:
        """Replace (never merge into) the sessions and the maps notifications are routed by."""
        self.sessions = sessions
        self._by_process = {
            plan.process_id: (session, plan) for session in sessions.values() for plan in session.plans.values()
        }
        self._by_address = {(s.device.address, s.device.port): s for s in sessions.values()}
        self._by_instance = {s.device.device_instance: s for s in sessions.values()}

    async def wait_ready(self) -> int:
        """Wait until the local application is bound; returns its UDP port."""
        await self._ready.wait()
        assert self.port is not None
        return self.port

    # --- notifications from the application -------------------------------------------------------------

    async def cov_notification(self, request: Any) -> bool:
        if not self._ready.is_set():
            raise _NotReady()  # left unanswered: the device retries once the sessions exist
        entry = self._by_process.get(int(request.subscriberProcessIdentifier))
        if (
            entry is None
            or entry[0].device.device_instance != int(request.initiatingDeviceIdentifier[1])
            # a process id of ours for another object: a subscription of an earlier gateway process, whose
            # ids started at 1 too (a notification for object A must never become a reading of object B)
            or object_key(request.monitoredObjectIdentifier) != entry[1].object_id
        ):
            self._unknown_subscription(request)
            return False
        session, plan = entry
        await session.on_cov(plan, request)
        return True

    def _unknown_subscription(self, request: Any) -> None:
        """A COV notification for no subscription of this run: counted, answered unknown-subscription."""
        self.unknown_cov_notifications += 1
        session = self._by_instance.get(int(request.initiatingDeviceIdentifier[1]))
        if session is not None:
            session.counters.unknown_subscription_notifications += 1
        self.log.debug(
            "bacnet.cov_for_unknown_subscription",
            device=str(request.initiatingDeviceIdentifier),
            process_id=int(request.subscriberProcessIdentifier),
            object=str(request.monitoredObjectIdentifier),
        )

    async def event_notification(self, request: Any) -> None:
        if not self._ready.is_set():
            raise _NotReady()  # left unanswered: the device retries once the sessions exist
        session = self._by_instance.get(int(request.initiatingDeviceIdentifier[1]))
        if session is None:
            source = getattr(request.pduSource, "addrTuple", None)
            session = self._by_address.get(source) if source else None
        if session is None:
            self.log.info("bacnet.event_from_unknown_device", device=str(request.initiatingDeviceIdentifier))
            return
        await session.on_event(request)

    # --- commands -------------------------------------------------------------------------------------------

    def _session_of(self, point_id: str) -> DeviceSession:
        if self._app is None:
            raise DeviceUnreachable("bacnet", "the BACnet adapter is not running")
        for session in self.sessions.values():
            if point_id in session.watches:
                return session
        raise ConfigurationFault("bacnet", f"point {point_id} is not a BACnet point of this site")

    async def acknowledge(self, point_id: str, source: str) -> None:
        """AcknowledgeAlarm echoing the last notification's to-state and time stamp for the point."""
        await self._session_of(point_id).acknowledge(point_id, source)

    async def write(
        self, point_id: str, value: object, priority: int | None = None, property: str | None = None
    ) -> None:
        """WriteProperty (with priority) on the point's object, verified by reading it back."""
        await self._session_of(point_id).write(point_id, value, priority, property)


def _left(sessions: Iterable[DeviceSession]) -> dict[str, list[StaleSubscription]]:
    """Per device, the COV subscriptions its session leaves there (its own and an earlier run's not yet
    cancelled)."""
    return {session.device.id: session.subscriptions_left() for session in sessions}


async def _cancel_left(sessions: Mapping[str, DeviceSession], left: dict[str, list[StaleSubscription]]) -> None:
    """Cancel the subscriptions in `left` at their devices, all devices at once, for at most CANCEL_ON_STOP,
    removing each from `left` as its device confirms it. Left alone, a device keeps a subscription until its
    lifetime ends (minutes): one of its few subscription slots, and a confirmed notification per change to a
    gateway that has gone (or to its next run, which no longer knows the process id). What stays in `left` is
    for a next run of the adapter to cancel once the device answers."""
    try:
        async with asyncio.timeout(CANCEL_ON_STOP), asyncio.TaskGroup() as tg:
            for device_id, pending in left.items():
                if pending:
                    tg.create_task(sessions[device_id].cancel_subscriptions(pending))
    except TimeoutError:
        pass  # a silent device: what it did not confirm stays in `left`


def _retries_from(by_source: Mapping[str, int], address: str, port: int) -> int:
    """bacpypes3 names a sender on the standard port 47808 without the port."""
    return by_source.get(f"{address}:{port}", 0) + (by_source.get(address, 0) if port == 47808 else 0)
