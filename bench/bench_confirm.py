"""Confirmation benchmark: delivery counted when the meldkamer confirmed, against baselines in the same run.

    .venv/bin/python bench/bench_confirm.py                  # latency at 100 and 1,000 ev/s, throughput, 100k drain
    .venv/bin/python bench/bench_confirm.py --only-latency [--seconds 10] [--rate 1000]
    .venv/bin/python bench/bench_confirm.py --only-throughput [--events 20000] [--rounds 3]
    .venv/bin/python bench/bench_confirm.py --only-drain [--backlog 100000]

Setup, all on loopback: a Mosquitto started by the benchmark (as in bench_delivery.py), the real DeliverySink
with its journal in this process (`delivery: {confirm: meldkamer}`), and the reference receiver
(gateway.tools.receiver_link: stores every event in SQLite with synchronous=FULL, then confirms it on
gcmk/v1/{site}/confirm) in a process of its own, as the meldkamer is. "Confirmed" is the moment the sink
applied the receiver's confirmation to its journal: `DeliveryStats.confirmed_seq` moving past the event's seq
(timed by a DeliveryStats whose confirmed_seq setter notes the time; nothing in the sink is patched).

1. latency: events handed to accept() at a steady rate (100 and 1,000 ev/s), each made just before its
   hand-off (detected_at = then); detection -> confirmation p50 / p99. Baselines in the same run: (a) detection
   -> PUBACK of the same events (the sink's own latency samples); (b) a raw aiomqtt round trip at the same rate:
   a pre-serialised event published QoS 1, a raw echo client in another process answering each with a small QoS
   1 message (no storage), timed until the answer is back; rounds of raw / sink / raw.
2. throughput: N events through accept() (50 producers x 1 event, as bench_delivery.py) until all confirmed,
   against the raw aiomqtt bounded-window loop of bench_delivery.py (publish N until mosquitto_sub has them
   all); rounds of raw / sink / raw, median ratio.
3. drain: a backlog journaled while the broker was down; the broker starts; events/s until all confirmed.
   Baseline in the same run: bench_delivery.py's drain (confirm: broker, until mosquitto_sub has them all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from bench.bench_delivery import WINDOW, raw_loop, until  # noqa: E402
from bench.bench_delivery import drain as drain_broker  # noqa: E402
from gateway.config.models import SiteConfig  # noqa: E402
from gateway.delivery.publisher import _properties  # noqa: E402
from gateway.delivery.sink import DeliverySink  # noqa: E402
from gateway.delivery.stats import DeliveryStats  # noqa: E402
from gateway.domain.event import Event  # noqa: E402
from gateway.domain.state import Batch  # noqa: E402
from gateway.mqtt.client import NODELAY  # noqa: E402
from tests.support.delivery_harness import make_event, site_config  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402

PRODUCERS = 50
RECEIVER = "meldkamer"
CONFIRMING = {"confirm": "meldkamer", "receivers": [RECEIVER], "confirm_timeout": "10s"}  # the default timeout
NODELAY_RECEIVER = False  # --nodelay-receiver
LOGS: Path | None = None  # --logs: where the receiver and echo processes log (stderr)
_CONFIRMED_SEQ = DeliveryStats.__dict__["confirmed_seq"]  # the slot's descriptor (slots dataclass)


class TimedStats(DeliveryStats):
    """DeliveryStats that notes (time.time(), value) whenever confirmed_seq moves up: the moment the sink
    applied a confirmation."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[float, int]] = []

    @property  # type: ignore[override]
    def confirmed_seq(self) -> int:
        return int(_CONFIRMED_SEQ.__get__(self))

    @confirmed_seq.setter
    def confirmed_seq(self, value: int) -> None:
        before = _CONFIRMED_SEQ.__get__(self) if hasattr(self, "moves") else 0
        _CONFIRMED_SEQ.__set__(self, value)
        if hasattr(self, "moves") and value > before:
            self.moves.append((time.time(), value))


def confirm_times(moves: list[tuple[float, int]], start: int = 0) -> dict[int, float]:
    """seq -> when it became confirmed, from the moves of confirmed_seq."""
    out: dict[int, float] = {}
    previous = start
    for at, value in moves:
        for seq in range(previous + 1, value + 1):
            out[seq] = at
        previous = max(previous, value)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(len(ordered) * p / 100) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


