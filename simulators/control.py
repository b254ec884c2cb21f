"""The control API every simulated building offers to tests and the demo, whatever the protocol.

Points are addressed by their site-config id, devices by their device id; the simulator knows from the
site config which register, bit or BACnet object that means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.domain.values import RawValue


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault to inject into one simulated device. `kind`:
    - "none": behave normally again
    - "silent": stop answering (requests time out / datagrams dropped)
    - "exception": answer every request with exception/error `code` (Modbus exception code)
    - "drop": drop connections as they come (Modbus TCP)
    - "slow": answer after `delay` seconds
    - "refuse_cov": refuse COV subscriptions (BACnet)
    """

    kind: str
    code: int | None = None
    delay: float = 0.0


class SiteSimulatorProtocol(Protocol):
    async def start(self) -> None:
        """Bind every simulated device to 127.0.0.1 on an OS-assigned port."""

    async def stop(self) -> None: ...

    def overlay(self) -> dict[str, Any]:
        """The overlay document that points the gateway at the simulated devices (see loader)."""

    def has_point(self, point_id: str) -> bool: ...

    async def set_raw(self, point_id: str, value: RawValue) -> None:
        """Set a point's raw value exactly as the device would hold it."""

    async def raise_alarm(self, point_id: str) -> None:
        """Set the point to its first configured alarm value (momentary: its first event value)."""

    async def clear_alarm(self, point_id: str) -> None:
        """Set the point to its first configured normal value."""

    async def inject(self, device_id: str, fault: Fault) -> None: ...

    async def flap(self, point_id: str, rate_hz: float, duration: float) -> None:
        """Toggle the point between alarm and normal at `rate_hz` for `duration` seconds."""

    async def read_raw(self, point_id: str) -> RawValue:
        """What the device holds now (e.g. to verify a write)."""
