"""A pymodbus SimDevice server with fault injection and a request log.

pymodbus' server answers every request from its SimDevice data; the only clean place to make it
misbehave per unit id is the per-connection request handler, so `FaultyServer` hands out a handler that
consults the unit's `Fault` before answering: stay silent, answer an exception code, drop the connection,
or answer late. It also records every request (time, unit, function, address, count) and how many were
being handled at once, so tests can check bus serialisation and retry behaviour from the device's side.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimDevice
from pymodbus.simulator.simcore import SimCore

from simulators.control import Fault

NO_FAULT = Fault("none")


@dataclass
class RequestRecord:
    """One request as the simulated device saw it (times from the event loop's clock)."""

    received: float
    unit: int
    function_code: int
    address: int
    count: int
    answered: float | None = None


class FaultyServer(ModbusTcpServer):
    """One TCP endpoint on 127.0.0.1 (OS-assigned port) serving one or more unit ids."""

    def __init__(self, devices: list[SimDevice], *, rtu: bool) -> None:
        super().__init__(
            devices, framer=FramerType.RTU if rtu else FramerType.SOCKET, address=("127.0.0.1", 0)
        )
        self.rtu = rtu
        self.faults: dict[int, Fault] = {}
        self.requests: deque[RequestRecord] = deque(maxlen=20_000)
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections_made = 0
        self.pending: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        sockets = getattr(self.transport, "sockets", None)
        if not sockets:
            raise RuntimeError("server not listening")
        return int(sockets[0].getsockname()[1])

    def callback_new_connection(self) -> ServerRequestHandler:
        return _FaultyHandler(self)

    def drops(self) -> bool:
        return any(f.kind == "drop" for f in self.faults.values())

    def drop_connections(self) -> None:
        for connection in list(self.active_connections.values()):
            connection.close()

    async def stop(self) -> None:
        for task in list(self.pending):
            task.cancel()
        await self.shutdown()  # type: ignore[no-untyped-call]


class _FaultyHandler(ServerRequestHandler):
    """Answers one connection's requests, unless the addressed unit has a fault injected."""

    def __init__(self, owner: FaultyServer) -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)  # type: ignore[no-untyped-call]
        self.owner = owner

    def callback_connected(self) -> None:
        super().callback_connected()
        self.owner.connections_made += 1
        if self.owner.drops():
            self.loop.call_soon(self.close)

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is None:
            return
        owner = self.owner
        task = asyncio.current_task()
        if task is not None:
            owner.pending.add(task)
        record = RequestRecord(
            self.loop.time(), pdu.dev_id, pdu.function_code, getattr(pdu, "address", 0), getattr(pdu, "count", 1)
        )
        owner.requests.append(record)
        owner.in_flight += 1
        owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            response = await self._answer(pdu, owner.faults.get(pdu.dev_id, NO_FAULT))
            if response is None:
                return
            response.transaction_id = pdu.transaction_id
            response.dev_id = pdu.dev_id
            record.answered = self.loop.time()
            self.server_send(response, addr)  # type: ignore[no-untyped-call]
        finally:
            owner.in_flight -= 1
            if task is not None:
                owner.pending.discard(task)

    async def _answer(self, pdu: ModbusPDU, fault: Fault) -> ModbusPDU | None:
        if fault.kind == "silent":
            return None
        if fault.kind == "drop":
            self.close()
            return None
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        if fault.kind == "exception":
            return ExceptionResponse(pdu.function_code, fault.code if fault.code is not None else 4)
        context = self.owner.context
        if isinstance(context, SimCore) and pdu.dev_id not in context.devices:
            # An RTU unit that is not there stays silent; a Modbus TCP gateway says "target absent".
            return None if self.owner.rtu else ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        try:
            response: ModbusPDU = await pdu.datastore_update(context, pdu.dev_id)  # type: ignore[arg-type]
        except Exception:
            return ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        return response
