"""DC-09 benchmark: event -> ACK latency and messages per second on one connection, against a raw loop.

    .venv/bin/python bench/bench_dc09.py                       # 2,000 messages x 3 rounds, plain and AES-128
    .venv/bin/python bench/bench_dc09.py --messages 5000 --rounds 5 --modes plain,aes128,aes256

Setup, all on loopback: pysiaalarm 3.2's asyncio TCP receiver (the one behind Home Assistant's SIA
integration) in a process of its own, as an alarm receiving centre is; one TCP connection per run.
- transmitter: per message, `make_event` (detected_at = then) -> `dc09_message` (SIA-DCS) -> `Transmitter.send`
  until the ACK returns (framing, CRC, AES, reply parsing and checks included). Latency = event made -> ACK.
- message -> ACK: the same with the `Message` objects built before timing (the transmitter's own share).
- raw baseline in the same run, to the same receiver: frames prebuilt before timing (same data, same length),
  written one at a time on a raw asyncio stream, each timed until its reply's CR. pysiaalarm reads one frame per
  TCP read, so both sides keep exactly one frame outstanding, as DC-09 asks.
Rounds alternate raw / transmitter / raw ...; the figures are medians over rounds; ratio = transmitter / raw.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.core.events import make_event
from gateway.dc09.frame import encode_message, next_seq
from gateway.dc09.mapping import dc09_message
from gateway.dc09.transmitter import Endpoint, Message, Outcome, Transmitter
from gateway.domain.event import PointRef, SourceRef
from gateway.domain.taxonomy import EventState, EventType
from gateway.testing import wait_until

ACCOUNT = "4711"
KEYS = {"plain": None, "aes128": "0123456789ABCDEF", "aes256": "0123456789ABCDEFGHIJKLMNOPQRSTUV"}


def _receiver_process(keys: list[str | None], ports: multiprocessing.Queue, stop: multiprocessing.Event) -> None:  # type: ignore[type-arg]
    import logging

    from pysiaalarm import SIAAccount
    from pysiaalarm.aio import CommunicationsProtocol, SIAClient

    logging.disable(logging.WARNING)

    async def main() -> None:
        clients = []
        for key in keys:

            async def on_event(event: object) -> None:
                return None

            client = SIAClient(
                "127.0.0.1", 0, [SIAAccount(ACCOUNT, key)], function=on_event, protocol=CommunicationsProtocol.TCP
            )
            await client.async_start()
            clients.append(client)
            ports.put(client.server.sockets[0].getsockname()[1])
        await asyncio.to_thread(stop.wait)
        for client in clients:
            await client.async_stop()

    asyncio.run(main())


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_raw(port: int, key: bytes | None, n: int) -> tuple[list[float], float]:
    now = datetime.now(UTC).replace(microsecond=0)
    seq = 0
    frames = []
    for i in range(n):
        seq = next_seq(seq)
        frames.append(
            encode_message(
                "SIA-DCS",
                seq,
                account=ACCOUNT,
                receiver=None,
                prefix="0",
                data=f"Nri1/BA{i % 999 + 1:03d}",
                timestamp=now,
                key=key,
            )
        )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies = []
    start = time.perf_counter()
    for frame in frames:
        t0 = time.perf_counter()
        writer.write(frame)
        await writer.drain()
        reply = await reader.readuntil(b"\r")
        latencies.append(time.perf_counter() - t0)
        if b"ACK" not in reply:
            raise RuntimeError(f"raw baseline got {reply!r}")
    elapsed = time.perf_counter() - start
    writer.close()
    await writer.wait_closed()
    return latencies, n / elapsed


async def run_transmitter(port: int, key: bytes | None, n: int, *, prebuilt: bool = False) -> tuple[list[float], float]:
    endpoint = Endpoint(
        host="127.0.0.1",
        port=port,
        transport="tcp",
        account=ACCOUNT,
        receiver=None,
        prefix="0",
        key=key,
        supervision=3600.0,
        ack_timeout=5.0,
    )
    point = PointRef(id="p1", name="Point 1")
    source = SourceRef(protocol="modbus", device_id="d1", address="127.0.0.1:502")
    ready = [Message("SIA-DCS", ACCOUNT, f"Nri1/BA{i % 999 + 1:03d}") for i in range(n)] if prebuilt else []
    latencies = []
    async with Transmitter(endpoint) as tx:
        await wait_until(lambda: tx.stats.null_acked >= 1, timeout=10)  # the NULL at the start goes first
        start = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            if prebuilt:
                message = ready[i]
            else:
                now = datetime.now(UTC)
                event = make_event(
                    site="s1",
                    event_type=EventType.BURGLARY,
                    state=EventState.ALARM,
                    point=point,
                    source=source,
                    occurred_at=now,
                    detected_at=now,
                    tenant="t1",
                )
                message = dc09_message(event, fmt="sia-dcs", account=ACCOUNT, zone_no=i % 999 + 1, area_no=1)
            if await tx.send(message) is not Outcome.ACKED:
                raise RuntimeError("transmitter got DUH")
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        retried = tx.stats.naks or tx.stats.timeouts or tx.stats.malformed_replies
        if tx.stats.sent - tx.stats.null_sent != n or retried:
            raise RuntimeError(f"unexpected retries: {tx.stats}")
    return latencies, n / elapsed


async def bench(mode: str, port: int, messages: int, rounds: int) -> dict[str, float]:
    key = KEYS[mode].encode() if KEYS[mode] else None
    await run_raw(port, key, min(200, messages))  # warm up all paths
    await run_transmitter(port, key, min(200, messages))
    raw_rounds, tx_rounds, pre_rounds = [], [], []
    for _ in range(rounds):
        raw_rounds.append(await run_raw(port, key, messages))
        tx_rounds.append(await run_transmitter(port, key, messages))
        pre_rounds.append(await run_transmitter(port, key, messages, prebuilt=True))
    raw_rounds.append(await run_raw(port, key, messages))

    def med(rs: list[tuple[list[float], float]], fn: str) -> float:
        if fn == "rate":
            return statistics.median(r[1] for r in rs)
        q = 0.5 if fn == "p50" else 0.99
        return statistics.median(_pct(r[0], q) for r in rs) * 1000

    return {
        f"{who}_{fn}": med(rs, fn)
        for who, rs in (("raw", raw_rounds), ("tx", tx_rounds), ("pre", pre_rounds))
        for fn in ("p50", "p99", "rate")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="plain,aes128")
    args = parser.parse_args()
    modes = args.modes.split(",")
    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    proc = ctx.Process(target=_receiver_process, args=([KEYS[m] for m in modes], ports, stop), daemon=True)
    proc.start()
    try:
        port_of = {m: ports.get(timeout=30) for m in modes}
        print(f"{args.messages} messages x {args.rounds} rounds, one connection, pysiaalarm receiver process")
        print(
            "| mode | raw frames p50 / p99 | event -> ACK p50 / p99 | message -> ACK p50 / p99 "
            "| raw msg/s | event msg/s (ratio) | message msg/s (ratio) |"
        )
        print("|---|---|---|---|---|---|---|")
        for mode in modes:
            r = asyncio.run(bench(mode, port_of[mode], args.messages, args.rounds))
            print(
                f"| {mode} | {r['raw_p50']:.2f} / {r['raw_p99']:.2f} ms | {r['tx_p50']:.2f} / {r['tx_p99']:.2f} ms "
                f"| {r['pre_p50']:.2f} / {r['pre_p99']:.2f} ms | {r['raw_rate']:,.0f} "
                f"| {r['tx_rate']:,.0f} ({r['tx_rate'] / r['raw_rate']:.2f}) "
                f"| {r['pre_rate']:,.0f} ({r['pre_rate'] / r['raw_rate']:.2f}) |",
                flush=True,
            )
    finally:
        stop.set()
        proc.join(5)
        if proc.is_alive():
            proc.terminate()


if __name__ == "__main__":
    main()