# --- the meldkamer side, in a process of its own ---------------------------------------------------------


async def _receiver_process(url: str, state_dir: Path, site: str, nodelay: bool) -> None:
    """The reference receiver as the meldkamer runs it, without console output; prints `ready` once it has
    subscribed. `nodelay`: its MQTT client with TCP_NODELAY (the reference receiver does not set it)."""
    from gateway.tools import receiver_link
    from gateway.tools.receiver import ReceiverState
    from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions

    if nodelay:
        plain = receiver_link.aiomqtt.Client

        def with_nodelay(*args: Any, **kwargs: Any) -> aiomqtt.Client:
            return plain(*args, socket_options=NODELAY, **kwargs)

        receiver_link.aiomqtt.Client = with_nodelay  # type: ignore[misc, assignment]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    link = ReceiverLink(url, ReceiverState(site=site), lambda _n: None, ReceiverOptions(RECEIVER, state_dir))
    task = asyncio.create_task(link.run(stop))
    await until(lambda: link._client is not None or task.done(), 60)  # subscribed (the link's own marker)
    print("ready", flush=True)
    connected = True
    while not task.done():  # each reconnection, with its time, for the drain's breakdown
        await asyncio.sleep(0.005)
        if (link._client is not None) != connected:
            connected = not connected
            if connected:
                print(f"connected {time.time()}", flush=True)
    await task


async def _echo_process(port: int, site: str) -> None:
    """Raw baseline of a confirmation round trip: every event message answered with a small QoS 1 message."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-echo", protocol=aiomqtt.ProtocolVersion.V5, socket_options=NODELAY
    ) as client:
        await client.subscribe(f"gcmk/v1/{site}/events/#", qos=1)
        await client.publish(f"gcmk/v1/{site}/echo-ready", b"1", qos=1)

        answering: set[asyncio.Task[None]] = set()

        async def answer() -> None:
            async for message in client.messages:  # each answer as a task: no wait for one PUBACK before the next
                seq = json.loads(message.payload)["seq"]  # type: ignore[arg-type]
                task = asyncio.create_task(client.publish(f"gcmk/v1/{site}/confirm", str(seq).encode(), qos=1))
                answering.add(task)
                task.add_done_callback(answering.discard)

        task = asyncio.create_task(answer())
        await stop.wait()
        task.cancel()


async def spawn(*args: str, ready: bool = False) -> asyncio.subprocess.Process:
    """This file in another role; with `ready`, returns once the process printed `ready`."""
    log = (LOGS / f"{args[0].strip('-')}.log").open("ab") if LOGS is not None else None
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE), *args,
            cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if ready else asyncio.subprocess.DEVNULL,
            stderr=log or asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        if log is not None:
            log.close()
    if ready:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"{args[0]} did not start: {line!r}")
    return proc


async def end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- the gateway side ------------------------------------------------------------------------------------


def confirming_site(work: Path, port: int, site_id: str) -> SiteConfig:
    site = site_config(work / site_id, f"mqtt://127.0.0.1:{port}", max_inflight=WINDOW, delivery=CONFIRMING)
    return site.model_copy(update={"site": site.site.model_copy(update={"id": site_id})})


def event(n: int, site_id: str) -> Event:
    """A sample event of `site_id`, detected now."""
    return make_event(n).model_copy(update={"site": site_id})


@dataclass
class Confirming:
    """A DeliverySink with TimedStats and its own receiver process (fresh state dir), warmed up: one event
    confirmed end to end before measuring, so the receiver's persistent session exists."""

    sink: DeliverySink
    stats: TimedStats
    receiver: asyncio.subprocess.Process
    site_id: str
    reconnected: list[float]  # when the receiver connected again (epoch seconds)


