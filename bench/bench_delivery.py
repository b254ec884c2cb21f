"""Delivery benchmark: journal + publisher against a raw aiomqtt bounded-window loop, same broker, same run.

    .venv/bin/python bench/bench_delivery.py [--events 20000] [--backlog 100000]
    .venv/bin/python bench/bench_delivery.py --only-latency [--nagle]   # latency alone; --nagle: no TCP_NODELAY
    .venv/bin/python bench/bench_delivery.py --only-publish-path        # the MQTT session alone vs raw aiomqtt

1. throughput: N events handed to DeliverySink.accept (50 concurrent producers, one event per batch, as
   the pipeline does) until a separate subscriber (mosquitto_sub, QoS 1) received all of them, against a
   raw aiomqtt loop publishing N pre-serialised events QoS 1 (MQTT 5, same properties, same in-flight
   window); rounds of raw / sink / raw, median ratio.
2. drain: a backlog journaled while the broker was down, delivered after it comes up (events/s).
3. latency: 1,000 events/s for 10 s; the event's detected_at (set just before the hand-off to accept()) ->
   PUBACK, p50 / p99: what gcmk_event_delivery_latency_seconds measures.
4. publish path (--only-publish-path): the gateway's MQTT session (gateway/mqtt/session.py) alone, the same
   pre-serialised events through the same window, against the raw aiomqtt loop: what the publisher's own
   path costs, without the journal.
Each throughput line also gives the event loop thread's CPU per event from the start of the clock
(`time.thread_time()`): on a 2-core machine that also runs the broker and the subscriber, CPU bounds throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

import gateway.mqtt.client  # noqa: E402
from gateway.delivery.publisher import _properties  # noqa: E402
from gateway.delivery.sink import DeliverySink  # noqa: E402
from gateway.domain.state import Batch  # noqa: E402
from gateway.mqtt.session import Session, SessionOptions  # noqa: E402
from tests.support.delivery_harness import SITE, make_event, site_config  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402

WINDOW = 64


class IdleSelector(selectors.DefaultSelector):
    """The event loop's selector, timing how long the loop waits in select(): its idle time. A run's wall time
    is then loop CPU + idle + the rest (waiting for the GIL or for a core)."""

    idle = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        start = time.perf_counter()
        try:
            return super().select(timeout)
        finally:
            IdleSelector.idle += time.perf_counter() - start


def idle() -> float:
    return IdleSelector.idle


PRODUCERS = 50
PROFILE: list[str] = []  # --profile FILE: cProfile of the sink runs (the last one is kept)


def subscriber(port: int, count: int) -> subprocess.Popen[bytes]:
    """mosquitto_sub in its own process: exits after `count` event messages."""
    proc = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-q",
            "1",
            "-C",
            str(count),
            "-t",
            f"gcmk/v1/{SITE}/events/#",
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)  # let it subscribe before anything is published
    return proc


async def wait_proc(proc: subprocess.Popen[bytes], within: float = 300) -> None:
    await until(lambda: proc.poll() is not None, within, proc.kill)


async def until(
    predicate: Callable[[], bool], within: float = 60, on_timeout: Callable[[], None] | None = None
) -> None:
    """Polls a condition (the benchmark measures to within a few ms; the polling interval is 5 ms)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            if on_timeout is not None:
                on_timeout()
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)


async def raw_loop(port: int, n: int) -> Run:
    payloads = [make_event(i).with_seq(i + 1).to_json() for i in range(n)]
    topic = f"gcmk/v1/{SITE}/events/technical"
    sub = subscriber(port, n)
    props = _properties("gcmk.event.v1")  # the same MQTT 5 publish as the sink's: a like-for-like baseline
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-raw", max_inflight_messages=WINDOW, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        client.pending_calls_threshold = WINDOW * 2
        window = asyncio.Semaphore(WINDOW)

        async def one(payload: str) -> None:
            try:
                await client.publish(topic, payload, qos=1, properties=props)
            finally:
                window.release()

        settled_heap()
        start, cpu, waited = time.perf_counter(), time.thread_time(), idle()
        async with asyncio.TaskGroup() as tg:
            for payload in payloads:
                await window.acquire()
                tg.create_task(one(payload))
        await wait_proc(sub)
        return Run(time.perf_counter() - start, time.thread_time() - cpu, n, idle=idle() - waited)


