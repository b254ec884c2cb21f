"""Simulated Modbus devices whose alarm points change continuously, each change in a truth log.

    python -m simulators.churn --site FILE --overlay-out FILE --truth-log FILE
                               [--point ID ...] [--hold 0.5] [--jitter 0.5] [--gap 0.35] [--seed N]

The devices of the chaos drill (bench/chaos.py). Every state point of the site's Modbus devices (or each
`--point`) flips between its first alarm value and its first normal value, on and on; every write goes to the
truth log (simulators/truth.py) with its time. SIGUSR1 stops the changes (the devices keep answering, so the
last values can be read); SIGTERM ends the process.

A Modbus poller sees only a value that holds across one of its reads, and a gateway that is being restarted
reads nothing. So each value is held until the device has answered reads of it without a pause longer than
`gap` for at least `hold` seconds (at a 100 ms poll interval a hold of 0.5 s is 5 reads or more), and then
for a random 0..`jitter` s more; the device's own request log says when it was read. While nobody reads
(a gateway restarting, or one waiting for its journal) the values hold: every change the devices make was on
show to a running gateway for `hold` seconds, and the drill may demand that each one reached the meldkamer.
Before each change a `held` line records the reads the old value got (for diagnosing a missing event).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from gateway.config.loader import load_site
from gateway.config.models import ModbusSource, SiteConfig
from simulators.modbus.server import FaultyServer, RequestRecord
from simulators.modbus.site import ModbusSiteSimulator
from simulators.truth import TruthLog

TICK = 0.01  # seconds between looks at the request log (a schedule, not synchronisation)
_FUNCTION = {"coil": 1, "discrete_input": 2, "holding": 3, "input": 4}


@dataclass
class _Point:
    id: str
    server: FaultyServer
    unit: int
    function: int
    address: int
    alarm: int
    normal: int
    value: int
    changed: float  # loop time at which the current value was in place
    run_start: float | None = None  # first read of the current uninterrupted run of reads
    last_read: float | None = None
    reads: int = 0  # reads answered since the change
    due: float | None = None  # loop time of the next change, once the value was held long enough

    def covered_by(self, record: RequestRecord) -> bool:
        return (
            record.unit == self.unit
            and record.function_code == self.function
            and record.address <= self.address < record.address + max(record.count, 1)
        )


class Churn:
    """Flips the points one at a time from one task (bits sharing a register are read-modify-written)."""

    def __init__(
        self,
        simulator: ModbusSiteSimulator,
        truth: TruthLog,
        point_ids: Sequence[str],
        *,
        hold: float,
        jitter: float,
        gap: float,
        rng: random.Random,
    ) -> None:
        self.simulator = simulator
        self.truth = truth
        self.hold, self.jitter, self.gap, self.rng = hold, jitter, gap, rng
        self.point_ids = list(point_ids)
        self.points: list[_Point] = []
        self.changes = 0
        self._scanned: dict[int, float] = {}  # id(server) -> received time of the newest record looked at

    async def prepare(self) -> None:
        loop = asyncio.get_running_loop()
        for pid in self.point_ids:
            config = self.simulator.points[pid]
            src = config.source
            assert isinstance(src, ModbusSource)
            alarm, normal = config.alarm[0], config.normal[0]
            if not isinstance(alarm, int) or not isinstance(normal, int):
                raise ValueError(f"point {pid}: churn needs integer alarm and normal values")
            value = await self.simulator.read_raw(pid)
            assert isinstance(value, int)
            self.points.append(
                _Point(
                    pid,
                    self.simulator.server(config.device),
                    self.simulator.devices[config.device].unit_id,
                    _FUNCTION[src.table],
                    src.address,
                    alarm,
                    normal,
                    value,
                    loop.time(),
                )
            )

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            now = loop.time()
            self._scan(now)
            for point in self.points:
                if point.due is not None and point.due <= now and not stop.is_set():
                    await self._flip(point)
            await asyncio.sleep(TICK)

    def _scan(self, now: float) -> None:
        for server in {id(p.server): p.server for p in self.points}.values():
            newest = self._scanned.get(id(server), float("-inf"))
            fresh: list[RequestRecord] = []
            for record in reversed(server.requests):  # appended in the order received
                if record.received <= newest:
                    break
                fresh.append(record)
            if not fresh:
                continue
            self._scanned[id(server)] = fresh[0].received
            for record in reversed(fresh):
                for point in self.points:
                    if point.server is server and record.received >= point.changed and point.covered_by(record):
                        self._read(point, record.received)
        for point in self.points:
            if (
                point.due is None
                and point.run_start is not None
                and point.last_read is not None
                and point.last_read - point.run_start >= self.hold
            ):
                point.due = now + self.rng.uniform(0.0, self.jitter)

    def _read(self, point: _Point, at: float) -> None:
        if point.last_read is None or at - point.last_read > self.gap:
            point.run_start = at  # a new run of reads: after a pause, possibly another gateway process
        point.last_read = at
        point.reads += 1

    async def _flip(self, point: _Point) -> None:
        loop = asyncio.get_running_loop()
        offset = time.time() - loop.time()
        self.truth.write(
            "held",
            point=point.id,
            value=point.value,
            reads=point.reads,
            run_from=None if point.run_start is None else point.run_start + offset,
            run_to=None if point.last_read is None else point.last_read + offset,
        )
        value = point.normal if point.value == point.alarm else point.alarm
        await self.simulator.set_raw(point.id, value)  # logged to the truth log by the simulator
        point.value, point.changed = value, loop.time()
        point.run_start = point.last_read = point.due = None
        point.reads = 0
        self.changes += 1


def churn_points(site: SiteConfig) -> list[str]:
    """The state points of the site's Modbus devices with integer alarm and normal values."""
    return [
        p.id
        for p in site.points
        if isinstance(p.source, ModbusSource)
        and p.kind == "state"
        and p.alarm
        and p.normal
        and isinstance(p.alarm[0], int)
        and isinstance(p.normal[0], int)
    ]


