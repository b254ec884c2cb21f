"""One BACnet device as the gateway sees it: connection, COV or polling per object, resync, supervision.

Life of a session: wait until the device answers (online), resync (GetEventInformation plus a read of every
configured object), then per object a COV subscription renewed at half its lifetime, or polling
(ReadPropertyMultiple) when COV is off, refused or not offered for the property. Supervision is the time
since the last answer from the device: past `device_offline_after` the device is reported offline once,
the subscriptions are torn down and the session starts over.

A value counts as reported (`Watch.reported`) only once the sink accepted it, and a status once
`device_status` returned: when the gateway does not accept one (NotAccepted: the journal cannot be
written), the next poll, COV notification or retried event notification offers the value again, and the
status is reported again while it still holds. Readings go to the sink through a per-device group commit
(batching.py): those that arrive while a commit is under way are committed together, in order.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.primitivedata import ObjectIdentifier

from adapters.bacnet.app import GatewayApplication
from adapters.bacnet.batching import Batch, GroupCommit
from adapters.bacnet.client import DeviceClient, object_key
from adapters.bacnet.errors import ObjectMissing
from adapters.bacnet.plan import (
    UNAVAILABLE,
    DeviceCounters,
    ObjectPlan,
    StaleSubscription,
    Watch,
    next_process_id,
    read_batches,
    transition_index,
    transition_state,
)
from adapters.bacnet.values import (
    ACCESS_POINT_EXTRAS,
    DeviceClock,
    credential_of,
    event_new_value,
    event_property,
    notification_of,
    property_name,
    property_type,
    time_stamp_datetime,
    time_stamp_text,
    to_raw,
)
from gateway.config.models import BacnetDevice, BacnetSource, SiteConfig
from gateway.core.ports import DeviceStatus, Quality, Reading, ReadingSink
from gateway.domain.errors import (
    ConfigurationFault,
    DeviceBusy,
    DeviceError,
    DeviceRejected,
    NotAccepted,
    VerificationFailed,
)
from gateway.domain.event import Notification, utcnow

# ReadPropertyMultiple refused (once per session: the session then stays with ReadProperty).
NO_READ_PROPERTY_MULTIPLE = (
    "device does not support ReadPropertyMultiple: its points are read one property per request instead"
    " (more requests per poll, same values)"
)
# GetEventInformation refused (stock bacpypes3 devices reject it: unrecognized-service): what that means here.
NO_EVENT_INFORMATION = (
    "device does not support GetEventInformation: alarms already active at start are found by reading every"
    " configured point instead (their original time stamps, priorities and unacknowledged transitions are not"
    " known, so acknowledging them from the meldkamer is not possible until the device notifies again)"
)


class _DeviceLost(Exception):
    """Supervision declared the device offline: tear the connection down and start over."""


class DeviceSession:
    def __init__(
        self,
        app: GatewayApplication,
        site: SiteConfig,
        device: BacnetDevice,
        sink: ReadingSink,
        stale: list[StaleSubscription] | None = None,
    ) -> None:
        """`stale`: COV subscriptions an earlier run of the adapter left on the device, cancelled once it answers."""
        self.site = site
        self.device = device
        self.counters = DeviceCounters()
        self.log = structlog.get_logger(__name__).bind(site=site.site.id, device=device.id)
        self.client = DeviceClient(app, device, self._contacted)
        # The zone of the device's clock: its own timezone: setting, else the site's, else (at every resync)
        # what its UTC_Offset / Daylight_Savings_Status say when they disagree with the site's zone.
        configured = ZoneInfo(device.timezone or site.site.timezone)
        self.clock = DeviceClock(configured, "device-config" if device.timezone else "site")
        self.plans: dict[str, ObjectPlan] = {}
        self.watches: dict[str, Watch] = {}
        # points that are blind from the start (an object type or property bacpypes3 cannot even encode):
        # never requested, reported unavailable once the device answers; their neighbours are read as usual
        self._blind_config: dict[str, str] = {}
        self._unavailable: dict[str, str] = {}  # point id -> reason, as the gateway accepted it
        for point in site.points_of(device.id):
            assert isinstance(point.source, BacnetSource)
            object_id, prop = point.source.object, point.source.property
            object_type = object_id.split(",")[0]
            problem = unencodable(object_id, prop)
            if problem is not None:
                self._blind_config[point.id] = problem
                continue
            plan = self.plans.get(object_id)
            if plan is None:
                plan = self.plans[object_id] = ObjectPlan(object_id, object_type, [], next_process_id())
            watch = Watch(point, object_id, object_type, prop)
            plan.watches.append(watch)
            self.watches[point.id] = watch
        self._sink = sink
        self._stale = list(stale or [])
        self._commits = GroupCommit(sink)  # readings that arrive while a commit is under way share the next
        self._lost = asyncio.Event()
        self._contact = asyncio.Event()
        self._poll_now = asyncio.Event()
        self._last_contact = 0.0
        self._rpm = True
        self._reported: bool | None = None  # the last device status the gateway accepted
        self._told_no_event_information = False  # NO_EVENT_INFORMATION is logged once per session
        self._offline_at: datetime | None = None  # when supervision declared the device offline

    # --- contact and supervision ----------------------------------------------------------------------

    def _contacted(self) -> None:
        self._last_contact = asyncio.get_running_loop().time()
        self.counters.last_contact = utcnow()
        self._contact.set()

    def _error(self, exc: DeviceError, what: str) -> None:
        self.counters.errors[type(exc).__name__] += 1
        self.log.debug("bacnet.request_failed", what=what, error=str(exc), error_class=type(exc).__name__)

    async def run(self) -> None:
        sink = self._sink
        self._last_contact = asyncio.get_running_loop().time()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._supervise(sink))
            tg.create_task(self._connection(sink))

    async def _supervise(self, sink: ReadingSink) -> None:
        loop = asyncio.get_running_loop()
        limit = self.site.supervision.device_offline_after
        while True:
            remaining = self._last_contact + limit - loop.time()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            if self.counters.online is not False:
                self.counters.online = False
                self.counters.cov_subscriptions_active = 0
                self.log.warning("bacnet.device_offline", silent_for=limit)
                self._offline_at = utcnow()
                self._lost.set()
            if self._reported is not False:
                offline = DeviceStatus(
                    self.device.id, online=False, at=self._offline_at or utcnow(), reason=f"no answer for {limit:g}s"
                )
                if not await self._report(sink, offline):
                    await asyncio.sleep(self.device.poll_interval)  # still silent then: reported again
                    continue
            self._contact.clear()
            await self._contact.wait()

    async def _report(self, sink: ReadingSink, status: DeviceStatus) -> bool:
        """Hand a device status on; False if the gateway did not accept it (then it counts as not reported)."""
        try:
            await sink.device_status(status)
        except NotAccepted as exc:
            self.log.warning("bacnet.status_not_accepted", online=status.online, error=str(exc))
            return False
        self._reported = status.online
        return True

    async def _connection(self, sink: ReadingSink) -> None:
        while True:
            await self._reach()
            await self._cancel_stale()
            self._lost.clear()
            if self.counters.online is not True:
                self.counters.online = True
                self.log.info("bacnet.device_online")
            if self._reported is not True and not await self._report(
                sink, DeviceStatus(self.device.id, online=True, at=utcnow())
            ):
                await asyncio.sleep(self.device.poll_interval)
                continue
            try:
                await self._resync()
            except DeviceError as exc:  # went silent again mid-resync: back to waiting for an answer
                self._error(exc, "resync")
                await asyncio.sleep(self.device.poll_interval)
                continue
            except NotAccepted as exc:  # what was not accepted is offered again by the next resync
                self.log.warning("bacnet.resync_not_accepted", error=str(exc))
                await asyncio.sleep(self.device.poll_interval)
                continue
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watch_lost())
                    for plan in self.plans.values():
                        if self.device.cov and plan.cov_watches():
                            tg.create_task(self._cov(plan))
                    tg.create_task(self._poll())
                    tg.create_task(self._keepalive())
            except* _DeviceLost:
                for plan in self.plans.values():
                    plan.cov = False

    async def _watch_lost(self) -> None:
        await self._lost.wait()
        raise _DeviceLost()

    async def _reach(self) -> None:
        """Read the device object until the device answers (I-Am needs broadcasts; a read works anywhere)."""
        while True:
            try:
                await self.client.read(f"device,{self.device.device_instance}", "system-status")
                return
            except DeviceError as exc:
                self._error(exc, "reachability")
                if isinstance(exc, DeviceRejected):
                    if exc.code == "unknown-object":
                        self.log.warning("bacnet.device_instance_mismatch", device_instance=self.device.device_instance)
                    return  # it answered: reachable, whatever it thinks of the request
            await asyncio.sleep(self.device.poll_interval)

    def subscriptions_left(self) -> list[StaleSubscription]:
        """What this session may leave on the device when it ends: its subscriptions, unless lapsed, and the
        earlier run's it has not cancelled yet (for the next run of the adapter to cancel)."""
        now = asyncio.get_running_loop().time()
        mine = [
            StaleSubscription(plan.object_id, plan.process_id, plan.subscribed_until)
            for plan in self.plans.values()
            if plan.subscribed_until is not None
        ]
        return [s for s in [*self._stale, *mine] if s.until > now]

    async def _cancel_stale(self) -> None:
        """Cancel the COV subscriptions an earlier run of the adapter left (crashed, or stopped while the device
        did not answer: they live on until their lifetime ends): each holds one of the device's limited
        subscription slots and doubles its notifications, which arrive here under a process id no plan has
        (answered unknown-subscription). Best effort, once: a failure is counted and the subscription left to
        lapse."""
        now = asyncio.get_running_loop().time()
        stale = self._stale = [s for s in self._stale if s.until > now]  # pruned as they are cancelled: a stop
        if stale:  # meanwhile still finds the rest in subscriptions_left()
            count = len(stale)
            await self.cancel_subscriptions(stale)
            self.log.info("bacnet.stale_subscriptions_cancelled", count=count - len(stale))
        self._stale = []

    async def cancel_subscriptions(self, pending: list[StaleSubscription]) -> None:
        """Cancel the subscriptions in `pending` at the device, all at once, removing each from `pending` as the
        device confirms it: what is left there (an error, or the caller's deadline) stays on the device until it
        lapses."""

        async def cancel(subscription: StaleSubscription) -> None:
            try:
                await self.client.cancel_cov(subscription.object_id, subscription.process_id)
            except DeviceError as exc:
                self._error(exc, "cancel-cov")
            except Exception as exc:  # best effort: one failure must not cancel the others (or a stop)
                self.log.warning("bacnet.cancel_cov_failed", object=subscription.object_id, error=repr(exc))
            else:
                pending.remove(subscription)

        async with asyncio.TaskGroup() as tg:
            for subscription in list(pending):
                tg.create_task(cancel(subscription))

    async def _keepalive(self) -> None:
        """Keep contact fresh while nothing else is heard (quiet COV objects), so silence means offline."""
        loop = asyncio.get_running_loop()
        period = self.site.supervision.device_offline_after / 3
        while True:
            idle = loop.time() - self._last_contact
            if idle < period:
                await asyncio.sleep(period - idle)
                continue
            try:
                await self.client.read(f"device,{self.device.device_instance}", "system-status")
            except DeviceError as exc:
                self._error(exc, "keepalive")
                await asyncio.sleep(min(period, self.device.timeout))

    # --- COV and polling ------------------------------------------------------------------------------

    async def _cov(self, plan: ObjectPlan) -> None:
        lifetime = max(1, round(self.device.cov_lifetime))
        renew = max(0.5, lifetime / 2)
        loop = asyncio.get_running_loop()
        while True:
            # from sending on, the device may hold the subscription (until its lifetime ends)
            plan.subscribed_until = loop.time() + lifetime
            try:
                await self.client.subscribe_cov(plan.object_id, plan.process_id, lifetime)
            except DeviceBusy as exc:  # busy for now: poll meanwhile, try COV again later
                self._error(exc, "subscribe-cov")
                self._set_cov(plan, False)
                self._poll_now.set()
                await asyncio.sleep(renew)
                continue
            except DeviceRejected as exc:
                self._error(exc, "subscribe-cov")
                self.log.info("bacnet.cov_refused_polling", object=plan.object_id, reason=str(exc))
                self._set_cov(plan, False)
                self._poll_now.set()
                return
            except DeviceError as exc:
                self._error(exc, "subscribe-cov")
                self._set_cov(plan, False)
                self._poll_now.set()
                await asyncio.sleep(min(renew, self.device.poll_interval))
                continue
            self._set_cov(plan, True)
            await asyncio.sleep(renew)

    def _set_cov(self, plan: ObjectPlan, subscribed: bool) -> None:
        if plan.cov != subscribed:
            plan.cov = subscribed
            self.counters.cov_subscriptions_active += 1 if subscribed else -1
            self._polled()  # refreshes the polled-objects counter

    def _polled(self) -> list[Watch]:
        polled: list[Watch] = []
        for plan in self.plans.values():
            covered = plan.cov_watches() if plan.cov else []
            polled.extend(w for w in plan.watches if w not in covered)
        self.counters.polled_objects = len({w.object_id for w in polled})
        return polled

    async def _poll(self) -> None:
        while True:
            watches = self._polled()
            if watches:
                try:
                    await self._read_and_report(watches)
                except DeviceError as exc:
                    self._error(exc, "poll")
                except NotAccepted as exc:  # not reported: offered again by the next poll
                    self.log.warning("bacnet.poll_not_accepted", error=str(exc))
            self._poll_now.clear()
            try:
                async with asyncio.timeout(self.device.poll_interval):
                    await self._poll_now.wait()
            except TimeoutError:
                pass

    async def _read_values(self, watches: list[Watch]) -> dict[tuple[str, str], Any]:
        return await self._read_refs(list(dict.fromkeys(ref for watch in watches for ref in watch.refs())))

    async def _read_refs(self, refs: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """Values by (object, property); a property the device cannot give comes back as its DeviceError."""
        if self._rpm:
            try:
                return await self.client.read_multiple(refs)
            except ObjectMissing as exc:
                if len(refs) == 1:  # that one point is missing: its value is the error (not the device's)
                    return {refs[0]: exc}
                # a device that fails the whole request for one missing object: read one by one, so that
                # one bad point does not blind the others
            except DeviceRejected as exc:
                if exc.code not in ("unrecognized-service", "service-request-denied"):
                    raise
                self.log.warning(NO_READ_PROPERTY_MULTIPLE, reason=str(exc))
                self._rpm = False
        values: dict[tuple[str, str], Any] = {}
        for object_id, prop in refs:
            try:
                values[(object_id, prop)] = await self.client.read(object_id, prop)
            except ConfigurationFault as exc:
                values[(object_id, prop)] = exc
        return values

    async def _read_and_report(
        self, watches: list[Watch], extra: dict[str, tuple[Notification, datetime | None]] | None = None
    ) -> None:
        """Read the watches (in requests whose answers need no segmentation) and report what they show.

        A value read by a request that started before a notification for the same property was received
        is dropped: the notification may be newer than the read (bug: a resync answer overtaken by an
        alarm notification reported a false restore), and every later change is notified again.
        """
        for batch in read_batches(watches):
            started = {watch.point.id: watch.notified for watch in batch}
            values = await self._read_values(batch)
            for watch in batch:
                value = values.get((watch.object_id, watch.prop))
                if isinstance(value, ObjectMissing):
                    self._error(value, f"read {watch.object_id}/{watch.prop}")
                    await self._report_unavailable(watch.point.id, missing_reason(self.device.id, watch, value))
                    continue
                if isinstance(value, DeviceError) or value is None:
                    if isinstance(value, DeviceError):
                        self._error(value, f"read {watch.object_id}/{watch.prop}")
                    continue
                extras = {p: values.get((watch.object_id, p)) for p in ACCESS_POINT_EXTRAS}
                notification, occurred_at = (extra or {}).get(watch.point.id, (None, None))
                await self._observe(
                    watch,
                    value,
                    extras,
                    force=extra is not None,
                    notification=notification,
                    occurred_at=occurred_at,
                    read_since=started[watch.point.id],
                )

    # --- readings -------------------------------------------------------------------------------------

    async def _observe(
        self,
        watch: Watch,
        value: Any,
        extras: dict[str, Any] | None = None,
        *,
        force: bool = False,
        notification: Notification | None = None,
        occurred_at: datetime | None = None,
        read_since: int | None = None,
    ) -> None:
        """Submit a reading when the value (or occurrence) changed, or always when `force`; returns once it
        (and whatever was committed with it) is accepted. See `_offer`."""
        batch = self._offer(
            watch, value, extras, force=force, notification=notification, occurred_at=occurred_at, read_since=read_since
        )
        if batch is not None:
            await self._commits.wait(batch)

    def _offer(
        self,
        watch: Watch,
        value: Any,
        extras: dict[str, Any] | None = None,
        *,
        force: bool = False,
        notification: Notification | None = None,
        occurred_at: datetime | None = None,
        read_since: int | None = None,
    ) -> Batch | None:
        """Queue a reading for the device's next commit when it is a change; returns the batch to wait for.

        Synchronous, so nothing comes between the checks and the queueing. A value equal to one still being
        committed returns that batch (its sender is answered only once that value is durable).
        `read_since`: for a read, the watch's notification count when the request started; if a notification
        came in since, the read value is stale and dropped.
        """
        raw = to_raw(value)
        occurrence = None
        credential = None
        if watch.object_type == "access-point" and watch.prop == "access-event" and extras:
            tag = extras.get("access-event-tag")
            if tag is not None and not isinstance(tag, DeviceError):
                occurrence = str(int(tag))
            reference = extras.get("access-event-credential")
            if reference is not None and not isinstance(reference, DeviceError):
                credential = credential_of(reference)
        key = (raw, occurrence)
        if read_since is not None and watch.notified != read_since:
            self.counters.stale_reads += 1
            self.log.debug("bacnet.stale_read_dropped", point=watch.point.id, value=str(raw))
            return None
        if not force and watch.latest() == key:
            return watch.pending
        reading = Reading(
            point_id=watch.point.id,
            value=raw,
            quality=Quality.GOOD,
            detected_at=utcnow(),
            occurred_at=occurred_at,
            occurrence=occurrence,
            credential=credential,
            notification=notification,
        )
        batch: Batch | None = None

        def accepted() -> None:
            watch.reported = key
            if watch.pending is batch:
                watch.pending = None
            self.counters.readings += 1
            if self._unavailable.pop(watch.point.id, None) is not None:
                self.counters.points_unavailable = len(self._unavailable)
                self.log.info("bacnet.point_readable_again", point=watch.point.id, object=watch.object_id)

        def refused() -> None:  # not reported, so the value is a change next time
            if watch.pending is batch:
                watch.pending = None

        batch = self._commits.add(reading, accepted, refused)
        watch.pending, watch.pending_key = batch, key
        return batch

    async def _report_unavailable(self, point_id: str, reason: str) -> None:
        """Hand on that the device says the point does not exist: once while it stays so (the normaliser
        raises point_unavailable); its next good value is then handed on as a change, the restore."""
        if point_id in self._unavailable:
            return
        reading = Reading(point_id=point_id, value=None, quality=Quality.UNAVAILABLE, detected_at=utcnow(), text=reason)
        watch = self.watches.get(point_id)
        batch: Batch | None = None

        def accepted() -> None:
            self._unavailable[point_id] = reason
            self.counters.points_unavailable = len(self._unavailable)
            if watch is not None:
                watch.reported = None
                if watch.pending is batch:
                    watch.pending = None

        def refused() -> None:
            if watch is not None and watch.pending is batch:
                watch.pending = None

        batch = self._commits.add(reading, accepted, refused)
        if watch is not None:  # whatever value comes next is queued after this, as a change
            watch.pending, watch.pending_key = batch, UNAVAILABLE
        await self._commits.wait(batch)
        self.log.warning("bacnet.point_unavailable", point=point_id, reason=reason)

    async def _read_clock(self) -> None:
        """UTC_Offset and Daylight_Savings_Status of the device object, read at every (re)connect: they decide
        the clock its time stamps are converted with (DeviceClock.of_device), unless the device's own
        timezone: setting says otherwise. Either property may be missing (both are optional)."""
        if self.device.timezone is not None:
            return
        device_object = f"device,{self.device.device_instance}"
        try:
            values = await self._read_refs([(device_object, "utc-offset"), (device_object, "daylight-savings-status")])
        except DeviceRejected as exc:  # a device that refuses the whole request: keep the configured zone
            self._error(exc, "read utc-offset")
            values = {}
        offset = values.get((device_object, "utc-offset"))
        dst = values.get((device_object, "daylight-savings-status"))
        configured = ZoneInfo(self.site.site.timezone)
        clock = DeviceClock.of_device(
            configured,
            int(offset) if isinstance(offset, int) else None,
            bool(dst) if isinstance(dst, int) else None,
            utcnow(),
        )
        if clock != self.clock:
            log = self.log.warning if clock.source == "device" else self.log.info
            log(
                "bacnet.device_clock",
                zone=str(clock.zone),
                source=clock.source,
                site_timezone=self.site.site.timezone,
                utc_offset=offset if isinstance(offset, int) else None,
                daylight_savings_status=dst if isinstance(dst, int) else None,
            )
        self.clock = clock

    async def _resync(self) -> None:
        """GetEventInformation plus a read of every configured object; the normaliser sorts out what is new."""
        self.counters.resyncs += 1
        for point_id, problem in self._blind_config.items():
            await self._report_unavailable(point_id, problem)
        await self._read_clock()
        extra: dict[str, tuple[Notification, datetime | None]] = {}
        try:
            summaries = await self.client.event_information()
        except DeviceRejected as exc:
            self._error(exc, "get-event-information")
            if not self._told_no_event_information:
                self._told_no_event_information = True
                self.log.warning(NO_EVENT_INFORMATION, reason=str(exc))
            summaries = []
        received = utcnow()
        for summary in summaries:
            plan = self.plans.get(object_key(summary.objectIdentifier))
            if plan is None:
                continue
            state = str(summary.eventState)
            acked = list(summary.acknowledgedTransitions)
            stamps = list(summary.eventTimeStamps)
            priorities = [int(p) for p in summary.eventPriorities]
            index = transition_index(state)
            self._remember_unacked(plan, summary)
            for watch in plan.watches:
                if watch.prop != event_property(plan.object_type):
                    continue
                if state != "normal" and index < len(stamps):
                    stamp = stamps[index]
                    notification = Notification(
                        priority=priorities[index] if index < len(priorities) else 255,
                        ack_required=index < len(acked) and not acked[index],
                        to_state=state,
                        time_stamp=time_stamp_text(stamp),
                    )
                    extra[watch.point.id] = (notification, time_stamp_datetime(stamp, self.clock, received))
        await self._read_and_report(list(self.watches.values()), extra)

    # --- notifications --------------------------------------------------------------------------------

    async def on_cov(self, plan: ObjectPlan, request: Any) -> None:
        self._contacted()
        self.counters.cov_notifications += 1
        values: dict[str, Any] = {}
        wanted = plan.notified_properties()
        for property_value in request.listOfValues:
            prop = property_name(property_value.propertyIdentifier)
            if prop not in wanted:  # e.g. status-flags: not decoded, nothing reads it
                continue
            datatype = property_type(plan.object_type, prop)
            if datatype is None:
                continue
            try:
                values[prop] = property_value.value.cast_out(datatype)
            except (TypeError, ValueError, AttributeError) as exc:
                self.counters.errors["MalformedReply"] += 1
                self.log.warning("bacnet.cov_value_undecodable", object=plan.object_id, prop=prop, error=str(exc))
        notified = [watch for watch in plan.watches if watch.prop in values]
        for watch in notified:  # all of them before the first await: a read answer must see it
            watch.notified += 1
        batches = [self._offer(watch, values[watch.prop], values) for watch in notified]
        for batch in dict.fromkeys(b for b in batches if b is not None):  # answered once all are durable
            await self._commits.wait(batch)

    async def on_event(self, request: Any) -> None:
        received = utcnow()
        self._contacted()
        self.counters.event_notifications += 1
        object_id = object_key(request.eventObjectIdentifier)
        plan = self.plans.get(object_id)
        if plan is None:
            self.log.debug("bacnet.event_for_unconfigured_object", object=object_id)
            return
        watches = [w for w in plan.watches if w.prop == event_property(plan.object_type)]
        for watch in watches:  # before the first await: a read answer in flight must see it
            watch.notified += 1
        notification = notification_of(request)
        occurred_at = time_stamp_datetime(request.timeStamp, self.clock, received)
        new_value = event_new_value(getattr(request, "eventValues", None))
        self.log.info(
            "bacnet.event_notification",
            object=object_id,
            to_state=notification.to_state,
            priority=notification.priority,
            time_stamp=notification.time_stamp,
        )
        for watch in watches:
            if notification.ack_required:
                watch.last_event = (request.toState, request.timeStamp)
            value = new_value
            if value is None:
                try:
                    value = await self.client.read(watch.object_id, watch.prop)
                except DeviceError as exc:
                    self._error(exc, "read after event")
                    continue
            await self._observe(watch, value, force=True, notification=notification, occurred_at=occurred_at)

    # --- commands -------------------------------------------------------------------------------------

    async def acknowledge(self, point_id: str, source: str) -> None:
        watch = self.watches[point_id]
        if watch.last_event is None:
            await self._refresh_event_information()
        if watch.last_event is None:
            raise ConfigurationFault(self.device.id, f"point {point_id}: no event transition to acknowledge")
        state, stamp = watch.last_event
        await self.client.acknowledge(watch.object_id, state, stamp, source, self.clock.local_now(utcnow()))
        watch.last_event = None
        self.log.info("bacnet.acknowledged", point=point_id, state=str(state), source=source)

    async def _refresh_event_information(self) -> None:
        for summary in await self.client.event_information():
            plan = self.plans.get(object_key(summary.objectIdentifier))
            if plan is not None:
                self._remember_unacked(plan, summary)

    def _remember_unacked(self, plan: ObjectPlan, summary: Any) -> None:
        """From an event summary, the transition to acknowledge: the current state's if unacked, else any."""
        state = str(summary.eventState)
        acked = list(summary.acknowledgedTransitions)
        stamps = list(summary.eventTimeStamps)
        current = transition_index(state)
        for i in (current, 0, 1, 2):
            if i < len(acked) and i < len(stamps) and not acked[i]:
                to_state = state if i == current else transition_state(plan.object_type, i)
                for watch in plan.watches:
                    if watch.prop == event_property(plan.object_type):
                        watch.last_event = (to_state, stamps[i])
                return

    async def write(self, point_id: str, value: object, priority: int | None, prop: str | None) -> None:
        watch = self.watches[point_id]
        target = prop or watch.prop
        await self.client.write(watch.object_id, target, value, priority)
        back = to_raw(await self.client.read(watch.object_id, target))
        if str(back) != str(value):
            raise VerificationFailed(self.device.id, f"{watch.object_id}/{target}: wrote {value!r}, reads {back!r}")
        self.log.info("bacnet.written", point=point_id, prop=target, value=str(value), priority=priority)


def unencodable(object_id: str, prop: str) -> str | None:
    """Why bacpypes3 cannot even encode a request for this object/property (a typo the device never sees)."""
    try:
        ObjectIdentifier(object_id)
    except (ValueError, TypeError):
        kind = object_id.split(",", maxsplit=1)[0]
        return f"{object_id}: {kind!r} is not a BACnet object type, so the point is never read"
    try:
        PropertyIdentifier(prop)
    except (ValueError, TypeError):
        return f"{object_id}: {prop!r} is not a BACnet property, so the point is never read"
    return None


def missing_reason(device_id: str, watch: Watch, exc: ObjectMissing) -> str:
    """In an installer's words, from the error code (never its text)."""
    if exc.code == "unknown-property":
        return f"{watch.object_id} on device {device_id} has no property {watch.prop} (BACnet unknown-property)"
    if exc.code == "unsupported-object-type":
        return f"device {device_id} does not support object type of {watch.object_id} (BACnet unsupported-object-type)"
    return f"device {device_id} has no object {watch.object_id} (BACnet unknown-object)"
