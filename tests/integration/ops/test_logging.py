"""What a running gateway logs, as an operator's log shipper gets it (`configure_logging`'s JSON lines):
the MQTT password never appears, from a password file or from the environment, also not when connecting
fails. (That adapters bind `site` and `device` to their lines: tests/integration/adapters/test_adapter_logging.py.)

The gateway is built by the composition root (`build_gateway`), as `gcmk-gateway run` builds it, and logging is
configured first, as the command line does. The stdlib root logger is opened to DEBUG, so that whatever a
library (aiomqtt/paho, pymodbus) would log at any level is in the output too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.app.service import Gateway
from gateway.app.wiring import build_gateway
from gateway.testing import wait_until
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.logs import configured_logging, json_lines
from tests.support.modbus_site import device, point, site_doc, site_of, with_overlay
from tests.support.mosquitto import Mosquitto, free_port

SECRET = "Geheim-Wachtwoord-42!"
PASSWORD_ENV = "GCMK_TEST_MQTT_PASSWORD"
SITE = "modbus-test"


def _doc(mqtt: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    doc = site_doc(
        [device("panel", poll_interval=0.1, timeout=0.08, offline_after_failures=2)],
        [point("pir-1", "panel", "holding", 100, bit=0), point("tamper", "panel", "coil", 0, type="tamper")],
    )
    doc["mqtt"] = {"insecure": True, "username": "gw", **mqtt}
    doc["journal"] = {"data_dir": str(data_dir)}
    doc["metrics"] = {"listen": "127.0.0.1", "port": 0}
    return doc


def _credentials(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str = SECRET) -> dict[str, Any]:
    if how == "password_file":
        path = tmp_path / "secrets" / "mqtt-password"
        path.parent.mkdir()
        path.write_text(secret + "\n", encoding="utf-8")
        return {"password_file": str(path)}
    monkeypatch.setenv(PASSWORD_ENV, secret)
    return {"password_env": PASSWORD_ENV}


@asynccontextmanager
async def gateway_running(doc: dict[str, Any]) -> AsyncIterator[tuple[Gateway, ModbusSiteSimulator]]:
    """The site's gateway from the composition root, against a Modbus simulator; stopped cleanly after."""
    sim = ModbusSiteSimulator(site_of(doc))
    await sim.start()
    try:
        gateway = build_gateway(with_overlay(doc, sim.overlay()), sink="mqtt", config_hash="logs")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gateway.run())
            async with asyncio.timeout(10):
                await gateway.started.wait()
            try:
                yield gateway, sim
            finally:
                gateway.stop()
    finally:
        await sim.stop()


def _library_debug() -> None:
    logging.getLogger().setLevel(logging.DEBUG)  # configure_logging keeps libraries at WARNING and up


@pytest.mark.parametrize("how", ["password_file", "password_env"])
async def test_a_gateway_start_never_logs_the_mqtt_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # The broker refuses anonymous clients: connecting proves the gateway read and sent the secret.
    with Mosquitto(tmp_path / "broker", users={"gw": SECRET}) as broker:
        doc = _doc({"url": broker.url, **_credentials(how, tmp_path, monkeypatch)}, tmp_path / "journal")
        with configured_logging("debug") as stream:
            _library_debug()
            async with gateway_running(doc) as (gateway, sim):
                assert gateway.delivery is not None
                await wait_until(lambda: '"mqtt_connected"' in stream.getvalue(), timeout=15)
                await sim.raise_alarm("pir-1")
                await wait_until(lambda: gateway.delivery is not None and gateway.delivery.published >= 1, timeout=15)
    output = stream.getvalue()
    assert SECRET not in output
    lines = json_lines(stream)  # every line is JSON
    events = {line["event"] for line in lines}
    assert {"gateway starting", "mqtt_connected", "modbus_device_online", "gateway stopped"} <= events, events
    online = next(line for line in lines if line["event"] == "modbus_device_online")
    assert (online["site"], online["device"]) == (SITE, "panel")


# How the publisher reports a connect that fails: the link is down (no broker there), or the broker refused it.
LINK_FAILED = ("mqtt_link_down", "mqtt_connect_refused")


@pytest.mark.parametrize("failure", ["wrong port", "wrong password"])
async def test_a_failing_mqtt_connect_is_logged_with_its_error_but_not_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    with Mosquitto(tmp_path / "broker", users={"gw": "the-right-one"}) as broker:
        url = f"mqtt://127.0.0.1:{free_port()}" if failure == "wrong port" else broker.url
        doc = _doc({"url": url, **_credentials("password_file", tmp_path, monkeypatch)}, tmp_path / "journal")
        with configured_logging("debug") as stream:
            _library_debug()
            async with gateway_running(doc) as (gateway, _sim):
                # and the command link failed once too: stopped in its backoff, not inside aiomqtt's connect (its
                # on_disconnect then raises CancelledError in a loop callback, aiomqtt 2.5)
                commands = gateway.commands
                await wait_until(
                    lambda: any(f'"{event}"' in stream.getvalue() for event in LINK_FAILED)
                    and (commands is None or commands.stats.last_error is not None),
                    timeout=15,
                )
    assert SECRET not in stream.getvalue()
    failed = next(line for line in json_lines(stream) if line["event"] in LINK_FAILED)
    assert failed["level"] in ("warning", "error"), failed
    expected = "refused" if failure == "wrong port" else "not authori"  # ECONNREFUSED / CONNACK "Not authorized"
    assert expected in (failed.get("error", "") + failed.get("detail", "")).lower(), failed
