"""Simulated Modbus devices of one building, generated from its site config, with the control API.

Every endpoint of the site (a Modbus TCP device, an RTU-over-TCP converter, a serial line) becomes one
`FaultyServer` on 127.0.0.1 with an OS-assigned port, serving one SimDevice per unit id. Serial lines are
served as RTU over TCP; `overlay()` tells the gateway where everything listens (and switches serial
devices to rtu_over_tcp), so neither tests nor the demo need fixed ports.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.config.models import ModbusDevice, ModbusSource, PointConfig, SiteConfig
from gateway.domain.values import RawValue
from simulators.control import Fault
from simulators.modbus.server import FaultyServer, RequestRecord
from simulators.truth import TruthLog

_FUNCTION = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}
_TABLES = ("coil", "discrete_input", "holding", "input")


def endpoint_key(device: ModbusDevice) -> tuple[str, str]:
    """Devices with the same key are served by one simulated endpoint (one TCP port)."""
    if device.transport == "serial" and device.serial is not None:
        return ("rtu", f"serial:{device.serial.port}")
    if device.transport == "rtu_over_tcp":
        return ("rtu", f"{device.host}:{device.port}")
    return ("tcp", f"{device.host}:{device.port}")


class ModbusSiteSimulator:
    """The site's Modbus devices on loopback; implements simulators.control.SiteSimulatorProtocol.

    `absent` names points whose registers the simulated device does not have (it answers exception 02
    for reads that touch them), to exercise configuration faults. With `truth`, every value it sets
    (`set_raw`, and so every control call) is also written to that log with its time (simulators/truth.py).
    """

    def __init__(self, site: SiteConfig, *, absent: Iterable[str] = (), truth: TruthLog | None = None) -> None:
        self.site = site
        self.truth = truth
        self.devices = {d.id: d for d in site.devices if isinstance(d, ModbusDevice)}
        self.points = {
            p.id: p for p in site.points if p.device in self.devices and isinstance(p.source, ModbusSource)
        }
        self._absent = set(absent)
        self._groups: dict[tuple[str, str], list[ModbusDevice]] = defaultdict(list)
        for device in self.devices.values():
            self._groups[endpoint_key(device)].append(device)
        self.servers: dict[tuple[str, str], FaultyServer] = {}

    # --- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            for key, devices in self._groups.items():
                server = FaultyServer([self._sim_device(d) for d in devices], rtu=key[0] == "rtu")
                self.servers[key] = server
                await server.serve_forever(background=True)
            for point in self.points.values():
                if point.kind == "state" and isinstance(point.normal[0], int) and point.id not in self._absent:
                    await self.set_raw(point.id, point.normal[0])
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        servers, self.servers = list(self.servers.values()), {}
        for server in servers:
            await server.stop()

    def overlay(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for device in self.devices.values():
            entry: dict[str, Any] = {"host": "127.0.0.1", "port": self.server(device.id).port}
            if device.transport == "serial":
                entry.update(transport="rtu_over_tcp", serial=None)
            devices[device.id] = entry
        return {"devices": devices}

    def endpoints(self) -> dict[str, tuple[str, int]]:
        """Where each device listens, for printing."""
        return {d: ("127.0.0.1", self.server(d).port) for d in self.devices}

    # --- control API -----------------------------------------------------------------------------------

    def has_point(self, point_id: str) -> bool:
        return point_id in self.points

    async def set_raw(self, point_id: str, value: RawValue) -> None:
        started = time.time()
        await self._write_raw(point_id, value)
        if self.truth is not None:
            self.truth.change(point_id, value, started)

    async def _write_raw(self, point_id: str, value: RawValue) -> None:
        point, src, server, unit = self._locate(point_id)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"point {point_id}: a Modbus raw value is an integer, not {value!r}")
        fc = _FUNCTION[src.table]
        if src.table in ("coil", "discrete_input"):
            await _set(server, unit, fc, src.address, [bool(value)])
            return
        if src.bit is None:
            await _set(server, unit, fc, src.address, [value & 0xFFFF])
            return
        mask = ((1 << src.width) - 1) << src.bit
        if not 0 <= value < (1 << src.width):
            raise ValueError(f"point {point.id}: {value} does not fit in {src.width} bit(s)")
        old = int((await _get(server, unit, fc, src.address))[0])
        await _set(server, unit, fc, src.address, [(old & ~mask) | (value << src.bit)])

    async def read_raw(self, point_id: str) -> RawValue:
        _, src, server, unit = self._locate(point_id)
        word = int((await _get(server, unit, _FUNCTION[src.table], src.address))[0])
        if src.table in ("coil", "discrete_input"):
            return 1 if word else 0
        if src.bit is None:
            return word
        return (word >> src.bit) & ((1 << src.width) - 1)

    async def raise_alarm(self, point_id: str) -> None:
        point = self._point(point_id)
        await self.set_raw(point_id, point.alarm[0] if point.kind == "state" else point.events[0].value)

    async def clear_alarm(self, point_id: str) -> None:
        point = self._point(point_id)
        await self.set_raw(point_id, point.normal[0] if point.kind == "state" else 0)

    async def inject(self, device_id: str, fault: Fault) -> None:
        server = self.server(device_id)
        unit = self.devices[device_id].unit_id
        if fault.kind == "none":
            server.faults.pop(unit, None)
            return
        if fault.kind not in ("silent", "exception", "drop", "slow"):
            raise ValueError(f"fault '{fault.kind}' does not apply to Modbus")
        server.faults[unit] = fault
        if fault.kind == "drop":
            server.drop_connections()

    async def flap(self, point_id: str, rate_hz: float, duration: float) -> None:
        """Toggle alarm/normal `rate_hz` times per second for `duration` s (on schedule); ends normal."""
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        loop = asyncio.get_running_loop()
        start, period, alarm, n = loop.time(), 1.0 / rate_hz, True, 0
        while (due := start + n * period) < start + duration:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await (self.raise_alarm(point_id) if alarm else self.clear_alarm(point_id))
            alarm, n = not alarm, n + 1
        await self.clear_alarm(point_id)

    # --- for tests and benchmarks ----------------------------------------------------------------------

    def server(self, device_id: str) -> FaultyServer:
        return self.servers[endpoint_key(self.devices[device_id])]

    def requests(self, device_id: str) -> list[RequestRecord]:
        """Requests the device's endpoint received for this device's unit id, oldest first."""
        unit = self.devices[device_id].unit_id
        return [r for r in self.server(device_id).requests if r.unit == unit]

    # --- internals -------------------------------------------------------------------------------------

    def _point(self, point_id: str) -> PointConfig:
        point = self.points.get(point_id)
        if point is None:
            raise KeyError(f"no simulated Modbus point '{point_id}'")
        return point

    def _locate(self, point_id: str) -> tuple[PointConfig, ModbusSource, FaultyServer, int]:
        point = self._point(point_id)
        assert isinstance(point.source, ModbusSource)
        return point, point.source, self.server(point.device), self.devices[point.device].unit_id

    def _sim_device(self, device: ModbusDevice) -> SimDevice:
        present: dict[str, set[int]] = {t: set() for t in _TABLES}
        missing: dict[str, set[int]] = {t: set() for t in _TABLES}
        for point in self.points.values():
            if point.device == device.id:
                src = point.source
                assert isinstance(src, ModbusSource)
                (missing if point.id in self._absent else present)[src.table].add(src.address)
        tables = [_sim_table(present[t], missing[t], bits=t in ("coil", "discrete_input")) for t in _TABLES]
        return SimDevice(id=device.unit_id, simdata=(tables[0], tables[1], tables[2], tables[3]))


def _sim_table(present: set[int], missing: set[int], *, bits: bool) -> list[SimData]:
    """Contiguous data from the lowest to the highest configured address (block reads may span gaps),
    minus the missing addresses."""
    datatype = DataType.BITS if bits else DataType.REGISTERS
    if bits:  # pymodbus validates bits per 16-bit word only: a missing bit cannot be simulated
        present, missing = present | missing, set()
    if not present and not missing:
        return [SimData(0, count=16, values=False, datatype=DataType.BITS)] if bits else [SimData(0)]
    everything = present | missing
    runs: list[SimData] = []
    run_start: int | None = None
    for address in range(min(everything), max(everything) + 2):
        inside = address <= max(everything) and address not in missing
        if inside and run_start is None:
            run_start = address
        elif not inside and run_start is not None:
            count = address - run_start
            runs.append(SimData(run_start, count=count, values=False if bits else 0, datatype=datatype))
            run_start = None
    return runs or [SimData(0)]  # every address missing: one invalid register


async def _get(server: FaultyServer, unit: int, fc: int, address: int) -> list[int] | list[bool]:
    result = await server.context.async_getValues(unit, fc, address, 1)
    if not isinstance(result, list):
        raise KeyError(f"unit {unit} has no address {address} for function {fc} ({result!r})")
    return result


async def _set(server: FaultyServer, unit: int, fc: int, address: int, values: list[int] | list[bool]) -> None:
    result = await server.context.async_setValues(unit, fc, address, values)
    if result is not None:
        raise KeyError(f"unit {unit} has no address {address} for function {fc} ({result!r})")


async def serve(site: SiteConfig, on_ready: Callable[[ModbusSiteSimulator], None] | None = None) -> None:
    """Run the site's simulated Modbus devices until cancelled (for `gcmk-gateway simulate`)."""
    simulator = ModbusSiteSimulator(site)
    await simulator.start()
    try:
        if on_ready is not None:
            on_ready(simulator)
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
