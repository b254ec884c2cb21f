"""A read-only BACnet application for `gcmk-gateway discover`: hears every I-Am, may register at a BBMD.

The gateway's own application (app.py) answers notifications for a running adapter; discovery needs the
same stack with two differences: every I-Am that arrives is kept (bacpypes3's `who_is` keeps only the ones
matching its request, so a device answering from another address, or devices behind a router at the target
address, would be lost), and the network port may be a foreign device registered at a BBMD, so that a
broadcast Who-Is reaches a remote IP subnet. New module, so the gateway's own application is unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bacpypes3.basetypes import HostNPort
from bacpypes3.local.networkport import NetworkPortObject

from adapters.bacnet.app import GatewayApplication, device_object_of
from adapters.bacnet.duplicates import RecentRequests

DISCOVERY_DEVICE_INSTANCE = 4_194_301  # the discovering tool's own device id (not the gateway's default)


class _NoSubscriptions:
    """Discovery subscribes to nothing: a COV notification is not ours, an event notification is ignored."""

    async def cov_notification(self, request: Any) -> bool:
        return False

    async def event_notification(self, request: Any) -> None:
        return None


class DiscoveryApplication(GatewayApplication):
    """Keeps every I-Am it hears, in arrival order, besides answering bacpypes3's own Who-Is futures."""

    heard: list[Any]
    heard_event: asyncio.Event

    async def do_IAmRequest(self, apdu: Any) -> None:
        self.heard.append(apdu)
        self.heard_event.set()
        await super().do_IAmRequest(apdu)


async def start_discovery_application(
    address: str,
    port: int,
    *,
    apdu_timeout: float,
    bbmd: str | None = None,
    ttl: int = 60,
    device_instance: int = DISCOVERY_DEVICE_INSTANCE,
) -> tuple[DiscoveryApplication, int]:
    """Bind a discovery application on `address` (`ip` or `ip/prefix`) and `port` (0: the OS chooses).

    With `bbmd` ('host' or 'host:port') it is a foreign device that registers there for `ttl` seconds
    (renewed by bacpypes3) and sends its broadcasts through the BBMD. Returns it and its bound UDP port.
    """
    device_object = device_object_of(device_instance, "gcmk-discover", apdu_timeout)
    extra: dict[str, Any] = {}
    if bbmd is not None:
        extra = {
            "bacnetIPMode": "foreign",
            "fdBBMDAddress": HostNPort(bbmd if ":" in bbmd else f"{bbmd}:47808"),
            "fdSubscriptionLifetime": ttl,
        }
    network_port = NetworkPortObject(
        f"{address}:{port}", objectIdentifier=("network-port", 1), objectName="NetworkPort-1", **extra
    )
    app = DiscoveryApplication.from_object_list([device_object, network_port])
    app.handler = _NoSubscriptions()
    app.inflight = set()
    app.recent = RecentRequests()
    app.heard = []
    app.heard_event = asyncio.Event()
    server = next(iter(app.link_layers.values())).server
    try:
        async with asyncio.timeout(10.0):
            # As in app.start_application: the endpoint task is the only handle that says "bound" (private in
            # bacpypes3 0.0.110, no public replacement) and bacpypes3 otherwise retries a failing bind forever.
            await asyncio.gather(*server._transport_tasks)
    except BaseException:
        app.close()
        raise
    bound = int(server.local_transport.get_extra_info("sockname")[1])
    if port == 0:
        server.local_address = (server.local_address[0], bound)
    return app, bound


async def registration_result(app: DiscoveryApplication, within: float) -> int | None:
    """The BBMD's answer to the foreign-device registration: 0 registered, another BVLC result code for a
    refusal, None when no answer came `within` seconds (bacpypes3 keeps the status on the link layer)."""
    link_layer = next(iter(app.link_layers.values()))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        status = getattr(link_layer, "bbmdRegistrationStatus", None)
        if isinstance(status, int) and status >= 0:
            return status
        await asyncio.sleep(0.05)  # bacpypes3 offers no event for it; a tool's short poll, not a test's wait
    return None
