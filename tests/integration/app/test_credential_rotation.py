"""Rotating the MQTT password, the broker's certificate and its CA by reload, not restart, against a real
Mosquitto with TLS and a password file: the publisher and the command processor reconnect with the files read
again, events keep flowing with a gap-free seq, and the old password and CA are no longer used."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from gateway.app.reload import Reloader
from gateway.app.service import Gateway
from gateway.commands.processor import CommandProcessor
from gateway.config.models import SiteConfig
from gateway.config.source import SiteSource, load_validated
from gateway.core.ports import Quality, Reading, ReadingSink
from gateway.delivery.sink import DeliverySink
from gateway.testing import wait_until
from tests.support.delivery_harness import SITE, Collector, site_config
from tests.support.mosquitto import BrokerTls, Mosquitto, tls_files


class Feed:
    """An adapter the test drives: it hands over its sink and waits."""

    name = "feed"

    def __init__(self) -> None:
        self.sink: ReadingSink | None = None

    async def run(self, sink: ReadingSink) -> None:
        self.sink = sink
        await asyncio.Future()

    async def read(self, value: int) -> None:
        assert self.sink is not None
        await self.sink.submit(Reading("pir-01", value, Quality.GOOD, datetime.now(UTC)))


def _write_site(path: Path, site: SiteConfig) -> None:
    """The site file the reload reads again (JSON is YAML), its operator endpoint on an OS-chosen port."""
    doc = site.model_dump(mode="json", exclude_none=True)
    doc["metrics"] = {"listen": "127.0.0.1", "port": 0}
    path.write_text(json.dumps(doc), encoding="utf-8")


def _replace(path: Path, text: str) -> None:
    """As an operator does it: write next to it, then `mv` into place (atomic)."""
    new = path.with_name(path.name + ".new")
    new.write_text(text, encoding="utf-8")
    os.replace(new, path)


async def _set_broker_password(broker: Mosquitto, user: str, password: str) -> None:
    """mosquitto_passwd, then SIGHUP: Mosquitto reads its password file again."""
    update = await asyncio.create_subprocess_exec(
        "mosquitto_passwd", "-b", str(broker.workdir / "passwords"), user, password
    )
    assert await update.wait() == 0
    assert broker.process is not None
    broker.process.send_signal(signal.SIGHUP)


async def _login_refused(port: int, tls: ssl.SSLContext, password: str) -> bool:
    try:
        async with aiomqtt.Client("127.0.0.1", port, username="gw", password=password, tls_context=tls, timeout=5):
            return False
    except aiomqtt.MqttError:
        return True


async def _reloaded(reloader: Reloader, *connected: Callable[[], int]) -> None:
    """SIGHUP's path (Reloader.request); returns once every MQTT link connected again."""
    before = [count() for count in connected]
    reloader.request()
    for count, was in zip(connected, before, strict=True):
        await wait_until(lambda c=count, w=was: c() > w, 20, what="reconnected after the reload")


