"""`gcmk-gateway check` against stock devices written here (a plain bacpypes3 application, a plain pymodbus
server) and against our simulators: the table and JSON say per point what the gateway will see, and the exit
code is non-zero on any mismatch (missing object, value that decodes to nothing, gateway not a recipient)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.cli.main import main
from gateway.tools.check import check_site
from simulators.bacnet_sim import free_udp_port
from simulators.control import Fault
from simulators.modbus.server import FaultyServer
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.bacnet_site import bacnet_point, bacnet_site, simulated
from tests.support.logs import configured_logging
from tests.support.modbus_site import device, point, site_doc, site_of, with_overlay
from tests.support.stock_devices import notification_class, reporting_input, stock_bacnet, stock_modbus

GATEWAY_INSTANCE = 4_194_000  # bacnet.device_instance's default: the gateway's own BACnet id


async def _cli(
    tmp_path: Path, doc: dict[str, Any], overlay: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, Any]:
    """Run `gcmk-gateway check --site F --overlay O --json` (in a thread: it runs its own event loop)."""
    site, over = tmp_path / "site.yaml", tmp_path / "overlay.yaml"
    site.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    over.write_text(json.dumps(overlay), encoding="utf-8")
    with configured_logging():  # main() configures process-wide logging onto capsys' stream: put it back after
        code = await asyncio.to_thread(main, ["check", "--site", str(site), "--overlay", str(over), "--json"])
    return code, json.loads(capsys.readouterr().out)


def _bacnet_doc(points: list[dict[str, Any]], port: int, instance: int, gateway_port: int) -> dict[str, Any]:
    site = bacnet_site(
        {"d1": {"port": port, "device_instance": instance}}, points, overlay={"bacnet": {"port": gateway_port}}
    )
    return json.loads(site.model_dump_json(exclude_none=True))


def _by_point(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["point"]: p for p in report["points"]}


@pytest.mark.parametrize("recipient", ["address", "device"])
async def test_stock_bacnet_good_config_is_ok_and_says_cov_and_recipient(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recipient: str
) -> None:
    gateway_port = free_udp_port()
    nc = notification_class(1, ("127.0.0.1", gateway_port) if recipient == "address" else GATEWAY_INSTANCE)
    async with stock_bacnet(3001, {1: "inactive"}, reporting_input(5, 1, "active"), nc) as (_app, port):
        doc = _bacnet_doc(
            [bacnet_point("det1", "d1", "binary-input,1"), bacnet_point("det5", "d1", "binary-input,5")],
            port,
            3001,
            gateway_port,
        )
        code, report = await _cli(tmp_path, doc, {}, capsys)
    assert code == 0, report
    points = _by_point(report)
    assert points["det1"] | {"events": ""} == {
        "device": "d1",
        "point": "det1",
        "source": "binary-input,1/present-value",
        "readable": True,
        "why": "",
        "raw": "inactive",
        "condition": "normal",
        "cov": "accepted",
        "events": "",
        "problems": [],
        "ok": True,
    }
    assert points["det1"]["events"] == "no intrinsic reporting (COV or polling only)"
    assert points["det5"]["raw"] == "active" and points["det5"]["condition"] == "burglary (in alarm now)"
    assert points["det5"]["events"].startswith("notification-class,1 -> gateway")
    assert report["devices"] == {
        "d1": ["does not support GetEventInformation: alarms active at start are found by reading every point"]
    }


async def test_stock_bacnet_missing_object_and_missing_recipient_fail_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway_port = free_udp_port()
    elsewhere = ("127.0.0.1", free_udp_port())  # commissioned with another receiver's address
    async with stock_bacnet(3002, {}, reporting_input(5, 1), notification_class(1, elsewhere)) as (_app, port):
        doc = _bacnet_doc(
            [bacnet_point("det5", "d1", "binary-input,5"), bacnet_point("ghost", "d1", "binary-input,99")],
            port,
            3002,
            gateway_port,
        )
        code, report = await _cli(tmp_path, doc, {}, capsys)
    assert code == 1
    points = _by_point(report)
    assert points["ghost"]["readable"] is False
    assert points["ghost"]["problems"] == [
        "not readable: device d1 has no object binary-input,99 (BACnet unknown-object)"
    ]
    (problem,) = points["det5"]["problems"]
    assert problem == (
        f"event notifications will not reach the gateway: the recipient list of notification-class,1 names"
        f" 127.0.0.1:{elsewhere[1]}, not device {GATEWAY_INSTANCE} or 127.0.0.1:{gateway_port}"
    )
    assert report["ok"] is False and report["mismatches"] == 2


async def test_stock_modbus_missing_address_and_a_value_that_decodes_to_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with stock_modbus(inputs=16) as (server, port):
        await server.async_setValues(1, 2, 3, [True])  # input 3 in alarm
        await server.async_setValues(1, 3, 2, [0x00FF])  # "point not programmed" in a fire panel's register
        doc = site_doc(
            [device("m1", port=port)],
            [
                point("in-3", "m1", "discrete_input", 3),
                point("in-4", "m1", "discrete_input", 4),
                point("in-40", "m1", "discrete_input", 40),
                point("reg-2", "m1", "holding", 2, alarm=[1], normal=[0]),
            ],
        )
        code, report = await _cli(tmp_path, doc, {}, capsys)
        assert code == 1
        points = _by_point(report)
        assert (points["in-3"]["raw"], points["in-3"]["condition"], points["in-3"]["ok"]) == (
            1,
            "burglary (in alarm now)",
            True,
        )
        assert (points["in-4"]["raw"], points["in-4"]["condition"], points["in-4"]["ok"]) == (0, "normal", True)
        assert points["in-4"]["cov"] == "n/a (Modbus: polled every 0.2s)"
        assert points["in-40"]["problems"] == [
            "not readable: discrete_input 40 on device m1 (unit 1):"
            " the device answers exception 02 (illegal data address)"
        ]
        assert points["reg-2"]["raw"] == 255 and points["reg-2"]["condition"] is None
        assert points["reg-2"]["problems"] == [
            "raw value 255 decodes to nothing (normal: [0], alarm: [1]): the gateway would report a fault"
        ]
        # the good part alone passes
        good = {**doc, "points": doc["points"][:2]}
        code, report = await _cli(tmp_path, good, {}, capsys)
        assert code == 0 and report["mismatches"] == 0


async def test_simulated_bacnet_is_ok_leaves_no_subscription_and_names_a_wrong_gateway_port() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1"), bacnet_point("det2", "d1", "binary-input,2")]
    async with simulated({"d1": {}}, points) as (sim, site):
        await sim.raise_alarm("det2")
        report = await check_site(site)
        assert report.ok, report.table()
        assert [p.condition for p in report.points] == ["normal", "burglary (in alarm now)"]
        assert [p.cov for p in report.points] == ["accepted", "accepted"]
        assert sim.devices["d1"].cov_subscriptions() == 0  # the probes were cancelled: read-only
        moved = bacnet_site({"d1": {}}, points, overlay={**sim.overlay(), "bacnet": {"port": free_udp_port()}})
        wrong = await check_site(moved)
        assert not wrong.ok
        assert all("will not reach the gateway" in p.problems[0] for p in wrong.points)
        table = wrong.table()
        assert "MISMATCH d1/det1: event notifications will not reach the gateway" in table
        assert table.splitlines()[-1] == "test-site: 2 of 2 point(s) not as configured"


async def test_simulated_modbus_ok_then_silent_device_makes_every_point_unreadable() -> None:
    doc = site_doc([device("d", timeout=0.1)], [point("c", "d", "coil", 0), point("h", "d", "holding", 10, bit=3)])
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        site = with_overlay(doc, sim.overlay())
        report = await check_site(site)
        assert report.ok, report.table()
        assert [(p.raw, p.condition) for p in report.points] == [(0, "normal"), (0, "normal")]
        await sim.inject("d", Fault("silent"))
        silent = await check_site(site)
        assert [p.readable for p in silent.points] == [False, False]
        assert all(p.why.startswith("device did not answer") for p in silent.points)
        assert len(sim.requests("d")) <= 3  # one timeout, then the rest are not asked again
    finally:
        await sim.stop()


async def test_modbus_units_on_one_line_are_checked_over_one_connection() -> None:
    """Units behind one serial-to-Ethernet converter port (or on one serial line) share the line: check reads
    them one after the other over one link, as the gateway polls them. A second connection at once would be
    refused by many converters, and a serial port cannot be opened twice."""
    bits = [SimData(0, count=8, values=False, datatype=DataType.BITS)]
    registers = [SimData(0, count=8, values=0, datatype=DataType.REGISTERS)]
    units = [SimDevice(id=unit, simdata=(bits, bits, registers, registers)) for unit in (1, 2)]
    server = FaultyServer(units, rtu=True)
    await server.serve_forever(background=True)
    try:
        line = {"transport": "rtu_over_tcp", "port": server.port}
        doc = site_doc(
            [device("u1", unit_id=1, **line), device("u2", unit_id=2, **line)],
            [point("in-1", "u1", "discrete_input", 1), point("in-2", "u2", "discrete_input", 2)],
        )
        report = await check_site(site_of(doc))
        assert [(p.point, p.readable) for p in report.points] == [("in-1", True), ("in-2", True)], report.table()
        assert server.connections_made == 1 and server.max_in_flight == 1
    finally:
        await server.stop()
