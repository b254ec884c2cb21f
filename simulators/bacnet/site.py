"""Every BACnet device of a site, simulated on loopback, behind the common simulator control API."""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config.models import BacnetDevice, PointConfig, SiteConfig
from gateway.domain.values import RawValue
from simulators.bacnet.device import SimDevice
from simulators.control import Fault


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A port the OS has just handed out (for the gateway's own BACnet application)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BacnetSiteSimulator:
    """Implements simulators.control.SiteSimulatorProtocol for the site's BACnet devices.

    Each device is its own bacpypes3 application on 127.0.0.1 with an OS-assigned UDP port (bacpypes3
    short-circuits any 127.x destination on an application's own port, so ports must all differ).
    Event notifications go to the recipient in each device's notification class: the gateway address of
    `overlay()["bacnet"]`, chosen here, as an integrator commissions a panel with the gateway's address.
    """

    def __init__(
        self, site: SiteConfig, *, gateway_port: int | None = None, event_reporting: bool = True, **device_options: Any
    ) -> None:
        """`event_reporting=False`: no recipient, so no event notifications (COV and reads only).
        `device_options` go to every SimDevice (page_size, priorities, ack_required, confirmed_notifications,
        segmentation, max_in_flight, apdu_timeout, zone, utc_offset, daylight_savings_status). Each device's
        clock runs on its configured time zone (the device's timezone:, else the site's) unless `zone` is given.
        """
        self.site = site
        self.event_reporting = event_reporting
        self.gateway_port = gateway_port or free_udp_port()
        self._options = device_options
        self.devices: dict[str, SimDevice] = {}
        self._points: dict[str, PointConfig] = {
            p.id: p for p in site.points if isinstance(site.device(p.device), BacnetDevice)
        }
        self._flaps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for device in self.site.devices:
            if isinstance(device, BacnetDevice):
                recipient = ("127.0.0.1", self.gateway_port) if self.event_reporting else None
                options = {"zone": ZoneInfo(device.timezone or self.site.site.timezone), **self._options}
                sim = SimDevice(device, self.site.points_of(device.id), recipient, **options)
                await sim.start()
                self.devices[device.id] = sim

    async def stop(self) -> None:
        for task in self._flaps:
            task.cancel()
        await asyncio.gather(*self._flaps, return_exceptions=True)
        for sim in self.devices.values():
            sim.stop()
        self.devices.clear()

    def overlay(self) -> dict[str, Any]:
        return {
            "devices": {dev_id: {"address": "127.0.0.1", "port": sim.port} for dev_id, sim in self.devices.items()},
            "bacnet": {"address": "127.0.0.1", "port": self.gateway_port},
        }

    def has_point(self, point_id: str) -> bool:
        return point_id in self._points

    def _device_of(self, point_id: str) -> tuple[SimDevice, PointConfig]:
        point = self._points[point_id]
        return self.devices[point.device], point

    async def set_raw(self, point_id: str, value: RawValue) -> None:
        sim, point = self._device_of(point_id)
        sim.set_raw(point, value)

    async def present_credential(self, point_id: str, access_event: str, credential: int) -> None:
        """An access-point occurrence: `access_event` (e.g. 'granted') for credential `credential`."""
        sim, point = self._device_of(point_id)
        sim.set_raw(point, access_event, credential=credential)
        await asyncio.sleep(0)  # let bacpypes3's COV detection (call_soon) report this occurrence on its own

    async def notify_cov(self, point_id: str, process_id: int) -> str:
        """A confirmed COV notification of the point's object to the gateway under `process_id` (as from a
        subscription an earlier gateway run left); 'ack' or the gateway's error code."""
        sim, point = self._device_of(point_id)
        return await sim.notify_cov(point, process_id, ("127.0.0.1", self.gateway_port))

    async def raise_alarm(self, point_id: str) -> None:
        point = self._points[point_id]
        await self.set_raw(point_id, point.alarm[0] if point.kind == "state" else point.events[0].value)

    async def clear_alarm(self, point_id: str) -> None:
        point = self._points[point_id]
        if point.kind == "state":
            await self.set_raw(point_id, point.normal[0])

    async def inject(self, device_id: str, fault: Fault) -> None:
        """none, silent (drop all traffic), refuse_cov, slow (answers leave `delay` late), exception (every
        confirmed request answered with device error `operational-problem`; BACnet has no numeric codes)."""
        sim = self.devices[device_id]
        if fault.kind == "none":
            sim.silent = sim.refuse_cov = False
            sim.delay = 0.0
            sim.error_code = None
        elif fault.kind == "silent":
            sim.silent = True
        elif fault.kind == "refuse_cov":
            sim.refuse_cov = True
        elif fault.kind == "slow":
            sim.delay = fault.delay
        elif fault.kind == "exception":
            sim.error_code = "operational-problem"
        else:
            raise ValueError(f"the BACnet simulator cannot inject {fault.kind!r}")

    async def flap(self, point_id: str, rate_hz: float, duration: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        alarm = True
        while loop.time() < end:
            await (self.raise_alarm(point_id) if alarm else self.clear_alarm(point_id))
            alarm = not alarm
            await asyncio.sleep(1.0 / rate_hz)
        await self.clear_alarm(point_id)

    async def read_raw(self, point_id: str) -> RawValue:
        sim, point = self._device_of(point_id)
        return sim.read_raw(point)

    def acked_transitions(self, point_id: str) -> tuple[bool, bool, bool]:
        """The device's acked-transitions bits (to-offnormal, to-fault, to-normal) of the point's object."""
        sim, point = self._device_of(point_id)
        record = sim.events[sim.object_of(point).objectIdentifier]
        return (bool(record.acked[0]), bool(record.acked[1]), bool(record.acked[2]))
