"""A tenant move without a restart: `gcmk-gateway run` as deployed, simulated Modbus panels, a real Mosquitto.

AZ leaves the building while alarms are active: its zones go to BZK, two of its points are removed (one of
them in alarm), and a new ministry (EZK, `temporary: true`) moves in with a panel of its own. After SIGHUP the
events carry the new tenants, the alarm active during the reload is neither lost nor restored, the removed
point in alarm ends with a restore marked `cause: point_removed`, and the seq has no gap. A broken config on
SIGHUP leaves the gateway on the config it runs (metric 0, a `config_reload_failed` event, alarms flow on);
`gcmk-gateway reload` validates first and says what the gateway did in its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from gateway.config.loader import config_hash, load_site
from gateway.testing import wait_until
from simulators.site import SiteSimulator
from tests.support.delivery_harness import Collector
from tests.support.mosquitto import Mosquitto

SITE = "test-site"
PANELS = ("panel-jv", "panel-az", "panel-ezk")


def _point(pid: str, device: str, tenant: str, zone: str, bit: int) -> str:
    return (
        f"  - {{id: {pid}, name: 'PIR {pid}', device: {device}, tenant: {tenant}, zone: {zone}, type: burglary,"
        f" source: {{protocol: modbus, table: holding, address: 100, bit: {bit}}}, alarm: [1], normal: [0]}}\n"
    )


def _device(device: str, port: int) -> str:
    return (
        f"  - {{protocol: modbus, id: {device}, name: 'Centrale {device}', host: 127.0.0.1, port: {port},"
        " poll_interval: 200ms, timeout: 150ms}\n"
    )


HEAD = f"""version: 1
site: {{id: {SITE}, name: Testgebouw, address: 'Teststraat 1, Den Haag'}}
mqtt: {{url: 'mqtts://broker.example:8883'}}
journal: {{data_dir: var/{SITE}}}
delivery: {{confirm: broker}}
"""


def before(ports: dict[str, int]) -> str:
    """AZ in the building: zones az-1 and az-2, four points on its own panel."""
    return (
        HEAD
        + "tenants:\n  - {id: jv, name: Justitie en Veiligheid}\n  - {id: az, name: Algemene Zaken}\n"
        + "  - {id: bzk, name: Binnenlandse Zaken}\n"
        + "zones:\n  - {id: hal, name: Centrale hal}\n"
        + "  - {id: az-1, name: AZ verdieping 1, tenant: az}\n  - {id: az-2, name: AZ verdieping 2, tenant: az}\n"
        + "devices:\n"
        + _device("panel-jv", ports["panel-jv"])
        + _device("panel-az", ports["panel-az"])
        + "points:\n"
        + _point("jv-pir-1", "panel-jv", "jv", "hal", 0)
        + _point("az-pir-1", "panel-az", "az", "az-1", 0)  # stays: the zone goes to BZK
        + _point("az-pir-2", "panel-az", "az", "az-1", 1)  # removed while in alarm
        + _point("az-pir-3", "panel-az", "az", "az-2", 2)  # removed while normal
        + _point("az-pir-4", "panel-az", "az", "az-2", 3)  # stays
    )


def after(ports: dict[str, int]) -> str:
    """AZ gone: its zones are BZK's, two of its points removed; EZK moved in temporarily with its own panel."""
    return (
        HEAD
        + "tenants:\n  - {id: jv, name: Justitie en Veiligheid}\n  - {id: bzk, name: Binnenlandse Zaken}\n"
        + "  - {id: ezk, name: Economische Zaken en Klimaat, temporary: true}\n"
        + "zones:\n  - {id: hal, name: Centrale hal}\n"
        + "  - {id: az-1, name: BZK verdieping 1, tenant: bzk}\n  - {id: az-2, name: BZK verdieping 2, tenant: bzk}\n"
        + "  - {id: ezk-1, name: EZK verdieping 3, tenant: ezk}\n"
        + "devices:\n"
        + _device("panel-jv", ports["panel-jv"])
        + _device("panel-az", ports["panel-az"])
        + _device("panel-ezk", ports["panel-ezk"])
        + "points:\n"
        + _point("jv-pir-1", "panel-jv", "jv", "hal", 0)
        + _point("az-pir-1", "panel-az", "bzk", "az-1", 0)
        + _point("az-pir-4", "panel-az", "bzk", "az-2", 3)
        + _point("ezk-pir-1", "panel-ezk", "ezk", "ezk-1", 0)
    )


def every_point(ports: dict[str, int]) -> str:
    """What the simulators serve: both configs' devices and points."""
    return after(ports) + "".join(
        _point(pid, "panel-az", "bzk", "az-1", bit) for pid, bit in (("az-pir-2", 1), ("az-pir-3", 2))
    )


