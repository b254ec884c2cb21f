"""Alarm-flood buildings and scenarios, shared by bench/bench_flood.py and tests/e2e/test_flood.py.

A flood site is a shipped (or test) site config plus one simulated Modbus TCP "flood panel" with `repeat:`ed
discrete-input intrusion points, written to a scratch directory (never into config/sites): the shipped
buildings have 1,716 points between them, the issue's flood needs 10,000 events within one second. The
scenario raises every point of every building at an even pace within `spread`, holds, clears the same way.
"""

from __future__ import annotations

import asyncio
import math
import signal
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from gateway.config.models import SiteConfig

FLOOD_DEVICE = "flood-panel"
FLOOD_POLL = 0.2  # seconds: as the fastest shipped panels (0.5 s) or faster, so detection follows the raise


def flood_points_per_site(target_events: int, sites: int, shipped_points: int, margin: float = 1.6) -> int:
    """Extra points per building so that one raise of every point gives >= `target_events` detections within
    one second: `margin` over the target, because a raise is detected at the next poll (the shipped panels poll
    every 0.5-2 s, the flood panels every 0.2 s, later when the gateway is busy), so some detections fall outside
    the busiest second. On the 2-core machine: 1.1 (11,000 points) gave 7,700-7,900 within one second, 1.4
    (14,000) 9,500-10,100, 1.6 (16,000) 10,300-14,300 (bench/README.md, alarm flood)."""
    return max(0, math.ceil((target_events * margin - shipped_points) / sites))


def flood_site_doc(site_yaml: Path, extra_points: int, *, poll_interval: float = FLOOD_POLL) -> dict[str, Any]:
    """The site config at `site_yaml` plus a flood panel with `extra_points` discrete inputs (one intrusion
    detector each, tenant and zone of the site's first zone)."""
    doc: dict[str, Any] = YAML(typ="safe").load(site_yaml.read_text(encoding="utf-8"))
    return _with_flood_panel(doc, extra_points, poll_interval)


def _with_flood_panel(doc: dict[str, Any], extra_points: int, poll_interval: float) -> dict[str, Any]:
    if extra_points <= 0:
        return doc
    zone = doc["zones"][0]
    tenant = zone.get("tenant") or doc["tenants"][0]["id"]
    doc["devices"].append(
        {
            "protocol": "modbus",
            "id": FLOOD_DEVICE,
            "name": "Floodpaneel (gegenereerd, alleen voor de flood-test)",
            "transport": "tcp",
            "host": "192.0.2.250",  # documentation range: the simulator's overlay replaces it
            "unit_id": 1,
            "poll_interval": f"{poll_interval * 1000:.0f}ms",
            "timeout": f"{poll_interval * 900:.0f}ms",  # shorter than the interval (validated); loaded hosts are slow
        }
    )
    doc["points"].append(
        {
            "repeat": {"count": extra_points, "start": 1},
            "id": "flood-{n:05d}",
            "name": "Floodmelder {n}",
            "device": FLOOD_DEVICE,
            "tenant": tenant,
            "zone": zone["id"],
            "type": "burglary",
            "source": {"protocol": "modbus", "table": "discrete_input", "address": "{i}"},
            "alarm": [1],
            "normal": [0],
        }
    )
    return doc


def flood_building_doc(site_id: str, points: int, *, heartbeat: float = 5.0) -> dict[str, Any]:
    """A building that is nothing but a flood panel with `points` detectors (the reduced flood of the tests)."""
    doc: dict[str, Any] = {
        "version": 1,
        "site": {"id": site_id, "name": f"Floodgebouw {site_id}", "address": "Teststraat 1, Den Haag"},
        "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
        "zones": [{"id": "jv-1", "name": "JenV verdieping 1", "tenant": "jv"}],
        "mqtt": {"url": "mqtt://192.0.2.1:1883", "insecure": True},  # the overlay points it at the test's broker
        "supervision": {"heartbeat_interval": f"{heartbeat:g}s"},
        "journal": {"data_dir": f"var/{site_id}"},
        "devices": [],
        "points": [],
    }
    return _with_flood_panel(doc, points, FLOOD_POLL)


def write_flood_sites(site_yamls: list[Path], extra_points: int, work: Path) -> list[Path]:
    """One flood site config per building in `work` (`<stem>.flood.yaml`); returns their paths."""
    out = []
    for path in site_yamls:
        target = work / f"{path.stem}.flood.yaml"
        with target.open("w", encoding="utf-8") as f:
            YAML(typ="safe").dump(flood_site_doc(path, extra_points), f)
        out.append(target)
    return out


def flood_scenario(sites: list[SiteConfig], cycles: int, spread: float, hold: float, start: float) -> dict[str, Any]:
    """Every point of every building raised within `spread` (evenly paced per building), cleared `hold` later."""
    steps: list[dict[str, Any]] = []
    for site in sites:
        points = [p.id for p in site.points]
        for cycle in range(cycles):
            base = start + cycle * 2 * (spread + hold)
            for action, offset in (("raise", 0.0), ("clear", spread + hold)):
                for i, point_id in enumerate(points):
                    at = base + offset + spread * i / len(points)
                    steps.append({"at": f"{at:.4f}s", "site": site.site.id, "action": action, "point": point_id})
    return {
        "name": "flood",
        "description": "every point into alarm and back, generated by tests/support/flood.py",
        "steps": steps,
    }


async def spawn(argv: list[str], log: Path) -> asyncio.subprocess.Process:
    """A process of the flood (simulator, gateway, receiver) with its output in `log`."""
    with log.open("wb") as out:  # a file: a pipe nobody reads would block the process
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT
        )


async def stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM (a clean stop: the gateway flushes and says offline), SIGKILL after 20 s."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
