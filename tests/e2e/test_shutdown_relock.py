"""A door that was pulsed always relocks: SIGTERM a real gateway process in the middle of a 20 s pulse.

The order on shutdown must be: stop taking commands, end the pulse's hold and relock while the Modbus
adapter still runs, journal and publish the command's result, then stop the adapters, then the sink.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
from ruamel.yaml import YAML

from gateway.commands.contract import commands_topic, results_topic
from gateway.config.models import SiteConfig
from gateway.delivery.sink import journal_path
from gateway.testing import wait_until
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.mosquitto import Mosquitto, mosquitto

__all__ = ["mosquitto"]  # the fixture

SITE = "relock-test"
RELEASE_COIL = 4
FC_COILS = 1


def site_doc(data_dir: Path, broker_url: str) -> dict[str, Any]:
    return {
        "version": 1,
        "site": {"id": SITE, "name": "Relock test", "address": "Teststraat 1"},
        "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
        "zones": [{"id": "z1", "name": "Zone 1", "tenant": "jv"}],
        "mqtt": {"url": broker_url, "insecure": True, "keepalive": 5},
        "journal": {"data_dir": str(data_dir)},
        "metrics": {"listen": "127.0.0.1", "port": 0},
        "commands": {"enabled": True, "timeout": 3},
        "devices": [
            {"protocol": "modbus", "id": "m1", "name": "Door controller", "host": "127.0.0.1", "port": 1,
             "poll_interval": 0.2, "timeout": 0.15},
        ],
        "points": [
            {"id": "door-1", "name": "Entrance door", "device": "m1", "tenant": "jv", "zone": "z1",
             "type": "door_forced", "source": {"protocol": "modbus", "table": "holding", "address": 0},
             "alarm": [1], "normal": [0],
             "actions": [{"action": "pulse", "table": "coil", "address": RELEASE_COIL, "value": 1, "restore": 0,
                          "pulse": 20, "max_pulse": 30}]},
        ],
    }


async def test_sigterm_during_a_pulse_relocks_the_door_and_records_the_result(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    doc = site_doc(tmp_path / "journal", mosquitto.url)
    site = SiteConfig.model_validate(doc)
    simulator = ModbusSiteSimulator(site)
    await simulator.start()
    yaml = YAML(typ="safe")
    site_file, overlay_file = tmp_path / "site.yaml", tmp_path / "overlay.yaml"
    site_file.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    with overlay_file.open("w") as out:
        yaml.dump(simulator.overlay(), out)

    async def coil() -> int:
        values = await simulator.server("m1").context.async_getValues(1, FC_COILS, RELEASE_COIL, 1)
        return int(values[0])

    results: list[dict[str, Any]] = []
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "--site", str(site_file), "--overlay", str(overlay_file),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log: list[str] = []
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):  # the command subscription is up (JSON log lines on stderr)
            while "commands_subscribed" not in (line := (await process.stderr.readline()).decode()):
                assert line, "the gateway ended before it subscribed to commands:\n" + "".join(log)[-3000:]
                log.append(line)
        drain = asyncio.create_task(_drain(process.stderr, log))
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="meldkamer") as meldkamer:
            await meldkamer.subscribe(results_topic(SITE), qos=1)
            collect = asyncio.create_task(_collect(meldkamer, results))
            now = datetime.now(UTC)
            command = {"command_id": "pulse-1", "point_id": "door-1", "action": "pulse", "duration": 20,
                       "issued_at": now.isoformat(), "expires_at": (now + timedelta(seconds=30)).isoformat(),
                       "operator": "op-7"}
            await meldkamer.publish(commands_topic(SITE), json.dumps(command), qos=1)
            await wait_until(lambda: any(r["status"] == "accepted" for r in results), 10)
            for _ in range(500):  # the door is released (the simulator has no change signal: read it)
                if await coil() == 1:
                    break
                await asyncio.sleep(0.02)
            assert await coil() == 1, "the pulse never released the door"

            process.send_signal(signal.SIGTERM)  # 20 s pulse, stopped within the first second or so
            async with asyncio.timeout(20):
                await process.wait()
            await drain
            assert process.returncode == 0, "".join(log)[-3000:]

            assert await coil() == 0, "SIGTERM during a pulse left the door unlocked"
            final = await wait_until(lambda: next((r for r in results if r["status"] != "accepted"), None), 10)
            collect.cancel()
        assert final["status"] == "executed", final
        assert "ended early" in final["detail"]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await simulator.stop()

    with sqlite3.connect(journal_path(SiteConfig.model_validate(doc))) as db:
        audit = [json.loads(p) for (p,) in db.execute("SELECT payload FROM events ORDER BY seq")]
    texts = [e["text"] for e in audit if e["type"] == "command"]
    assert any("pulse-1" in t and "executed" in t for t in texts), texts


async def _collect(client: aiomqtt.Client, into: list[dict[str, Any]]) -> None:
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        into.append(json.loads(message.payload))


async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
    """Keep reading the gateway's log so that a full pipe never blocks it."""
    while line := await stream.readline():
        into.append(line.decode())
