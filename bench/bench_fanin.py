"""Fan-in benchmark: 300 sites x 500 points into one broker and a receiver tier of 1, 2 and 4 members.

    .venv/bin/python bench/bench_fanin.py                                  # receivers 1, 2, 4: ~4 min
    .venv/bin/python bench/bench_fanin.py --receivers 2 --quiet 10 --flood 5   # one quick run

Setup, all on loopback: a Mosquitto started by the benchmark (max_queued_messages 0, set_tcp_nodelay, as
tests/support/mosquitto.py), the receiver tier's members each in a process of its own
(tests/support/receiver_member.py: gateway.tools.receiver_link with `group`: partitioned sites, SQLite store
with synchronous=FULL, confirm after commit), and the gateways. 300 gateway processes do not fit on 2 cores
(each is ~40 MB and a Python interpreter), so every site is a real `DeliverySink` -- its own SQLite journal
(WAL, synchronous=FULL, group commit), its own publisher and MQTT connection with its own client id,
heartbeats, status and will, `delivery.confirm: meldkamer` -- and the sinks run 100 per process in
`--producers` processes. What is shared per process is only the event loop and the CPU: the figures are a
lower bound of what 300 separate gateways would do.

The mix per site, over its 500 points: access events (`access_granted`, info) at --access-rate per second, a
few alarms (`burglary` alarm + restore, priority 2) at --alarm-rate per second, for --quiet seconds; then a
flood of --flood seconds in which --flood-sites sites each produce --flood-rate `fire_trouble` events per
second (a power dip that trips every detector of a building). "Confirmed" is the moment the sink applied the
tier's confirmation to its journal (`DeliveryStats.confirmed_seq` moving past the seq, timed as
bench_confirm.py does); latency is detection (the event made just before `accept`) -> confirmed. Throughput
is the events confirmed during the flood window plus drain, per second of that window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_confirm import TimedStats, confirm_times  # noqa: E402
from gateway.config.models import SiteConfig  # noqa: E402
from gateway.delivery.sink import DeliverySink  # noqa: E402
from gateway.domain.event import Event, PointRef  # noqa: E402
from gateway.domain.state import Batch  # noqa: E402
from gateway.domain.taxonomy import EventState, EventType  # noqa: E402
from tests.support.delivery_harness import make_event, site_config  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402

GROUP = "fanin"
TICK = 0.1  # seconds between the generator's draws


def site_ids(count: int) -> list[str]:
    return [f"gebouw-{n:03d}" for n in range(count)]


def gateway_config(work: Path, url: str, site_id: str) -> SiteConfig:
    delivery = {"confirm": "meldkamer", "receivers": ["meldkamer"], "confirm_timeout": "10s"}
    base = site_config(work / "journals" / site_id, url, delivery=delivery)
    return base.model_copy(update={"site": base.site.model_copy(update={"id": site_id})})


def event(site_id: str, kind: EventType, state: EventState, point: int) -> Event:
    made = make_event(point, kind, state)
    return made.model_copy(update={"site": site_id, "point": PointRef(id=f"p-{point:03d}", name=f"Punt {point}")})


# --- one producer process: many sites ------------------------------------------------------------------


async def produce(args: argparse.Namespace) -> dict[str, Any]:
    ids = site_ids(args.sites)[args.producer :: args.producers]
    flooding = set(site_ids(args.sites)[: args.flood_sites])
    work = Path(args.work)
    sinks: dict[str, DeliverySink] = {}
    stats: dict[str, TimedStats] = {}
    detected: dict[str, dict[int, float]] = {s: {} for s in ids}
    rng = random.Random(args.producer)
    for site_id in ids:
        stats[site_id] = TimedStats()
        sinks[site_id] = DeliverySink(
            gateway_config(work, args.url, site_id), config_hash="bench", version="bench", stats=stats[site_id]
        )

    async def accept(site_id: str, events: list[Event]) -> None:
        now = time.time()
        for e in await sinks[site_id].accept(Batch(events=tuple(events))):
            if e.seq is not None:
                detected[site_id][e.seq] = now

    async with asyncio.TaskGroup() as tg:
        for sink in sinks.values():
            await sink.load_state()
        runs = [tg.create_task(sink.run()) for sink in sinks.values()]
        # warm-up: one event per site, confirmed, proves every site's whole path (tier subscribed to it)
        await asyncio.gather(*(accept(s, [event(s, EventType.PERIODIC_TEST, EventState.INFO, 0)]) for s in ids))
        await until(lambda: all(st.confirmed_seq >= 1 for st in stats.values()), 120)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go", from the parent
        start = time.time()
        phases = {"quiet_end": start + args.quiet, "flood_end": start + args.quiet + args.flood}
        pending: list[asyncio.Task[None]] = []
        last = start
        while (now := time.time()) < phases["flood_end"]:
            flood = now >= phases["quiet_end"]
            dt, last = now - last, now  # draws over the time that really passed: the offered load is the same
            # however busy the machine is
            for site_id in ids:
                events = []
                for _ in range(_poisson(rng, args.access_rate * dt)):
                    events.append(event(site_id, EventType.ACCESS_GRANTED, EventState.INFO, rng.randrange(args.points)))
                if rng.random() < args.alarm_rate * dt:
                    point = rng.randrange(args.points)
                    events.append(event(site_id, EventType.BURGLARY, EventState.ALARM, point))
                    events.append(event(site_id, EventType.BURGLARY, EventState.RESTORE, point))
                if flood and site_id in flooding:
                    for _ in range(_poisson(rng, args.flood_rate * dt)):
                        point = rng.randrange(args.points)
                        events.append(event(site_id, EventType.FIRE_TROUBLE, EventState.ALARM, point))
                if events:
                    pending.append(tg.create_task(accept(site_id, events)))
            pending = [t for t in pending if not t.done()]
            await asyncio.sleep(max(0.0, TICK - (time.time() - now)))  # the generator's clock, not synchronisation
        await asyncio.gather(*pending)
        produced_end = time.time()
        ok = await until(lambda: all(stats[s].confirmed_seq >= stats[s].last_seq for s in ids), args.drain_timeout)
        end = time.time()
        for sink in sinks.values():
            await sink.close()
        for run in runs:
            with contextlib.suppress(asyncio.CancelledError):
                await run
    latencies: list[float] = []
    quiet: list[float] = []  # of events detected before the flood
    confirmed_at: list[float] = []
    unconfirmed = 0
    for site_id in ids:
        times = confirm_times(stats[site_id].moves)
        for seq, at in detected[site_id].items():
            if seq == 1:
                continue  # the warm-up event
            if seq in times:
                latencies.append((times[seq] - at) * 1000)
                if at < phases["quiet_end"]:
                    quiet.append(latencies[-1])
                confirmed_at.append(times[seq])
            else:
                unconfirmed += 1
    return {
        "producer": args.producer,
        "sites": len(ids),
        "start": start,
        "quiet_end": phases["quiet_end"],
        "produced_end": produced_end,
        "end": end,
        "all_confirmed": ok,
        "unconfirmed": unconfirmed,
        "latencies_ms": latencies,
        "quiet_ms": quiet,
        "confirmed_at": confirmed_at,
        "redelivered": sum(st.redelivered for st in stats.values()),
    }


def _poisson(rng: random.Random, mean: float) -> int:
    count, threshold, product = 0, pow(2.718281828459045, -mean), rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


async def until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)  # polling a benchmark condition
    return True


# --- the parent: broker, tier, producers -----------------------------------------------------------------


async def run_once(args: argparse.Namespace, receivers: int, work: Path) -> dict[str, Any]:
    broker = Mosquitto(work / "broker")
    broker.start()
    members = []
    producers = []
    try:
        for n in range(receivers):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.support.receiver_member", broker.url, str(work / "tier"), GROUP,
                f"r{n}", "--reorder-timeout", "2", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdout is not None
            await proc.stdout.readline()
            members.append(proc)
        for p in range(args.producers):
            cmd = [sys.executable, str(HERE), "--role-producer", str(p), "--url", broker.url, "--work", str(work)]
            cmd += _passthrough(args)
            proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**28
            )
            producers.append(proc)
        for proc in producers:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            assert line.strip() == b"ready", line
        for proc in producers:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        results = []
        for proc in producers:
            assert proc.stdout is not None
            results.append(json.loads(await proc.stdout.readline()))
            await proc.wait()
    finally:
        for proc in [*producers, *members]:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        broker.stop()
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    quiet_end = min(r["quiet_end"] for r in results)
    flood_confirmed = [t for r in results for t in r["confirmed_at"] if t >= quiet_end]
    window = max(r["end"] for r in results) - quiet_end
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    quiet = sorted(x for r in results for x in r["quiet_ms"])
    qq = statistics.quantiles(quiet, n=100, method="inclusive") if len(quiet) > 1 else [float("nan")] * 99
    return {
        "receivers": receivers,
        "events": len(latencies),
        "unconfirmed": sum(r["unconfirmed"] for r in results),
        "all_confirmed": all(r["all_confirmed"] for r in results),
        "p50_ms": round(q[49], 1),
        "p99_ms": round(q[98], 1),
        "max_ms": round(latencies[-1], 1),
        "quiet_events": len(quiet),
        "quiet_p50_ms": round(qq[49], 1),
        "quiet_p99_ms": round(qq[98], 1),
        "flood_window_s": round(window, 1),
        "flood_throughput_ev_s": round(len(flood_confirmed) / window, 0) if window > 0 else None,
        "drain_after_production_s": round(max(r["end"] for r in results) - max(r["produced_end"] for r in results), 1),
        "redelivered": sum(r["redelivered"] for r in results),
    }


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = []
    for name in ("sites", "points", "producers", "quiet", "flood", "flood_sites", "flood_rate", "access_rate",
                 "alarm_rate", "drain_timeout"):
        out += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--receivers", default="1,2,4", help="tier sizes to run, comma separated")
    parser.add_argument("--sites", type=int, default=300)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--producers", type=int, default=3, help="processes the sites' sinks run in")
    parser.add_argument("--quiet", type=float, default=20.0, help="seconds of the quiet mix")
    parser.add_argument("--flood", type=float, default=10.0, help="seconds of the flood")
    parser.add_argument("--flood-sites", type=int, default=30)
    parser.add_argument("--flood-rate", type=float, default=20.0, help="events/s per flooding site")
    parser.add_argument("--access-rate", type=float, default=0.2, help="access events/s per site")
    parser.add_argument("--alarm-rate", type=float, default=0.01, help="alarms/s per site (each + restore)")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--role-producer", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from gateway.ops.logs import configure_logging

    configure_logging("error", json=True, stream=sys.stderr)
    if args.role_producer is not None:
        args.producer = args.role_producer
        print(json.dumps(asyncio.run(produce(args))), flush=True)
        return
    print(f"loadavg at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    rows = []
    for receivers in [int(r) for r in args.receivers.split(",")]:
        with tempfile.TemporaryDirectory(prefix="gcmk-fanin-") as tmp:
            row = asyncio.run(run_once(args, receivers, Path(tmp)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"loadavg at end: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    print("| receivers | events | quiet phase p50 / p99 | all events p50 / p99 / max | flood throughput |", end="")
    print(" drain after production | redelivered |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lost = "" if r["all_confirmed"] else f" ({r['unconfirmed']} unconfirmed!)"
        print(
            f"| {r['receivers']} | {r['events']}{lost} | {r['quiet_p50_ms']} / {r['quiet_p99_ms']} ms"
            f" | {r['p50_ms']} / {r['p99_ms']} / {r['max_ms']} ms"
            f" | {r['flood_throughput_ev_s']} ev/s | {r['drain_after_production_s']} s | {r['redelivered']} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
