"""The gateway's one local bacpypes3 application, and the services it answers itself.

bacpypes3's own COV client (`change_of_value`) renews subscriptions in a detached task whose failure
nobody sees, and it has no event-notification handlers at all. So this application routes COV and event
notifications to a `NotificationHandler` (the adapter) and acknowledges a confirmed notification only
after the handler returned, i.e. after the readings are journaled: if the gateway dies first, the device
gets no SimpleACK and retries. A retry of a notification already handled (or still being handled) gets
the original's answer and is not handled again (duplicates.py). When the handler failed (the gateway did
not accept the readings: NotAccepted), the notification gets no answer and bacpypes3's server transaction
for it is ended without a word: bacpypes3 would otherwise ignore the device's retries for its application
timeout (3 s), longer than a device with a short APDU timeout keeps retrying. The retry is then handled as
new, and the normaliser, which rolled the refused step back, sees the change again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from bacpypes3.apdu import SimpleAckPDU
from bacpypes3.app import Application
from bacpypes3.appservice import ABORTED, COMPLETED
from bacpypes3.errors import ServicesError
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.object import DeviceObject

from adapters.bacnet.duplicates import RecentRequests, request_key
from gateway.config.models import BacnetLocal
from gateway.domain.errors import NotAccepted

log = structlog.get_logger(__name__)


class NotificationHandler(Protocol):
    async def cov_notification(self, request: Any) -> bool:
        """Handle a COV notification; False when no subscription of ours matches."""

    async def event_notification(self, request: Any) -> None:
        """Handle an event notification; returns when its readings are journaled."""


class GatewayApplication(Application):  # type: ignore[misc]
    handler: NotificationHandler
    # bacpypes3 runs each incoming request on a task of its own; the adapter cancels the ones still
    # running when it stops, so no handler outlives it.
    inflight: set[asyncio.Task[Any]]
    recent: RecentRequests  # confirmed notifications handled lately, to recognise a device's retries

    async def _handle(self, apdu: Any, confirmed: bool, handle: Callable[[Any], Awaitable[Any]]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.inflight.add(task)
        try:
            if confirmed:
                known = await self._handle_once(apdu, handle)
            else:
                known = await self._run(apdu, handle)
        finally:
            self.inflight.discard(task)
        if known is None:  # the handler failed: no answer to a confirmed notification, the device retries
            if confirmed:
                self._forget_transaction(apdu)
            return
        if confirmed:
            if known is False:
                raise ServicesError("unknownSubscription")
            await self.response(SimpleAckPDU(context=apdu))

    async def _handle_once(self, apdu: Any, handle: Callable[[Any], Awaitable[Any]]) -> bool | None:
        """A retry of a confirmed notification gets the original's answer, without being handled again."""
        try:
            key = request_key(apdu)
        except Exception:  # cannot re-encode it: handle it, as before retries were recognised
            log.warning("bacnet.notification_not_encodable", source=str(apdu.pduSource))
            return await self._run(apdu, handle)
        earlier = self.recent.earlier(key)
        if earlier is not None:
            log.debug("bacnet.notification_retry", source=str(apdu.pduSource), invoke_id=apdu.apduInvokeID)
            await asyncio.wait([earlier])
            return None if earlier.cancelled() else earlier.result()
        outcome = self.recent.begin(key)
        try:
            known = await self._run(apdu, handle)
        except BaseException:
            self.recent.forget(key)
            outcome.cancel()
            raise
        outcome.set_result(known)
        return known

    async def _run(self, apdu: Any, handle: Callable[[Any], Awaitable[Any]]) -> bool | None:
        """The handler's result (False: no subscription of ours), None when it failed (logged)."""
        try:
            return await handle(apdu) is not False
        except NotAccepted as exc:  # the journal cannot be written: the device's retry offers it again
            log.warning("bacnet.notification_not_accepted", source=str(apdu.pduSource), error=str(exc))
            return None
        except Exception:
            log.exception("bacnet.notification_failed", source=str(apdu.pduSource))
            return None

    def _forget_transaction(self, apdu: Any) -> None:
        """End bacpypes3's server transaction of an unanswered request silently (see the module docstring)."""
        for ssm in list(self.asap.serverTransactions):
            if (
                ssm.invokeID == apdu.apduInvokeID
                and ssm.pdu_address == apdu.pduSource
                and ssm.state not in (COMPLETED, ABORTED)
            ):
                ssm.set_state(ABORTED)  # stops its timer and drops it; nothing is sent

    async def do_ConfirmedCOVNotificationRequest(self, apdu: Any) -> None:
        await self._handle(apdu, True, self.handler.cov_notification)

    async def do_UnconfirmedCOVNotificationRequest(self, apdu: Any) -> None:
        await self._handle(apdu, False, self.handler.cov_notification)

    async def do_ConfirmedEventNotificationRequest(self, apdu: Any) -> None:
        await self._handle(apdu, True, self.handler.event_notification)

    async def do_UnconfirmedEventNotificationRequest(self, apdu: Any) -> None:
        await self._handle(apdu, False, self.handler.event_notification)

    def close_quietly(self) -> None:
        """Close without leaving work behind: transaction timers would otherwise fire after the close, in
        detached tasks that fail sending on the closed socket ("Task exception was never retrieved")."""
        for ssm in [*self.asap.clientTransactions, *self.asap.serverTransactions]:
            ssm.stop_timer()
        for requests in list(self._requests.values()):
            for _apdu, future in list(requests):
                future.cancel()
        self.close()

    async def stop_handlers(self) -> None:
        """Cancel notification handlers still running (e.g. waiting for the journal) and wait for them."""
        tasks = [t for t in self.inflight if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def device_object_of(instance: int, model: str, apdu_timeout: float, apdu_retries: int = 0) -> DeviceObject:
    """The device object our BACnet applications present (the gateway's, discover's, check's).

    The plain (not bacpypes3.local) device object: the local one resolves every attribute through
    inspect.getattr_static, and the transaction layer reads six of them per request and notification."""
    return DeviceObject(
        objectIdentifier=("device", instance),
        objectName=f"{model}-{instance}",
        vendorIdentifier=999,
        vendorName="GCMK",
        modelName=model,
        systemStatus="operational",
        protocolVersion=1,
        protocolRevision=22,
        maxApduLengthAccepted=1476,
        segmentationSupported="segmented-both",
        maxSegmentsAccepted=16,
        apduSegmentTimeout=max(100, int(apdu_timeout * 1000)),
        apduTimeout=max(100, int(apdu_timeout * 1000)),
        numberOfApduRetries=apdu_retries,
    )


async def start_application(
    local: BacnetLocal, handler: NotificationHandler, *, apdu_timeout: float, apdu_retries: int = 0
) -> tuple[GatewayApplication, int]:
    """Build and bind the application inside the running loop; returns it and its bound UDP port.

    Port 0 is allowed (the OS chooses): bacpypes3 binds it, and the real port is read back from the socket.
    """
    device_object = device_object_of(local.device_instance, "gcmk-gateway", apdu_timeout, apdu_retries)
    network_port = NetworkPortObject(
        f"{local.address}:{local.port}", objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
    )
    app = GatewayApplication.from_object_list([device_object, network_port])
    app.handler = handler
    app.inflight = set()
    app.recent = RecentRequests()
    server = next(iter(app.link_layers.values())).server
    try:
        async with asyncio.timeout(10.0):
            # bacpypes3 retries a failing bind forever. Private, and no public replacement in 0.0.110: the
            # endpoint task is the only handle that both says "bound" and can be cancelled (close() does not
            # stop the retrying task); public `local_transport` is set by that task's callback, so polling it
            # would still leave the retry loop running after a failed start.
            await asyncio.gather(*server._transport_tasks)
    except BaseException:
        app.close()
        raise
    port = int(server.local_transport.get_extra_info("sockname")[1])
    if local.port == 0:
        server.local_address = (server.local_address[0], port)
    return app, port
