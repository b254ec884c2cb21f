"""The Reloader in a running Gateway (in process): POST /-/reload, systemd's RELOADING=1 ... READY=1, and a
journal that refuses the reload's events (nothing applied)."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from gateway.app.reload import Reloader
from gateway.app.service import Gateway
from gateway.config.models import MqttConfig
from gateway.config.source import SiteSource, load_validated
from gateway.core.ports import Quality, Reading, ReadingSink
from gateway.domain.errors import NotAccepted
from gateway.domain.event import Event
from gateway.domain.state import Batch
from gateway.ops.sdnotify import SystemdNotifier
from gateway.testing import CollectingSink, wait_until
from gateway.tools.demo import free_port
from tests.support.sites import MINIMAL_SITE, OPERATOR_PORT_0


class Feed:
    """An adapter the test drives: it hands over its sink and waits."""

    name = "feed"

    def __init__(self) -> None:
        self.sink: ReadingSink | None = None

    async def run(self, sink: ReadingSink) -> None:
        self.sink = sink
        await asyncio.Future()

    async def read(self, point: str, value: object) -> None:
        assert self.sink is not None
        await self.sink.submit(Reading(point, value, Quality.GOOD, datetime.now(UTC)))  # type: ignore[arg-type]


class RefusingSink(CollectingSink):
    """A CollectingSink whose journal can be made to refuse batches (a full disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False

    async def accept(self, batch: Batch) -> Sequence[Event]:
        if self.refuse:
            raise NotAccepted("disk full")
        return await super().accept(batch)


def _post(url: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url + "/-/reload", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_reload_over_http_with_systemd_notifications_and_a_refusing_journal(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    original = MINIMAL_SITE.read_text(encoding="utf-8")
    site_file.write_text(original, encoding="utf-8")
    source = SiteSource(site_file, (OPERATOR_PORT_0,))
    loaded = load_validated(site_file, [OPERATOR_PORT_0])
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    sink = RefusingSink()
    feed = Feed()
    gateway = Gateway(
        loaded.config, sink, [feed], config_hash=loaded.hash, notifier=SystemdNotifier(str(tmp_path / "notify"))
    )
    gateway.reloader = Reloader(gateway, source)
    with notify:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gateway.run())
            await wait_until(lambda: gateway.operator_port is not None and feed.sink is not None)
            url = f"http://127.0.0.1:{gateway.operator_port}"
            await feed.read("pir-01", 0)
            await feed.read("pir-01", 1)
            await sink.wait_for(lambda ev: sink.of("pir-01") == [("burglary", "alarm")])

            # pir-01 leaves the config; the journal refuses the reload's events: nothing applied.
            site_file.write_text(
                original.replace(
                    'repeat: {count: 8}\n    id: "pir-{n:02d}"', 'repeat: {count: 7, start: 2}\n    id: "pir-{n:02d}"'
                ),
                encoding="utf-8",
            )
            sink.refuse = True
            status, outcome = await asyncio.to_thread(_post, url)
            assert (status, outcome["applied"]) == (409, False), outcome
            assert "journal did not take" in str(outcome["summary"]) and "disk full" in str(outcome["problems"])
            assert gateway.config_hash == loaded.hash and any(p.id == "pir-01" for p in gateway.site.points)
            assert gateway.normaliser.point_state("pir-01").condition == "burglary"  # untouched

            sink.refuse = False
            status, outcome = await asyncio.to_thread(_post, url)
            assert (status, outcome["applied"]) == (200, True), outcome
            assert outcome["config_hash"] == gateway.config_hash != loaded.hash
            assert sink.of("pir-01")[-1] == ("burglary", "restore")
            assert [e.cause for e in sink.events if e.point.id == "pir-01"] == [None, "point_removed"]
            messages = []
            while True:
                try:
                    messages.extend(notify.recv(4096).decode().split("\n"))
                except BlockingIOError:
                    break
            reloads = [m for m in messages if m in ("RELOADING=1", "READY=1")]
            assert reloads[-4:] == ["RELOADING=1", "READY=1", "RELOADING=1", "READY=1"], messages
            gateway.stop()


class GatedReloadSink(CollectingSink):
    """Holds the batch that carries `config_changed` until `gate` is set (a slow journal commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.holding = asyncio.Event()

    async def accept(self, batch: Batch) -> Sequence[Event]:
        if any(e.type.value == "config_changed" for e in batch.events):
            self.holding.set()
            await self.gate.wait()
        return await super().accept(batch)


async def test_readings_wait_for_the_reload_commit_and_are_then_made_under_the_new_config(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    original = MINIMAL_SITE.read_text(encoding="utf-8")
    site_file.write_text(original, encoding="utf-8")
    loaded = load_validated(site_file, [OPERATOR_PORT_0])
    sink = GatedReloadSink()
    feed = Feed()
    gateway = Gateway(loaded.config, sink, [feed], config_hash=loaded.hash)
    reloader = Reloader(gateway, SiteSource(site_file, (OPERATOR_PORT_0,)))
    gateway.reloader = reloader
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gateway.run())
        await wait_until(lambda: feed.sink is not None)
        await feed.read("pir-02", 0)
        # JenV's floor is handed to AZ: the zone and its points change tenant.
        moved = original.replace("name: JenV verdieping 1\n    tenant: jv", "name: AZ verdieping 1\n    tenant: az")
        site_file.write_text(moved.replace("tenant: jv\n    zone: jv-1", "tenant: az\n    zone: jv-1"), "utf-8")
        reload = tg.create_task(reloader.reload())
        await asyncio.wait_for(sink.holding.wait(), 10)  # the reload's batch is being journaled
        reading = tg.create_task(feed.read("pir-02", 1))
        await asyncio.sleep(0.2)  # a chance to slip in (not a synchronisation: the assertion is that it did not)
        assert not reading.done() and not sink.of("pir-02")
        sink.gate.set()
        assert (await reload).applied
        await reading
        changed = next(e for e in sink.events if e.type.value == "config_changed")
        (alarm,) = (e for e in sink.events if e.point.id == "pir-02")
        assert (alarm.tenant, alarm.seq is not None and changed.seq is not None and alarm.seq > changed.seq) == (
            "az",
            True,
        )
        gateway.stop()


class BrokenReconfigure(Feed):
    """An adapter whose device restart fails (e.g. a port another process holds)."""

    async def reconfigure(self, site: object, devices: object) -> None:
        raise OSError("address already in use")


async def test_a_device_restart_that_fails_after_the_reload_is_said_and_the_reloader_goes_on(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    original = MINIMAL_SITE.read_text(encoding="utf-8")
    site_file.write_text(original, encoding="utf-8")
    source = SiteSource(site_file, (OPERATOR_PORT_0,))
    loaded = load_validated(site_file, [OPERATOR_PORT_0])
    sink = CollectingSink()
    gateway = Gateway(loaded.config, sink, [BrokenReconfigure()], config_hash=loaded.hash)
    gateway.reloader = reloader = Reloader(gateway, source)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gateway.run())
        await wait_until(lambda: gateway.operator_port is not None)
        site_file.write_text(original.replace("port: 5020", "port: 5021", 1), encoding="utf-8")  # a device change
        assert "port: 5021" in site_file.read_text(encoding="utf-8")
        outcome = await reloader.reload()
        assert outcome.applied, outcome
        failed = [e for e in sink.events if e.type.value == "config_reload_failed"]
        assert failed and "could not restart" in (failed[0].text or "") and "address already in use" in failed[0].text
        site_file.write_text(original, encoding="utf-8")
        status, second = await asyncio.to_thread(_post, f"http://127.0.0.1:{gateway.operator_port}")
        assert status == 200 and second["applied"], second  # the reloader still serves requests
        gateway.stop()


class RenewingSink(CollectingSink):
    """A sink with an MQTT session: counts the renewals a reload asks for (gateway.app.reload.RenewsMqtt)."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0

    def renew_mqtt(self, mqtt: MqttConfig) -> None:
        self.renewals += 1


async def test_a_reload_renews_the_mqtt_sessions_only_when_their_credentials_changed(tmp_path: Path) -> None:
    """Rotating the password file needs a reload; a reload that changes no credential (an unchanged file, a
    tenant move, a loop of POST /-/reload) must not interrupt the sessions: each renewal is a reconnect, an
    `offline` (reconnecting) at the meldkamer, and a window in which a command can be lost."""
    site_file = tmp_path / "site.yaml"
    original = MINIMAL_SITE.read_text(encoding="utf-8")
    site_file.write_text(original, encoding="utf-8")
    secret = tmp_path / "mqtt-password"
    secret.write_text("first\n", encoding="utf-8")
    url = f"mqtt://127.0.0.1:{free_port()}"  # never connected: the sink only counts renewals
    mqtt = {"mqtt": {"url": url, "insecure": True, "tls": None, "password_file": str(secret)}}
    source = SiteSource(site_file, (OPERATOR_PORT_0, mqtt))
    loaded = source.load()
    sink = RenewingSink()
    gateway = Gateway(loaded.config, sink, [Feed()], config_hash=loaded.hash)
    reloader = gateway.reloader = Reloader(gateway, source)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gateway.run())
        await asyncio.wait_for(gateway.started.wait(), 10)
        assert (await reloader.reload()).applied and sink.renewals == 0  # unchanged file, same password
        site_file.write_text(original.replace("name: Testgebouw", "name: Testgebouw (renamed)", 1), encoding="utf-8")
        outcome = await reloader.reload()
        assert outcome.applied and outcome.config_hash != loaded.hash and sink.renewals == 0  # metadata only
        secret.write_text("second\n", encoding="utf-8")  # rotated on disk: the reload is how it takes effect
        assert (await reloader.reload()).applied and sink.renewals == 1
        assert (await reloader.reload()).applied and sink.renewals == 1  # and once only
        gateway.stop()
