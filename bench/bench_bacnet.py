"""BACnet latency: a value change in the simulator -> the reading handed to the sink, p50 / p99.

Rates of 100, 300, 500 and 1,000 changes/s spread over 10 simulated devices (10 binary inputs each, COV,
no event reporting, so each change is one confirmed COV notification). The simulated devices run in their
own processes (as panels would; `--processes`); times are CLOCK_MONOTONIC, shared by all processes.
The baseline, in the same run against the same simulator: a bare bacpypes3 client with `change_of_value`
subscriptions, timed from the change to `scm.get_value()` returning.

    .venv/bin/python bench/bench_bacnet.py              # 2 s per rate and client, about 40 s
    .venv/bin/python bench/bench_bacnet.py --seconds 10
    .venv/bin/python bench/bench_bacnet.py --rates 500,1000 --rounds 3      # raw, adapter, raw, adapter, ...
    .venv/bin/python bench/bench_bacnet.py --rates 1000 --only adapter --profile /tmp/bacnet.prof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import logging
import multiprocessing as mp
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog
from bacpypes3.app import Application
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from adapters.bacnet import BacnetAdapter
from gateway.config.models import SiteConfig
from gateway.core.ports import DeviceStatus, Reading
from simulators.bacnet_sim import BacnetSiteSimulator, free_udp_port

DEVICES = 10
POINTS_PER_DEVICE = 10
RATES = (100, 300, 500, 1000)
Change = tuple[str, str, float]  # point id, value, monotonic time


def make_site(overlay: dict[str, Any] | None = None, indices: range = range(DEVICES)) -> SiteConfig:
    overlay = overlay or {}
    devices = [
        {
            "protocol": "bacnet",
            "id": f"d{d}",
            "name": f"panel {d}",
            "address": "127.0.0.1",
            "port": 47900 + d,
            "device_instance": 1000 + d,
            "timeout": 2.0,
            "poll_interval": 60,
            "cov_lifetime": 300,
            **overlay.get("devices", {}).get(f"d{d}", {}),
        }
        for d in indices
    ]
    points = [
        {
            "id": f"d{d}-p{p}",
            "name": f"detector {d}.{p}",
            "device": f"d{d}",
            "tenant": "t",
            "zone": "z",
            "type": "burglary",
            "source": {"protocol": "bacnet", "object": f"binary-input,{p + 1}"},
            "alarm": ["active"],
            "normal": ["inactive"],
        }
        for d in indices
        for p in range(POINTS_PER_DEVICE)
    ]
    return SiteConfig.model_validate(
        {
            "version": 1,
            "site": {"id": "bench", "name": "Bench", "address": "Benchstraat 1"},
            "tenants": [{"id": "t", "name": "Tenant"}],
            "zones": [{"id": "z", "name": "Zone", "tenant": "t"}],
            "mqtt": {"url": "mqtt://127.0.0.1:1883", "insecure": True},
            "supervision": {"device_offline_after": 60},
            "journal": {"data_dir": "/tmp/unused"},
            "bacnet": {"address": "127.0.0.1", "port": free_udp_port()},
            "devices": devices,
            "points": points,
        }
    )


# --- the simulator process ---------------------------------------------------------------------------------


def simulator_process(conn: Connection, first: int, count: int, profile: str | None = None) -> None:
    asyncio.run(_simulate(conn, range(first, first + count), profile and f"{profile}.sim{first}"))


async def _simulate(conn: Connection, indices: range, profile: str | None = None) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sim = BacnetSiteSimulator(make_site(indices=indices), event_reporting=False)
    await sim.start()
    conn.send(sim.overlay())
    loop = asyncio.get_running_loop()
    try:
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command is None:
                return
            rate, seconds = command
            with profiled(profile):  # the last rate's drive is kept
                result = await _drive(sim, rate, seconds)
            conn.send(result)
    finally:
        await sim.stop()


async def _drive(sim: BacnetSiteSimulator, rate: float, seconds: float) -> tuple[list[Change], float, float, int]:
    """Toggle this process's points round-robin over its devices at `rate` changes/s; returns the changes, how
    far behind its schedule it ended, its CPU seconds (the notifications' encoding, the acks' decoding) and the COV
    subscriptions its devices hold (a client that left without cancelling its own leaves them behind)."""
    point_ids = [f"{d}-p{p}" for p in range(POINTS_PER_DEVICE) for d in sim.devices]
    state = {pid: sim.devices[pid.split("-")[0]].read_raw(sim._points[pid]) for pid in point_ids}
    changes: list[Change] = []
    loop = asyncio.get_running_loop()
    start, cpu = loop.time(), time.process_time()
    for n in range(int(rate * seconds)):
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        point_id = point_ids[n % len(point_ids)]
        state[point_id] = "active" if state[point_id] == "inactive" else "inactive"
        changes.append((point_id, str(state[point_id]), time.monotonic()))
        await sim.set_raw(point_id, state[point_id])
    lag = loop.time() - (start + seconds)
    await asyncio.sleep(2.0)  # let the last notifications arrive before the parent stops looking
    subscriptions = sum(device.cov_subscriptions() for device in sim.devices.values())
    return changes, lag, time.process_time() - cpu, subscriptions


# --- the measuring side -----------------------------------------------------------------------------------


def latencies(changes: list[Change], seen: list[Change]) -> list[float]:
    """Pair each change with the first later report of that value for that point."""
    reports: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for point_id, value, at in seen:
        reports[point_id].append((value, at))
    cursor: dict[str, int] = defaultdict(int)
    result = []
    for point_id, value, at in changes:
        queue = reports[point_id]
        i = cursor[point_id]
        while i < len(queue) and (queue[i][1] < at or queue[i][0] != value):
            i += 1
        if i < len(queue):
            result.append(queue[i][1] - at)
            i += 1
        cursor[point_id] = i
    return result


def summary(values: list[float], expected: int) -> str:
    if not values:
        return "no readings"
    ordered = sorted(values)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  ({len(values)}/{expected} seen)"


SEEN_WITHIN = 2.0  # seconds: the bound for a change to count as seen
RAW, ADAPTER = "raw bacpypes3 COV", "BacnetAdapter -> sink"
pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}  # the measuring process's collections in a window
_gc_started = [0.0]


def _time_collections(phase: str, info: dict[str, int]) -> None:
    """gc.callbacks: how often and how long the measuring process collected, per generation, in a window."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        pauses[info["generation"]].append(time.perf_counter() - _gc_started[0])


