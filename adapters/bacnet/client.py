"""Requests to one BACnet device, each bounded by the device's timeout and translated at the boundary.

Every answered request counts as contact with the device (supervision); every failure comes out as a
gateway.domain.errors.DeviceError subclass. At most MAX_CONCURRENT_REQUESTS are outstanding per device: at startup
a session subscribes every object at once, and a few hundred simultaneous requests make a panel (and the
simulator) time out on most of them. The device timeout counts from sending, not from queueing.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from bacpypes3.apdu import (
    AcknowledgeAlarmRequest,
    GetEventInformationRequest,
    SubscribeCOVRequest,
)
from bacpypes3.basetypes import DateTime, ErrorType, TimeStamp
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from adapters.bacnet.app import GatewayApplication
from adapters.bacnet.errors import guarded, property_error
from adapters.bacnet.values import property_name, property_type
from gateway.config.models import BacnetDevice
from gateway.domain.errors import ConfigurationFault, DeviceError, DeviceRejected, MalformedReply, SiteConfigFault

T = TypeVar("T")
MAX_EVENT_PAGES = 1000  # GetEventInformation paging guard against a device that always says "more"
MAX_CONCURRENT_REQUESTS = 8  # per device


def object_key(identifier: Any) -> str:
    """ObjectIdentifier -> 'binary-input,1' (the site config's spelling)."""
    return f"{identifier[0]},{int(identifier[1])}"


class DeviceClient:
    def __init__(self, app: GatewayApplication, device: BacnetDevice, on_contact: Callable[[], None]) -> None:
        self.app = app
        self.device = device
        try:
            self.address = Address(f"{device.address}:{device.port}")
        except ValueError:  # bacpypes3's answer to an address it cannot parse: a config value, not a crash
            raise SiteConfigFault(
                f"devices[{device.id}].address",
                f"{device.address!r} is not an IP address the BACnet stack accepts"
                + (" (write the port under port:, not after a colon)" if ":" in device.address else ""),
            ) from None
        self._on_contact = on_contact
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)

    async def _call(self, send: Callable[[], Awaitable[T]]) -> T:
        """Send (once a slot is free) and await the answer."""
        async with self._slots:
            try:
                result = await guarded(self.device.id, self.device.timeout, send())
            except DeviceRejected:
                self._on_contact()  # an error answer is still an answer: the device is there
                raise
            self._on_contact()
            return result

    async def read(self, object_id: str, prop: str) -> Any:
        return await self._call(lambda: self.app.read_property(self.address, object_id, prop))

    async def read_multiple(self, refs: list[tuple[str, str]]) -> dict[tuple[str, str], Any | DeviceError]:
        """ReadPropertyMultiple; a per-property error comes back as a ConfigurationFault value."""
        by_object: dict[str, list[str]] = {}
        for object_id, prop in refs:
            by_object.setdefault(object_id, []).append(prop)
        flat: list[Any] = []
        for object_id, props in by_object.items():
            flat.extend([object_id, props])
        results = await self._call(lambda: self.app.read_property_multiple(self.address, flat))
        if not isinstance(results, list):
            raise MalformedReply(self.device.id, "ReadPropertyMultiple gave no result list")
        values: dict[tuple[str, str], Any | DeviceError] = {}
        for object_identifier, prop, _index, value in results:
            key = (object_key(object_identifier), property_name(prop))
            if isinstance(value, ErrorType) or value is None:
                code = str(getattr(value, "errorCode", "unreadable"))
                values[key] = property_error(self.device.id, f"{key[0]}/{key[1]}", code)
            else:
                values[key] = value
        return values

    async def subscribe_cov(self, object_id: str, process_id: int, lifetime: int, *, confirmed: bool = True) -> None:
        request = SubscribeCOVRequest(
            subscriberProcessIdentifier=process_id,
            monitoredObjectIdentifier=ObjectIdentifier(object_id),
            issueConfirmedNotifications=confirmed,
            lifetime=lifetime,
            destination=self.address,
        )
        await self._call(lambda: self.app.request(request))

    async def cancel_cov(self, object_id: str, process_id: int) -> None:
        """Cancel a COV subscription: a SubscribeCOV WITHOUT Issue Confirmed Notifications and Lifetime
        (clause 13.14.1). Not lifetime 0: that asks for a subscription that never lapses."""
        request = SubscribeCOVRequest(
            subscriberProcessIdentifier=process_id,
            monitoredObjectIdentifier=ObjectIdentifier(object_id),
            destination=self.address,
        )
        await self._call(lambda: self.app.request(request))

    async def event_information(self) -> list[Any]:
        """Every event summary the device reports, following GetEventInformation's paging."""
        summaries: list[Any] = []
        last: Any = None
        for _page in range(MAX_EVENT_PAGES):
            request = GetEventInformationRequest(destination=self.address)
            if last is not None:
                request.lastReceivedObjectIdentifier = last
            ack = await self._call(functools.partial(self.app.request, request))
            page = list(ack.listOfEventSummaries or [])
            summaries.extend(page)
            if not ack.moreEvents or not page:
                return summaries
            last = page[-1].objectIdentifier
        raise MalformedReply(self.device.id, "GetEventInformation keeps saying there are more events")

    async def acknowledge(self, object_id: str, state: Any, stamp: Any, source: str, now: datetime) -> None:
        """`now`: the time of acknowledgment as the device's naive local time (its clock has no zone)."""
        request = AcknowledgeAlarmRequest(
            acknowledgingProcessIdentifier=1,
            eventObjectIdentifier=ObjectIdentifier(object_id),
            eventStateAcknowledged=state,
            timeStamp=stamp,
            acknowledgmentSource=source,
            timeOfAcknowledgment=TimeStamp(dateTime=DateTime(now)),
            destination=self.address,
        )
        await self._call(lambda: self.app.request(request))

    async def write(self, object_id: str, prop: str, value: object, priority: int | None) -> None:
        datatype = property_type(object_id.split(",", maxsplit=1)[0], prop)
        if datatype is None:
            raise ConfigurationFault(self.device.id, f"{object_id}/{prop}: unknown property type")
        try:
            encoded = value if isinstance(value, datatype) else datatype(value)
        except (TypeError, ValueError) as exc:
            raise ConfigurationFault(self.device.id, f"{object_id}/{prop}: bad value {value!r}: {exc}") from None
        await self._call(lambda: self.app.write_property(self.address, object_id, prop, encoded, priority=priority))
