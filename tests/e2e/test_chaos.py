"""The chaos drill (bench/chaos.py), short: devices change continuously and log each change; the gateway
process is SIGKILLed at random moments 10 times, Mosquitto (persistence on) 3 times, the reference receiver
restarted 3 times; afterwards every change in the devices' truth log is held and confirmed at the receiver, per
point in the order the device made them, each exactly once (de-duplicated by event_id). The long version and
its figures: bench/README.md, "Chaos drill"."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bench.chaos import Settings, run_drill, summary


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_every_device_change_reaches_the_meldkamer_through_kills_and_restarts(tmp_path: Path) -> None:
    seed = int(os.environ.get("GCMK_CHAOS_SEED") or random.randrange(1 << 16))  # a failure prints its seed
    settings = Settings(
        seconds=40,
        gateway_kills=10,
        broker_kills=3,
        receiver_restarts=3,
        settle_within=40,
        seed=seed,
        workdir=tmp_path / "chaos",
    )
    report = await run_drill(settings)
    text = summary(report)
    print(text)  # shown with -rA or on failure
    assert report.ok, text
    assert report.gateway_kills >= 10 and report.broker_kills >= 3 and report.receiver_restarts >= 3, text
    assert report.changes >= 100 and all(n >= 10 for n in report.changes_per_point.values()), text
    assert not report.missing and not report.unexpected and report.sequences_equal, text
    assert report.same_change_twice == [] and report.duplicate_event_ids_in_store == 0, text
    assert report.final_heartbeat is not None and report.final_heartbeat["journal_depth"] == 0, text
