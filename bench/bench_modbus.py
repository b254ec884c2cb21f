"""Benchmark: one building of simulated Modbus TCP devices polled by the ModbusAdapter.

The simulated devices run in a child process (so this process's CPU is the poller's alone). Two phases run
against the same simulator in one run:
  1. baseline: a bare pymodbus loop issuing the same block reads on the same 1 s schedule (no decoding,
     no change detection, no sink);
  2. the ModbusAdapter with a counting ReadingSink.
Reported per phase: points/s, CPU share of one core, RSS; for the adapter also poll duration p50/p99,
overruns and schedule lateness p99; and the adapter/baseline CPU ratio.

    .venv/bin/python bench/bench_modbus.py                 # 50 devices x 200 points, 1 s, 20 s per phase
    .venv/bin/python bench/bench_modbus.py --duration 120  # longer
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import random
import resource
import statistics
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from adapters.modbus import ModbusAdapter, plan_blocks
from adapters.modbus.link import honour_swallowed_cancel
from gateway.config.models import ModbusDevice, ModbusSource, SiteConfig
from gateway.core.ports import DeviceStatus, Reading
from simulators.modbus_sim import ModbusSiteSimulator


def building(devices: int, points: int, interval: float) -> dict[str, Any]:
    """Each device: 40% discrete inputs, 20% coils, 40% single bits of holding registers."""
    devs, pts = [], []
    n_di, n_coil = points * 2 // 5, points // 5
    for d in range(devices):
        dev_id = f"panel-{d:02d}"
        devs.append(
            {"protocol": "modbus", "id": dev_id, "name": f"Panel {d}", "host": "127.0.0.1", "port": 1000 + d,
             "poll_interval": interval, "timeout": min(0.5, interval / 2)}
        )
        for i in range(points):
            if i < n_di:
                source = {"protocol": "modbus", "table": "discrete_input", "address": i}
            elif i < n_di + n_coil:
                source = {"protocol": "modbus", "table": "coil", "address": i - n_di}
            else:
                j = i - n_di - n_coil
                source = {"protocol": "modbus", "table": "holding", "address": 100 + j // 16, "bit": j % 16}
            pts.append(
                {"id": f"{dev_id}-p{i:03d}", "name": f"Point {i}", "device": dev_id, "tenant": "t", "zone": "z",
                 "type": "burglary", "source": source, "alarm": [1], "normal": [0]}
            )
    return {
        "version": 1,
        "site": {"id": "bench", "name": "Bench", "address": "Benchstraat 1"},
        "tenants": [{"id": "t", "name": "Tenant"}],
        "zones": [{"id": "z", "name": "Zone", "tenant": "t"}],
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "insecure": True},
        "journal": {"data_dir": "var/bench"},
        "devices": devs,
        "points": pts,
    }


# --- the simulator process ---------------------------------------------------------------------------------


def _simulator_main(doc: dict[str, Any], conn: Connection, change_rate: float) -> None:
    asyncio.run(_simulate(doc, conn, change_rate))


async def _simulate(doc: dict[str, Any], conn: Connection, change_rate: float) -> None:
    sim = ModbusSiteSimulator(SiteConfig.model_validate(doc))
    await sim.start()
    conn.send(sim.overlay())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(conn.fileno(), stop.set)
    rng = random.Random(1)
    ids = list(sim.points)
    alarmed: set[str] = set()
    cpu0 = time.process_time()
    try:
        while not stop.is_set():  # change `change_rate` points per second, so there is news to hand on
            for _ in range(int(change_rate)):
                pid = rng.choice(ids)
                await (sim.clear_alarm(pid) if pid in alarmed else sim.raise_alarm(pid))
                alarmed ^= {pid}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        loop.remove_reader(conn.fileno())
        conn.recv()
        conn.send(time.process_time() - cpu0)
        await sim.stop()


# --- the two phases -------------------------------------------------------------------------------------------


class CountingSink:
    def __init__(self) -> None:
        self.readings = 0
        self.statuses = 0

    async def submit(self, reading: Reading) -> None:
        self.readings += 1

    async def submit_many(self, readings: Sequence[Reading]) -> None:
        self.readings += len(readings)

    async def device_status(self, status: DeviceStatus) -> None:
        self.statuses += 1


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(run: Any, duration: float, warmup: float, points_done: Any) -> dict[str, float]:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(run())
        await asyncio.sleep(warmup)
        p0, c0, t0 = points_done(), time.process_time(), time.monotonic()
        await asyncio.sleep(duration)
        p1, c1, t1 = points_done(), time.process_time(), time.monotonic()
        task.cancel()
    wall = t1 - t0
    return {"points_per_s": (p1 - p0) / wall, "cpu_share": (c1 - c0) / wall, "rss_mb": rss_mb()}


async def baseline(site: SiteConfig, duration: float, warmup: float) -> dict[str, float]:
    """Bare pymodbus: same blocks, same schedule, one task per device, values thrown away."""
    done, errors = [0], [0]

    async def poll(device: ModbusDevice, phase: float) -> None:
        points = [(p.id, p.source) for p in site.points_of(device.id) if isinstance(p.source, ModbusSource)]
        blocks = plan_blocks(points, device.max_gap)
        assert device.host is not None
        client = AsyncModbusTcpClient(device.host, port=device.port, timeout=device.timeout, retries=0)
        await client.connect()
        calls = {"coil": client.read_coils, "discrete_input": client.read_discrete_inputs,
                 "holding": client.read_holding_registers, "input": client.read_input_registers}
        loop = asyncio.get_running_loop()
        due = loop.time() + phase
        try:
            while True:
                await asyncio.sleep(max(0.0, due - loop.time()))
                try:
                    for block in blocks:
                        await calls[block.table](block.address, count=block.count, device_id=device.unit_id)
                        honour_swallowed_cancel()  # or a cancelled baseline can hang (Python 3.11 wait_for)
                    done[0] += len(points)
                except ModbusException:
                    errors[0] += 1
                due += device.poll_interval
        finally:
            client.close()

    async def run() -> None:
        async with asyncio.TaskGroup() as tg:
            for index, device in enumerate(site.devices):  # same staggering as the adapter
                assert isinstance(device, ModbusDevice)
                tg.create_task(poll(device, device.poll_interval * index / len(site.devices)))

    result = await measure(run, duration, warmup, lambda: done[0])
    result["errors"] = errors[0]
    return result


async def adapter_phase(site: SiteConfig, duration: float, warmup: float) -> tuple[dict[str, float], ModbusAdapter]:
    adapter = ModbusAdapter(site, seed=1)
    sink = CountingSink()
    per_device = {p.device.id: sum(len(b.points) for b in p.blocks) for p in adapter.pollers}

    def points_done() -> int:
        return sum((s.polls - s.failed_polls) * per_device[d] for d, s in adapter.stats.items())

    result = await measure(lambda: adapter.run(sink), duration, warmup, points_done)
    durations = [d for s in adapter.stats.values() for d in s.poll_durations]
    lateness = [d for s in adapter.stats.values() for d in s.poll_lateness]
    result.update(
        poll_p50_ms=statistics.median(durations) * 1000,
        poll_p99_ms=pct(durations, 0.99) * 1000,
        late_p99_ms=pct(lateness, 0.99) * 1000,
        overruns=sum(s.overruns for s in adapter.stats.values()),
        errors=sum(sum(s.errors.values()) for s in adapter.stats.values()),
        readings=sink.readings,
    )
    return result, adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--points", type=int, default=200, help="points per device")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, s")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--changes", type=float, default=50.0, help="simulated point changes per second")
    args = parser.parse_args()
    # Quiet: the per-device "online" lines and pymodbus' frame dumps are not what is being measured.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    doc = building(args.devices, args.points, args.interval)
    ours, theirs = mp.get_context("spawn").Pipe()
    child = mp.get_context("spawn").Process(target=_simulator_main, args=(doc, theirs, args.changes), daemon=True)
    child.start()
    try:
        overlay = ours.recv()
        by_id = {d["id"]: d for d in doc["devices"]}
        for dev_id, changes in overlay["devices"].items():  # the overlay's rule: a null removes the key
            for key, value in changes.items():
                if value is None:
                    by_id[dev_id].pop(key, None)
                else:
                    by_id[dev_id][key] = value
        site = SiteConfig.model_validate(doc)
        load_start = Path("/proc/loadavg").read_text().split()[:3]
        print(f"{args.devices} devices x {args.points} points, interval {args.interval:g}s, "
              f"{args.duration:g}s per phase, {args.changes:g} changes/s; machine: {mp.cpu_count()} cores")
        base = asyncio.run(baseline(site, args.duration, args.warmup))
        ad, _ = asyncio.run(adapter_phase(site, args.duration, args.warmup))
        ours.send("stop")
        sim_cpu = ours.recv()
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()
    print(f"{'':<22}{'points/s':>10}{'CPU %':>8}{'RSS MB':>8}{'errors':>8}")
    for name, r in (("raw pymodbus loop", base), ("ModbusAdapter", ad)):
        print(f"{name:<22}{r['points_per_s']:>10.0f}{r['cpu_share'] * 100:>8.1f}{r['rss_mb']:>8.1f}{r['errors']:>8.0f}")
    print(f"adapter poll duration p50 {ad['poll_p50_ms']:.1f} ms, p99 {ad['poll_p99_ms']:.1f} ms; "
          f"schedule lateness p99 {ad['late_p99_ms']:.1f} ms; overruns {ad['overruns']:.0f}; "
          f"readings handed on {ad['readings']:.0f}")
    ratio = (ad["cpu_share"] / ad["points_per_s"]) / (base["cpu_share"] / base["points_per_s"])
    print(f"CPU per point, adapter / raw pymodbus: {ratio:.2f}x; simulator process CPU {sim_cpu:.1f}s total")
    print(f"load average at start {load_start}, at end {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
