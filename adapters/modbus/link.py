"""One Modbus client per bus, one strictly serialised request queue, and error translation.

A serial line or an RTU-over-TCP converter carries one request at a time, whichever unit id it is for, so
every device on one `bus_key` shares this link: requests wait in FIFO order on one lock and are spaced by
`inter_request_delay`. A TCP device gets a link of its own, so its timeouts never delay another device.
pymodbus' results and exceptions are turned into `gateway.domain.errors` types here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from adapters.modbus.blocks import BIT_TABLES
from gateway.config.models import ModbusDevice
from gateway.domain.errors import (
    ConfigurationFault,
    DeviceBusy,
    DeviceError,
    DeviceRejected,
    DeviceTimeout,
    DeviceUnreachable,
    MalformedReply,
)

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "device failure",
    0x05: "acknowledge (busy with a long operation)",
    0x06: "device busy",
    0x07: "negative acknowledge",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}

_READ_FUNCTION = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}


def exception_error(device_id: str, code: int, what: str) -> DeviceError:
    """The typed error for a Modbus exception response, by the class the code belongs to."""
    message = f"{what}: exception {code:02X} ({EXCEPTION_NAMES.get(code, 'unknown')})"
    if code in (0x01, 0x02, 0x03):
        return ConfigurationFault(device_id, message, code)
    if code in (0x04, 0x05, 0x06, 0x07, 0x08):
        return DeviceBusy(device_id, message, code)
    if code in (0x0A, 0x0B):
        return DeviceUnreachable(device_id, message)
    return DeviceRejected(device_id, message, code)


def unavailable_reason(device: ModbusDevice, table: str, address: int, code: int | str | None) -> str:
    """Why a point is blind, in an installer's words, from the exception code of its read."""
    number = code if isinstance(code, int) else 0
    return (
        f"{table} {address} on device {device.id} (unit {device.unit_id}): the device answers exception"
        f" {number:02X} ({EXCEPTION_NAMES.get(number, 'unknown')})"
    )


class ModbusLink:
    """The client and request queue of one bus (or of one TCP device)."""

    def __init__(self, key: str, device: ModbusDevice) -> None:
        self.key = key
        self._lock = asyncio.Lock()
        self._last_done = float("-inf")
        self._spacing = device.inter_request_delay
        self._stream = device.transport != "tcp"  # RTU framing: replies carry no transaction id
        self._client = _make_client(device)
        self.requests = 0

    def close(self) -> None:
        self._client.close()

    async def read(self, device: ModbusDevice, table: str, address: int, count: int) -> list[int]:
        """Read `count` addresses of `table`; bits come back as 0/1."""
        what = f"read {table}:{address}+{count}"
        call = {
            "coil": self._client.read_coils,
            "discrete_input": self._client.read_discrete_inputs,
            "holding": self._client.read_holding_registers,
            "input": self._client.read_input_registers,
        }[table]
        reply = await self._request(device, what, lambda: call(address, count=count, device_id=device.unit_id))
        if reply.function_code != _READ_FUNCTION[table]:
            raise MalformedReply(device.id, f"{what}: reply has function code {reply.function_code}")
        bits = table in BIT_TABLES
        values: list[int] = [1 if b else 0 for b in reply.bits[:count]] if bits else list(reply.registers)
        if len(values) != count:
            raise MalformedReply(device.id, f"{what}: reply holds {len(values)} values")
        return values

    async def write_coil(self, device: ModbusDevice, address: int, value: bool) -> None:
        what = f"write coil:{address}={int(value)}"
        await self._request(device, what, lambda: self._client.write_coil(address, value, device_id=device.unit_id))

    async def write_register(self, device: ModbusDevice, address: int, value: int) -> None:
        what = f"write holding:{address}={value}"
        await self._request(
            device, what, lambda: self._client.write_register(address, value, device_id=device.unit_id)
        )

    async def _request(
        self, device: ModbusDevice, what: str, send: Callable[[], Awaitable[ModbusPDU]]
    ) -> Any:
        """Run one request alone on the bus, spaced from the previous one; translate the outcome."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            wait = self._last_done + self._spacing - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                self.requests += 1
                reply = await self._exchange(device, what, send)
            finally:
                self._last_done = loop.time()
        if isinstance(reply, ExceptionResponse) or reply.isError():
            raise exception_error(device.id, int(getattr(reply, "exception_code", 0)), what)
        return reply

    async def _exchange(
        self, device: ModbusDevice, what: str, send: Callable[[], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        self._client.ctx.comm_params.timeout_connect = device.timeout
        try:
            # pymodbus enforces the timeout itself; this outer bound only guards against a hang.
            async with asyncio.timeout(2 * device.timeout + 1.0):
                if not self._client.connected:
                    connected = await self._client.connect()
                    honour_swallowed_cancel()
                    if not connected:
                        raise DeviceUnreachable(device.id, f"{what}: cannot connect")
                reply = await send()
                honour_swallowed_cancel()
                return reply
        except TimeoutError as exc:
            self._reset()
            raise DeviceTimeout(device.id, f"{what}: no answer within {device.timeout:g}s") from exc
        except ConnectionException as exc:
            raise DeviceUnreachable(device.id, f"{what}: {exc}") from exc
        except ModbusIOException as exc:
            if "No response received" in str(exc):
                if self._stream:
                    # A late reply would otherwise be taken for the answer to the next request.
                    self._reset()
                raise DeviceTimeout(device.id, f"{what}: no answer within {device.timeout:g}s") from exc
            self._reset()
            raise MalformedReply(device.id, f"{what}: {exc}") from exc
        except ModbusException as exc:
            self._reset()
            raise MalformedReply(device.id, f"{what}: {exc}") from exc
        except OSError as exc:
            self._reset()
            raise DeviceUnreachable(device.id, f"{what}: {exc}") from exc

    def _reset(self) -> None:
        """Drop the connection (and anything still in flight on it); the next request reconnects."""
        self._client.close()


def honour_swallowed_cancel() -> None:
    """Re-raise a cancellation that a library call swallowed.

    pymodbus awaits `asyncio.wait_for`, which on Python 3.11 returns the result instead of raising when the
    cancellation arrives in the same loop iteration as the reply. The task then runs on as if never
    cancelled, and a TaskGroup waiting for it hangs forever (seen in tests under load). The request is
    still recorded on the task, so honour it here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _make_client(device: ModbusDevice) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
    # reconnect_delay=0: no background reconnect task inside pymodbus; the link reconnects on demand.
    # retries=0: one timeout is one failure; the poller decides about retrying.
    if device.transport == "serial":
        assert device.serial is not None
        line = device.serial
        return AsyncModbusSerialClient(
            line.port,
            framer=FramerType.RTU,
            baudrate=line.baudrate,
            bytesize=line.bytesize,
            parity=line.parity,
            stopbits=line.stopbits,
            timeout=device.timeout,
            retries=0,
            reconnect_delay=0,
        )
    assert device.host is not None
    return AsyncModbusTcpClient(
        device.host,
        port=device.port,
        framer=FramerType.RTU if device.transport == "rtu_over_tcp" else FramerType.SOCKET,
        timeout=device.timeout,
        retries=0,
        reconnect_delay=0,
    )
