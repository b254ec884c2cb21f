"""Command round trip: meldkamer publishes a command, reads `executed` on command-results.

Through the whole Gateway (checks, SQLite command record with fsync, audit events into an in-memory sink,
verified Modbus write to the simulator) against a baseline in the same run and through the same Mosquitto: a
bare aiomqtt echo client that republishes each message to a reply topic (the same two broker hops, no gateway
work). All clients use TCP_NODELAY; the broker gets `set_tcp_nodelay true` unless `--broker-config ''`.

    .venv/bin/python bench/bench_commands.py             # 300 sequential commands, ~10 s
    .venv/bin/python bench/bench_commands.py --count 1000 --broker-config ''
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_commands import rig

from gateway.commands.processor import NODELAY
from tests.support.mosquitto import Mosquitto


async def baseline(port: int, count: int) -> list[float]:
    """Echo through a second client: request -> broker -> echo -> broker -> requester."""
    latencies: list[float] = []
    echo_client = aiomqtt.Client("127.0.0.1", port, identifier="bench-echo", socket_options=NODELAY)
    requester_client = aiomqtt.Client("127.0.0.1", port, identifier="bench-requester", socket_options=NODELAY)
    async with echo_client as echo, requester_client as requester:
        await echo.subscribe("bench/request", qos=1)
        await requester.subscribe("bench/reply", qos=1)

        async def serve() -> None:
            async for message in echo.messages:
                await echo.publish("bench/reply", message.payload, qos=1)

        server = asyncio.create_task(serve())
        replies = aiomqtt_iter(requester)
        for i in range(count):
            started = time.perf_counter()
            await requester.publish("bench/request", f"{i}", qos=1)
            await anext(replies)
            latencies.append(time.perf_counter() - started)
        server.cancel()
    return latencies


async def aiomqtt_iter(client: aiomqtt.Client):  # type: ignore[no-untyped-def]
    async for message in client.messages:
        yield message


async def commands(data: Path, broker: Mosquitto, count: int) -> list[float]:
    latencies: list[float] = []
    async with rig(data, broker, rate_limit=10_000) as r:
        for i in range(count):
            started = time.perf_counter()
            cid = await r.meldkamer.command("area-1", "arm" if i % 2 == 0 else "disarm")
            result = await r.meldkamer.final(cid)
            assert result["status"] == "executed", result
            latencies.append(time.perf_counter() - started)
    return latencies


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"{name:<22} p50 {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--broker-config", default="set_tcp_nodelay true", help="extra mosquitto.conf line ('' = none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "b", extra_config=args.broker_config) as broker:
        base = await baseline(broker.port, args.count)
        cmds = await commands(Path(tmp) / "data", broker, args.count)
        base2 = await baseline(broker.port, args.count)
    print(summary("baseline echo", base + base2))
    print(summary("command -> executed", cmds))
    print(f"median ratio {statistics.median(cmds) / statistics.median(base + base2):.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
