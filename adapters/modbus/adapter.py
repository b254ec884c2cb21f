"""The Modbus adapter: one poller per device, one link per bus, and verified writes."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import structlog

from adapters.modbus.link import ModbusLink
from adapters.modbus.poller import DevicePoller, PollTuning
from adapters.modbus.stats import DeviceStats
from gateway.config.models import ModbusDevice, ModbusSource, SiteConfig
from gateway.core.ports import DeviceSnapshot, ReadingSink
from gateway.domain.errors import ConfigurationFault, VerificationFailed


class ModbusAdapter:
    """Polls every Modbus device of a site and hands changed readings to a `ReadingSink`.

    TCP devices are polled concurrently, each over its own connection. Devices sharing a `bus_key`
    (a serial line or an RTU-over-TCP converter) share one `ModbusLink`: one client and one strictly
    serialised request queue, which writes go through as well.
    """

    name = "modbus"
    protocol = "modbus"

    def __init__(self, site: SiteConfig, *, tuning: PollTuning | None = None, seed: int | None = None) -> None:
        self._site = site
        rng = random.Random(seed)
        self._devices: dict[str, ModbusDevice] = {d.id: d for d in site.devices if isinstance(d, ModbusDevice)}
        self.links: dict[str, ModbusLink] = {}
        for device in self._devices.values():
            if device.bus_key not in self.links:
                on_bus = [d for d in self._devices.values() if d.bus_key == device.bus_key]
                spacing = max(d.inter_request_delay for d in on_bus)
                self.links[device.bus_key] = ModbusLink(
                    device.bus_key, device.model_copy(update={"inter_request_delay": spacing})
                )
        self.pollers: list[DevicePoller] = []
        self._log = structlog.get_logger("adapters.modbus").bind(site=site.site.id)
        for index, device in enumerate(self._devices.values()):
            points = [p for p in site.points_of(device.id) if isinstance(p.source, ModbusSource)]
            if not points:
                self._log.warning("modbus_device_without_points", device=device.id)
                continue
            self.pollers.append(
                DevicePoller(
                    device,
                    points,
                    self.links[device.bus_key],
                    site_id=site.site.id,
                    tuning=tuning or PollTuning(),
                    rng=random.Random(rng.random()),
                    # Spread the devices' polls over the interval instead of sending every request at once.
                    phase=device.poll_interval * index / len(self._devices),
                )
            )
        self._write_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def stats(self) -> dict[str, DeviceStats]:
        """Counters per device id (polls, overruns, errors by class, poll durations)."""
        return {p.device.id: p.stats for p in self.pollers}

    def device_metrics(self) -> dict[str, DeviceSnapshot]:
        """gateway.core.ports.DeviceMetrics: polls, failed polls, overruns, lateness, errors, durations."""
        return {p.device.id: p.stats.snapshot() for p in self.pollers}

    async def run(self, sink: ReadingSink) -> None:
        self._log.info("modbus_adapter_start", devices=len(self.pollers), buses=len(self.links))
        try:
            async with asyncio.TaskGroup() as tg:
                for poller in self.pollers:
                    tg.create_task(poller.run(sink), name=f"modbus-poll-{poller.device.id}")
        finally:
            for link in self.links.values():
                link.close()

    # --- writes (commands) ---------------------------------------------------------------------------

    async def write(self, point_id: str, value: int) -> None:
        """Set a point to `value` (coil, holding register, or bit-field by read-modify-write), verified.

        Raises ValueError for a value that does not fit the point, ConfigurationFault for a point that is
        not writable, VerificationFailed when the read-back differs, or the device errors of a read.
        """
        point = next((p for p in self._site.points if p.id == point_id), None)
        if point is None or not isinstance(point.source, ModbusSource) or point.device not in self._devices:
            raise KeyError(f"no Modbus point '{point_id}'")
        src = point.source
        device = self._devices[point.device]
        if src.table == "coil":
            if value not in (0, 1):
                raise ValueError(f"point {point_id}: a coil takes 0 or 1, not {value}")
            await self.write_coil(device.id, src.address, bool(value))
        elif src.table != "holding":
            raise ConfigurationFault(device.id, f"point {point_id}: {src.ref} is read-only", None)
        elif src.bit is None:
            await self.write_register(device.id, src.address, value)
        else:
            await self._write_field(device, src, value)

    async def write_coil(self, device_id: str, address: int, value: bool) -> None:
        device, link = self._target(device_id)
        async with self._write_locks[device_id]:
            await link.write_coil(device, address, value)
            back = (await link.read(device, "coil", address, 1))[0]
        if back != int(value):
            raise VerificationFailed(device_id, f"wrote coil:{address}={int(value)}, read back {back}")

    async def write_register(self, device_id: str, address: int, value: int) -> None:
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"a register holds 0..65535, not {value}")
        device, link = self._target(device_id)
        async with self._write_locks[device_id]:
            await link.write_register(device, address, value)
            back = (await link.read(device, "holding", address, 1))[0]
        if back != value:
            raise VerificationFailed(device_id, f"wrote holding:{address}={value}, read back {back}")

    async def _write_field(self, device: ModbusDevice, src: ModbusSource, value: int) -> None:
        assert src.bit is not None
        mask = ((1 << src.width) - 1) << src.bit
        if not 0 <= value < (1 << src.width):
            raise ValueError(f"{src.ref} is {src.width} bit(s) wide: {value} does not fit")
        _, link = self._target(device.id)
        async with self._write_locks[device.id]:
            old = (await link.read(device, "holding", src.address, 1))[0]
            new = (old & ~mask) | (value << src.bit)
            await link.write_register(device, src.address, new)
            back = (await link.read(device, "holding", src.address, 1))[0]
        if (back & mask) >> src.bit != value:
            raise VerificationFailed(device.id, f"wrote {src.ref}={value}, read back {(back & mask) >> src.bit}")

    def _target(self, device_id: str) -> tuple[ModbusDevice, ModbusLink]:
        device = self._devices.get(device_id)
        if device is None:
            raise KeyError(f"no Modbus device '{device_id}'")
        return device, self.links[device.bus_key]
