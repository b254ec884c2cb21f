"""Alarm flood (issue 17 item 4): 10,000 events across the four buildings within one second, end to end.

All processes as deployed, on loopback: one Mosquitto (started here), per building the simulated devices
(`gcmk-gateway simulate --site ... --scenario ... --scenario-on-signal`) and the gateway
(`gcmk-gateway run --site <flood site> --overlay <ports, broker, journal>`: delivery confirmed by the
meldkamer, heartbeat every 5 s as shipped), and the reference receiver (`gcmk-gateway receive`, its own
process, storing with fsync and confirming; `--receivers N`: a tier of N members instead). The flood sites are
the shipped ones plus a generated flood panel each (tests/support/flood.py, written to the workdir only), sized
by `--target-events` (or `--points-per-site`); the scenario raises every point at an even pace within
`--spread`, holds, clears within `--spread`, `--cycles` times.

The events and their detection / PUBACK times are read from the gateways' journals after the run; an observer
(this process, aiomqtt) records only confirmations (`at`, the receiver's clock: same machine) and heartbeats,
so the measurement adds no subscriber to the event stream. Reported: events, the most detected within any one
second, detection -> confirmed at the receiver p50 / p99 / max, events not confirmed within 2 s, the longest
heartbeat gap per building, and the CPU seconds of every process during the flood window (/proc/PID/stat).

    .venv/bin/python bench/bench_flood.py                    # 10,000-event flood, 1 cycle, ~90 s
    .venv/bin/python bench/bench_flood.py --target-events 2000 --cycles 3 --keep
    .venv/bin/python bench/bench_flood.py --profile-receiver /tmp/rx.prof --profile-gateways /tmp/gw.prof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config.loader import load_site
from gateway.delivery.contract import ROOT
from gateway.tools.demo import DEFAULT_SITES, free_port, gateway_overlay
from tests.support.flood import flood_points_per_site, flood_scenario, spawn, stop, write_flood_sites
from tests.support.mosquitto import Mosquitto

QUIET = 5.0  # seconds measured at rest before the flood
CONFIRM_WITHIN = 2.0  # seconds from detection to the receiver's confirmation (the bound)


CENTRAL_CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "central.conf"
TUNING = ("max_inflight_messages", "persistent_client_expiration")  # the central broker's, as deployed


def central_tuning() -> str:
    """The shipped central broker's tuning lines (deploy/mosquitto/central.conf) for the bench's Mosquitto: its
    Receive Maximum bounds each gateway's window (Mosquitto's default of 20 leaves a window of 18, not 64)."""
    lines = CENTRAL_CONF.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if line.split(" ", 1)[0] in TUNING)


@dataclass
class Observed:
    """What the observer saw: confirmations (the receiver's clock) and heartbeats (arrival, last document)."""

    confirms: dict[str, list[tuple[float, int, frozenset[int]]]] = field(default_factory=lambda: defaultdict(list))
    heartbeats: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # monotonic arrivals
    last_heartbeat: dict[str, dict[str, Any]] = field(default_factory=dict)
    stamped: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))  # (at, arrival)


@dataclass(frozen=True, slots=True)
class Journaled:
    """One event as its gateway's journal holds it after the run."""

    detected: float  # epoch seconds
    published: float | None  # the (latest) PUBACK, epoch seconds


def _wall(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def observe(url: str, seen: Observed, ready: asyncio.Event) -> None:
    """Heartbeats and confirmations only: the events are read from the journals afterwards, so that the
    measurement does not double the broker's fan-out or compete for the CPU with one more subscriber."""
    host, port = url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port), identifier=f"flood-observer-{os.getpid()}") as client:
        for topic in (f"{ROOT}/+/heartbeat", f"{ROOT}/+/confirm"):
            await client.subscribe(topic, qos=1)
        ready.set()
        async for message in client.messages:
            now = time.monotonic()
            parts = str(message.topic).split("/")
            site = parts[2]
            assert isinstance(message.payload, bytes | bytearray)
            doc = json.loads(message.payload)
            if parts[3] == "heartbeat":
                seen.heartbeats[site].append(now)
                seen.stamped[site].append((_wall(doc["at"]), time.time()))
                seen.last_heartbeat[site] = doc
            elif parts[3] == "confirm":
                seen.confirms[site].append((_wall(doc["at"]), int(doc["up_to_seq"]), frozenset(doc.get("seqs", []))))


