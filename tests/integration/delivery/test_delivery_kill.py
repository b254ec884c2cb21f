"""The gateway process SIGKILLed at random moments during a stream, 20 times: nothing journaled is lost."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

from tests.support.delivery_harness import Collector, site_config
from tests.support.mosquitto import Mosquitto, mosquitto
from tests.support.paths import REPO

__all__ = ["mosquitto"]

ROOT = REPO


async def start_gateway(config: Path, *args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.delivery_harness", str(config), *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return proc


async def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    site = site_config(tmp_path / "journal", mosquitto.url)
    config = tmp_path / "site.json"
    config.write_text(site.model_dump_json())
    collector = Collector(mosquitto.port)
    rng = random.Random(20)
    async with asyncio.TaskGroup() as tg:
        listening = tg.create_task(collector.run())
        await asyncio.wait_for(collector.connected.wait(), 10)
        for round_ in range(20):
            proc = await start_gateway(config, "--rate", "500")
            await asyncio.sleep(rng.uniform(0.05, 0.5))  # the random moment of the kill (not a synchronisation)
            proc.kill()
            await proc.wait()
            if round_ == 0:  # the broker publishes the will: retained status `offline`
                await collector.wait_for(
                    lambda: any(m.json()["status"] == "offline" for m in collector.on("/status")), 10
                )
                will = [m.json() for m in collector.on("/status")][-1]
                assert will["reason"] == "connection lost"
        # A last, clean run: a few more events, drain, stop; it reports the last seq of the journal.
        proc = await start_gateway(config, "--rate", "500", "--count", "100")
        assert proc.stdout is not None
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        report = json.loads(out.decode().strip().splitlines()[-1])
        last = report["last_seq"]
        assert last > 200, "twenty runs of a stream journaled a good number of events"
        await collector.wait_for(lambda: {e["seq"] for e in collector.events()} >= set(range(1, last + 1)), 60)
        listening.cancel()
    seqs = {e["seq"] for e in collector.events()}
    assert seqs == set(range(1, last + 1)), "every seq from 1 to N arrives at least once, none invented"
    ids: dict[int, str] = {}
    for e in collector.events():
        assert ids.setdefault(e["seq"], e["event_id"]) == e["event_id"], "a re-publication keeps the event_id"
    status = collector.on("/status")[-1].json()
    assert status["status"] == "offline" and status["reason"] == "shutdown"