gc.callbacks.append(_time_collections)
RECORDED: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)  # (client, rate): (p99 s, seen)


def print_rounds(rates: tuple[int, ...]) -> None:
    """Per rate over the rounds: each round's adapter p99 / raw p99 (raw ran just before it) and their median;
    a single round's ratio is at the mercy of the machine's load in its few seconds."""
    for rate in rates:
        raw, ours = RECORDED[(RAW, rate)], RECORDED[(ADAPTER, rate)]
        ratios = [a[0] / r[0] for r, a in zip(raw, ours, strict=False) if r[0] > 0]
        if not ratios:
            continue
        seen = min(fraction for _p99, fraction in raw + ours)
        print(
            f"{rate:>5}/s over {len(ratios)} round(s): adapter p99 / raw p99 "
            f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f};"
            f" least seen within 2 s in any run {seen:.1%}",
            flush=True,
        )


async def measure(
    name: str, conns: list[Connection], seen: list[Change], seconds: float, rates: tuple[int, ...] = RATES
) -> None:
    loop = asyncio.get_running_loop()
    for rate in rates:
        seen.clear()
        cpu = time.thread_time()  # the event loop thread: where both clients do all their work
        for collected_in in pauses.values():
            collected_in.clear()
        for conn in conns:
            conn.send((rate / len(conns), seconds))
        parts = await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for conn in conns))
        cpu = time.thread_time() - cpu
        collected = " ".join(f"{len(p)}x max {max(p, default=0) * 1000:.0f} ms" for p in pauses.values())
        changes: list[Change] = sorted((c for part, *_ in parts for c in part), key=lambda c: c[2])
        lag = max(lag for _part, lag, *_ in parts)
        simulators = sum(used for _part, _lag, used, _subs in parts) / max(1, len(changes)) * 1e6
        subscriptions = sum(subs for *_, subs in parts)
        delays = latencies(changes, list(seen))
        result = summary(delays, len(changes))
        ordered = sorted(delays) or [float("nan")]
        RECORDED[(name, rate)].append(
            (
                ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                sum(d <= SEEN_WITHIN for d in delays) / max(1, len(changes)),
            )
        )
        per_change = cpu / max(1, len(changes)) * 1e6
        print(
            f"{name:<24} {rate:>5}/s  {result}  loop CPU {per_change:4.0f} us/change"
            f"  simulators {simulators:4.0f} us/change, behind by {max(lag, 0.0):.2f} s, {subscriptions} subscriptions",
            f"  gc per generation {collected}",
            flush=True,
        )


class TimingSink:
    def __init__(self, seen: list[Change]) -> None:
        self.seen = seen

    async def submit(self, reading: Reading) -> None:
        self.seen.append((reading.point_id, str(reading.value), time.monotonic()))

    async def submit_many(self, readings: Sequence[Reading]) -> None:
        at = time.monotonic()
        self.seen.extend((reading.point_id, str(reading.value), at) for reading in readings)

    async def device_status(self, status: DeviceStatus) -> None:
        return None


@contextlib.contextmanager
def profiled(path: str | None) -> Iterator[None]:
    """cProfile this process while measuring (the loop thread is where the gateway side spends its time)."""
    if not path:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)