def settled(seen: Observed, sites: list[str]) -> bool:
    """Every building sent two heartbeats, the last with every device online and everything confirmed."""
    for site in sites:
        doc = seen.last_heartbeat.get(site)
        if len(seen.heartbeats[site]) < 2 or doc is None:
            return False
        if doc["devices_online"] != doc["devices_total"] or doc["confirmed_seq"] != doc["last_seq"]:
            return False
    return True


def read_journal(path: Path) -> dict[int, Journaled]:
    """seq -> detection and PUBACK times, from a (stopped) gateway's journal."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, detected_at, published_at FROM events").fetchall()
    finally:
        db.close()
    return {int(seq): Journaled(float(detected or 0.0), published) for seq, detected, published in rows}


def first_confirmations(
    confirms: list[tuple[float, int, frozenset[int]]],
) -> tuple[list[tuple[int, float]], dict[int, float]]:
    """The confirmations of one site as (up_to, at) steps where the cumulative position first rose, and the
    first time each isolated seq beyond it was confirmed."""
    steps: list[tuple[int, float]] = []
    isolated: dict[int, float] = {}
    high = -1
    for at, up_to, seqs in confirms:  # in arrival order
        if up_to > high:
            high = up_to
            steps.append((up_to, at))
        for seq in seqs:
            isolated.setdefault(seq, at)
    return steps, isolated


def confirmation_delays(
    events: dict[str, dict[int, Journaled]], seen: Observed, since: float
) -> tuple[dict[str, list[float]], int]:
    """Per site, per event detected since `since` (wall clock): its first confirmation's time minus its
    detection; and the number of such events never confirmed."""
    out: dict[str, list[float]] = {}
    unconfirmed = 0
    for site, by_seq in events.items():
        steps, isolated = first_confirmations(seen.confirms.get(site, []))
        delays: list[float] = []
        index = 0
        for seq in sorted(by_seq):
            while index < len(steps) and steps[index][0] < seq:
                index += 1
            at = steps[index][1] if index < len(steps) else None
            if seq in isolated and (at is None or isolated[seq] < at):
                at = isolated[seq]
            detected = by_seq[seq].detected
            if detected < since:
                continue
            if at is None:
                unconfirmed += 1
            else:
                delays.append(at - detected)
        out[site] = delays
    return out, unconfirmed


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process so far, seconds (from /proc/PID/stat; fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:  # a few bytes from procfs
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:  # a few bytes from procfs
        return f.read().strip()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def count_cpu(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except OSError:
            out[name] = (float("nan"), float("nan"))  # ended
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process's main thread (its event loop) and of its other threads (the journal's
    writer, the receiver's store: Python names no OS thread, so they are told apart by thread id)."""
    out: dict[str, float] = defaultdict(float)
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError), (task / "stat").open(encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                kind = "loop" if task.name == str(pid) else "other threads"
                out[kind] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def print_cpu(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], seconds: float) -> None:
    """CPU seconds per process over the flood window (user + system), grouped by role, biggest first."""
    used = {name: (after[name][0] - before[name][0], after[name][1] - before[name][1]) for name in before}
    roles: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, (user, system) in used.items():
        role = roles[name.split(" ")[0]]
        role[0] += user
        role[1] += system
    total = sum(u + s for u, s in used.values())
    print(f"CPU seconds during the flood window ({seconds:.1f} s wall; 2 cores = {2 * seconds:.1f} CPU s):")
    for role, (user, system) in sorted(roles.items(), key=lambda kv: -sum(kv[1])):
        print(
            f"  {role:<10} {user + system:6.2f} s (user {user:5.2f}, system {system:5.2f};"
            f" {(user + system) / seconds * 100:5.1f} % of a core)"
        )
    print(f"  {'total':<10} {total:6.2f} s")
    print("  per process: " + ", ".join(f"{name} {u + s:.2f}" for name, (u, s) in sorted(used.items())))