async def session_loop(port: int, n: int) -> Run:
    """The raw loop's events through the gateway's own MQTT session, a window of WINDOW kept full from the PUBACK
    callback (as the publisher's pump does, without the outbox)."""
    payloads = [make_event(i).with_seq(i + 1).to_json() for i in range(n)]
    topic = f"gcmk/v1/{SITE}/events/technical"
    sub = subscriber(port, n)
    props = _properties("gcmk.event.v1")
    done = asyncio.Event()
    sent = acked = 0

    def on_ack(_token: int, _reason: object) -> None:
        nonlocal sent, acked
        acked += 1
        if sent < n:
            session.publish(topic, payloads[sent], False, props, sent)
            sent += 1
        if acked == n:
            done.set()

    options = SessionOptions("127.0.0.1", port, "bench-session", socket_options=gateway.mqtt.client.NODELAY)
    session: Session[int] = Session(options, on_ack)
    await session.connect()
    start, cpu = time.perf_counter(), time.thread_time()
    while sent < min(WINDOW, n):
        session.publish(topic, payloads[sent], False, props, sent)
        sent += 1
    await done.wait()
    await wait_proc(sub)
    run = Run(time.perf_counter() - start, time.thread_time() - cpu, n)
    await session.disconnect()
    return run


def settled_heap() -> None:
    """Collect, then freeze what the setup built (the run's prepared events, the sink, the client), as
    `gcmk-gateway run` freezes its heap once started (gateway/cli/main.py): a full collection inside the
    measured span then walks only what the span itself makes, in both the raw and the sink runs."""
    gc.collect()
    gc.freeze()


@dataclass
class Run:
    seconds: float
    cpu: float  # the event loop thread's CPU time over the same span
    events: int
    process_cpu: float = 0.0  # the whole process (the loop thread plus the journal's and the executor's threads)
    idle: float = 0.0  # the loop waiting in select()

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.events * 1e6

    @property
    def other_threads_us(self) -> float:
        return max(0.0, self.process_cpu - self.cpu) / self.events * 1e6


def process_cpu() -> float:
    return time.process_time()


async def sink_loop(work: Path, port: int, n: int, producers: int, batch: int) -> tuple[Run, float, int]:
    site = site_config(work / f"thr-{time.monotonic_ns()}", f"mqtt://127.0.0.1:{port}", max_inflight=WINDOW)
    events = [make_event(i) for i in range(n)]
    sub = subscriber(port, n)
    sink = DeliverySink(site, config_hash="bench", version="bench")
    await sink.load_state()
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(sink.run())
        await until(lambda: sink.stats.connected)
        settled_heap()
        start, cpu, total, waited = time.perf_counter(), time.thread_time(), process_cpu(), idle()

        chunks = [tuple(events[i : i + batch]) for i in range(0, n, batch)]

        async def produce(k: int) -> None:
            for chunk in chunks[k::producers]:
                await sink.accept(Batch(events=chunk))

        profiler = cProfile.Profile() if PROFILE else None  # the sink's loop while it delivers
        if profiler is not None:
            profiler.enable()
        async with asyncio.TaskGroup() as group:
            for k in range(producers):
                group.create_task(produce(k))
        accepted = time.perf_counter() - start
        await wait_proc(sub)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(PROFILE[0])
        elapsed = Run(time.perf_counter() - start, time.thread_time() - cpu, n, process_cpu() - total, idle() - waited)
        commits = sink.stats.commits
        await sink.close()
        await run
    return elapsed, accepted, commits


async def drain(work: Path, broker: Mosquitto, n: int) -> float:
    site = site_config(work / "drain", broker.url, max_inflight=WINDOW)
    broker.stop()
    sink = DeliverySink(site, config_hash="bench", version="bench")
    await sink.load_state()
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(sink.run())
        for start in range(0, n, 1000):
            await sink.accept(Batch(events=tuple(make_event(i) for i in range(start, min(n, start + 1000)))))
        broker.start()
        sub = subscriber(broker.port, n)
        t0 = time.perf_counter()
        await wait_proc(sub, 600)
        elapsed = time.perf_counter() - t0
        await sink.close()
        await run
    return elapsed


async def latency(work: Path, port: int, rate: int, seconds: float) -> tuple[float, float, int]:
    site = site_config(work / "lat", f"mqtt://127.0.0.1:{port}", max_inflight=WINDOW)
    sink = DeliverySink(site, config_hash="bench", version="bench")
    await sink.load_state()
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(sink.run())
        await until(lambda: sink.stats.connected)
        loop = asyncio.get_running_loop()
        total = int(rate * seconds)
        start = loop.time()

        async def one(i: int) -> None:
            await sink.accept(Batch(events=(make_event(i),)))

        async with asyncio.TaskGroup() as producers:
            for i in range(total):
                producers.create_task(one(i))
                delay = start + (i + 1) / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        await until(lambda: sink.stats.published >= total)
        samples = sorted(list(sink.stats.latency)[-total:])
        await sink.close()
        await run
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    return p50, p99, len(samples)


