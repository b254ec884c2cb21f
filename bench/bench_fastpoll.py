"""Fast polling: 512 alarm inputs on one Modbus TCP device polled every 20 ms, flip -> broker.

Four processes, as deployed (all on 127.0.0.1, OS-assigned ports):
- the device: a stock pymodbus server (`ModbusTcpServer` on a `SimDevice`) with 512 discrete inputs; once told to
  start it flips one input every `--flip-ms` (10 ms), walking the inputs in a shuffled order so that no input
  flips again within 5 s (a poller must be able to see every change), and writes each flip with its wall-clock
  time to its own truth log;
- the gateway: `gcmk-gateway run` (this file in `--role gateway`, which only may wrap the journal) with its real
  journal (SQLite, WAL, synchronous=FULL) and MQTT to a Mosquitto started here (tests/support/mosquitto.py);
- a subscriber: a paho client (QoS 1) that writes every event with the time it arrived;
- this process: starts them, tells the device to start and stop, and compares the truth log with what arrived.

Reported: changes missed (a flip with no event of that point and value), flip -> broker (arrival at the
subscriber) p50/p99/max, flip -> detected_at (the poller's detection time, in the event), the gateway's CPU
(% of one core, utime+stime from /proc over the flipping phase, and over an idle phase before it: polling
with nothing changing) and RSS, and /proc/loadavg at start and end.

`--slow-journal STALL:EVERY` wraps the gateway's journal writes (bench only: `Journal.write`, the SQL half of a
commit, run on the journal thread) so that one commit every EVERY seconds first stalls STALL seconds, as a
slow disk's fsync would (e.g. 0.5:3).

    .venv/bin/python bench/bench_fastpoll.py                           # 20 s of flips, ~30 s in all
    .venv/bin/python bench/bench_fastpoll.py --slow-journal 0.5:3      # with a 500 ms stall every 3 s
    .venv/bin/python bench/bench_fastpoll.py --poll 0.1 --flip-ms 100  # the side-by-side setting of issue 17
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SITE = "fastpoll"
TICK = os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the device process --------------------------------------------------------------------------------


async def device_main(args: argparse.Namespace) -> None:
    import logging

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.getLogger("pymodbus").setLevel(logging.WARNING)
    bits = [SimData(0, count=args.inputs, values=False, datatype=DataType.BITS)]
    registers = [SimData(0, count=8, values=0, datatype=DataType.REGISTERS)]
    server = ModbusTcpServer(SimDevice(id=1, simdata=(bits, bits, registers, registers)), address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        Path(args.port_file).write_text(str(server.transport.sockets[0].getsockname()[1]))  # noqa: ASYNC240
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.readline()  # "start"
        stop = asyncio.ensure_future(reader.readline())  # "stop" (or EOF)
        order = list(range(args.inputs))
        random.Random(1).shuffle(order)
        values = [False] * args.inputs
        period = args.flip_ms / 1000
        with open(args.truth, "w", encoding="utf-8") as truth:  # noqa: ASYNC230 (a local file, line-buffered)
            due = loop.time()
            n = 0
            while not stop.done():
                address = order[n % len(order)]
                values[address] = not values[address]
                at = time.time()  # before the write: no read can see the flip earlier
                await server.async_setValues(1, 2, address, [values[address]])
                truth.write(f"{at:.6f} {address} {int(values[address])}\n")
                n += 1
                due += period
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.wait({stop}, timeout=delay)
        await asyncio.Event().wait()  # still answering (the last flips must be read) until terminated
    finally:
        await server.shutdown()


# --- the subscriber process ----------------------------------------------------------------------------


def subscriber_main(args: argparse.Namespace) -> None:
    import paho.mqtt.client as mqtt

    out = open(args.arrivals, "w", encoding="utf-8")  # noqa: SIM115 (closed on SIGTERM)
    ready = Path(args.arrivals + ".ready")
    lock = threading.Lock()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        at = time.time()
        with lock:
            if "/events/" in message.topic:
                out.write(f"{at:.6f} {message.payload.decode()}\n")
            elif message.topic.endswith("/heartbeat") and not ready.exists():
                ready.write_text(message.payload.decode())  # the gateway is up: the bench may start

    def on_connect(client: Any, _userdata: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        client.subscribe(f"gcmk/v1/{SITE}/events/#", qos=1)
        client.subscribe(f"gcmk/v1/{SITE}/heartbeat", qos=1)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fastpoll-sub")
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect("127.0.0.1", args.broker_port)

    def stop(*_: Any) -> None:
        client.disconnect()

    signal.signal(signal.SIGTERM, stop)
    client.loop_forever()
    with lock:
        out.close()


# --- the gateway process -------------------------------------------------------------------------------


def gateway_main(args: argparse.Namespace) -> int:
    if args.slow_journal:
        stall, every = (float(x) for x in args.slow_journal.split(":"))
        install_slow_journal(stall, every, Path(args.site).with_name("stalls.log"))
    from gateway.cli.main import main

    argv = ["--log-level", "warning", "run", "--site", args.site, "--overlay", args.overlay]
    if not args.profile:
        return main(argv)
    import cProfile

    profile = cProfile.Profile(time.thread_time)  # CPU of the event loop thread, not wall time
    profile.enable()
    try:
        return main(argv)  # until SIGTERM: the gateway's clean shutdown
    finally:
        profile.disable()
        profile.dump_stats(args.profile)


def install_slow_journal(stall: float, every: float, log: Path) -> None:
    """Bench only: the gateway's journal, whose `write` (the SQL half of a commit, with its fsync) stalls
    `stall` seconds once every `every` seconds, as a slow disk does. Swapped in where wiring opens it. Each
    stall is written to `log` (wall-clock start and end), so the bench can tell the flips that waited for one."""
    from gateway.app import wiring
    from gateway.config.models import SiteConfig
    from gateway.delivery.journal import Journal, Plan
    from gateway.delivery.sink import journal_path

    class SlowJournal(Journal):
        next_stall = time.monotonic() + every

        def write(self, plan: Plan) -> None:
            now = time.monotonic()
            if now >= SlowJournal.next_stall:
                SlowJournal.next_stall = now + every
                start = time.time()
                time.sleep(stall)
                with log.open("a") as out:
                    out.write(f"{start:.6f} {time.time():.6f}\n")
            super().write(plan)

    def open_journal(site: SiteConfig) -> Journal:
        return SlowJournal(
            journal_path(site), site=site.site.id, max_bytes=site.journal.max_bytes, retention=site.journal.retention
        )

    wiring.open_journal = open_journal  # type: ignore[assignment]


def site_document(inputs: int, poll: float) -> dict[str, Any]:
    points = [
        {
            "id": f"in-{i}",
            "name": f"input {i}",
            "device": "panel",
            "tenant": "jv",
            "zone": "z1",
            "type": "burglary",
            "source": {"protocol": "modbus", "table": "discrete_input", "address": i},
            "alarm": [1],
            "normal": [0],
        }
        for i in range(inputs)
    ]
    return {
        "version": 1,
        "site": {"id": SITE, "name": "Fast polling", "address": "Teststraat 1"},
        "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
        "zones": [{"id": "z1", "name": "Zone 1", "tenant": "jv"}],
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "insecure": True},
        "journal": {"data_dir": "var/fastpoll"},
        "supervision": {"heartbeat_interval": 1.0},
        "delivery": {"confirm": "broker"},
        "devices": [
            {
                "protocol": "modbus",
                "id": "panel",
                "name": "Inbraakcentrale",
                "host": "127.0.0.1",
                "port": 502,
                "poll_interval": poll,
                "timeout": poll * 0.9,
                # 0.5 s of failed polls before offline, as an installer would set it at this rate (5 at
                # 20 ms would call a busy moment of the machine a comm loss)
                "offline_after_failures": max(5, round(0.5 / poll)),
            }
        ],
        "points": points,
    }


# --- the bench -----------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def analyse(truth: Path, arrivals: Path, stalls: Path, poll: float) -> dict[str, Any]:
    from datetime import datetime

    flips: list[tuple[float, str, int]] = []
    for line in truth.read_text().splitlines():
        at, address, value = line.split()
        flips.append((float(at), f"in-{address}", int(value)))
    seen: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for line in arrivals.read_text().splitlines():
        at, payload = line.split(" ", 1)
        event = json.loads(payload)
        raw = event["source"].get("raw")
        if raw is None or not event["point"]["id"].startswith("in-"):
            continue
        detected = datetime.fromisoformat(event["detected_at"]).timestamp()
        seen.setdefault((event["point"]["id"], int(raw)), []).append((float(at), detected))
    windows = []
    if stalls.exists():
        windows = [tuple(float(x) for x in line.split()) for line in stalls.read_text().splitlines()]
    broker: list[float] = []
    clear: list[float] = []  # flips whose commit did not wait for a stall (seen after one ended, or long before)
    detection: list[float] = []
    missed = 0
    for at, point_id, value in flips:
        arrivals_of = seen.get((point_id, value), [])
        # the first arrival after the flip (an input flips again only seconds later)
        match = next(((a, d) for a, d in sorted(arrivals_of) if d >= at - 0.002), None)
        if match is None:
            missed += 1
            continue
        broker.append(match[0] - at)
        detection.append(match[1] - at)
        if not any(start - 2 * poll <= at <= end for start, end in windows):
            clear.append(match[0] - at)
    ms = 1000.0
    return {
        "flips": len(flips),
        "missed": missed,
        "broker_ms": [statistics.median(broker) * ms, pct(broker, 0.99) * ms, max(broker) * ms] if broker else [],
        "stalls": len(windows),
        "clear_ms": [statistics.median(clear) * ms, pct(clear, 0.99) * ms, max(clear) * ms, len(clear)]
        if clear
        else [],
        "detect_ms": [statistics.median(detection) * ms, pct(detection, 0.99) * ms, max(detection) * ms]
        if detection
        else [],
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from ruamel.yaml import YAML

    from tests.support.mosquitto import Mosquitto

    load_start = loadavg()
    work = Path(tempfile.mkdtemp(prefix="fastpoll-"))
    me = str(ROOT / "bench" / Path(__file__).name)
    py = sys.executable
    with Mosquitto(work / "broker") as broker:
        port_file = work / "device.port"
        device = await asyncio.create_subprocess_exec(
            py, me, "--role", "device", "--inputs", str(args.inputs), "--flip-ms", str(args.flip_ms),
            "--port-file", str(port_file), "--truth", str(work / "truth.log"),
            stdin=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        while True:  # the device's port, once it listens
            if port_file.exists() and port_file.read_text():
                break
            await asyncio.sleep(0.05)
        device_port = int(port_file.read_text())
        yaml = YAML(typ="safe")
        site_path, overlay_path = work / "site.yaml", work / "overlay.yaml"
        with site_path.open("w") as f:
            yaml.dump(site_document(args.inputs, args.poll), f)
        overlay = {
            "mqtt": {"url": broker.url, "insecure": True},
            "journal": {"data_dir": str(work / "journal")},
            "devices": {"panel": {"host": "127.0.0.1", "port": device_port}},
        }
        with overlay_path.open("w") as f:
            yaml.dump(overlay, f)
        subscriber = await asyncio.create_subprocess_exec(
            py, me, "--role", "subscriber", "--broker-port", str(broker.port), "--arrivals", str(work / "arrivals.log"),
            cwd=ROOT,
        )  # fmt: skip
        gw_args = ["--role", "gateway", "--site", str(site_path), "--overlay", str(overlay_path)]
        if args.slow_journal:
            gw_args += ["--slow-journal", args.slow_journal]
        if args.profile:
            gw_args += ["--profile", args.profile]
        with (work / "gateway.log").open("w") as log:
            gateway = await asyncio.create_subprocess_exec(py, me, *gw_args, cwd=ROOT, stdout=log, stderr=log)
        try:
            ready = work / "arrivals.log.ready"
            started = time.monotonic()
            while gateway.returncode is None and time.monotonic() - started < 60:
                if ready.exists():  # imports, journal open, MQTT session: its first heartbeat
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(args.warmup)  # then the first polls (512 readings: unknown -> normal)
            if gateway.returncode is not None:
                raise SystemExit(f"the gateway exited: {(work / 'gateway.log').read_text()}")
            idle0, i0 = cpu_seconds(gateway.pid), time.monotonic()
            await asyncio.sleep(args.idle)  # polling, nothing changes: the cost of polling alone
            cpu0, t0 = cpu_seconds(gateway.pid), time.monotonic()
            idle_pct = 100 * (cpu0 - idle0) / (t0 - i0)
            assert device.stdin is not None
            device.stdin.write(b"start\n")
            await device.stdin.drain()
            await asyncio.sleep(args.seconds)
            cpu1, t1 = cpu_seconds(gateway.pid), time.monotonic()
            rss = rss_mb(gateway.pid)
            device.stdin.write(b"stop\n")
            await device.stdin.drain()
            await asyncio.sleep(args.settle)
        finally:
            for proc in (gateway, subscriber, device):
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            for proc in (gateway, subscriber, device):
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
    result = analyse(work / "truth.log", work / "arrivals.log", work / "stalls.log", args.poll)
    result.update(
        cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),
        idle_cpu_pct=idle_pct,
        rss_mb=rss,
        load_start=load_start,
        load_end=loadavg(),
        workdir=str(work),
        poll_ms=args.poll * 1000,
        slow_journal=args.slow_journal,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["bench", "device", "gateway", "subscriber"], default="bench")
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--poll", type=float, default=0.02, help="poll interval, s")
    parser.add_argument("--flip-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="flipping phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="after the gateway's first heartbeat")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=5.0, help="polling without changes, before the flips")
    parser.add_argument("--slow-journal", default="", metavar="STALL:EVERY")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", default="", metavar="FILE", help="cProfile (CPU time) of the gateway loop")
    for internal in ("--port-file", "--truth", "--site", "--overlay", "--arrivals"):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    parser.add_argument("--broker-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "device":
        asyncio.run(device_main(args))
        return 0
    if args.role == "subscriber":
        subscriber_main(args)
        return 0
    if args.role == "gateway":
        return gateway_main(args)
    r = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(r))
        return 0
    b, d = r["broker_ms"], r["detect_ms"]
    print(f"fast polling: {args.inputs} inputs, poll {r['poll_ms']:g} ms, a flip every {args.flip_ms:g} ms"
          f"{', slow journal ' + r['slow_journal'] if r['slow_journal'] else ''}")  # fmt: skip
    print(f"  flips {r['flips']}, missed {r['missed']}")
    if b:
        print(f"  flip -> broker   p50 {b[0]:.1f} ms, p99 {b[1]:.1f} ms, max {b[2]:.1f} ms")
        if r["stalls"]:
            c = r["clear_ms"]
            print(f"  {r['stalls']} journal stalls; the {c[3]} flips not within 2 polls before or during one:"
                  f" flip -> broker p50 {c[0]:.1f} ms, p99 {c[1]:.1f} ms, max {c[2]:.1f} ms")  # fmt: skip
        print(f"  flip -> detected p50 {d[0]:.1f} ms, p99 {d[1]:.1f} ms, max {d[2]:.1f} ms")
    print(f"  gateway CPU {r['cpu_pct']:.1f} % of one core while flipping ({r['idle_cpu_pct']:.1f} % polling with"
          f" nothing changing), RSS {r['rss_mb']:.0f} MB")  # fmt: skip
    print(f"  load average at start {r['load_start']}, at end {r['load_end']}; workdir {r['workdir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
