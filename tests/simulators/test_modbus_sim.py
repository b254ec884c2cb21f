"""The Modbus site simulator's own contract: overlay, control API, flapping, request log."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusTcpClient

from simulators.control import Fault
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.modbus_site import device, point, site_doc, site_of


async def test_overlay_points_every_device_at_loopback_and_control_api_works() -> None:
    doc = site_doc(
        [
            device("tcp-1", port=1),
            device("tcp-2", port=1, unit_id=2),  # same endpoint, another unit: one server
            device("line-a", transport="serial", serial={"port": "/dev/ttyX"}, unit_id=5),
        ],
        [
            point("a", "tcp-1", "holding", 7, bit=2, width=2, alarm=[3], normal=[1]),
            point("b", "tcp-2", "coil", 3),
            point("c", "line-a", "input", 0, bit=0),
        ],
    )
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        overlay = sim.overlay()["devices"]
        assert overlay["tcp-1"]["port"] == overlay["tcp-2"]["port"] != overlay["line-a"]["port"]
        assert all(entry["host"] == "127.0.0.1" for entry in overlay.values())
        assert overlay["line-a"] == {
            "host": "127.0.0.1", "port": overlay["line-a"]["port"], "transport": "rtu_over_tcp", "serial": None
        }
        assert sim.has_point("a") and not sim.has_point("nope")
        assert await sim.read_raw("a") == 1  # starts at its normal value
        await sim.raise_alarm("a")
        assert await sim.read_raw("a") == 3
        with pytest.raises(ValueError):
            await sim.set_raw("a", 4)  # two bits wide
        with pytest.raises(ValueError):
            await sim.set_raw("b", "on")
        with pytest.raises(ValueError):
            await sim.inject("tcp-1", Fault("refuse_cov"))

        client = AsyncModbusTcpClient("127.0.0.1", port=overlay["tcp-1"]["port"], timeout=1, retries=0)
        await client.connect()
        try:
            reply = await client.read_holding_registers(7, count=1, device_id=1)
            assert reply.registers == [3 << 2]
            await sim.inject("tcp-1", Fault("exception", code=3))
            reply = await client.read_holding_registers(7, count=1, device_id=1)
            assert reply.isError() and reply.exception_code == 3
            reply = await client.read_coils(3, count=1, device_id=2)  # the other unit is unaffected
            assert not reply.isError()
        finally:
            client.close()
        assert [(r.unit, r.function_code, r.address) for r in sim.requests("tcp-1")] == [(1, 3, 7), (1, 3, 7)]

        await sim.flap("b", rate_hz=50, duration=0.1)
        assert await sim.read_raw("b") == 0  # a flap ends normal
    finally:
        await sim.stop()
