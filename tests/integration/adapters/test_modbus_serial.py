"""The Modbus adapter on a real serial line: RTU through pyserial over a pseudo-terminal pair (socat).

Everywhere else `transport: serial` is turned into RTU over TCP by the simulator's overlay; here the gateway's
`AsyncModbusSerialClient` opens a tty and pymodbus' stock `ModbusSerialServer` (RTU framer) answers on the other
end, as a panel on an RS-485 bus would: several unit ids on one line, so one `ModbusLink` must put one
request at a time on it. The server records every request and reply it sees (`trace_pdu`), which is how the
tests see the line from the devices' side.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymodbus import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from adapters.modbus import ModbusAdapter
from gateway.testing import CollectingReadings, wait_until
from tests.support.modbus_site import device, point, running, site_doc, site_of
from tests.support.serial_line import serial_line

BAUD = 19200
SPACING = 0.005  # inter_request_delay: RTU wants >= 3.5 character times of silence between frames
UNITS = {"intrusion": 1, "fire": 2}  # device id -> unit id, both on the one line
COIL, DISCRETE_INPUT, HOLDING = 1, 2, 3  # function codes of async_setValues


@dataclass(frozen=True)
class Seen:
    """One PDU as the serial server saw it: a request it decoded or a reply it sent."""

    at: float
    reply: bool
    unit: int
    function_code: int


@dataclass
class SerialDevices:
    """Two units behind pymodbus' serial server on the device end of the line; restartable (comm loss)."""

    port: Path
    seen: list[Seen] = field(default_factory=list)
    server: ModbusSerialServer | None = None

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        self.seen.append(Seen(asyncio.get_running_loop().time(), sending, pdu.dev_id, pdu.function_code))
        return pdu

    async def start(self) -> None:
        def unit(unit_id: int) -> SimDevice:
            bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
            registers = [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)]
            return SimDevice(id=unit_id, simdata=(bits, bits, registers, registers))

        self.server = ModbusSerialServer(
            [unit(u) for u in UNITS.values()],
            framer=FramerType.RTU,
            port=str(self.port),
            baudrate=BAUD,
            trace_pdu=self._trace,
        )
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def set(self, unit: int, function_code: int, address: int, value: int) -> None:
        assert self.server is not None
        await self.server.async_setValues(unit, function_code, address, [value])

    def requests(self) -> int:
        return sum(1 for s in self.seen if not s.reply)


@asynccontextmanager
async def line_with_devices(tmp_path: Path) -> AsyncIterator[tuple[SerialDevices, Any]]:
    async with serial_line(tmp_path) as (device_end, gateway_end):
        devices = SerialDevices(device_end)
        await devices.start()
        try:
            serial = {"port": str(gateway_end), "baudrate": BAUD}
            doc = site_doc(
                [
                    device(name, transport="serial", serial=serial, unit_id=unit, poll_interval=0.2, timeout=0.15,
                           inter_request_delay=SPACING, offline_after_failures=2)
                    for name, unit in UNITS.items()
                ],
                [
                    point("intrusion-pir", "intrusion", "coil", 3),
                    point("intrusion-tamper", "intrusion", "discrete_input", 5, type="tamper"),
                    point("fire-smoke", "fire", "coil", 3, type="fire"),
                    point("fire-loop", "fire", "holding", 10, bit=2, type="fire_trouble"),
                ],
            )
            yield devices, site_of(doc)
        finally:
            await devices.stop()


POINTS = ("intrusion-pir", "intrusion-tamper", "fire-smoke", "fire-loop")


async def test_two_units_on_one_serial_line_one_request_at_a_time(tmp_path: Path) -> None:
    async with line_with_devices(tmp_path) as (devices, site):
        adapter = ModbusAdapter(site)
        assert len(adapter.links) == 1, "both units share the one line"
        sink = CollectingReadings()
        async with running(lambda: adapter.run(sink)):
            await sink.wait_for(lambda: all(sink.good_value(p) == 0 for p in POINTS))
            await devices.set(1, COIL, 3, 1)
            await devices.set(1, DISCRETE_INPUT, 5, 1)
            await devices.set(2, COIL, 3, 1)
            await devices.set(2, HOLDING, 10, 1 << 2)
            await sink.wait_for(lambda: all(sink.good_value(p) == 1 for p in POINTS))
            # A write (a command) goes through the same queue as the polls, and is verified by reading back.
            await adapter.write_coil("fire", 7, True)
            await wait_until(lambda: devices.requests() >= 40, timeout=20)
        seen = list(devices.seen)
    assert sorted((s.device_id, s.online) for s in sink.statuses) == [("fire", True), ("intrusion", True)]
    assert {s.unit for s in seen} == set(UNITS.values())
    assert any(s.function_code == 5 and s.unit == 2 for s in seen), "the write went over the line"
    # Never two requests on the line at once: each request is followed by its own reply before the next one
    # arrives (the server may see one last request whose reply the stopped adapter no longer waited for).
    complete = seen if seen[-1].reply else seen[:-1]
    assert [s.reply for s in complete] == [False, True] * (len(complete) // 2), complete[:10]
    exchanges = list(zip(complete[::2], complete[1::2], strict=True))
    for request, reply in exchanges:
        assert (reply.unit, reply.function_code) == (request.unit, request.function_code)
    for (_, reply), (request, _) in itertools.pairwise(exchanges):
        assert request.at - reply.at >= SPACING * 0.9, "requests are spaced by inter_request_delay"


async def test_comm_loss_on_the_serial_line_and_return(tmp_path: Path) -> None:
    async with line_with_devices(tmp_path) as (devices, site):
        adapter = ModbusAdapter(site)
        sink = CollectingReadings()
        async with running(lambda: adapter.run(sink)):
            await sink.wait_for(lambda: all(sink.good_value(p) == 0 for p in POINTS))
            await devices.stop()  # the panel is switched off: nothing answers on the line any more
            await sink.wait_for(
                lambda: {s.device_id for s in sink.statuses if not s.online} == set(UNITS), within=15
            )
            assert all(p.stats.snapshot().errors for p in adapter.pollers), "timeouts counted per device"
            await devices.start()  # and on again
            await sink.wait_for(lambda: sum(s.online for s in sink.statuses) == 2 * len(UNITS), within=15)
            await devices.set(2, COIL, 3, 1)
            await sink.wait_for(lambda: sink.good_value("fire-smoke") == 1)
    for name in UNITS:
        assert [s.online for s in sink.statuses if s.device_id == name] == [True, False, True], name