async def test_password_server_certificate_and_ca_rotated_by_reload_without_a_restart(tmp_path: Path) -> None:
    old_broker_tls, old_ca, _client = tls_files(tmp_path / "tls-old")
    new_broker_tls, new_ca, _client = tls_files(tmp_path / "tls-new")
    # The broker's files, in one place: rotating its certificate is replacing these and restarting it.
    served = BrokerTls(tmp_path / "broker-ca.pem", tmp_path / "broker-cert.pem", tmp_path / "broker-key.pem")
    for source, target in zip(
        (old_broker_tls.ca_file, old_broker_tls.cert_file, old_broker_tls.key_file),
        (served.ca_file, served.cert_file, served.key_file),
        strict=True,
    ):
        target.write_bytes(source.read_bytes())
    # The gateway's files (/etc/gcmk): the CA bundle it verifies the broker with, and its password.
    gw_ca, gw_password = tmp_path / "etc" / "ca.pem", tmp_path / "etc" / "mqtt-password"
    gw_ca.parent.mkdir()
    gw_ca.write_text(old_ca.read_text())
    gw_password.write_text("old-secret\n")

    either_ca = ssl.create_default_context()  # the meldkamer's subscriber trusts both CAs throughout
    either_ca.load_verify_locations(cafile=str(old_ca))
    either_ca.load_verify_locations(cafile=str(new_ca))

    users = {"gw": "old-secret", "meldkamer": "mk"}
    with Mosquitto(tmp_path / "broker", tls=served, users=users) as broker:
        site = site_config(
            tmp_path / "journal",
            broker.url,
            username="gw",
            password_file=str(gw_password),
            tls={"ca_file": str(gw_ca)},
        )
        site_file = tmp_path / "site.yaml"
        _write_site(site_file, site)
        loaded = load_validated(site_file)
        site = loaded.config
        sink = DeliverySink(site, config_hash=loaded.hash, version="1.2.3", close_grace=0.5)
        feed = Feed()
        commands = CommandProcessor(site, [feed], sink)
        gateway = Gateway(site, sink, [feed], commands=commands, config_hash=loaded.hash)
        reloader = Reloader(gateway, SiteSource(site_file))
        gateway.reloader = reloader
        collector = Collector(broker.port, tls=either_ca, login={"username": "meldkamer", "password": "mk"})
        value = 0

        def delivered() -> list[dict[str, Any]]:
            return [e for e in collector.events() if e["point"]["id"] == "pir-01"]

        async def alarm_flip() -> None:
            """pir-01 goes into alarm or back to normal; its event reaches the meldkamer."""
            nonlocal value
            value = 1 - value
            seen = len(delivered())
            await feed.read(value)
            await wait_until(lambda: len(delivered()) > seen, 20, what="the event at the meldkamer")

        with structlog.testing.capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                collecting = tg.create_task(collector.run())
                await asyncio.wait_for(collector.connected.wait(), 10)
                run = tg.create_task(gateway.run())
                await wait_until(lambda: sink.stats.connected and commands.stats.connected and feed.sink, 20)
                await feed.read(0)  # the first reading: normal, no event
                await alarm_flip()

                # 1. The password: new file on the gateway, new password on the broker (the old one is gone).
                _replace(gw_password, "new-secret\n")
                await _set_broker_password(broker, "gw", "new-secret")
                refused_old = False
                for _ in range(50):  # Mosquitto applies the SIGHUP asynchronously: poll until the old one fails
                    refused_old = await _login_refused(broker.port, either_ca, "old-secret")
                    if refused_old:
                        break
                assert refused_old, "the broker still takes the old password"
                await _reloaded(reloader, lambda: sink.stats.connects, lambda: commands.stats.connects)
                await wait_until(lambda: sink.stats.connected and commands.stats.connected, 20)
                await alarm_flip()

                # 2. The CA: the new one next to the old one in the bundle, reload; then the broker's certificate
                # from the new CA (broker restarted: the gateway reconnects on its own, reading the bundle again).
                _replace(gw_ca, old_ca.read_text() + new_ca.read_text())
                await _reloaded(reloader, lambda: sink.stats.connects, lambda: commands.stats.connects)
                for source, target in (
                    (new_broker_tls.cert_file, served.cert_file),
                    (new_broker_tls.key_file, served.key_file),
                    (new_broker_tls.ca_file, served.ca_file),
                ):
                    target.write_bytes(source.read_bytes())
                broker.users = {"gw": "new-secret", "meldkamer": "mk"}
                assert sink.stats.connect_errors == 0 and not _errors(logs), logs
                await asyncio.to_thread(broker.restart)
                await wait_until(lambda: sink.stats.connected and commands.stats.connected, 30, what="back")
                # a connection tried while the broker restarted fails (and is logged): allowed only here
                errors_at_restart, logged_at_restart = sink.stats.connect_errors, len(_errors(logs))
                await alarm_flip()

                # 3. The old CA leaves the bundle: a reload, and the gateway trusts only the new one.
                _replace(gw_ca, new_ca.read_text())
                await _reloaded(reloader, lambda: sink.stats.connects, lambda: commands.stats.connects)
                await alarm_flip()

                gateway.stop()
                await asyncio.wait_for(run, 30)
                collecting.cancel()

    assert sink.stats.connect_refused == {}, "a connection with the old password was tried"
    assert sink.stats.connect_errors == errors_at_restart and len(_errors(logs)) == logged_at_restart, logs
    events = delivered()
    assert [e["state"] for e in events] == ["alarm", "restore", "alarm", "restore"]
    seqs = [e["seq"] for e in collector.events()]
    assert sorted(set(seqs)) == list(range(min(seqs), max(seqs) + 1)), f"a seq gap: {seqs}"
    assert SITE in {e["site"] for e in events}


