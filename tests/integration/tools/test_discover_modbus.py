"""`discover modbus` against a stock pymodbus server written here and against the project's Modbus simulator."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from ruamel.yaml import YAML

from gateway.tools.discover_modbus import ANSWERS_04, ModbusProbe, discover_modbus, modbus_skeleton, worst_case
from gateway.tools.skeleton import diff
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.modbus_site import device, point, site_doc, site_of, with_overlay
from tests.support.skeletons import load_resolved, resolve_todos


def _bits(start: int, count: int) -> SimData:
    return SimData(start, count=count, values=False, datatype=DataType.BITS)


def _registers(start: int, count: int) -> SimData:
    return SimData(start, count=count, values=0, datatype=DataType.REGISTERS)


@asynccontextmanager
async def stock_server() -> AsyncIterator[int]:
    """A plain pymodbus server, as a panel's Modbus interface might look: unit 1 with 64 discrete inputs,
    16 coils and holding registers 0-9 and 100-103; unit 2 with 16 discrete inputs and input registers 0-3."""
    unit1 = SimDevice(
        id=1,
        simdata=([_bits(0, 16)], [_bits(0, 64)], [_registers(0, 10), _registers(100, 4)], [SimData(0)]),
    )
    unit2 = SimDevice(id=2, simdata=([_bits(0, 16)], [_bits(0, 16)], [SimData(0)], [_registers(0, 4)]))
    server = ModbusTcpServer([unit1, unit2], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        yield int(server.transport.sockets[0].getsockname()[1])
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def test_stock_server_units_and_ranges_are_found(tmp_path: Path) -> None:
    async with stock_server() as port:
        probe = ModbusProbe("127.0.0.1", port, units=(1, 2, 3, 4), last_address=255, timeout=0.3)
        started = time.monotonic()
        findings = await discover_modbus(probe)
        took = time.monotonic() - started
        again = await discover_modbus(probe)
    assert [u.unit for u in findings.units] == [1, 2]
    unit1, unit2 = findings.units
    assert unit1.ranges == {"coil": [(0, 15)], "discrete_input": [(0, 63)], "holding": [(0, 9), (100, 103)]}
    assert unit2.ranges == {"coil": [(0, 15)], "discrete_input": [(0, 15)], "input": [(0, 3)]}
    assert findings.absent == {ANSWERS_04: 2}  # pymodbus answers 04 for a unit id it does not serve
    assert findings.requests <= 2 * worst_case(probe)[1] + 2 * 4
    print(f"stock pymodbus server, 4 unit ids: {findings.requests} requests in {took:.2f}s")

    text = modbus_skeleton(findings, "test").render()
    assert text == modbus_skeleton(again, "test").render()  # deterministic
    assert "# Skipped 2:" in text and ANSWERS_04 in text
    site = load_resolved(text, tmp_path)
    assert len(site.points) == 16 + 64 + 14 + 16 + 16 + 4
    di = [p for p in site.points if p.device == "modbus-1" and p.source.ref.startswith("discrete_input")]
    assert [p.source.ref for p in di[:2]] == ["discrete_input:0", "discrete_input:1"] and len(di) == 64
    assert {d.unit_id for d in site.devices} == {1, 2}


async def test_simulated_site_points_are_all_found_and_silent_units_cost_one_timeout() -> None:
    """With --thorough even a lone register (holding 200) is found; the fast default may miss it."""
    points = [
        point("di-3", "panel", "discrete_input", 3),
        point("di-40", "panel", "discrete_input", 40),
        point("hr-200", "panel", "holding", 200, bit=2),
        point("ir-7", "module", "input", 7, alarm=[1], normal=[0]),
    ]
    devices = [
        device("panel", transport="rtu_over_tcp", unit_id=1),
        device("module", transport="rtu_over_tcp", unit_id=2),
    ]
    doc = site_doc(devices, points)
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        site = with_overlay(doc, sim.overlay())
        panel = site.device("panel")
        probe = ModbusProbe(
            "127.0.0.1",
            panel.port,
            units=(1, 2, 3),
            last_address=255,
            timeout=0.2,
            transport="rtu_over_tcp",
            thorough=True,
        )
        started = time.monotonic()
        findings = await discover_modbus(probe)
        took = time.monotonic() - started
    finally:
        await sim.stop()
    assert [u.unit for u in findings.units] == [1, 2]
    assert findings.absent == {"no answer within the timeout": 1}  # the RTU bus: an absent unit is silent
    skeleton = modbus_skeleton(findings, "test")
    lines = diff(skeleton, site)
    assert not [line for line in lines if line.startswith("-")], lines  # every configured address was found
    assert any(line.startswith("+ point modbus-1-di4 discrete_input:4") for line in lines)
    print(f"simulated RTU bus, 3 unit ids (one silent): {findings.requests} requests in {took:.2f}s")


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_cli_exits_non_zero_when_nothing_answers() -> None:
    code, out, err = await _cli("discover", "modbus", "--host", "127.0.0.1", "--port", str(_closed_port()))
    assert (code, out) == (3, "")
    assert "cannot connect" in err
    async with stock_server() as port:
        code, out, err = await _cli(
            "discover", "modbus", "--host", "127.0.0.1", "--port", str(port), "--units", "7-8", "--addresses", "0-15"
        )
    assert (code, out) == (3, "")
    assert "no unit id answered" in err and "at most" in err  # the worst case is said before probing


async def test_cli_writes_the_skeleton_and_diffs_it(tmp_path: Path) -> None:
    async with stock_server() as port:
        args = (
            "discover",
            "modbus",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--units",
            "1-2",
            "--addresses",
            "0-127",
        )
        code, out, err = await _cli(*args)
        assert code == 0, err
        assert out.startswith("# Site config skeleton written by `gcmk-gateway discover modbus --host 127.0.0.1")
        configured = tmp_path / "site.yaml"
        doc = YAML(typ="safe").load(resolve_todos(out))
        moved = next(p for p in doc["points"] if p["id"] == "modbus-1-di63")
        moved["source"]["address"] = 64  # as if the config had a typo
        with configured.open("w", encoding="utf-8") as handle:
            YAML(typ="safe").dump(doc, handle)
        code, out, err = await _cli(*args, "--diff", str(configured))
    assert code == 0, err
    assert out.splitlines() == [
        "+ point modbus-1-di63 discrete_input:63 'Discrete input 63' (device modbus-1)",
        "- point modbus-1-di63 discrete_input:64 (device modbus-1): not on the device",
    ]