async def serve(
    site: SiteConfig,
    *,
    overlay_out: Path,
    truth_log: Path,
    point_ids: Sequence[str] | None,
    hold: float,
    jitter: float,
    gap: float,
    seed: int,
) -> None:
    truth = TruthLog(truth_log)
    simulator = ModbusSiteSimulator(site, truth=truth)
    await simulator.start()  # sets every state point to its normal value: the first line per point
    try:
        points = point_ids or churn_points(site)
        churn = Churn(simulator, truth, points, hold=hold, jitter=jitter, gap=gap, rng=random.Random(seed))
        await churn.prepare()
        settings = {"hold": hold, "jitter": jitter, "gap": gap, "seed": seed}
        truth.write("start", t=time.time(), site=site.site.id, points=list(points), **settings)
        partial = overlay_out.with_suffix(".partial")
        with partial.open("w", encoding="utf-8") as out:
            YAML(typ="safe").dump(simulator.overlay(), out)
        partial.replace(overlay_out)  # appears whole or not at all: the drill waits for it
        settle, stop = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, settle.set)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(churn.run(settle))
        await _first(settle, stop)
        settle.set()
        await runner
        truth.write(
            "settled", t=time.time(), changes=churn.changes, values={p.id: p.value for p in churn.points}
        )
        await stop.wait()
        truth.write("stop", t=time.time())
    finally:
        await simulator.stop()
        truth.close()


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.churn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", required=True, type=Path)
    parser.add_argument("--overlay-out", required=True, type=Path)
    parser.add_argument("--truth-log", required=True, type=Path)
    parser.add_argument("--point", dest="points", action="append", help="default: every Modbus state point")
    parser.add_argument("--hold", type=float, default=0.5, help="seconds of uninterrupted reads before a change")
    parser.add_argument("--jitter", type=float, default=0.5, help="random extra hold, 0..JITTER seconds")
    parser.add_argument("--gap", type=float, default=0.35, help="a pause in reads longer than this starts a new run")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(
        serve(
            load_site(args.site),
            overlay_out=args.overlay_out,
            truth_log=args.truth_log,
            point_ids=args.points,
            hold=args.hold,
            jitter=args.jitter,
            gap=args.gap,
            seed=args.seed,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