async def run(args: argparse.Namespace, work: Path) -> int:
    shipped = [Path(p) for p in args.sites] if args.sites else DEFAULT_SITES
    shipped_points = sum(len(load_site(p).points) for p in shipped)
    extra = args.points_per_site
    if extra is None:
        extra = flood_points_per_site(args.target_events, len(shipped), shipped_points)
    paths = write_flood_sites(shipped, extra, work)
    sites = [load_site(p) for p in paths]
    names = [s.site.id for s in sites]
    scenario = work / "flood.yaml"
    with scenario.open("w", encoding="utf-8") as out:
        YAML(typ="safe").dump(flood_scenario(sites, args.cycles, args.spread, args.hold, 0.5), out)
    interval = {s.site.id: s.supervision.heartbeat_interval for s in sites}
    py = [sys.executable, "-m", "gateway.cli.main", "--log-level", "warning"]
    broker = Mosquitto(work / "broker", extra_config=central_tuning())
    broker.start()
    assert broker.process is not None
    pids: dict[str, int] = {"broker": broker.process.pid, "bench (observer)": os.getpid()}
    processes: list[asyncio.subprocess.Process] = []
    seen = Observed()
    try:
        sims = {}
        for path, site in zip(paths, sites, strict=True):
            name = site.site.id
            sim_profile = (
                ["-m", "cProfile", "-o", f"{args.profile_simulators}.{name}"] if args.profile_simulators else []
            )
            sims[name] = await spawn(
                [
                    sys.executable,
                    *sim_profile,
                    *py[1:],
                    "simulate",
                    "--site",
                    str(path),
                    "--overlay-out",
                    str(work / f"{name}.sim.yaml"),
                    "--scenario",
                    str(scenario),
                    "--scenario-on-signal",
                ],
                work / f"{name}.sim.log",
            )
            processes.append(sims[name])
            pids[f"simulator {name}"] = sims[name].pid
        for member in range(args.receivers):
            profile = []
            if args.profile_receiver:
                target = args.profile_receiver if args.receivers == 1 else Path(f"{args.profile_receiver}.{member}")
                profile = ["-m", "cProfile", "-o", str(target)]
            tier = ["--group", "flood", "--member", f"m{member}"] if args.receivers > 1 else []
            receiver = await spawn(
                [
                    sys.executable,
                    *profile,
                    *py[1:],
                    "receive",
                    "--broker",
                    broker.url,
                    "--state-dir",
                    str(work / "receiver"),
                    *tier,
                ],
                work / f"receiver{member if args.receivers > 1 else ''}.log",
            )
            processes.append(receiver)
            pids[f"receiver {member}"] = receiver.pid
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            observer = tg.create_task(observe(broker.url, seen, ready))
            await asyncio.wait_for(ready.wait(), 10)
            for path, site in zip(paths, sites, strict=True):
                name = site.site.id
                sim_overlay = work / f"{name}.sim.yaml"
                deadline = time.monotonic() + 120
                while not sim_overlay.exists():
                    if time.monotonic() > deadline or sims[name].returncode is not None:
                        raise RuntimeError(f"simulator of {name} did not start; see {work}/{name}.sim.log")
                    await asyncio.sleep(0.1)  # polling for a file another process writes
                overlay = gateway_overlay(
                    YAML(typ="safe").load(sim_overlay.read_text()), broker.url, work / name, free_port()
                )
                with (work / f"{name}.overlay.yaml").open("w", encoding="utf-8") as out:
                    YAML(typ="safe").dump(overlay, out)
                profile = ["-m", "cProfile", "-o", f"{args.profile_gateways}.{name}"] if args.profile_gateways else []
                gateway = await spawn(
                    [
                        sys.executable,
                        *profile,
                        *py[1:],
                        "run",
                        "--site",
                        str(path),
                        "--overlay",
                        str(work / f"{name}.overlay.yaml"),
                    ],
                    work / f"{name}.log",
                )
                processes.append(gateway)
                pids[f"gateway {name}"] = gateway.pid
            deadline = time.monotonic() + 180
            while not settled(seen, names):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the buildings did not settle within 180 s; logs in {work}")
                await asyncio.sleep(0.5)  # polling what the observer collected
            quiet_before = count_cpu(pids)  # what the settled system costs with nothing happening
            await asyncio.sleep(QUIET)
            quiet = {name: sum(after) - sum(quiet_before[name]) for name, after in count_cpu(pids).items()}
            print(
                f"CPU seconds in {QUIET:g} quiet seconds before the flood: "
                + ", ".join(f"{name} {used:.2f}" for name, used in sorted(quiet.items()))
            )
            load_start = loadavg()
            cpu_before = count_cpu(pids)
            threads_before = {name: thread_cpu(pid) for name, pid in pids.items() if " " in name}
            flood_wall, flood_mono = time.time(), time.monotonic()
            for process in sims.values():
                process.send_signal(signal.SIGUSR1)
            length = 0.5 + args.cycles * 2 * (args.spread + args.hold)
            await asyncio.sleep(length + 2 * CONFIRM_WITHIN)  # the flood's schedule, plus the bound twice
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                # done when every gateway says: everything journaled is confirmed (or the deadline, to report)
                beats = [seen.last_heartbeat.get(n, {}) for n in names]
                if all(
                    b.get("confirmed_seq") == b.get("last_seq") and _wall(b["at"]) > flood_wall + length for b in beats
                ):
                    break
                await asyncio.sleep(0.5)  # polling what the observer collected
            cpu_after = count_cpu(pids)
            threads_after = {name: thread_cpu(pid) for name, pid in pids.items() if " " in name}
            window = time.monotonic() - flood_mono
            load_end = loadavg()
            observer.cancel()
    finally:
        for process in reversed(processes):
            await stop(process)
        broker.stop()

    events = {name: read_journal(work / name / f"{name}.journal.sqlite3") for name in names}
    per_site, unconfirmed = confirmation_delays(events, seen, flood_wall)
    delays = [d for site_delays in per_site.values() for d in site_delays]
    detected = sorted(j.detected for e in events.values() for j in e.values() if j.detected >= flood_wall)
    print(f"loadavg at start: {load_start}\nloadavg at end:   {load_end}")
    print(
        f"flood: {len(sites)} buildings, {sum(len(s.points) for s in sites)} points"
        f" ({shipped_points} shipped + {extra} generated per building), {args.cycles} cycle(s),"
        f" raise and clear each within {args.spread:g} s, hold {args.hold:g} s, {args.receivers} receiver(s)"
    )
    per_site_count = ", ".join(
        f"{s} {sum(1 for j in e.values() if j.detected >= flood_wall)}" for s, e in events.items()
    )
    print(f"points raised within {args.spread:g} s: {sum(len(s.points) for s in sites)} (then cleared)")
    print(f"events detected during the flood: {len(detected)} ({per_site_count})")
    busiest = 0
    if detected:
        ends = 0
        for i, start in enumerate(detected):  # two pointers: the most detections in any [t, t + 1 s)
            while ends < len(detected) and detected[ends] < start + 1.0:
                ends += 1
            busiest = max(busiest, ends - i)
        print(f"  most events detected within one second: {busiest} (target {args.target_events})")
    if delays:
        late = sum(1 for d in delays if d > CONFIRM_WITHIN)
        print(
            f"detection -> confirmed at the receiver: p50 {statistics.median(delays) * 1000:.0f} ms,"
            f" p99 {percentile(delays, 0.99) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms;"
            f" over {CONFIRM_WITHIN:g} s: {late}; never confirmed: {unconfirmed}"
        )
    for name, by_seq in sorted(events.items()):
        flood = [j for j in by_seq.values() if j.detected >= flood_wall]
        if flood:
            to_broker = [j.published - j.detected for j in flood if j.published is not None]
            site_delays = per_site.get(name) or [0.0]
            print(
                f"  {name:<14} {len(flood):>5} events: detection -> PUBACK p50"
                f" {statistics.median(to_broker or [0.0]) * 1000:.0f} / max {max(to_broker or [0.0]) * 1000:.0f} ms;"
                f" -> confirmed p50 {statistics.median(site_delays) * 1000:.0f} / max"
                f" {max(site_delays) * 1000:.0f} ms"
            )
    window_end = flood_mono + 0.5 + args.cycles * 2 * (args.spread + args.hold) + CONFIRM_WITHIN
    worst = 0.0
    for name, beats in sorted(seen.heartbeats.items()):
        during = [t for t in beats if flood_mono - interval[name] <= t <= window_end + interval[name]]
        gaps = [b - a for a, b in itertools.pairwise(during)]
        gap = max(gaps) if gaps else float("nan")
        worst = max(worst, gap / interval[name])
        # Where a long gap came from: the gateway's own beat (its `at`, when the beat began) or the way to the
        # observer (arrival - at: the journal query, paho's queue, the broker, the observer's own loop).
        last = flood_wall + (window_end - flood_mono) + interval[name]
        stamps = [(at, came) for at, came in seen.stamped[name] if flood_wall - interval[name] <= at <= last]
        by_at = max((b[0] - a[0] for a, b in itertools.pairwise(stamps)), default=float("nan"))
        transit = max((came - at for at, came in stamps), default=float("nan"))
        print(
            f"heartbeats {name:<14} max gap during the flood {gap:5.2f} s (interval {interval[name]:g} s);"
            f" between their `at` {by_at:5.2f} s, longest at -> arrival {transit:4.2f} s"
        )
    print_cpu(cpu_before, cpu_after, window)
    for name in sorted(threads_after):
        split = {t: v - threads_before[name].get(t, 0.0) for t, v in threads_after[name].items()}
        shown = ", ".join(f"{t} {v:.2f}" for t, v in sorted(split.items(), key=lambda kv: -kv[1]) if v >= 0.01)
        print(f"  threads of {name}: {shown}")
    ok = (
        unconfirmed == 0
        and bool(delays)
        and max(delays) <= CONFIRM_WITHIN
        and worst < 1.5
        and busiest >= args.target_events
    )
    print("OK" if ok else "NOT MET", f"(workdir {work})")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1)
    parser.add_argument("--spread", type=float, default=1.0, help="seconds over which all points are raised")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds in alarm before clearing")
    parser.add_argument("--sites", nargs="*", help="site configs (default: the four shipped buildings)")
    parser.add_argument(
        "--target-events",
        type=int,
        default=10_000,
        help="events to be detected within one second across the buildings (the issue's 10,000)",
    )
    parser.add_argument(
        "--points-per-site", type=int, help="generated flood points per building (default: from --target-events)"
    )
    parser.add_argument("--receivers", type=int, default=1, help="1: one receiver; N > 1: a tier of N members")
    parser.add_argument("--profile-receiver", type=Path, metavar="FILE", help="cProfile the receiver process(es)")
    parser.add_argument(
        "--profile-gateways", type=Path, metavar="PREFIX", help="cProfile each gateway process to PREFIX.<site>"
    )
    parser.add_argument(
        "--profile-simulators", type=Path, metavar="PREFIX", help="cProfile each simulator process to PREFIX.<site>"
    )
    parser.add_argument("--keep", action="store_true", help="keep the workdir (logs, journals, receiver store)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gcmk-flood-"))
    try:
        return asyncio.run(run(args, work))
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
