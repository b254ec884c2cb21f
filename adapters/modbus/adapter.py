"""The Modbus adapter: one poller per device, one link per bus, and verified writes."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Collection

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
        self._tuning = tuning or PollTuning()
        self._rng = random.Random(seed)
        self._log = structlog.get_logger("adapters.modbus").bind(site=site.site.id)
        self._devices: dict[str, ModbusDevice] = {d.id: d for d in site.devices if isinstance(d, ModbusDevice)}
        self.links: dict[str, ModbusLink] = {}
        self.pollers: list[DevicePoller] = []
        for index, device in enumerate(self._devices.values()):
            if device.bus_key not in self.links:
                self.links[device.bus_key] = self._link(device.bus_key)
            # Spread the devices' polls over the interval instead of sending every request at once.
            poller = self._poller(device, phase=device.poll_interval * index / len(self._devices))
            if poller is not None:
                self.pollers.append(poller)
        self._write_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # while running: the task group the pollers run in, their sink, and each device's poller task
        self._tg: asyncio.TaskGroup | None = None
        self._sink: ReadingSink | None = None
        self._tasks: dict[DevicePoller, asyncio.Task[None]] = {}

    def _link(self, bus_key: str) -> ModbusLink:
        """One link per bus, spaced by the largest inter_request_delay of the devices on it."""
        on_bus = [d for d in self._devices.values() if d.bus_key == bus_key]
        spacing = max(d.inter_request_delay for d in on_bus)
        return ModbusLink(bus_key, on_bus[0].model_copy(update={"inter_request_delay": spacing}))

    def _poller(self, device: ModbusDevice, *, phase: float) -> DevicePoller | None:
        points = [p for p in self._site.points_of(device.id) if isinstance(p.source, ModbusSource)]
        if not points:
            self._log.warning("modbus_device_without_points", device=device.id)
            return None
        return DevicePoller(
            device,
            points,
            self.links[device.bus_key],
            site_id=self._site.site.id,
            tuning=self._tuning,
            rng=random.Random(self._rng.random()),
            phase=phase,
        )

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
                self._tg, self._sink = tg, sink
                for poller in self.pollers:
                    self._start(poller)
                await asyncio.Event().wait()  # pollers come and go with reloads; the adapter runs until cancelled
        finally:
            self._tg, self._sink = None, None
            self._tasks.clear()
            for link in self.links.values():
                link.close()

    def _start(self, poller: DevicePoller) -> None:
        assert self._tg is not None and self._sink is not None
        task = self._tg.create_task(poller.run(self._sink), name=f"modbus-poll-{poller.device.id}")
        self._tasks[poller] = task

    async def _stop(self, poller: DevicePoller) -> None:
        task = self._tasks.pop(poller, None)
        while task is not None and not task.done():
            task.cancel()  # again if a cancel was swallowed inside the client library (Python 3.11)
            await asyncio.wait({task}, timeout=1.0)

    # --- reload (gateway/app/reload.py) ------------------------------------------------------------------

    async def reconfigure(self, site: SiteConfig, devices: Collection[str]) -> None:
        """Adopt `site`, restarting only the named devices (added, removed or changed) while the others keep
        polling. A device's bus is the unit: its devices share one link (a serial line, an RTU converter),
        so a bus with a touched device is stopped and started again with a fresh link; a TCP device is a bus
        of its own. Buses that did not exist yet start first (new before old: a point moved to a device on a
        new bus is read there before its old device stops), then the touched buses are rebuilt one by one,
        then the buses left without devices stop. A device's counters carry over."""
        old = self._devices
        self._site = site
        self._devices = {d.id: d for d in site.devices if isinstance(d, ModbusDevice)}
        touched = set(devices) & (set(old) | set(self._devices))
        if self._tg is None:  # not running: the next run starts from the new pollers
            self.links = {d.bus_key: self._link(d.bus_key) for d in self._devices.values()}
            self.pollers = [p for d in self._devices.values() if (p := self._poller(d, phase=0.0)) is not None]
            return
        buses = {old[d].bus_key for d in touched if d in old}
        buses |= {self._devices[d].bus_key for d in touched if d in self._devices}
        fresh = sorted(b for b in buses if b not in self.links)
        for bus in [*fresh, *sorted(buses - set(fresh))]:
            await self._rebuild_bus(bus)

    async def _rebuild_bus(self, bus: str) -> None:
        stats: dict[str, DeviceStats] = {}
        for poller in [p for p in self.pollers if p.device.bus_key == bus]:
            await self._stop(poller)
            stats[poller.device.id] = poller.stats
            self.pollers.remove(poller)
        link = self.links.pop(bus, None)
        if link is not None:
            link.close()
        on_bus = [d for d in self._devices.values() if d.bus_key == bus]
        if not on_bus:
            self._log.info("modbus_bus_stopped", bus=bus)
            return
        self.links[bus] = self._link(bus)
        for device in on_bus:
            started = self._poller(device, phase=0.0)
            if started is None:
                continue
            if device.id in stats:
                started.stats = stats[device.id]
            self.pollers.append(started)
            self._start(started)
        self._log.info("modbus_bus_restarted", bus=bus, devices=[d.id for d in on_bus])

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
