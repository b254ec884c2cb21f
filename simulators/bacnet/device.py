"""One simulated BACnet/IP device: a bacpypes3 application on its own loopback UDP port.

Besides what bacpypes3 serves (ReadProperty(Multiple), WriteProperty, SubscribeCOV) it does intrinsic
event reporting the way a security panel does: every configured state point whose value enters an alarm or
fault value changes the object's event state, stamps the transition with the device's clock, clears the
acked-transition bit when the notification class asks for acknowledgement, and notifies the recipients
of its notification class. It also answers AcknowledgeAlarm and GetEventInformation, which bacpypes3 does
not implement server-side, and can inject faults (silent, refuse COV, slow answers, error answers).

Confirmed requests it sends (event and COV notifications) are bounded per destination: bacpypes3 has no
throttle and, with 256 unanswered requests to one address, loops forever looking for a free invoke id,
which hangs the whole event loop. Past `MAX_IN_FLIGHT` an event or COV notification goes out unconfirmed
(a slow recipient still gets it, an absent one loses nothing more) and anything else is dropped, both counted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import structlog
from bacpypes3.apdu import (
    APDU,
    AcknowledgeAlarmRequest,
    ConfirmedCOVNotificationRequest,
    ConfirmedEventNotificationRequest,
    ConfirmedRequestPDU,
    Error,
    ErrorRejectAbortNack,
    GetEventInformationACK,
    GetEventInformationRequest,
    SimpleAckPDU,
    UnconfirmedCOVNotificationRequest,
    UnconfirmedEventNotificationRequest,
)
from bacpypes3.app import Application
from bacpypes3.appservice import ServerSSM
from bacpypes3.basetypes import (
    DateTime,
    Destination,
    DeviceAddress,
    EventTransitionBits,
    GetEventInformationEventSummary,
    NotificationParameters,
    NotificationParametersChangeOfLifeSafety,
    NotificationParametersChangeOfState,
    PropertyIdentifier,
    PropertyStates,
    PropertyValue,
    Recipient,
    StatusFlags,
    TimeStamp,
)
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.errors import ExecutionError, ObjectError, ServicesError
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from gateway.config.models import BacnetDevice, BacnetSource, PointConfig
from gateway.domain.values import RawValue
from simulators.bacnet.objects import NOTIFICATION_CLASS, SimNotificationClass, make_object

log = structlog.get_logger(__name__)

# Priorities (lower = more urgent) and ack-required per transition: to-offnormal, to-fault, to-normal.
DEFAULT_PRIORITIES = (50, 100, 200)
DEFAULT_ACK_REQUIRED = (True, True, False)
LIFE_SAFETY = ("life-safety-point", "life-safety-zone")
# The property whose value drives the object's intrinsic event state.
EVENT_PROPERTY = {"access-door": "door-alarm-state"}
NO_EVENTS = ("access-point",)
# Confirmed requests awaiting an answer, per destination (bacpypes3 hangs at 256, see the module docstring).
MAX_IN_FLIGHT = 64


def attr_name(prop: str) -> str:
    """'door-alarm-state' -> 'doorAlarmState', the attribute name bacpypes3 objects use."""
    return str(PropertyIdentifier(prop).attr)


def to_raw(value: Any) -> RawValue:
    """A bacpypes3 value as the site config writes it: enumeration names, integers."""
    asn1 = getattr(value, "asn1", None)
    if isinstance(asn1, str):
        return asn1
    if isinstance(value, int):
        return int(value)
    return str(value)


def transition_index(event_state: str) -> int:
    """Index into event-time-stamps / acked-transitions: 0 to-offnormal, 1 to-fault, 2 to-normal."""
    return {"normal": 2, "fault": 1}.get(event_state, 0)


def _stamp_key(stamp: Any) -> tuple[str, str]:
    choice = str(stamp._choice)
    return choice, str(getattr(stamp, choice))


@dataclass
class EventRecord:
    """Intrinsic-reporting state of one object (mirrored into its BACnet properties)."""

    obj: Any
    point: PointConfig
    state: str = "normal"
    stamps: list[Any] = field(default_factory=list)
    acked: list[int] = field(default_factory=lambda: [1, 1, 1])


class _SimApplication(Application):  # type: ignore[misc]
    """bacpypes3 application with the services a security panel needs on top of the stock ones."""

    sim: SimDevice

    def in_flight(self, destination: Any) -> int:
        """Confirmed requests to `destination` still awaiting an answer."""
        return len(self._requests.get(destination, ()))

    def request(self, apdu: APDU) -> asyncio.Future[Any]:
        """Bounded per destination: past the bound a COV notification (bacpypes3 sends those) goes out
        unconfirmed, any other confirmed request is dropped (a cancelled future)."""
        if isinstance(apdu, ConfirmedRequestPDU) and self.in_flight(apdu.pduDestination) >= self.sim.max_in_flight:
            if isinstance(apdu, ConfirmedCOVNotificationRequest):
                self.sim.notifications_unconfirmed += 1
                unconfirmed = UnconfirmedCOVNotificationRequest(
                    subscriberProcessIdentifier=apdu.subscriberProcessIdentifier,
                    initiatingDeviceIdentifier=apdu.initiatingDeviceIdentifier,
                    monitoredObjectIdentifier=apdu.monitoredObjectIdentifier,
                    timeRemaining=apdu.timeRemaining,
                    listOfValues=apdu.listOfValues,
                    destination=apdu.pduDestination,
                )
                sent: asyncio.Future[Any] = super().request(unconfirmed)
                return sent
            self.sim.requests_dropped += 1
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.cancel()
            return future
        result: asyncio.Future[Any] = super().request(apdu)
        return result

    async def response(self, apdu: Any) -> None:
        """The "slow" fault: every answer leaves `delay` seconds late, with the values of request time
        (notifications the device sends on its own are not delayed)."""
        if self.sim.delay:
            await asyncio.sleep(self.sim.delay)
        await super().response(apdu)

    async def indication(self, apdu: Any) -> None:
        self.sim.requests[type(apdu).__name__] += 1
        if self.sim.error_code is not None and isinstance(apdu, ConfirmedRequestPDU):
            await self.response(
                Error(
                    service_choice=apdu.apduService,
                    errorClass="device",
                    errorCode=self.sim.error_code,
                    context=apdu,
                )
            )
            return
        await super().indication(apdu)

    async def do_SubscribeCOVRequest(self, apdu: Any) -> None:
        if self.sim.refuse_cov:
            raise ExecutionError(errorClass="services", errorCode="covSubscriptionFailed")
        await super().do_SubscribeCOVRequest(apdu)

    def cov_confirmation(self, cov: Any, future: asyncio.Future[Any]) -> None:
        """bacpypes3's version re-raises a subscriber's abort inside a loop callback; a gone subscriber is
        normal for a device (its subscription simply lapses)."""
        _consume(future)

    async def do_AcknowledgeAlarmRequest(self, apdu: AcknowledgeAlarmRequest) -> None:
        record = self.sim.events.get(apdu.eventObjectIdentifier)
        if record is None:
            raise ObjectError("unknownObject")
        index = transition_index(str(apdu.eventStateAcknowledged))
        stamp = record.stamps[index]
        if _stamp_key(stamp) != _stamp_key(apdu.timeStamp):
            raise ServicesError("invalidTimeStamp")
        record.acked[index] = 1
        self.sim.mirror(record)
        self.sim.acks.append((record.point.id, str(apdu.acknowledgmentSource), str(apdu.eventStateAcknowledged)))
        self.sim.ack_times.append(apdu.timeOfAcknowledgment)
        await self.response(SimpleAckPDU(context=apdu))

    async def do_GetEventInformationRequest(self, apdu: GetEventInformationRequest) -> None:
        pending = sorted(
            (r for r in self.sim.events.values() if r.state != "normal" or not all(r.acked)),
            key=lambda r: (int(r.obj.objectIdentifier[0]), int(r.obj.objectIdentifier[1])),
        )
        last = apdu.lastReceivedObjectIdentifier
        if last is not None:
            after = (int(last[0]), int(last[1]))
            pending = [r for r in pending if (int(r.obj.objectIdentifier[0]), int(r.obj.objectIdentifier[1])) > after]
        page = pending[: self.sim.page_size]
        summaries = [
            GetEventInformationEventSummary(
                objectIdentifier=r.obj.objectIdentifier,
                eventState=r.state,
                acknowledgedTransitions=EventTransitionBits(list(r.acked)),
                eventTimeStamps=list(r.stamps),
                notifyType="alarm",
                eventEnable=EventTransitionBits([1, 1, 1]),
                eventPriorities=list(self.sim.priorities),
            )
            for r in page
        ]
        ack = GetEventInformationACK(listOfEventSummaries=summaries, moreEvents=len(pending) > len(page), context=apdu)
        await self.response(ack)


def _never() -> Any:
    return TimeStamp(sequenceNumber=0)


class SimDevice:
    """One simulated device; `start()` binds 127.0.0.1 on an OS-assigned UDP port."""

    def __init__(
        self,
        device: BacnetDevice,
        points: list[PointConfig],
        recipient: tuple[str, int] | None,
        *,
        page_size: int = 4,
        priorities: tuple[int, int, int] = DEFAULT_PRIORITIES,
        ack_required: tuple[bool, bool, bool] = DEFAULT_ACK_REQUIRED,
        confirmed_notifications: bool = True,
        segmentation: str = "segmented-both",
        max_in_flight: int = MAX_IN_FLIGHT,
        apdu_timeout: float = 1.0,
        zone: tzinfo = UTC,
        utc_offset: int | None = None,
        daylight_savings_status: bool | None = None,
    ) -> None:
        """`zone`: what the device's clock runs on (a panel stamps local time without a zone);
        `utc_offset`, `daylight_savings_status`: its Device object's UTC_Offset (minutes, positive west of
        UTC) and Daylight_Savings_Status, absent when None (both are optional properties)."""
        self.device = device
        self.points = points
        self.recipient = recipient
        self.page_size = page_size
        self.priorities = priorities
        self.ack_required = ack_required
        self.confirmed_notifications = confirmed_notifications
        self.segmentation = segmentation  # "no-segmentation": an answer too big for one APDU is aborted
        self.max_in_flight = max_in_flight
        self.apdu_timeout = apdu_timeout  # seconds before it retries a confirmed request (3 retries)
        self.zone = zone
        self.utc_offset = utc_offset
        self.daylight_savings_status = daylight_savings_status
        self.refuse_cov = False
        self.silent = False
        self.delay = 0.0  # "slow": every answer to a request waits this long
        self.error_code: str | None = None  # "exception": every confirmed request is answered with this error
        self.port = 0
        self.objects: dict[str, Any] = {}  # "binary-input,1" -> local object
        self.events: dict[Any, EventRecord] = {}  # ObjectIdentifier -> record
        self.acks: list[tuple[str, str, str]] = []  # (point id, source, state) per AcknowledgeAlarm
        self.ack_times: list[Any] = []  # the Time_Of_Acknowledgment TimeStamp per AcknowledgeAlarm
        self.notifications_sent = 0
        self.notifications_acked = 0  # confirmed notifications the recipient answered with a SimpleACK
        self.notifications_unconfirmed = 0  # event/COV notifications sent unconfirmed: too many unanswered
        self.requests_dropped = 0  # other confirmed requests not sent: too many unanswered
        self.requests: Counter[str] = Counter()  # requests received, by bacpypes3 class name
        self._app: _SimApplication | None = None
        self._access_tags: dict[str, int] = {}

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        clock: dict[str, Any] = {}
        if self.utc_offset is not None:
            clock["utcOffset"] = self.utc_offset
        if self.daylight_savings_status is not None:
            clock["daylightSavingsStatus"] = self.daylight_savings_status
        device_object = DeviceObject(
            objectIdentifier=("device", self.device.device_instance),
            objectName=f"sim-{self.device.id}",
            vendorIdentifier=999,
            apduTimeout=round(self.apdu_timeout * 1000),
            numberOfApduRetries=3,
            segmentationSupported=self.segmentation,
            **clock,
        )
        network_port = NetworkPortObject(
            "127.0.0.1:0", objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
        )
        objects: list[Any] = [device_object, network_port, self._notification_class()]
        for point in self.points:
            assert isinstance(point.source, BacnetSource)
            ref = point.source.object
            if ref not in self.objects:
                object_type, instance = ref.split(",")
                self.objects[ref] = make_object(object_type, int(instance), f"{self.device.id}:{ref}")
                objects.append(self.objects[ref])
        app = _SimApplication.from_object_list(objects)
        app.sim = self
        self._app = app
        server = next(iter(app.link_layers.values())).server
        await asyncio.gather(*server._transport_tasks)
        self.port = int(server.local_transport.get_extra_info("sockname")[1])
        server.local_address = ("127.0.0.1", self.port)
        self._wrap_for_faults(server)
        for point in self.points:
            self._enrol_events(point)

    def stop(self) -> None:
        if self._app is not None:
            close_quietly(self._app)
            self._app = None

    def cov_subscriptions(self) -> int:
        """Active COV subscriptions on this device (expired ones are dropped by bacpypes3)."""
        if self._app is None:
            return 0
        return sum(len(detection.cov_subscriptions) for detection in self._app._cov_detections.values())

    def _notification_class(self) -> Any:
        recipients = []
        if self.recipient is not None:
            address = Address(f"{self.recipient[0]}:{self.recipient[1]}")
            recipients.append(
                Destination(
                    validDays=[1] * 7,
                    fromTime=(0, 0, 0, 0),
                    toTime=(23, 59, 59, 99),
                    recipient=Recipient(address=DeviceAddress(networkNumber=0, macAddress=address.addrAddr)),
                    processIdentifier=1,
                    issueConfirmedNotifications=self.confirmed_notifications,
                    transitions=[1, 1, 1],
                )
            )
        return SimNotificationClass(
            objectIdentifier=("notification-class", NOTIFICATION_CLASS),
            objectName="NotificationClass-1",
            notificationClass=NOTIFICATION_CLASS,
            priority=list(self.priorities),
            ackRequired=EventTransitionBits([int(a) for a in self.ack_required]),
            recipientList=recipients,
        )

    def _wrap_for_faults(self, server: Any) -> None:
        """A silent device drops every datagram in both directions, like a cut cable."""
        send, receive = server.indication, server.confirmation

        async def indication(pdu: Any) -> None:
            if not self.silent:
                await send(pdu)

        async def confirmation(pdu: Any) -> None:
            if not self.silent:
                await receive(pdu)

        server.indication = indication
        server.confirmation = confirmation

    # --- values ---------------------------------------------------------------------------------------

    def object_of(self, point: PointConfig) -> Any:
        assert isinstance(point.source, BacnetSource)
        return self.objects[point.source.object]

    def set_raw(self, point: PointConfig, value: RawValue, credential: int | None = None) -> None:
        assert isinstance(point.source, BacnetSource)
        obj = self.object_of(point)
        if point.source.object.startswith("access-point,") and point.source.property == "access-event":
            tag = self._access_tags.get(point.id, 0) + 1
            self._access_tags[point.id] = tag
            obj.accessEvent = value
            obj.accessEventTag = tag
            obj.accessEventCredential = {"objectIdentifier": ("access-credential", credential or 0)}
            obj.accessEventTime = TimeStamp(dateTime=DateTime(self.local_now()))
            return
        setattr(obj, attr_name(point.source.property), value)

    def local_now(self) -> datetime:
        """The device clock: local time in its zone, without a zone (as BACnet date-times are)."""
        return datetime.now(self.zone).replace(tzinfo=None)

    async def notify_cov(self, point: PointConfig, process_id: int, destination: tuple[str, int]) -> str:
        """Send one confirmed COV notification of the point's object (present-value, status-flags) to
        `destination` under `process_id`, as a subscription of that id would; returns 'ack' or the error code
        of the answer (e.g. 'unknown-subscription' from a gateway that holds no such subscription)."""
        assert self._app is not None
        obj = self.object_of(point)
        values = [
            PropertyValue(propertyIdentifier=prop, value=AnyValue(getattr(obj, attr_name(prop))))
            for prop in ("present-value", "status-flags")
        ]
        request = ConfirmedCOVNotificationRequest(
            subscriberProcessIdentifier=process_id,
            initiatingDeviceIdentifier=ObjectIdentifier(("device", self.device.device_instance)),
            monitoredObjectIdentifier=obj.objectIdentifier,
            timeRemaining=60,
            listOfValues=values,
            destination=Address(f"{destination[0]}:{destination[1]}"),
        )
        try:
            await self._app.request(request)
        except ErrorRejectAbortNack as exc:  # a BaseException
            return str(getattr(exc, "errorCode", None) or getattr(exc, "apduAbortRejectReason", None) or exc)
        return "ack"

    def read_raw(self, point: PointConfig) -> RawValue:
        assert isinstance(point.source, BacnetSource)
        return to_raw(getattr(self.object_of(point), attr_name(point.source.property)))

    # --- intrinsic reporting --------------------------------------------------------------------------

    def _enrol_events(self, point: PointConfig) -> None:
        assert isinstance(point.source, BacnetSource)
        object_type = point.source.object.split(",")[0]
        if point.kind != "state" or object_type in NO_EVENTS:
            return
        if point.source.property != EVENT_PROPERTY.get(object_type, "present-value"):
            return
        obj = self.object_of(point)
        record = EventRecord(obj=obj, point=point, stamps=[_never(), _never(), _never()])
        self.events[obj.objectIdentifier] = record
        self.mirror(record)
        prop = attr_name(point.source.property)
        obj._property_monitors[prop].append(lambda _old, new: self._evaluate(record, new))

    def _event_state(self, record: EventRecord, value: Any) -> str:
        raw = str(to_raw(value))
        point = record.point
        alarms = [*point.alarm, *(v for values in point.other_alarms.values() for v in values)]
        if raw in {str(v) for v in alarms}:
            object_type = str(record.obj.objectIdentifier[0])
            return "life-safety-alarm" if object_type in LIFE_SAFETY else "offnormal"
        if raw in {str(v) for v in point.fault}:
            return "fault"
        return "normal"

    def _evaluate(self, record: EventRecord, value: Any) -> None:
        new_state = self._event_state(record, value)
        if new_state == record.state:
            return
        old_state, record.state = record.state, new_state
        index = transition_index(new_state)
        stamp = TimeStamp(dateTime=DateTime(self.local_now()))
        record.stamps[index] = stamp
        ack_required = self.ack_required[index]
        record.acked[index] = 0 if ack_required else 1
        self.mirror(record)
        self._notify(record, old_state, new_state, index, stamp, ack_required, value)

    def mirror(self, record: EventRecord) -> None:
        """Keep the object's event properties equal to the record, so ReadProperty shows them."""
        record.obj.eventState = record.state
        record.obj.ackedTransitions = EventTransitionBits(list(record.acked))
        record.obj.eventTimeStamps = list(record.stamps)

    def _event_values(self, record: EventRecord, value: Any) -> tuple[str, Any]:
        obj = record.obj
        flags = StatusFlags([int(record.state != "normal"), int(record.state == "fault"), 0, 0])
        object_type = str(obj.objectIdentifier[0])
        if object_type in LIFE_SAFETY:
            params = NotificationParametersChangeOfLifeSafety(
                newState=value, newMode=obj.mode, statusFlags=flags, operationExpected="none"
            )
            return "change-of-life-safety", NotificationParameters(changeOfLifeSafety=params)
        if object_type == "access-door":
            state = PropertyStates(doorAlarmState=value)
        elif object_type == "multi-state-value":
            state = PropertyStates(unsignedValue=int(value))
        else:
            state = PropertyStates(binaryValue=value)
        params = NotificationParametersChangeOfState(newState=state, statusFlags=flags)
        return "change-of-state", NotificationParameters(changeOfState=params)

    def _notify(self, record: EventRecord, old: str, new: str, index: int, stamp: Any, ack: bool, value: Any) -> None:
        if self._app is None or self.recipient is None:
            return
        event_type, event_values = self._event_values(record, value)
        destination = Address(f"{self.recipient[0]}:{self.recipient[1]}")
        confirmed = self.confirmed_notifications
        if confirmed and self._app.in_flight(destination) >= self.max_in_flight:
            confirmed = False  # the recipient is absent or stuck: do not queue without bound, and still tell it
            self.notifications_unconfirmed += 1
        cls = ConfirmedEventNotificationRequest if confirmed else UnconfirmedEventNotificationRequest
        request = cls(
            processIdentifier=1,
            initiatingDeviceIdentifier=ObjectIdentifier(("device", self.device.device_instance)),
            eventObjectIdentifier=record.obj.objectIdentifier,
            timeStamp=stamp,
            notificationClass=NOTIFICATION_CLASS,
            priority=self.priorities[index],
            eventType=event_type,
            messageText=f"{record.point.name}: {to_raw(value)}",
            notifyType="alarm",
            ackRequired=ack,
            fromState=old,
            toState=new,
            eventValues=event_values,
            destination=destination,
        )
        self.notifications_sent += 1
        future = self._app.request(request)
        if confirmed:
            future.add_done_callback(self._answered)

    def _answered(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.notifications_acked += 1
        _consume(future)

    def notification_retries(self) -> int:
        """Retries of confirmed requests still awaiting an answer (a recipient that has not ACKed)."""
        if self._app is None:
            return 0
        return sum(tr.retryCount or 0 for tr in self._app.asap.clientTransactions)

    def in_flight(self) -> int:
        """Confirmed notifications to the recipient still awaiting its answer."""
        if self._app is None or self.recipient is None:
            return 0
        return self._app.in_flight(Address(f"{self.recipient[0]}:{self.recipient[1]}"))


def close_quietly(app: Application) -> None:
    """Close a bacpypes3 application without leaving work behind: its transaction timers would otherwise
    fire after the close, in detached tasks that fail sending on the closed socket ("Task exception was
    never retrieved"), and its unanswered requests would stay pending forever."""
    for ssm in [*app.asap.clientTransactions, *app.asap.serverTransactions]:
        ssm.stop_timer()
    for requests in list(app._requests.values()):
        for _apdu, future in list(requests):
            future.cancel()
    app.close()


def _consume(future: asyncio.Future[Any]) -> None:
    """A notification nobody acknowledged (gateway down) is the gateway's problem: resync covers it."""
    if not future.cancelled():
        try:
            future.result()
        except BaseException as exc:  # ErrorRejectAbortNack derives from BaseException
            log.debug("bacnet_sim.notification_unacknowledged", error=str(exc))


def _fix_segmented_response_retry() -> None:
    """bacpypes3 0.0.110: when a client is slow to ack the first segment of a segmented answer,
    `ServerSSM.segmented_response_timeout` refills a window whose size no ack has set yet and fails
    `assert self.actualWindowSize` in a detached timer task ("Task exception was never retrieved"); the
    answer is never completed. Until the client's ack says otherwise the window is the first segment alone,
    so the retry resends that segment, as the standard's retry of an unacknowledged segment does."""
    original = ServerSSM.segmented_response_timeout
    if getattr(original, "_gcmk_fixed", False):
        return

    async def segmented_response_timeout(self: Any) -> None:
        if self.actualWindowSize is None:
            self.actualWindowSize = 1
        await original(self)

    segmented_response_timeout._gcmk_fixed = True  # type: ignore[attr-defined]
    ServerSSM.segmented_response_timeout = segmented_response_timeout


_fix_segmented_response_retry()
