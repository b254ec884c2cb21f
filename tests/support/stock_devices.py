"""Devices written with the libraries' stock classes only (not our simulators), for tests of the tools and of
blind points: a plain bacpypes3 application and a plain pymodbus server with a gap in its address range."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bacpypes3.app import Application
from bacpypes3.basetypes import Destination, DeviceAddress, EventTransitionBits, Recipient
from bacpypes3.local.binary import BinaryInputObject, BinaryInputObjectIR
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.local.object import Object as LocalObject
from bacpypes3.object import NotificationClassObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.bacnet_sim import free_udp_port


@asynccontextmanager
async def stock_bacnet(instance: int, inputs: dict[int, str], *extra: Any) -> AsyncIterator[tuple[Application, int]]:
    """A stock bacpypes3 device with binary inputs (instance -> present value) and `extra` objects; yields the
    application (add objects to it at runtime with `add_object`) and its UDP port."""
    port = free_udp_port()
    objects: list[Any] = [
        DeviceObject(objectIdentifier=("device", instance), objectName=f"stock-{instance}", vendorIdentifier=999),
        NetworkPortObject(f"127.0.0.1:{port}", objectIdentifier=("network-port", 1), objectName="np"),
        *(
            BinaryInputObject(objectIdentifier=("binary-input", i), objectName=f"bi-{i}", presentValue=value)
            for i, value in inputs.items()
        ),
        *extra,
    ]
    app = Application.from_object_list(objects)
    try:
        yield app, port
    finally:
        app.close()


def binary_input(instance: int, value: str = "inactive") -> BinaryInputObject:
    return BinaryInputObject(
        objectIdentifier=("binary-input", instance), objectName=f"bi-{instance}", presentValue=value
    )


@asynccontextmanager
async def stock_modbus(inputs: int = 16, unit: int = 1) -> AsyncIterator[tuple[ModbusTcpServer, int]]:
    """A stock pymodbus server with discrete inputs and coils 0 .. `inputs`-1 (SimData counts bits for
    DataType.BITS) and 8 registers, all 0; an address beyond them is answered with exception 02
    (pymodbus 3.16 fills gaps between SimData blocks, so only the end of a table is a real hole). Yields the
    server (flip a bit with `async_setValues(unit, 2, address, [True])`) and its TCP port."""
    bits = [SimData(0, count=inputs, values=False, datatype=DataType.BITS)]
    registers = [SimData(0, count=8, values=0, datatype=DataType.REGISTERS)]
    device = SimDevice(id=unit, simdata=(bits, bits, registers, registers))
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        yield server, int(server.transport.sockets[0].getsockname()[1])
    finally:
        await server.shutdown()


class NotificationClass(LocalObject, NotificationClassObject):  # type: ignore[misc]
    """bacpypes3's notification class with its local-object behaviour (no class of its own in bacpypes3.local)."""


def notification_class(number: int, recipient: tuple[str, int] | int) -> NotificationClass:
    """A notification class whose recipient list names one address (host, port) or one device instance."""
    if isinstance(recipient, int):
        who = Recipient(device=ObjectIdentifier(("device", recipient)))
    else:
        mac = Address(f"{recipient[0]}:{recipient[1]}").addrAddr
        who = Recipient(address=DeviceAddress(networkNumber=0, macAddress=mac))
    destination = Destination(
        validDays=[1] * 7,
        fromTime=(0, 0, 0, 0),
        toTime=(23, 59, 59, 99),
        recipient=who,
        processIdentifier=1,
        issueConfirmedNotifications=True,
        transitions=[1, 1, 1],
    )
    return NotificationClass(
        objectIdentifier=("notification-class", number),
        objectName=f"nc-{number}",
        notificationClass=number,
        priority=[10, 10, 10],
        ackRequired=EventTransitionBits([0, 0, 0]),
        recipientList=[destination],
    )


def reporting_input(instance: int, nc: int, value: str = "inactive") -> BinaryInputObjectIR:
    """A stock binary input with intrinsic reporting through notification class `nc` (alarm when active)."""
    return BinaryInputObjectIR(
        objectIdentifier=("binary-input", instance),
        objectName=f"bi-ir-{instance}",
        presentValue=value,
        notificationClass=nc,
        alarmValue="active",
        eventEnable=[1, 1, 1],
        ackedTransitions=[1, 1, 1],
        notifyType="alarm",
        timeDelay=0,
        eventDetectionEnable=True,
    )