@dataclass
class Building:
    tmp: Path
    simulator: SiteSimulator
    ports: dict[str, int]
    site_file: Path
    overlay: Path
    metrics_url: str
    collector: Collector
    process: asyncio.subprocess.Process

    def events(self, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.collector.events() if all(_get(e, k) == v for k, v in match.items())]

    async def wait_event(self, within: float = 20.0, **match: Any) -> dict[str, Any]:
        await self.wait(lambda: bool(self.events(**match)), within)
        return self.events(**match)[-1]

    async def wait(self, condition: Callable[[], bool], within: float = 20.0) -> None:
        """Wait for `condition`; fails at once, with the gateway's log, if the gateway ended."""
        await wait_until(lambda: condition() or self.process.returncode is not None, within, interval=0.02)
        assert self.process.returncode is None, f"the gateway ended ({self.process.returncode}): {_log(self)[-3000:]}"

    def write_site(self, text: str) -> None:
        partial = self.site_file.with_suffix(".partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(self.site_file)  # the gateway reads it whole or not at all

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as response:
            return str(response.read().decode())

    async def metric(self, name: str) -> float:
        text = await asyncio.to_thread(self.metrics)
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not exported")

    def status(self) -> dict[str, Any]:
        return self.collector.on(f"gcmk/v1/{SITE}/status")[-1].json()


def _get(event: dict[str, Any], key: str) -> Any:
    value: Any = event
    for part in key.split("__"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@contextlib.asynccontextmanager
async def building(tmp_path: Path) -> AsyncIterator[Building]:
    placeholders = {device: 5020 + n for n, device in enumerate(PANELS)}
    union = tmp_path / "every-point.yaml"
    union.write_text(every_point(placeholders), encoding="utf-8")
    simulator = SiteSimulator(load_site(union))
    await simulator.start()
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    collector = Collector(broker.port, topic=f"gcmk/v1/{SITE}/#")
    collecting = asyncio.create_task(collector.run())
    process: asyncio.subprocess.Process | None = None
    try:
        ports = {device: int(endpoint["port"]) for device, endpoint in simulator.overlay()["devices"].items()}
        site_file = tmp_path / "site.yaml"
        site_file.write_text(before(ports), encoding="utf-8")
        overlay = tmp_path / "local.yaml"  # applies to both configs: broker, journal and operator port
        with overlay.open("w") as out:
            YAML(typ="safe").dump(
                {
                    "mqtt": {"url": broker.url, "insecure": True, "keepalive": 5},
                    "journal": {"data_dir": str(tmp_path / "journal")},
                    "metrics": {"listen": "127.0.0.1", "port": 0},  # OS-chosen: read from the log
                },
                out,
            )
        async with asyncio.timeout(10):
            await collector.connected.wait()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli.main", "run", "--site", str(site_file), "--overlay", str(overlay),
            stdout=(tmp_path / "gateway.out").open("wb"), stderr=(tmp_path / "gateway.err").open("wb"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        url = await wait_until(lambda: _operator_url(tmp_path / "gateway.err"), 20, interval=0.05)
        yield Building(tmp_path, simulator, ports, site_file, overlay, url, collector, process)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()
        assert process.returncode == 0, (tmp_path / "gateway.err").read_text()[-3000:]
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        collecting.cancel()
        await asyncio.gather(collecting, return_exceptions=True)
        broker.stop()
        await simulator.stop()


def _operator_url(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "operator endpoints listening":
                return str(entry["url"]).removesuffix("/metrics")
    return None


def _log(b: Building) -> str:
    return (b.tmp / "gateway.err").read_text(errors="replace") + (b.tmp / "gateway.out").read_text(errors="replace")


async def _reload_by_signal(b: Building, reloads: Callable[[], bool]) -> None:
    assert b.process.pid is not None
    os.kill(b.process.pid, signal.SIGHUP)
    await b.wait(reloads)


def _seqs_are_gap_free(b: Building) -> None:
    seqs = [e["seq"] for e in b.collector.events()]
    assert sorted(set(seqs)) == list(range(1, max(seqs) + 1)), seqs  # none lost, no gap
    assert len(seqs) == len(set(seqs)), "an event published twice"


@pytest.mark.timeout(90)
async def test_a_tenant_moves_out_and_another_in_without_a_restart(tmp_path: Path) -> None:
    async with building(tmp_path) as b:
        for point in ("az-pir-1", "az-pir-2", "jv-pir-1"):
            await b.simulator.raise_alarm(point)
        for point in ("az-pir-1", "az-pir-2", "jv-pir-1"):
            await b.wait_event(point__id=point, state="alarm")
        assert b.events(point__id="az-pir-1")[0]["tenant"] == "az"
        old_hash = b.status()["config_hash"]

        b.write_site(after(b.ports))
        await _reload_by_signal(b, lambda: bool(b.events(type="config_changed")))
        changed = b.events(type="config_changed")[0]
        new_hash = config_hash(b.site_file, [b.overlay])
        assert changed["text"].startswith(f"config {old_hash} -> {new_hash}: "), changed
        assert "2 point(s) removed (az-pir-2, az-pir-3)" in changed["text"]
        assert "1 device(s) added (panel-ezk)" in changed["text"]
        assert ("tenant" not in changed, changed["codes"]["sia"]) == (True, "RS")  # a site-level event

        # The removed point in alarm: one final restore, marked as caused by the removal, as AZ's (until now).
        (ended,) = b.events(point__id="az-pir-2", state="restore")
        assert (ended["cause"], ended["tenant"], ended["seq"] < changed["seq"]) == ("point_removed", "az", True)
        assert not b.events(point__id="az-pir-3")  # removed while normal: nothing to end

        # The alarm active during the reload: not restored by it, and its restore carries the new tenant.
        await b.simulator.raise_alarm("ezk-pir-1")
        moved_in = await b.wait_event(point__id="ezk-pir-1", state="alarm")
        assert moved_in["tenant"] == "ezk" and moved_in["point"]["zone"] == "ezk-1"
        assert not b.events(point__id="az-pir-1", state="restore")
        await b.simulator.clear_alarm("az-pir-1")
        restore = await b.wait_event(point__id="az-pir-1", state="restore")
        assert (restore["tenant"], restore["point"]["zone"], "cause" in restore) == ("bzk", "az-1", False)
        assert [e["state"] for e in b.events(point__id="az-pir-1")] == ["alarm", "restore"]  # never twice
        assert [e["state"] for e in b.events(point__id="jv-pir-1")] == ["alarm"]  # untouched device: no blip

        await b.wait(lambda: b.status()["config_hash"] == new_hash)  # the retained status
        assert await b.metric("gcmk_config_last_reload_successful") == 1.0
        assert f'config_hash="{new_hash}"' in await asyncio.to_thread(b.metrics)
        assert not any(e["type"] == "comm_loss" for e in b.collector.events())
        assert all(e.get("tenant") != "az" for e in b.collector.events() if e["seq"] > changed["seq"])
        _seqs_are_gap_free(b)


@pytest.mark.timeout(90)
async def test_a_broken_config_leaves_the_gateway_on_the_old_one(tmp_path: Path) -> None:
    async with building(tmp_path) as b:
        await b.simulator.raise_alarm("az-pir-1")
        await b.wait_event(point__id="az-pir-1", state="alarm")
        running = b.status()["config_hash"]

        broken = after(b.ports).replace("zone: ezk-1", "zone: ezk-9")  # a zone nobody declared
        b.write_site(broken)
        await _reload_by_signal(b, lambda: bool(b.events(type="config_reload_failed")))
        failed = b.events(type="config_reload_failed")[0]
        assert "site.yaml:" in failed["text"] and "unknown zone 'ezk-9'" in failed["text"], failed
        assert await b.metric("gcmk_config_last_reload_successful") == 0.0
        assert "config_reload_problem" in _log(b) and "unknown zone 'ezk-9'" in _log(b)

        # Still the old config: AZ's tenant, AZ's removed point still read, the new panel not.
        await b.simulator.raise_alarm("az-pir-2")
        still = await b.wait_event(point__id="az-pir-2", state="alarm")
        assert still["tenant"] == "az"
        assert b.status()["config_hash"] == running

        # `gcmk-gateway reload`: an invalid file is refused here, the gateway not asked (exit 2).
        cli = await _cli_reload(b)
        assert cli[0] == 2 and "unknown zone 'ezk-9'" in cli[2] and ":" in cli[2].split("unknown zone")[0]
        # A change that needs a restart: the gateway refuses it with the reason (exit 1).
        b.write_site(after(b.ports).replace(f"id: {SITE}", "id: other-site"))
        cli = await _cli_reload(b, ["--url", b.metrics_url])
        assert cli[0] == 1 and "site.id 'test-site' -> 'other-site'" in cli[1], cli
        # A good one: applied, and the exit code says so.
        b.write_site(after(b.ports))
        cli = await _cli_reload(b, ["--url", b.metrics_url])
        assert cli[0] == 0 and "reload applied" in cli[1], cli
        assert await b.metric("gcmk_config_last_reload_successful") == 1.0
        await b.simulator.raise_alarm("ezk-pir-1")
        assert (await b.wait_event(point__id="ezk-pir-1", state="alarm"))["tenant"] == "ezk"
        assert len(b.events(type="config_reload_failed")) == 2 and len(b.events(type="config_changed")) == 1
        _seqs_are_gap_free(b)


async def _cli_reload(b: Building, extra: list[str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli.main", "reload", "--site", str(b.site_file), "--overlay", str(b.overlay),
        *(extra or []),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_the_scenario_configs_are_valid(tmp_path: Path) -> None:
    """The fixtures themselves: both configs validate, so a failure above is the gateway's, not the test's."""
    ports = {device: 5020 + n for n, device in enumerate(PANELS)}
    for text in (before(ports), after(ports)):
        path = tmp_path / "site.yaml"
        path.write_text(text, encoding="utf-8")
        assert json.dumps(load_site(path).model_dump(mode="json"))
