"""Small BACnet site configs, a gated ReadingSink and runners for the BACnet adapter tests and benchmark."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from adapters.bacnet import BacnetAdapter
from gateway.config.models import SiteConfig
from gateway.core.ports import Reading, ReadingSink
from gateway.testing import CollectingReadings
from simulators.bacnet_sim import BacnetSiteSimulator, free_udp_port


def bacnet_point(point_id: str, device: str, obj: str, **extra: Any) -> dict[str, Any]:
    """A point dict; the mapping defaults to a binary detector (active = burglary)."""
    point: dict[str, Any] = {
        "id": point_id,
        "name": f"point {point_id}",
        "device": device,
        "tenant": "jv",
        "zone": "z1",
        "type": "burglary",
        "source": {"protocol": "bacnet", "object": obj},
        "alarm": ["active"],
        "normal": ["inactive"],
    }
    point.update(extra)
    return point


def bacnet_site(
    devices: dict[str, dict[str, Any]],
    points: list[dict[str, Any]],
    *,
    offline_after: float = 10.0,
    overlay: dict[str, Any] | None = None,
) -> SiteConfig:
    """A site with BACnet devices (id -> extra device fields) and points; `overlay` as the simulator gives it."""
    overlay = overlay or {}
    device_list = []
    for index, (device_id, extra) in enumerate(devices.items()):
        device = {
            "protocol": "bacnet",
            "id": device_id,
            "name": f"device {device_id}",
            "address": "127.0.0.1",
            "port": 47900 + index,
            "device_instance": 1000 + index,
            "timeout": 0.5,
            "poll_interval": 0.2,
        }
        device.update(extra)
        device.update(overlay.get("devices", {}).get(device_id, {}))
        device_list.append(device)
    return SiteConfig.model_validate(
        {
            "version": 1,
            "site": {"id": "test-site", "name": "Test", "address": "Teststraat 1"},
            "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
            "zones": [{"id": "z1", "name": "Zone 1", "tenant": "jv"}],
            "mqtt": {"url": "mqtt://127.0.0.1:1883", "insecure": True},
            "supervision": {"device_offline_after": offline_after},
            "journal": {"data_dir": "/tmp/unused"},
            "bacnet": {"address": "127.0.0.1", "port": free_udp_port(), **overlay.get("bacnet", {})},
            "devices": device_list,
            "points": points,
        }
    )


class GatedSink(CollectingReadings):
    """Holds every reading that carries an event notification until the gate opens (a slow journal)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def submit(self, reading: Reading) -> None:
        if reading.notification is not None:
            await self.gate.wait()
        await super().submit(reading)


@asynccontextmanager
async def simulated(
    devices: dict[str, dict[str, Any]], points: list[dict[str, Any]], offline_after: float = 10.0, **sim_options: Any
) -> AsyncIterator[tuple[BacnetSiteSimulator, SiteConfig]]:
    """A running simulator for the devices and points, and the site config pointing at it."""
    sim = BacnetSiteSimulator(bacnet_site(devices, points), **sim_options)
    await sim.start()
    try:
        yield sim, bacnet_site(devices, points, overlay=sim.overlay(), offline_after=offline_after)
    finally:
        await sim.stop()


@asynccontextmanager
async def running(site: SiteConfig, sink: ReadingSink) -> AsyncIterator[BacnetAdapter]:
    """A BACnet adapter running (bound) for the block, cancelled and awaited after it."""
    adapter = BacnetAdapter(site)
    task = asyncio.create_task(adapter.run(sink))
    try:
        async with asyncio.timeout(10):
            await adapter.wait_ready()
        yield adapter
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
