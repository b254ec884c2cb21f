"""A whole building's simulated devices: the Modbus and BACnet simulators behind one control API."""

from __future__ import annotations

from typing import Any

from gateway.config.models import BacnetDevice, ModbusDevice, SiteConfig
from gateway.domain.values import RawValue
from simulators.control import Fault, SiteSimulatorProtocol


class SiteSimulator:
    """Starts the simulators a site needs and routes each control call to the one that owns the point."""

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self._by_protocol: dict[str, SiteSimulatorProtocol] = {}
        if any(isinstance(d, ModbusDevice) for d in site.devices):
            from simulators.modbus_sim import ModbusSiteSimulator

            self._by_protocol["modbus"] = ModbusSiteSimulator(site)
        if any(isinstance(d, BacnetDevice) for d in site.devices):
            from simulators.bacnet_sim import BacnetSiteSimulator

            self._by_protocol["bacnet"] = BacnetSiteSimulator(site)
        self._parts = list(self._by_protocol.values())
        self._device_protocol = {d.id: d.protocol for d in site.devices}

    async def start(self) -> None:
        started: list[SiteSimulatorProtocol] = []
        try:
            for part in self._parts:
                await part.start()
                started.append(part)
        except BaseException:
            for part in reversed(started):
                await part.stop()
            raise

    async def stop(self) -> None:
        for part in reversed(self._parts):
            await part.stop()

    def overlay(self) -> dict[str, Any]:
        merged: dict[str, Any] = {"devices": {}}
        for part in self._parts:
            overlay = part.overlay()
            merged["devices"].update(overlay.get("devices", {}))
            merged.update({k: v for k, v in overlay.items() if k != "devices"})
        return merged

    def has_point(self, point_id: str) -> bool:
        return any(part.has_point(point_id) for part in self._parts)

    def _owner(self, point_id: str) -> SiteSimulatorProtocol:
        for part in self._parts:
            if part.has_point(point_id):
                return part
        raise KeyError(f"no simulated device serves point '{point_id}'")

    async def set_raw(self, point_id: str, value: RawValue) -> None:
        await self._owner(point_id).set_raw(point_id, value)

    async def raise_alarm(self, point_id: str) -> None:
        await self._owner(point_id).raise_alarm(point_id)

    async def clear_alarm(self, point_id: str) -> None:
        await self._owner(point_id).clear_alarm(point_id)

    async def flap(self, point_id: str, rate_hz: float, duration: float) -> None:
        await self._owner(point_id).flap(point_id, rate_hz, duration)

    async def read_raw(self, point_id: str) -> RawValue:
        return await self._owner(point_id).read_raw(point_id)

    async def inject(self, device_id: str, fault: Fault) -> None:
        await self._by_protocol[self._device_protocol[device_id]].inject(device_id, fault)