async def test_unreadable_credentials_refuse_the_reload_and_at_reconnect_are_counted_and_retried(
    tmp_path: Path,
) -> None:
    """A reload whose password file cannot be read is refused and the sessions stay up. If the file goes after
    the reload's check (or a session ends on its own meanwhile), each link says so in one error line, counts
    the attempts, backs off, and connects once the file is back: no crash, no traceback."""
    secret = tmp_path / "mqtt-password"
    secret.write_text("pw\n")
    with Mosquitto(tmp_path / "broker", users={"gw": "pw"}) as broker:
        site = site_config(tmp_path / "journal", broker.url, username="gw", password_file=str(secret))
        site_file = tmp_path / "site.yaml"
        _write_site(site_file, site)
        loaded = load_validated(site_file)
        site = loaded.config
        sink = DeliverySink(site, config_hash=loaded.hash, version="1.2.3", close_grace=0.5)
        feed = Feed()
        commands = CommandProcessor(site, [feed], sink)
        gateway = Gateway(site, sink, [feed], commands=commands, config_hash=loaded.hash)
        reloader = Reloader(gateway, SiteSource(site_file))
        gateway.reloader = reloader
        with structlog.testing.capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                run = tg.create_task(gateway.run())
                await wait_until(lambda: sink.stats.connected and commands.stats.connected and feed.sink, 20)
                connects = (sink.stats.connects, commands.stats.connects)
                secret.unlink()
                outcome = await reloader.reload()
                assert not outcome.applied and "MQTT credentials cannot be read" in outcome.summary, outcome
                assert any("mqtt.password_file" in p for p in outcome.problems), outcome
                assert (sink.stats.connects, commands.stats.connects) == connects and sink.stats.connected

                sink.renew_mqtt(site.mqtt)  # the file went after the check: the next sessions cannot read it
                commands.renew_mqtt(site.mqtt)
                await wait_until(lambda: sink.stats.connect_errors >= 3, 20, what="three attempts, backed off")
                await wait_until(lambda: "mqtt.password_file" in (commands.stats.last_error or ""), 10)
                assert not sink.stats.connected and gateway.supervisor.restarts == {}
                await feed.read(0)
                await feed.read(1)  # an alarm while the link is down: journaled, delivered later
                secret.write_text("pw\n")
                await wait_until(lambda: sink.stats.connected and commands.stats.connected, 20, what="back")
                await wait_until(lambda: sink.stats.published >= 1, 20, what="the alarm delivered")
                gateway.stop()
                await asyncio.wait_for(run, 30)
    errors = [e for e in logs if e["log_level"] == "error" and e["event"] != "config_reload_problem"]
    assert sorted(e["event"] for e in errors) == [
        "commands_credentials_unreadable",  # once each, however many attempts
        "config_reload_failed",
        "mqtt_credentials_unreadable",
    ], errors
    assert all("exc_info" not in e for e in logs), "no traceback"
    for entry in (e for e in errors if e["event"].endswith("_credentials_unreadable")):
        assert "mqtt.password_file" in entry.get("detail", entry.get("error", "")), entry


def _errors(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["log_level"] == "error"]
