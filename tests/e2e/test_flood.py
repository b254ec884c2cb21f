"""A reduced alarm flood, end to end, as deployed (bench/bench_flood.py is the full one, with the 2 s bound).

Two generated buildings (tests/support/flood.py: a flood panel of 300 detectors each), each with its simulator
process and its gateway process (`gcmk-gateway simulate` / `run`), one Mosquitto, the reference receiver process
(`gcmk-gateway receive`: stores, then confirms). Every point is raised within one second and cleared a second
later. Afterwards the receiver's store holds every journaled event exactly once with no seq gap, every event is
confirmed at its gateway (heartbeat confirmed_seq = last_seq; journal: delivered), and the heartbeats kept coming
during the flood. No latency threshold: that is the bench's job, on a machine it can measure.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from ruamel.yaml import YAML

from gateway.config.loader import load_site
from gateway.delivery.contract import ROOT
from gateway.testing import wait_until
from gateway.tools.demo import gateway_overlay
from tests.support.flood import flood_building_doc, flood_scenario, spawn, stop
from tests.support.mosquitto import Mosquitto

SITES = ("flood-a", "flood-b")
POINTS = 300
HEARTBEAT = 1.0  # seconds
PY = [sys.executable, "-m", "gateway.cli.main", "--log-level", "warning"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def observe(url: str, heartbeats: dict[str, list[tuple[float, dict[str, Any]]]]) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port)) as client:
        await client.subscribe(f"{ROOT}/+/heartbeat", qos=1)
        async for message in client.messages:
            assert isinstance(message.payload, bytes | bytearray)
            heartbeats.setdefault(str(message.topic).split("/")[2], []).append(
                (time.monotonic(), json.loads(message.payload))
            )


def last(heartbeats: dict[str, list[tuple[float, dict[str, Any]]]], site: str) -> dict[str, Any]:
    beats = heartbeats.get(site)
    return beats[-1][1] if beats else {}


async def test_a_flood_of_every_point_is_stored_once_confirmed_and_heartbeats_go_on(tmp_path: Path) -> None:
    paths = []
    for site in SITES:
        path = tmp_path / f"{site}.yaml"
        with path.open("w", encoding="utf-8") as out:
            YAML(typ="safe").dump(flood_building_doc(site, POINTS, heartbeat=HEARTBEAT), out)
        paths.append(path)
    scenario = tmp_path / "flood.yaml"
    with scenario.open("w", encoding="utf-8") as out:
        YAML(typ="safe").dump(flood_scenario([load_site(p) for p in paths], 1, 1.0, 1.0, 0.2), out)
    heartbeats: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    processes: list[asyncio.subprocess.Process] = []
    with Mosquitto(tmp_path / "broker") as broker:
        observer = asyncio.create_task(observe(broker.url, heartbeats))
        try:
            receiver = await spawn(
                [*PY, "receive", "--broker", broker.url, "--state-dir", str(tmp_path / "rx")], tmp_path / "rx.log"
            )
            processes.append(receiver)
            sims = []
            for site, path in zip(SITES, paths, strict=True):
                argv = ["simulate", "--site", str(path), "--overlay-out", str(tmp_path / f"{site}.sim.yaml")]
                argv += ["--scenario", str(scenario), "--scenario-on-signal"]
                sims.append(await spawn([*PY, *argv], tmp_path / f"{site}.sim.log"))
            processes += sims
            for site, path in zip(SITES, paths, strict=True):
                sim_overlay = tmp_path / f"{site}.sim.yaml"
                await wait_until(sim_overlay.exists, 30, what=f"the simulator of {site} listens")
                overlay = gateway_overlay(
                    YAML(typ="safe").load(sim_overlay.read_text()), broker.url, tmp_path / site, 0
                )
                with (tmp_path / f"{site}.overlay.yaml").open("w", encoding="utf-8") as out:
                    YAML(typ="safe").dump(overlay, out)
                argv = ["run", "--site", str(path), "--overlay", str(tmp_path / f"{site}.overlay.yaml")]
                processes.append(await spawn([*PY, *argv], tmp_path / f"{site}.log"))

            def settled() -> bool:
                beats = [last(heartbeats, s) for s in SITES]
                return all(b and b["devices_online"] == b["devices_total"] == 1 for b in beats)

            await wait_until(settled, 40, what="both gateways online with their panel")
            start_seq = {s: last(heartbeats, s)["last_seq"] for s in SITES}
            flood_start = time.monotonic()
            for sim in sims:
                sim.send_signal(signal.SIGUSR1)

            def confirmed() -> bool:
                beats = [last(heartbeats, s) for s in SITES]
                return all(
                    b["last_seq"] >= start_seq[s] + 2 * POINTS and b["confirmed_seq"] == b["last_seq"]
                    for s, b in zip(SITES, beats, strict=True)
                )

            await wait_until(confirmed, 60, what="every flood event journaled and confirmed (heartbeats)")
            flood_end = time.monotonic()
        finally:
            observer.cancel()
            for process in reversed(processes):
                await stop(process)

    store = sqlite3.connect(tmp_path / "rx" / "meldkamer.receiver.sqlite3")
    for site in SITES:
        journal = sqlite3.connect(tmp_path / site / f"{site}.journal.sqlite3")
        journaled = journal.execute("SELECT seq, event_id, delivered_at FROM events ORDER BY seq").fetchall()
        stored = store.execute("SELECT seq, event_id FROM events WHERE site = ? ORDER BY seq", (site,)).fetchall()
        assert len(journaled) >= 2 * POINTS
        assert [row[0] for row in journaled] == list(range(1, len(journaled) + 1)), "the journal has no seq gap"
        assert stored == [(seq, event_id) for seq, event_id, _ in journaled], f"{site}: every event stored once"
        assert all(delivered is not None for _, _, delivered in journaled), f"{site}: all confirmed at the gateway"
        beats = [at for at, _ in heartbeats[site] if flood_start - HEARTBEAT <= at <= flood_end + HEARTBEAT]
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert len(beats) >= 3 and max(gaps) < 5 * HEARTBEAT, f"{site}: heartbeats went on ({gaps})"
