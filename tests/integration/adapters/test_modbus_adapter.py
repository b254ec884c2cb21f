"""The Modbus adapter against the Modbus simulator, over real TCP on loopback."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from adapters.modbus import ModbusAdapter, PollTuning
from gateway.config.models import ModbusDevice, SiteConfig
from gateway.core.ports import Quality
from gateway.domain.errors import ConfigurationFault, DeviceTimeout, VerificationFailed
from gateway.testing import CollectingReadings, wait_until
from simulators.control import Fault
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.modbus_site import device, point, running, site_doc, site_of, with_overlay

ALL_KINDS: list[tuple[str, dict[str, Any]]] = [
    ("coil", {"table": "coil", "address": 5}),
    ("di", {"table": "discrete_input", "address": 17}),
    ("reg-bit", {"table": "holding", "address": 100, "bit": 9}),
    ("field", {"table": "input", "address": 30, "bit": 4, "width": 3, "alarm": [5], "normal": [0]}),
    ("word", {"table": "holding", "address": 104, "alarm": [0xBEEF], "normal": [0]}),
]


def kinds_points(device_id: str) -> list[dict[str, Any]]:
    return [
        point(f"{device_id}-{name}", device_id, spec["table"], spec["address"], **{
            k: v for k, v in spec.items() if k not in ("table", "address")
        })
        for name, spec in ALL_KINDS
    ]


@asynccontextmanager
async def simulated(
    doc: dict[str, Any], *, absent: tuple[str, ...] = ()
) -> AsyncIterator[tuple[ModbusSiteSimulator, SiteConfig]]:
    sim = ModbusSiteSimulator(site_of(doc), absent=absent)
    await sim.start()
    try:
        yield sim, with_overlay(doc, sim.overlay())
    finally:
        await sim.stop()


@pytest.mark.parametrize("transport", ["tcp", "rtu_over_tcp", "serial"])
async def test_every_point_kind_decodes(transport: str) -> None:
    extra: dict[str, Any] = {"transport": transport, "unit_id": 7}
    if transport == "serial":
        extra["serial"] = {"port": "/dev/ttyGCMK-test"}
    doc = site_doc([device("d", **extra)], kinds_points("d"))
    async with simulated(doc) as (sim, site):
        overlaid = site.device("d")
        assert isinstance(overlaid, ModbusDevice)
        assert overlaid.transport == ("rtu_over_tcp" if transport == "serial" else transport)
        sink = CollectingReadings()
        adapter = ModbusAdapter(site)
        async with running(lambda: adapter.run(sink)):
            await sink.wait_for(lambda: all(sink.good_value(f"d-{n}") == 0 for n, _ in ALL_KINDS))
            for name, _ in ALL_KINDS:
                await sim.raise_alarm(f"d-{name}")
            expected = {"d-coil": 1, "d-di": 1, "d-reg-bit": 1, "d-field": 5, "d-word": 0xBEEF}
            await sink.wait_for(lambda: all(sink.good_value(p) == v for p, v in expected.items()))
        assert [(s.device_id, s.online) for s in sink.statuses] == [("d", True)]
        # Neighbouring bits of the same register are not disturbed by the simulator or the decoding.
        assert await sim.read_raw("d-reg-bit") == 1


async def test_change_and_restore_reported_exactly_once() -> None:
    doc = site_doc([device("d", poll_interval=0.05, timeout=0.04)], kinds_points("d"))
    async with simulated(doc) as (sim, site):
        sink = CollectingReadings()
        adapter = ModbusAdapter(site)
        stats = adapter.pollers[0].stats
        async with running(lambda: adapter.run(sink)):
            await sink.wait_for(lambda: sink.good_value("d-reg-bit") == 0)
            for value_setter, expected in ((sim.raise_alarm, 1), (sim.clear_alarm, 0)):
                await value_setter("d-reg-bit")
                await sink.wait_for(lambda: sink.good_value("d-reg-bit") == expected)  # noqa: B023
                polls = stats.polls
                await wait_until(lambda: stats.polls >= polls + 10)  # noqa: B023
        assert [r.value for r in sink.of("d-reg-bit")] == [0, 1, 0]
        # Every other point was handed on once (its first reading) although it was read ~30 times.
        assert all(len(sink.of(f"d-{n}")) == 1 for n, _ in ALL_KINDS if n != "reg-bit")


@pytest.mark.parametrize("fault", [Fault("silent"), Fault("drop"), Fault("exception", code=0x0B)])
async def test_comm_loss_and_return(fault: Fault) -> None:
    interval, timeout, n = 0.2, 0.15, 3
    doc = site_doc(
        [device("d", poll_interval=interval, timeout=timeout, offline_after_failures=n)], kinds_points("d")
    )
    async with simulated(doc) as (sim, site):
        sink = CollectingReadings()
        adapter = ModbusAdapter(site, tuning=PollTuning(backoff_cap=0.5))
        loop = asyncio.get_running_loop()
        async with running(lambda: adapter.run(sink)):
            await sink.wait_for(lambda: len(sink.latest()) == len(ALL_KINDS))
            silenced = loop.time()
            await sim.inject("d", fault)
            await sink.wait_for(lambda: any(not s.online for s in sink.statuses), within=10)
            went_offline = loop.time() - silenced
            mark = len(sink.log)
            await sim.raise_alarm("d-coil")  # changes while the gateway cannot see them
            await sim.raise_alarm("d-field")
            polls = adapter.pollers[0].stats.polls
            await wait_until(lambda: adapter.pollers[0].stats.polls >= polls + 2)
            assert sink.log[mark:] == [], "nothing may be reported while the device is offline"
            await sim.inject("d", Fault("none"))
            await sink.wait_for(lambda: len(sink.statuses) == 3 and len(sink.readings) >= 2 * len(ALL_KINDS))
        # N failed polls: the first may start up to one interval after the fault, each takes <= timeout.
        assert went_offline <= n * interval + timeout + 1.0  # + slack for a busy CI machine
        assert [s.online for s in sink.statuses] == [True, False, True]
        back = sink.log.index(sink.statuses[2])
        fresh = sink.log[back + 1 :]
        assert sorted(r.point_id for r in fresh) == sorted(f"d-{n}" for n, _ in ALL_KINDS)  # type: ignore[union-attr]
        assert {r.point_id: r.value for r in fresh} == {  # type: ignore[union-attr]
            "d-coil": 1, "d-di": 0, "d-reg-bit": 0, "d-field": 5, "d-word": 0
        }
        assert all(r.quality is Quality.GOOD for r in sink.readings)


async def test_device_never_reachable_goes_offline_after_n_failures() -> None:
    with socket.socket() as probe:  # a port on loopback that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    doc = site_doc([device("d", port=port, offline_after_failures=2)], kinds_points("d"))
    site = site_of(doc)
    sink = CollectingReadings()
    adapter = ModbusAdapter(site, tuning=PollTuning(backoff_cap=0.3))
    async with running(lambda: adapter.run(sink)):
        await sink.wait_for(lambda: len(sink.statuses) == 1)
        stats = adapter.pollers[0].stats
        await wait_until(lambda: stats.polls >= 4)
    assert [(s.device_id, s.online) for s in sink.statuses] == [("d", False)]
    assert stats.errors["DeviceUnreachable"] >= 4 and stats.consecutive_failures >= 4
    assert sink.readings == []


async def test_dead_device_does_not_disturb_healthy_schedule() -> None:
    interval = 0.2
    doc = site_doc(
        [
            device("dead", port=1, poll_interval=0.3, timeout=0.25, offline_after_failures=50),
            device("alive", port=2, poll_interval=interval, timeout=0.15),
        ],
        [point("dead-p", "dead", "coil", 0), point("alive-p", "alive", "coil", 0)],
    )
    async with simulated(doc) as (sim, site):
        await sim.inject("dead", Fault("silent"))
        sink = CollectingReadings()
        adapter = ModbusAdapter(site)
        async with running(lambda: adapter.run(sink)):
            await wait_until(lambda: len(sim.requests("alive")) >= 16, timeout=10)
        times = [r.received for r in sim.requests("alive")]
        dead_requests = len(sim.requests("dead"))
    alive = adapter.stats["alive"]
    # The schedule does not drift: request i arrives at first + i * interval. Sharing one queue with the
    # dead device would hold the healthy polls back by up to its 0.25 s timeout, at varying phases.
    deviations = [t - (times[0] + i * interval) for i, t in enumerate(times)]
    assert max(abs(d) for d in deviations) < 0.12, deviations
    assert max(alive.poll_durations) < 0.12
    assert alive.errors == {} and alive.overruns == 0
    assert dead_requests >= 8  # the dead device really was being polled (and timing out) meanwhile


async def test_exception_02_reported_once_and_not_hammered() -> None:
    doc = site_doc(
        [device("d", poll_interval=0.05, timeout=0.04)],
        [point("good", "d", "holding", 0, bit=0), point("missing", "d", "holding", 500, bit=2)],
    )
    async with simulated(doc, absent=("missing",)) as (sim, site):
        sink = CollectingReadings()
        adapter = ModbusAdapter(site, tuning=PollTuning(config_fault_retry=30.0))
        stats = adapter.pollers[0].stats
        async with running(lambda: adapter.run(sink)):
            await sink.wait_for(lambda: len(sink.of("missing")) == 1 and sink.good_value("good") == 0)
            await wait_until(lambda: stats.polls >= 20)
            await sim.raise_alarm("good")  # the healthy block keeps working
            await sink.wait_for(lambda: sink.good_value("good") == 1)
        missing = sink.of("missing")
        assert len(missing) == 1 and missing[0].quality is Quality.UNAVAILABLE and missing[0].value is None
        assert missing[0].text is not None and "holding 500" in missing[0].text and "02" in missing[0].text
        at_500 = [r for r in sim.requests("d") if r.address == 500]
        assert len(at_500) == 1, "a configuration fault must not be retried at the poll rate"
        assert stats.errors["ConfigurationFault"] == 1
        assert [s.online for s in sink.statuses] == [True]  # the device answered: not a comm loss


async def test_exception_06_is_retried_with_backoff() -> None:
    doc = site_doc(
        [device("d", poll_interval=0.5, timeout=0.1, offline_after_failures=100)],
        [point("p", "d", "coil", 3)],
    )
    async with simulated(doc) as (sim, site):
        sink = CollectingReadings()
        adapter = ModbusAdapter(site, tuning=PollTuning(busy_retries=2))
        stats = adapter.pollers[0].stats
        async with running(lambda: adapter.run(sink)):
            await sink.wait_for(lambda: sink.good_value("p") == 0)
            before = len(sim.requests("d"))
            await sim.inject("d", Fault("exception", code=6))
            await wait_until(lambda: stats.errors["DeviceBusy"] >= 3, timeout=5)
            busy = sim.requests("d")[before:][:3]
            await sim.inject("d", Fault("none"))
            await sim.raise_alarm("p")
            await sink.wait_for(lambda: sink.good_value("p") == 1)
        # One poll = the request and two retries, backed off but well inside the poll interval.
        assert len(busy) == 3
        assert 0.03 < busy[1].received - busy[0].received < 0.25
        assert busy[2].received - busy[0].received < 0.5


async def test_writes_reach_the_device_and_are_verified() -> None:
    doc = site_doc(
        [device("d", transport="rtu_over_tcp", unit_id=2)],
        [
            point("relay", "d", "coil", 8),
            point("mode", "d", "holding", 40, bit=4, width=3, alarm=[3], normal=[0]),
            point("neighbour", "d", "holding", 40, bit=0),
            point("setpoint", "d", "holding", 41, alarm=[1], normal=[0]),
            point("sensor", "d", "discrete_input", 0),
        ],
    )
    async with simulated(doc) as (sim, site):
        adapter = ModbusAdapter(site)
        await sim.raise_alarm("neighbour")
        await adapter.write("relay", 1)
        await adapter.write("mode", 6)
        await adapter.write("setpoint", 1234)
        await adapter.write_register("d", 41, 4321)
        assert await sim.read_raw("relay") == 1
        assert await sim.read_raw("mode") == 6
        assert await sim.read_raw("neighbour") == 1  # read-modify-write kept the other bits
        assert await sim.read_raw("setpoint") == 4321
        with pytest.raises(ValueError):
            await adapter.write("mode", 8)
        with pytest.raises(ConfigurationFault):
            await adapter.write("sensor", 1)
        await sim.inject("d", Fault("silent"))
        with pytest.raises(DeviceTimeout):
            await adapter.write("relay", 0)
        for link in adapter.links.values():
            link.close()


async def test_rtu_bus_is_strictly_serialised_and_spaced() -> None:
    spacing = 0.02
    units = [
        # Generous timeout: a timeout on an RTU link resets its connection, which a load spike must not cause.
        device(
            f"u{i}",
            transport="rtu_over_tcp",
            port=9999,
            unit_id=i,
            poll_interval=0.3,
            timeout=0.25,
            inter_request_delay=spacing,
        )
        for i in (1, 2, 3)
    ]
    points = [point(f"u{i}-{a}", f"u{i}", "holding", a, bit=0) for i in (1, 2, 3) for a in (0, 50)]
    async with simulated(site_doc(units, points)) as (sim, site):
        for i in (1, 2, 3):
            await sim.inject(f"u{i}", Fault("slow", delay=0.005))
        sink = CollectingReadings()
        adapter = ModbusAdapter(site)
        server = sim.server("u1")
        assert len({id(sim.server(f"u{i}")) for i in (1, 2, 3)}) == 1  # one converter, one port
        async with running(lambda: adapter.run(sink)):
            await wait_until(lambda: len(server.requests) >= 30, timeout=10)
            await sink.wait_for(lambda: len(sink.latest()) == len(points))
        records = list(server.requests)
    assert server.max_in_flight == 1
    assert server.connections_made == 1
    answered = [r for r in records if r.answered is not None]
    for first, second in itertools.pairwise(answered):
        assert second.received - first.answered >= spacing * 0.9  # type: ignore[operator]
    assert {r.unit for r in records} == {1, 2, 3}
    assert len(adapter.links) == 1


async def test_overrunning_polls_are_counted_not_stacked() -> None:
    interval = 0.2
    doc = site_doc(
        [device("d", poll_interval=interval, timeout=0.15)],
        [point("c", "d", "coil", 0), point("i", "d", "discrete_input", 0), point("h", "d", "holding", 0, bit=0)],
    )
    async with simulated(doc) as (sim, site):
        await sim.inject("d", Fault("slow", delay=0.1))  # three blocks: every poll takes > 0.3 s
        sink = CollectingReadings()
        adapter = ModbusAdapter(site)
        stats = adapter.pollers[0].stats
        async with running(lambda: adapter.run(sink)):
            await wait_until(lambda: stats.polls >= 5, timeout=10)
        starts = [r.received for r in sim.requests("d") if r.function_code == 1]  # first block of each poll
    assert stats.overruns >= stats.polls - 1 >= 4
    assert stats.errors == {}
    # A stacking scheduler would start the next poll right after an overrun; this one waits for its slot.
    assert min(b - a for a, b in itertools.pairwise(starts)) > 1.5 * interval


async def test_write_read_back_mismatch_raises_verification_failed() -> None:
    doc = site_doc([device("d")], [point("relay", "d", "coil", 8)])
    async with simulated(doc) as (sim, site):
        adapter = ModbusAdapter(site)
        link = next(iter(adapter.links.values()))
        real_read = link.read

        async def stuck_read(dev: Any, table: str, address: int, count: int) -> list[int]:
            await real_read(dev, table, address, count)
            return [0] * count  # e.g. a coil the panel's own logic forces off

        link.read = stuck_read  # type: ignore[method-assign,assignment]
        with pytest.raises(VerificationFailed):
            await adapter.write("relay", 1)
        assert await sim.read_raw("relay") == 1  # the write itself did reach the device
        link.close()


async def test_device_rejecting_every_block_is_still_supervised_and_recovers() -> None:
    interval = 0.1
    doc = site_doc(
        [device("d", poll_interval=interval, timeout=0.08, offline_after_failures=3)],
        [point("c", "d", "coil", 0), point("h", "d", "holding", 10, bit=3)],
    )
    async with simulated(doc) as (sim, site):
        sink = CollectingReadings()
        adapter = ModbusAdapter(site, tuning=PollTuning(config_fault_retry=60.0, backoff_cap=0.3))
        stats = adapter.pollers[0].stats
        async with running(lambda: adapter.run(sink)):
            await sink.wait_for(lambda: sink.good_value("c") == 0 and sink.good_value("h") == 0)
            await sim.inject("d", Fault("exception", code=2))  # e.g. a panel reconfigured under us
            await sink.wait_for(lambda: all(sink.of(p)[-1].quality is Quality.UNAVAILABLE for p in ("c", "h")))
            start, polls = len(sim.requests("d")), stats.polls
            await wait_until(lambda: stats.polls >= polls + 10)
            per_poll = (len(sim.requests("d")) - start) / (stats.polls - polls)
            await sim.inject("d", Fault("silent"))  # one keep-alive request per poll still notices this
            await sink.wait_for(lambda: any(not s.online for s in sink.statuses))
            await sim.inject("d", Fault("none"))
            await sink.wait_for(lambda: sink.good_value("c") == 0 and sink.good_value("h") == 0)
        assert per_poll <= 1.2  # not every block at the poll rate: one keep-alive read
        assert [s.online for s in sink.statuses] == [True, False, True]
        assert [r.quality for r in sink.of("h")] == [Quality.GOOD, Quality.UNAVAILABLE, Quality.GOOD]