async def report_latency(work: Path, port: int, rate: int, nagle: bool) -> None:
    p50, p99, count = await latency(work, port, rate, 10.0)
    print(
        f"latency detection -> PUBACK at {rate} ev/s{' (Nagle: no TCP_NODELAY)' if nagle else ''}:"
        f" p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms ({count} samples)"
    )


async def report_publish_path(port: int, n: int, rounds: int) -> None:
    """Rounds of raw aiomqtt / gateway session / raw aiomqtt, as for the sink."""
    ratios = []
    raw = await raw_loop(port, n)
    for round_ in range(rounds):
        ours = await session_loop(port, n)
        raw_next = await raw_loop(port, n)
        raw_rate = n / ((raw.seconds + raw_next.seconds) / 2)
        ratios.append(ours.rate / raw_rate)
        print(
            f"round {round_ + 1}: raw aiomqtt window {WINDOW} {raw_rate:,.0f} ev/s; gateway MQTT session"
            f" {ours.rate:,.0f} ev/s; ratio {ratios[-1]:.2f}; loop CPU/event raw"
            f" {(raw.cpu_us + raw_next.cpu_us) / 2:.0f} us, session {ours.cpu_us:.0f} us"
        )
        raw = raw_next
    print(f"ratio session/raw, median of {rounds}: {statistics.median(ratios):.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--producers", type=int, default=PRODUCERS, help="concurrent accept() callers")
    parser.add_argument("--batch", type=int, default=1, help="events per accept() call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only-throughput", action="store_true")
    parser.add_argument("--only-latency", action="store_true")
    parser.add_argument("--only-publish-path", action="store_true", help="the MQTT session alone vs raw aiomqtt")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the sink's throughput runs into FILE")
    parser.add_argument("--nagle", action="store_true", help="without TCP_NODELAY (gateway client and broker)")
    args = parser.parse_args()
    PROFILE[:] = [args.profile] if args.profile else []
    broker_config = "max_inflight_messages 0"
    if args.nagle:  # as before TCP_NODELAY was set: paho's default and Mosquitto's default
        gateway.mqtt.client.NODELAY = ()
        broker_config += "\nset_tcp_nodelay false"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker", extra_config=broker_config) as broker:
            if args.only_latency:
                await report_latency(work, broker.port, args.rate, args.nagle)
                return
            if args.only_publish_path:
                await report_publish_path(broker.port, args.events, args.rounds)
                return
            # Rounds of raw, sink, raw: each sink run is compared with the raw runs around it, and the
            # median ratio is reported, because the shared machine's load swings within a minute.
            ratios = []
            raw = await raw_loop(broker.port, args.events)
            for round_ in range(args.rounds):
                elapsed, accepted, commits = await sink_loop(work, broker.port, args.events, args.producers, args.batch)
                raw_next = await raw_loop(broker.port, args.events)
                raw_rate = args.events / ((raw.seconds + raw_next.seconds) / 2)
                sink_rate = elapsed.rate
                ratios.append(sink_rate / raw_rate)
                print(
                    f"round {round_ + 1}: raw aiomqtt window {WINDOW} {raw_rate:,.0f} ev/s; DeliverySink"
                    f" ({args.producers} producers x {args.batch} ev/batch) {sink_rate:,.0f} ev/s"
                    f" (accepted in {accepted:.2f}s, {args.events / commits:.1f} ev/commit); ratio {ratios[-1]:.2f};"
                    f" loop CPU/event raw {(raw.cpu_us + raw_next.cpu_us) / 2:.0f} us, sink {elapsed.cpu_us:.0f} us"
                    f" (+ {elapsed.other_threads_us:.0f} us on the journal's threads);"
                    f" loop idle raw {(raw.idle / raw.seconds + raw_next.idle / raw_next.seconds) / 2:.0%},"
                    f" sink {elapsed.idle / elapsed.seconds:.0%}"
                )
                raw = raw_next
            print(f"ratio sink/raw, median of {args.rounds}: {statistics.median(ratios):.2f}")
            if args.only_throughput:
                return
            await report_latency(work, broker.port, args.rate, args.nagle)
            seconds = await drain(work, broker, args.backlog)
            print(f"drain of {args.backlog:,} backlog: {seconds:.1f}s = {args.backlog / seconds:,.0f} ev/s")


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(IdleSelector())) as runner:
        runner.run(main())