@contextlib.asynccontextmanager
async def confirming(work: Path, broker: Mosquitto, site_id: str, *, warm: bool = True) -> Any:
    receiver = await spawn(
        "--receiver", broker.url, str(work / f"{site_id}.receiver"), site_id, "1" if NODELAY_RECEIVER else "0",
        ready=True,
    )
    reconnected: list[float] = []

    async def follow(stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            word, _, at = line.decode().partition(" ")
            if word == "connected":
                reconnected.append(float(at))

    assert receiver.stdout is not None
    follower = asyncio.create_task(follow(receiver.stdout))
    stats = TimedStats()
    sink = DeliverySink(confirming_site(work, broker.port, site_id), config_hash="bench", version="bench", stats=stats)
    try:
        await sink.load_state()
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(sink.run())
            if warm:
                await until(lambda: stats.connected, 30)
                (first,) = await sink.accept(Batch(events=(event(-1, site_id),)))
                assert first.seq is not None
                await until(lambda: stats.confirmed_seq >= first.seq, 60)  # type: ignore[operator]
            try:
                yield Confirming(sink, stats, receiver, site_id, reconnected)
            finally:
                await sink.close()
                await run
    finally:
        await end(receiver)
        await follower


async def paced(total: int, rate: float, one: Callable[[int], Any]) -> None:
    """`one(i)` for i in range(total) as tasks, started at `rate` per second (a schedule, not synchronisation)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.TaskGroup() as tg:
        for i in range(total):
            tg.create_task(one(i))
            delay = start + (i + 1) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


async def sink_latency(work: Path, broker: Mosquitto, rate: int, seconds: float, k: int) -> dict[str, Any]:
    async with confirming(work, broker, f"lat-{rate}-{k}") as c:
        total = int(rate * seconds)
        detected: dict[int, float] = {}
        base = c.stats.confirmed_seq

        async def one(i: int) -> None:
            e = event(i, c.site_id)
            (done,) = await c.sink.accept(Batch(events=(e,)))
            assert done.seq is not None
            detected[done.seq] = e.detected_at.timestamp()

        await paced(total, rate, one)
        last = base + total
        await until(lambda: c.stats.confirmed_seq >= last, 120)
        at = confirm_times(c.stats.moves)
        confirm = [at[s] - detected[s] for s in range(base + 1, last + 1)]
        puback = list(c.stats.latency)[-total:]  # the same events' detection -> PUBACK
        return {
            "confirm_p50": statistics.median(confirm),
            "confirm_p99": pct(confirm, 99),
            "puback_p50": statistics.median(puback),
            "puback_p99": pct(puback, 99),
            "samples": len(confirm),
            "confirmations": c.stats.confirmations,
            "redelivered": c.stats.redelivered,
        }


async def raw_round_trip(broker: Mosquitto, rate: int, seconds: float, k: int) -> tuple[float, float]:
    """Raw aiomqtt: publish a pre-serialised event QoS 1; an echo client in another process answers each with a
    QoS 1 message; timed from just before publish() until the answer arrived."""
    site = f"raw-{rate}-{k}"
    total = int(rate * seconds)
    payloads = [event(i, site).with_seq(i + 1).to_json() for i in range(total)]
    props = _properties("gcmk.event.v1")
    sent: dict[int, float] = {}
    back: dict[int, float] = {}
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"bench-raw-{site}", protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
    ) as client:  # fmt: skip
        client.pending_calls_threshold = 10 * WINDOW
        await client.subscribe(f"gcmk/v1/{site}/confirm", qos=1)
        await client.subscribe(f"gcmk/v1/{site}/echo-ready", qos=1)
        echo = await spawn("--echo", str(broker.port), site)
        try:
            ready = asyncio.Event()

            async def listen() -> None:
                async for message in client.messages:
                    now = time.time()
                    if message.topic.matches(f"gcmk/v1/{site}/echo-ready"):
                        ready.set()
                    elif message.topic.matches(f"gcmk/v1/{site}/confirm"):
                        back[int(message.payload)] = now  # type: ignore[arg-type]

            listener = asyncio.create_task(listen())
            await asyncio.wait_for(ready.wait(), 30)

            async def one(i: int) -> None:
                sent[i + 1] = time.time()
                await client.publish(f"gcmk/v1/{site}/events/technical", payloads[i], qos=1, properties=props)

            await paced(total, rate, one)
            await until(lambda: len(back) >= total, 60)
            listener.cancel()
        finally:
            await end(echo)
    rtt = [back[s] - sent[s] for s in sent]
    return statistics.median(rtt), pct(rtt, 99)


async def report_latency(work: Path, broker: Mosquitto, rates: list[int], seconds: float) -> None:
    for k, rate in enumerate(rates):
        raw_before = await raw_round_trip(broker, rate, seconds / 2, k)
        lat = await sink_latency(work, broker, rate, seconds, k)
        raw_after = await raw_round_trip(broker, rate, seconds / 2, k + 100)
        raw50, raw99 = (raw_before[0] + raw_after[0]) / 2, (raw_before[1] + raw_after[1]) / 2
        print(
            f"latency at {rate:,} ev/s ({lat['samples']} events): detection -> confirmed p50 {ms(lat['confirm_p50'])},"
            f" p99 {ms(lat['confirm_p99'])}; same events detection -> PUBACK p50 {ms(lat['puback_p50'])}, p99"
            f" {ms(lat['puback_p99'])}; raw aiomqtt round trip (publish -> echo back) p50 {ms(raw50)}, p99"
            f" {ms(raw99)}; ratio confirmed/PUBACK p50 {lat['confirm_p50'] / lat['puback_p50']:.1f}x, confirmed/raw"
            f" round trip p50 {lat['confirm_p50'] / raw50:.1f}x p99 {lat['confirm_p99'] / raw99:.1f}x"
            f" ({lat['confirmations']} confirmations applied, {lat['redelivered']} redelivered)",
            flush=True,
        )


@dataclass
class Throughput:
    pubacked: float  # seconds until all PUBACKed
    confirmed: float  # seconds until all confirmed
    loop_cpu_us: float  # this process's event loop thread, per event
    receiver_cpu_us: float  # the receiver process, per event
    confirmations: int
    redelivered: int


async def sink_throughput(work: Path, broker: Mosquitto, n: int, k: int) -> Throughput:
    async with confirming(work, broker, f"thr-{k}") as c:
        events = [event(i, c.site_id) for i in range(n)]
        base = c.stats.confirmed_seq
        receiver_cpu = await asyncio.to_thread(cpu_seconds, c.receiver.pid)
        start, cpu = time.perf_counter(), time.thread_time()
        published: list[float] = []

        async def produce(j: int) -> None:
            for e in events[j::PRODUCERS]:
                await c.sink.accept(Batch(events=(e,)))

        async with asyncio.TaskGroup() as tg:
            for j in range(PRODUCERS):
                tg.create_task(produce(j))

        def all_published() -> bool:
            if c.stats.published_seq >= base + n and not published:
                published.append(time.perf_counter() - start)
            return c.stats.confirmed_seq >= base + n

        await until(all_published, 300)
        confirmed = time.perf_counter() - start
        loop_us = (time.thread_time() - cpu) / n * 1e6
        receiver_us = (await asyncio.to_thread(cpu_seconds, c.receiver.pid) - receiver_cpu) / n * 1e6
        return Throughput(
            published[0] if published else confirmed,
            confirmed,
            loop_us,
            receiver_us,
            c.stats.confirmations,
            c.stats.redelivered,
        )


async def report_throughput(work: Path, broker: Mosquitto, n: int, rounds: int) -> None:
    ratios = []
    raw = await raw_loop(broker.port, n)
    for k in range(rounds):
        t = await sink_throughput(work, broker, n, k)
        raw_next = await raw_loop(broker.port, n)
        raw_rate = n / ((raw.seconds + raw_next.seconds) / 2)
        rate = n / t.confirmed
        ratios.append(rate / raw_rate)
        print(
            f"round {k + 1}: raw aiomqtt window {WINDOW} {raw_rate:,.0f} ev/s; DeliverySink + receiver, all confirmed"
            f" {rate:,.0f} ev/s (all PUBACKed after {t.pubacked:.2f}s = {n / t.pubacked:,.0f} ev/s, confirmed after"
            f" {t.confirmed:.2f}s, {t.confirmations} confirmations, {t.redelivered} redelivered); ratio"
            f" {ratios[-1]:.2f}; CPU/event: gateway loop {t.loop_cpu_us:.0f} us, receiver process"
            f" {t.receiver_cpu_us:.0f} us",
            flush=True,
        )
        raw = raw_next
    print(f"throughput ratio confirmed/raw, median of {rounds}: {statistics.median(ratios):.2f}", flush=True)


async def drain_confirmed(work: Path, broker: Mosquitto, n: int) -> dict[str, float]:
    """The receiver's session exists (warm-up); the broker stops (clean: its persistence keeps the session); n
    events are journaled; the broker starts: times until all PUBACKed and all confirmed."""
    async with confirming(work, broker, "drain-confirmed") as c:
        await asyncio.to_thread(broker.stop)
        base = c.stats.confirmed_seq
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            await c.sink.accept(Batch(events=tuple(event(i, c.site_id) for i in range(start, min(n, start + 1000)))))
        journaled = time.perf_counter() - t0
        await asyncio.to_thread(broker.start)
        t1, wall = time.perf_counter(), time.time()
        marks: dict[str, float] = {}

        def done() -> bool:
            now = time.perf_counter() - t1
            if "receiver_connected" not in marks and c.reconnected and c.reconnected[-1] >= wall:
                marks["receiver_connected"] = c.reconnected[-1] - wall
            if "first_confirmed" not in marks and c.stats.confirmed_seq > base:
                marks["first_confirmed"] = now
            if "first_puback" not in marks and c.stats.published_seq > base:
                marks["first_puback"] = now
            if "all_pubacked" not in marks and c.stats.published_seq >= base + n:
                marks["all_pubacked"] = now
            return c.stats.confirmed_seq >= base + n

        await until(done, 900)
        marks["all_confirmed"] = time.perf_counter() - t1
        marks["journaled"] = journaled
        marks["redelivered"] = c.stats.redelivered
        marks["confirmations"] = c.stats.confirmations
        return marks


async def report_drain(work: Path, broker: Mosquitto, n: int) -> None:
    m = await drain_confirmed(work, broker, n)
    seconds = await drain_broker(work, broker, n)
    rate = n / m["all_confirmed"]
    links_up = max(m["first_puback"], m.get("receiver_connected", 0.0))
    after = n / (m["all_confirmed"] - links_up)
    print(
        f"drain of {n:,} journaled while the broker was down (journaled in {m['journaled']:.1f}s): all confirmed"
        f" {m['all_confirmed']:.1f}s after the broker started = {rate:,.0f} ev/s;"
        f" {after:,.0f} ev/s from the moment both links were up again at {links_up:.1f}s (gateway's first PUBACK"
        f" {m['first_puback']:.1f}s, receiver reconnected {m.get('receiver_connected', float('nan')):.1f}s, first"
        f" confirmation applied {m['first_confirmed']:.1f}s, all PUBACKed {m.get('all_pubacked', float('nan')):.1f}s;"
        f" {m['confirmations']:.0f} confirmations applied, {m['redelivered']:.0f} redelivered); baseline confirm:"
        f" broker (bench_delivery drain, until mosquitto_sub has all) {seconds:.1f}s = {n / seconds:,.0f} ev/s;"
        f" ratio {rate / (n / seconds):.2f}",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per latency run (raw runs: half each)")
    parser.add_argument("--rate", type=int, action="append", help="latency rates (default 100 and 1000)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--only-latency", action="store_true")
    parser.add_argument("--only-throughput", action="store_true")
    parser.add_argument("--only-drain", action="store_true")
    parser.add_argument(
        "--nodelay-receiver", action="store_true", help="the receiver's MQTT client with TCP_NODELAY (it has none)"
    )
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the receiver's and echo's logs (stderr) here")
    parser.add_argument("--receiver", nargs=4, metavar=("URL", "STATE_DIR", "SITE", "NODELAY"), help=argparse.SUPPRESS)
    parser.add_argument("--echo", nargs=2, metavar=("PORT", "SITE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver or args.echo:  # log lines to stderr (stdout carries `ready` / `connected` to the parent)
        from gateway.ops.logs import configure_logging

        configure_logging("info", json=True, stream=sys.stderr)
    if args.receiver:
        url, state_dir, site, nodelay = args.receiver
        await _receiver_process(url, Path(state_dir), site, nodelay == "1")
        return
    if args.echo:
        await _echo_process(int(args.echo[0]), args.echo[1])
        return
    global NODELAY_RECEIVER, LOGS  # noqa: PLW0603 -- run-wide switches of the benchmark
    NODELAY_RECEIVER = args.nodelay_receiver
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        LOGS = args.logs
    every = not (args.only_latency or args.only_throughput or args.only_drain)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker", extra_config="max_inflight_messages 0") as broker:
            if every or args.only_latency:
                await report_latency(work, broker, args.rate or [100, 1000], args.seconds)
            if every or args.only_throughput:
                await report_throughput(work, broker, args.events, args.rounds)
            if every or args.only_drain:
                await report_drain(work, broker, args.backlog)


if __name__ == "__main__":
    asyncio.run(main())
