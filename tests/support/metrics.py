"""A stand-in for an adapter's DeviceMetrics, for exporter tests without devices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.core.ports import DeviceSnapshot


@dataclass
class StaticDevices:
    """Implements gateway.core.ports.DeviceMetrics over fixed snapshots."""

    protocol: str
    snapshots: Mapping[str, DeviceSnapshot]

    def device_metrics(self) -> Mapping[str, DeviceSnapshot]:
        return self.snapshots
