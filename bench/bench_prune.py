"""Journal housekeeping never blocks alarms: commit latency while 1,000,000 delivered rows are pruned.

    .venv/bin/python bench/bench_prune.py [--rows 1000000] [--rate 200]

A real DeliverySink (journal on disk, WAL, synchronous=FULL; delivery `confirm: broker` to a closed port,
so nothing is published: only commits are measured) takes one event per `accept` at `--rate` per second.
Its journal thread is shared, as in production, with the retention prune of `--rows` delivered events:
1. idle: no pruning (the baseline, same run);
2. chunked: the gateway's way (`DeliverySink.prune`): one bounded DELETE of PRUNE_CHUNK rows per job on
   the journal thread, started only while no commit waits, each followed by a pause as long as it took;
3. one job: the whole prune in one job on the journal thread (how it was before), for comparison.
Reports accept() latency p50 / p99 / max per phase and the ratio of each p99 to the idle p99.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, run from anywhere

from gateway.config.models import SiteConfig
from gateway.delivery.journal import PRUNE_CHUNK, Journal
from gateway.delivery.sink import DeliverySink, journal_path
from gateway.domain.state import Batch
from tests.support.delivery_harness import make_event, site_config


def fill(path: Path, rows: int, start: int) -> None:
    """`rows` delivered events (seq start..), written directly with SQL: building them through commits would
    take minutes and measure nothing of interest here."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # filling only; the gateway's own connection uses FULL
    payload = '{"schema":"gcmk.event.v1","text":"' + "x" * 120 + '"}'
    with db:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO events (seq, event_id, category, state, priority, payload, journaled_at, link_down,"
            " delivered_at, detected_at, published_at, publishes)"
            " SELECT i, 'id-' || i, 'intrusion', 'alarm', 2, ?, 1.0, 0, 1.0, 1.0, 1.0, 1 FROM n",
            (start, start + rows - 1, payload),
        )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a running gateway's WAL would be: checkpointed
    db.close()


def whole_prune(journal: Journal, now: float) -> int:
    """The old way: every chunk in one job, holding the journal thread until all are gone."""
    total = 0
    while (n := journal.prune(now)) == PRUNE_CHUNK:
        total += n
    return total + n


async def measure(sink: DeliverySink, rate: float, seconds: float, until: asyncio.Future[None] | None) -> list[float]:
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while True:
        if until is None and loop.time() - start > seconds:
            break
        if until is not None and until.done():
            break
        t0 = time.perf_counter()
        await sink.accept(Batch(events=(make_event(n),)))
        latencies.append(time.perf_counter() - t0)
        n += 1
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the load generator
    return latencies


def summary(name: str, samples: list[float], idle_p99: float | None) -> tuple[float, str]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    ratio = f", p99 / idle p99 = {p99 / idle_p99:.2f}" if idle_p99 else ""
    line = (
        f"{name:<28} {len(samples):>6} commits  p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:7.2f} ms"
        f"  max {ordered[-1] * 1e3:7.1f} ms{ratio}"
    )
    return p99, line


async def phase(site: SiteConfig, rows: int, rate: float, mode: str, idle_p99: float | None) -> tuple[float, str]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcmk-journal")
    journal = Journal(journal_path(site), site=site.site.id, max_bytes=1 << 40, retention=30 * 86400.0)
    sink = DeliverySink(site, config_hash="bench", version="bench", journal=journal, executor=executor)
    async with sink:
        await sink.load_state()
        loop = asyncio.get_running_loop()
        if mode == "idle":
            samples = await measure(sink, rate, 5.0, None)
            return summary("idle (no pruning)", samples, None)
        journal.retention = 0.0  # everything delivered is now past its retention
        now = time.time()

        async def prune() -> None:
            if mode == "chunked":  # the gateway's own pruning, as its pruner task runs it
                await sink.prune(now)
            else:
                await loop.run_in_executor(executor, whole_prune, journal, now)

        started = time.perf_counter()
        pruning = asyncio.ensure_future(prune())
        samples = await measure(sink, rate, 0.0, pruning)
        await pruning
        took = time.perf_counter() - started
        return summary(f"{mode} prune ({rows:,} rows, {took:.1f} s)", samples, idle_p99)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=200.0, help="commits per second offered")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        idle_p99: float | None = None
        for mode in ("idle", "chunked", "one-job"):
            site = site_config(Path(tmp) / mode, "mqtt://127.0.0.1:1")
            path = journal_path(site)
            Journal(path, site=site.site.id, max_bytes=1 << 40, retention=1.0).open()  # schema
            if mode != "idle":
                fill(path, args.rows, 1)
            p99, line = await phase(site, args.rows, args.rate, mode, idle_p99)
            idle_p99 = idle_p99 or p99
            results.append(line)
            print(line, flush=True)


if __name__ == "__main__":
    from gateway.ops.logs import configure_logging

    configure_logging("error")
    asyncio.run(main())