async def raw_bacpypes3(
    overlay: dict[str, Any],
    conns: list[Connection],
    seconds: float,
    rates: tuple[int, ...] = RATES,
    profile: str | None = None,
) -> None:
    """Baseline: bacpypes3's own COV client, one context per object, one reader task each."""
    device = DeviceObject(objectIdentifier=("device", 4_194_100), objectName="bench-client", vendorIdentifier=999)
    port = NetworkPortObject(
        f"127.0.0.1:{free_udp_port()}", objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
    )
    app = Application.from_object_list([device, port])
    seen: list[Change] = []
    try:
        async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
            readers = []
            for d in range(DEVICES):
                address = Address(f"127.0.0.1:{overlay['devices'][f'd{d}']['port']}")
                for p in range(POINTS_PER_DEVICE):
                    scm = await stack.enter_async_context(
                        app.change_of_value(address, ObjectIdentifier(f"binary-input,{p + 1}"), None, True, 300)
                    )
                    readers.append(tg.create_task(_read_cov(scm, f"d{d}-p{p}", seen.append)))
            settled_heap()
            with profiled(profile and f"{profile}.raw"):
                await measure(RAW, conns, seen, seconds, rates)
            for reader in readers:
                reader.cancel()
    finally:
        app.close()


async def _read_cov(scm: Any, point_id: str, record: Callable[[Change], None]) -> None:
    while True:
        prop, value = await scm.get_value()
        if str(prop) == "present-value":
            record((point_id, str(value), time.monotonic()))


async def adapter(
    overlay: dict[str, Any],
    conns: list[Connection],
    seconds: float,
    rates: tuple[int, ...] = RATES,
    profile: str | None = None,
) -> None:
    gateway = BacnetAdapter(make_site(overlay))
    seen: list[Change] = []
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(gateway.run(TimingSink(seen)))
        await gateway.wait_ready()
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while loop.time() < end:
            if sum(c.cov_subscriptions_active for c in gateway.counters.values()) == DEVICES * POINTS_PER_DEVICE:
                break
            await asyncio.sleep(0.05)
        settled_heap()
        with profiled(profile and f"{profile}.adapter"):
            await measure(ADAPTER, conns, seen, seconds, rates)
        task.cancel()


freeze = [True]  # --no-gc-freeze: False


def settled_heap() -> None:
    """As `gcmk-gateway run` does once it has started (gateway/cli/main.py): collect, then freeze what the
    client's setup built, so a full collection in the measured window walks only what is new. Both clients."""
    if freeze[0]:
        gc.collect()
        gc.freeze()


async def main(
    seconds: float,
    processes: int,
    rates: tuple[int, ...] = RATES,
    only: str = "both",
    profile: str | None = None,
    rounds: int = 1,
    gc_freeze: bool = True,
    profile_simulators: str | None = None,
) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    per = DEVICES // processes
    conns, children = [], []
    for first in range(0, DEVICES, per):
        parent, child = mp.Pipe()
        process = mp.get_context("spawn").Process(
            target=simulator_process,
            args=(child, first, min(per, DEVICES - first), profile_simulators),
            daemon=True,
        )
        process.start()
        conns.append(parent)
        children.append(process)
    loop = asyncio.get_running_loop()
    try:
        overlay: dict[str, Any] = {"devices": {}}
        for part in await asyncio.gather(*(loop.run_in_executor(None, conn.recv) for conn in conns)):
            overlay["devices"].update(part["devices"])
        print(
            f"{DEVICES} devices x {POINTS_PER_DEVICE} binary inputs, simulated in {len(conns)} processes,"
            f" {seconds:g} s per rate{'' if gc_freeze else '; without gc.freeze()'}"
        )
        freeze[0] = gc_freeze
        for _round in range(rounds):  # alternating, so a change in the machine's load hits both
            if only in ("both", "raw"):
                await raw_bacpypes3(overlay, conns, seconds, rates, profile)
            if only in ("both", "adapter"):
                await adapter(overlay, conns, seconds, rates, profile)
        if only == "both":
            print_rounds(rates)
    finally:
        for conn, process in zip(conns, children, strict=True):
            conn.send(None)
            process.join(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration per rate")
    parser.add_argument("--processes", type=int, default=2, help="simulator processes (devices split evenly)")
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="changes/s, comma-separated")
    parser.add_argument("--only", choices=("both", "raw", "adapter"), default="both")
    parser.add_argument(
        "--profile", metavar="FILE", help="cProfile this process while it measures (FILE.raw, FILE.adapter)"
    )
    parser.add_argument(
        "--profile-simulators", metavar="FILE", help="cProfile each simulator process's last drive (FILE.simN)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="raw then adapter, this many times")
    parser.add_argument("--no-gc-freeze", action="store_true", help="skip gc.freeze() (the gateway does it at start)")
    args = parser.parse_args()
    rates = tuple(int(r) for r in args.rates.split(","))
    print("loadavg at start:", Path("/proc/loadavg").read_text().strip(), flush=True)
    asyncio.run(
        main(
            args.seconds,
            args.processes,
            rates,
            args.only,
            args.profile,
            args.rounds,
            not args.no_gc_freeze,
            args.profile_simulators,
        )
    )
    print("loadavg at end:", Path("/proc/loadavg").read_text().strip(), flush=True)
