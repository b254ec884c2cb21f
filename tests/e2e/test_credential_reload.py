"""`gcmk-gateway run` as deployed takes a rotated MQTT password on SIGHUP: the old password removed from a
real Mosquitto (which reloads its password file on its own SIGHUP), the gateway reconnects with the password
file read again, and alarms keep arriving. Without the reload's reconnect it would keep the old session (and
a reconnect with a password read once at start would be refused: Mosquitto 2 drops the connections whose
password its SIGHUP made invalid)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiomqtt
from ruamel.yaml import YAML

from gateway.tools.demo import gateway_overlay
from simulators.site import SiteSimulator
from tests.support.delivery_harness import Collector
from tests.support.mosquitto import Mosquitto
from tests.support.sites import MINIMAL_SITE, minimal_site

SITE = "test-site"


async def _refused(port: int, password: str) -> bool:
    try:
        async with aiomqtt.Client("127.0.0.1", port, username="gw", password=password, timeout=5):
            return False
    except aiomqtt.MqttError:
        return True


async def test_sighup_reconnects_with_the_rotated_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("old-secret\n")
    simulator = SiteSimulator(minimal_site())
    await simulator.start()
    users = {"gw": "old-secret", "meldkamer": "mk"}
    process: asyncio.subprocess.Process | None = None
    try:
        with Mosquitto(tmp_path / "broker", users=users) as broker:
            overlay = gateway_overlay(simulator.overlay(), broker.url, tmp_path / "journal", 0)
            overlay["mqtt"] |= {"username": "gw", "password_file": str(secret)}
            overlay["delivery"] = {"confirm": "broker"}
            overlay_file = tmp_path / "overlay.yaml"
            with overlay_file.open("w") as out:
                YAML(typ="safe").dump(overlay, out)
            login = {"username": "meldkamer", "password": "mk"}
            collector = Collector(broker.port, topic=f"gcmk/v1/{SITE}/#", login=login)

            def online() -> int:
                return sum(1 for m in collector.on("/status") if m.json()["status"] == "online")

            def alarms(point: str) -> list[str]:
                return [e["state"] for e in collector.events() if e["point"]["id"] == point]

            async with asyncio.TaskGroup() as tg:
                collecting = tg.create_task(collector.run())
                await asyncio.wait_for(collector.connected.wait(), 10)
                with (tmp_path / "gateway.log").open("wb") as log:
                    process = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "gateway", "run", "--site", str(MINIMAL_SITE), "--overlay",
                        str(overlay_file), stdout=asyncio.subprocess.DEVNULL, stderr=log,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                await collector.wait_for(lambda: online() >= 1, 30)
                await simulator.raise_alarm("pir-02")
                await collector.wait_for(lambda: alarms("pir-02") == ["alarm"], 20)

                # rotate: the gateway's file, then the broker (its SIGHUP re-reads the password file)
                new = secret.with_name("mqtt-password.new")
                new.write_text("new-secret\n")
                os.replace(new, secret)
                update = await asyncio.create_subprocess_exec(
                    "mosquitto_passwd", "-b", str(broker.workdir / "passwords"), "gw", "new-secret"
                )
                assert await update.wait() == 0
                assert broker.process is not None
                broker.process.send_signal(signal.SIGHUP)
                for _ in range(50):  # Mosquitto applies its SIGHUP on its own time: poll with real logins
                    if await _refused(broker.port, "old-secret"):
                        break
                else:
                    raise AssertionError("the broker still takes the old password")

                # Mosquitto 2 also drops the connections whose password is no longer valid: the gateway may be
                # reconnecting already (reading the file again) or still in its old session. Either way a
                # SIGHUP gives a new session. A reload renews only when the files changed since the last
                # renewal, so the file is written once more (same password, no newline) for a second SIGHUP
                # that renews a session that is surely up.
                for content in ("new-secret\n", "new-secret"):
                    if secret.read_text() != content:
                        secret.write_text(content)
                    before = online()
                    process.send_signal(signal.SIGHUP)
                    await collector.wait_for(lambda b=before: online() > b, 20)  # a new session: `online`
                await simulator.clear_alarm("pir-02")
                await collector.wait_for(lambda: alarms("pir-02") == ["alarm", "restore"], 20)
                assert process.returncode is None

                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    await process.wait()
                collecting.cancel()
        log_text = (tmp_path / "gateway.log").read_text(errors="replace")
        assert process.returncode == 0, log_text[-3000:]
        assert "Traceback" not in log_text
        assert "mqtt_session_renewing" in log_text and "mqtt_connect_refused" not in log_text, log_text[-3000:]
        seqs = [e["seq"] for e in collector.events()]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs == list(range(seqs[0], seqs[-1] + 1))
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await simulator.stop()
