"""Commands end to end: a real Mosquitto, the Modbus and BACnet simulators, the whole Gateway.

The test plays the meldkamer: it publishes commands on gcmk/v1/{site}/commands and reads the answers on
gcmk/v1/{site}/command-results, and checks the simulated devices and the audit events the sink received.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import sqlite3
import ssl
import tempfile
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.bacnet import BacnetAdapter
from gateway.app.service import Gateway
from gateway.app.wiring import build_commands, build_gateway
from gateway.commands.contract import commands_topic, results_topic
from gateway.commands.store import store_path
from gateway.config.loader import load_site
from gateway.config.models import SiteConfig
from gateway.core.stdout_sink import StdoutSink
from gateway.domain.taxonomy import EventType
from gateway.mqtt.client import NODELAY
from gateway.testing import CollectingSink, LoopExceptionCatcher, wait_until
from simulators.bacnet.device import to_raw
from simulators.bacnet_sim import BacnetSiteSimulator
from simulators.control import Fault
from simulators.modbus_sim import ModbusSiteSimulator
from tests.support.mosquitto import Mosquitto, mosquitto, tls_files
from tests.support.refusing_broker import RefusingBroker

__all__ = ["mosquitto"]  # the fixture

T = TypeVar("T")

SITE_ID = "cmd-test"
FC_COILS, FC_HOLDING = 1, 3
WRITES = (5, 6, 15, 16)  # Modbus write function codes

MODBUS_DOOR_ACTIONS = [
    {"action": "pulse", "table": "coil", "address": 4, "value": 1, "restore": 0, "pulse": 0.2, "max_pulse": 5},
    {"action": "unlock", "table": "coil", "address": 4, "value": 1},
    {"action": "lock", "table": "coil", "address": 4, "value": 0},
]
BACNET_DOOR_ACTIONS = [
    {"action": "pulse", "value": "pulse-unlock", "priority": 8},
    {"action": "unlock", "value": "unlock", "priority": 8},
    {"action": "lock", "value": "lock", "priority": 8},
]


def _point(pid: str, device: str, source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    doc = {"id": pid, "name": f"point {pid}", "device": device, "tenant": "jv", "zone": "z1", "type": "burglary",
           "source": source, "alarm": [1], "normal": [0]}
    doc.update(extra)
    return doc


MOMENTARY_ARM = {"type": "armed", "kind": "momentary", "alarm": [], "normal": [],
                 "events": [{"value": 1, "type": "armed"}, {"value": 0, "type": "disarmed"}]}
POINTS = [
    _point("area-1", "m1", {"protocol": "modbus", "table": "coil", "address": 0}, **MOMENTARY_ARM,
           actions=[{"action": "arm", "value": 1}, {"action": "disarm", "value": 0}]),
    _point("area-2", "m1", {"protocol": "modbus", "table": "coil", "address": 8}, **MOMENTARY_ARM),
    _point("door-1", "m1", {"protocol": "modbus", "table": "holding", "address": 0, "bit": 0, "width": 2},
           type="door_forced", actions=MODBUS_DOOR_ACTIONS),
    _point("panel-1", "m1", {"protocol": "modbus", "table": "holding", "address": 10}, type="fault",
           actions=[{"action": "acknowledge", "table": "holding", "address": 5, "value": 1},
                    {"action": "reset", "table": "holding", "address": 6, "value": 1}]),
    _point("bdoor-1", "b1", {"protocol": "bacnet", "object": "access-door,1", "property": "door-alarm-state"},
           type="door_forced", alarm=["forced-open"], normal=["normal"], actions=BACNET_DOOR_ACTIONS),
    _point("bzone-1", "b1", {"protocol": "bacnet", "object": "life-safety-zone,1", "property": "mode"},
           type="armed", kind="momentary", alarm=[], normal=[],
           events=[{"value": "armed", "type": "armed"}, {"value": "disarmed", "type": "disarmed"}],
           actions=[{"action": "arm", "property": "mode", "value": "armed", "priority": 8},
                    {"action": "disarm", "property": "mode", "value": "disarmed", "priority": 8}]),
    _point("bfire-1", "b1", {"protocol": "bacnet", "object": "life-safety-point,1"}, type="fire",
           alarm=["alarm"], normal=["quiet"], actions=[{"action": "acknowledge"}]),
]


def site_doc(data_dir: Path, broker: str, **commands: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "site": {"id": SITE_ID, "name": "Commands test", "address": "Teststraat 1"},
        "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
        "zones": [{"id": "z1", "name": "Zone 1", "tenant": "jv"}],
        "mqtt": {"url": broker, "insecure": True, "keepalive": 5},
        "journal": {"data_dir": str(data_dir)},
        "metrics": {"listen": "127.0.0.1", "port": 0},
        "bacnet": {"address": "127.0.0.1", "port": 47808},
        "commands": {"enabled": True, "rate_limit": 1000, "timeout": 3, **commands},
        "devices": [
            {"protocol": "modbus", "id": "m1", "name": "Panel", "host": "127.0.0.1", "port": 1,
             "poll_interval": 0.2, "timeout": 0.15, "offline_after_failures": 2},
            {"protocol": "bacnet", "id": "b1", "name": "Controller", "address": "127.0.0.1", "port": 47809,
             "device_instance": 1001, "timeout": 0.5, "poll_interval": 0.5},
        ],
        "points": POINTS,
    }


def with_overlay(doc: dict[str, Any], overlays: list[dict[str, Any]]) -> SiteConfig:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.yaml"
        path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
        return load_site(path, overlays)


@dataclass
class Meldkamer:
    """The other end: publishes commands, collects results."""

    client: aiomqtt.Client
    results: list[dict[str, Any]] = field(default_factory=list)
    counter: int = 0

    async def collect(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.results.append(json.loads(message.payload))

    async def send(self, payload: bytes | str) -> None:
        await self.client.publish(commands_topic(SITE_ID), payload, qos=1)

    async def command(self, point_id: str, action: str, *, ttl: float = 30, issued: datetime | None = None,
                      **extra: Any) -> str:
        self.counter += 1
        issued = issued or datetime.now(UTC)
        doc = {"command_id": extra.pop("command_id", f"cmd-{self.counter}"), "point_id": point_id,
               "action": action, "issued_at": issued.isoformat(),
               "expires_at": (issued + timedelta(seconds=ttl)).isoformat(), "operator": "op-7", **extra}
        await self.send(json.dumps(doc))
        return str(doc["command_id"])

    def of(self, command_id: str) -> list[dict[str, Any]]:
        return [r for r in self.results if r.get("command_id") == command_id]

    async def final(self, command_id: str, within: float = 10.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            return next((r for r in self.of(command_id) if r["status"] != "accepted" or r.get("replay")), None)

        return await wait_until(done, within)


@dataclass(frozen=True)
class Broker:
    url: str
    port: int


@dataclass
class Rig:
    site: SiteConfig
    gateway: Gateway
    sink: CollectingSink
    modbus: ModbusSiteSimulator
    bacnet: BacnetSiteSimulator
    meldkamer: Meldkamer

    async def _raw(self, fc: int, address: int) -> int:
        values = await self.modbus.server("m1").context.async_getValues(1, fc, address, 1)
        assert isinstance(values, list), values
        return int(values[0])

    async def coil(self, address: int) -> int:
        return await self._raw(FC_COILS, address)

    async def holding(self, address: int) -> int:
        return await self._raw(FC_HOLDING, address)

    def bacnet_value(self, obj: str, attr: str) -> Any:
        return to_raw(getattr(self.bacnet.devices["b1"].objects[obj], attr))

    def modbus_writes(self) -> int:
        return sum(1 for r in self.modbus.requests("m1") if r.function_code in WRITES)

    def audit(self) -> list[Any]:
        return [e for e in self.sink.events if e.type is EventType.COMMAND]


@asynccontextmanager
async def rig(
    data_dir: Path, broker: Mosquitto | Broker, *, mqtt: dict[str, Any] | None = None,
    client_tls: ssl.SSLContext | None = None, **commands: Any
) -> AsyncIterator[Rig]:
    doc = site_doc(data_dir, broker.url, **commands)
    if mqtt is not None:
        doc["mqtt"] = mqtt
    base = SiteConfig.model_validate(doc)
    modbus, bacnet = ModbusSiteSimulator(base), BacnetSiteSimulator(base, event_reporting=True)
    await modbus.start()
    await bacnet.start()
    try:
        site = with_overlay(doc, [modbus.overlay(), bacnet.overlay()])
        sink = CollectingSink()
        gateway = build_gateway(site, sink=sink)
        assert gateway.commands is not None
        meldkamer_client = aiomqtt.Client("127.0.0.1", broker.port, identifier="meldkamer-test",
                                          tls_context=client_tls, socket_options=NODELAY)
        async with meldkamer_client as client:
            meldkamer = Meldkamer(client)
            await client.subscribe(results_topic(SITE_ID), qos=1)
            async with asyncio.TaskGroup() as tg:
                collector = tg.create_task(meldkamer.collect())
                run = tg.create_task(gateway.run())
                try:
                    async with asyncio.timeout(15):
                        await gateway.commands.subscribed.wait()
                        for adapter in gateway.adapters:
                            if isinstance(adapter, BacnetAdapter):
                                await adapter.wait_ready()
                    yield Rig(site, gateway, sink, modbus, bacnet, meldkamer)
                finally:
                    gateway.stop()
                    async with asyncio.timeout(15):
                        await asyncio.wait([run])
                    collector.cancel()
    finally:
        await bacnet.stop()
        await modbus.stop()


async def _executed(rig_: Rig, point_id: str, action: str, **extra: Any) -> dict[str, Any]:
    cid = await rig_.meldkamer.command(point_id, action, **extra)
    result = await rig_.meldkamer.final(cid)
    assert result["status"] == "executed", result
    assert [r["status"] for r in rig_.meldkamer.of(cid)] == ["accepted", "executed"]
    return result


async def test_each_action_changes_the_device_and_is_executed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path / "data", mosquitto) as r:
        # Modbus: arm/disarm the area's own coil; the normaliser sees the device change as well
        await _executed(r, "area-1", "arm")
        assert await r.coil(0) == 1
        await r.sink.wait_for(lambda ev: any(e.point.id == "area-1" and e.type is EventType.ARMED for e in ev))
        await _executed(r, "area-1", "disarm")
        assert await r.coil(0) == 0
        # Modbus door: unlock / lock the release coil, and a pulse that relocks by itself
        await _executed(r, "door-1", "unlock")
        assert await r.coil(4) == 1
        await _executed(r, "door-1", "lock")
        assert await r.coil(4) == 0
        writes = r.modbus_writes()
        cid = await r.meldkamer.command("door-1", "pulse", duration=1.0)
        await wait_until(lambda: r.meldkamer.of(cid))
        for _ in range(250):  # unlocked during the pulse (polled: the simulator has no change signal) ...
            if await r.coil(4) == 1:
                break
            await asyncio.sleep(0.02)
        assert await r.coil(4) == 1
        result = await r.meldkamer.final(cid)
        assert result["status"] == "executed", result
        assert await r.coil(4) == 0  # ... and locked again after it
        assert r.modbus_writes() - writes == 2
        # Modbus panel: acknowledge and reset registers
        await _executed(r, "panel-1", "acknowledge")
        await _executed(r, "panel-1", "reset")
        assert (await r.holding(5), await r.holding(6)) == (1, 1)

        # BACnet access door: present-value with priority
        for action, value in (("unlock", "unlock"), ("lock", "lock"), ("pulse", "pulse-unlock")):
            await _executed(r, "bdoor-1", action)
            assert r.bacnet_value("access-door,1", "presentValue") == value
        # BACnet life-safety zone mode
        await _executed(r, "bzone-1", "arm")
        assert r.bacnet_value("life-safety-zone,1", "mode") == "armed"
        await _executed(r, "bzone-1", "disarm")
        assert r.bacnet_value("life-safety-zone,1", "mode") == "disarmed"
        # BACnet AcknowledgeAlarm of the fire point's notification
        await r.bacnet.raise_alarm("bfire-1")
        await r.sink.wait_for(lambda ev: any(e.point.id == "bfire-1" and e.type is EventType.FIRE for e in ev))
        assert r.bacnet.acked_transitions("bfire-1")[0] is False
        await _executed(r, "bfire-1", "acknowledge")
        assert r.bacnet.acked_transitions("bfire-1")[0] is True
        assert r.bacnet.devices["b1"].acks[-1] == ("bfire-1", "op-7", "life-safety-alarm")

        # the audit trail: accepted + executed per command, journaled with seq, doors under access
        audit = r.audit()
        assert len(audit) == 2 * 13
        assert all(e.seq is not None and e.state.value == "info" and "op-7" in (e.text or "") for e in audit)
        assert {e.category.value for e in audit if e.point.id in ("door-1", "bdoor-1")} == {"access"}
        assert {e.category.value for e in audit if e.point.id == "panel-1"} == {"supervision"}
        seqs = {r_["audit_seq"] for r_ in r.meldkamer.results}
        assert seqs <= {e.seq for e in audit}
        stats = r.gateway.commands.stats if r.gateway.commands else None
        assert stats is not None and stats.results[("pulse", "executed")] == 2 and stats.latency_buckets.count == 13


async def test_refused_and_repeated_commands_touch_no_device(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path / "data", mosquitto) as r:
        m = r.meldkamer
        done = await _executed(r, "door-1", "lock", command_id="once")
        writes, door = r.modbus_writes(), r.bacnet_value("access-door,1", "presentValue")
        past = datetime.now(UTC) - timedelta(minutes=2)
        cases = {
            await m.command("door-1", "unlock", issued=past, ttl=60): "expired",
            await m.command("ghost-7", "unlock"): "unknown_point",
            await m.command("panel-1", "unlock"): "action_not_allowed",
            await m.command("bdoor-1", "unlock", ttl=3600): "ttl_too_long",
            await m.command("door-1", "pulse", duration=60): "duration_too_long",
        }
        for cid, reason in cases.items():
            result = await m.final(cid)
            assert (result["status"], result["reason"]) == ("refused", reason), result
        await m.send(b"{not json")
        await m.send(json.dumps({"command_id": "half", "point_id": "door-1"}))
        await wait_until(lambda: sum(1 for x in m.results if x.get("reason") == "malformed") == 2)
        assert next(x for x in m.results if x.get("reason") == "malformed" and x.get("command_id") == "half")
        # the same command_id again: the stored result, flagged replay, nothing executed
        await m.command("door-1", "lock", command_id="once")
        await wait_until(lambda: any(x.get("replay") for x in m.of("once")))
        replay = next(x for x in m.of("once") if x.get("replay"))
        assert {k: v for k, v in replay.items() if k != "replay"} == {k: v for k, v in done.items() if k != "replay"}
        assert (r.modbus_writes(), r.bacnet_value("access-door,1", "presentValue")) == (writes, door)
        refused = [e for e in r.audit() if "refused" in (e.text or "")]
        assert len(refused) == len(cases) + 2
        assert r.gateway.commands is not None and r.gateway.commands.stats.replays == 1


async def test_rate_limit_refuses_beyond_the_budget(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path / "data", mosquitto, rate_limit=3) as r:
        ids = [await r.meldkamer.command("area-1", "arm") for _ in range(5)]
        results = [await r.meldkamer.final(cid) for cid in ids]
        assert [x["status"] for x in results] == ["executed"] * 3 + ["refused"] * 2
        assert results[-1]["reason"] == "rate_limited"


async def test_offline_device_fails_cleanly_and_the_gateway_stays_up(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path / "data", mosquitto) as r:
        await r.modbus.inject("m1", Fault("silent"))
        await r.bacnet.inject("b1", Fault("silent"))
        modbus = await r.meldkamer.final(await r.meldkamer.command("door-1", "unlock"))
        bacnet = await r.meldkamer.final(await r.meldkamer.command("bdoor-1", "unlock"))
        for result in (modbus, bacnet):
            assert (result["status"], result["reason"]) == ("failed", "device_offline"), result
        assert [e for e in r.audit() if e.priority == 3 and "failed" in (e.text or "")]
        await r.modbus.inject("m1", Fault("none"))
        await r.bacnet.inject("b1", Fault("none"))
        await _executed(r, "door-1", "unlock")
        await _executed(r, "bdoor-1", "unlock")


async def test_device_error_and_verification_mismatch_are_failures(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with rig(tmp_path / "data", mosquitto) as r:
        await r.modbus.inject("m1", Fault("exception", code=4))
        result = await r.meldkamer.final(await r.meldkamer.command("area-1", "arm"))
        assert (result["status"], result["reason"]) == ("failed", "device_error"), result
        await r.modbus.inject("m1", Fault("none"))
        await r.bacnet.inject("b1", Fault("exception"))
        result = await r.meldkamer.final(await r.meldkamer.command("bzone-1", "arm"))
        assert (result["status"], result["reason"]) == ("failed", "device_error"), result


async def test_replay_and_interrupted_commands_survive_a_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    data = tmp_path / "data"
    async with rig(data, mosquitto) as r:
        done = await _executed(r, "area-1", "arm", command_id="before-restart")
        site = r.site
    # a command that was accepted when the gateway died: the record has no final result
    with sqlite3.connect(store_path(site)) as db:
        accepted = dict(done, command_id="mid-crash", status="accepted", detail="executing")
        db.execute("INSERT INTO commands VALUES ('mid-crash', 'accepted', ?, 1, 0)", (json.dumps(accepted),))
    async with rig(data, mosquitto) as r:
        writes = r.modbus_writes()
        crashed = await r.meldkamer.final("mid-crash")
        assert (crashed["status"], crashed["reason"]) == ("failed", "interrupted")
        await r.meldkamer.command("area-1", "arm", command_id="before-restart")
        await wait_until(lambda: any(x.get("replay") for x in r.meldkamer.of("before-restart")))
        replay = next(x for x in r.meldkamer.of("before-restart") if x.get("replay"))
        assert replay["status"] == "executed" and replay["at"] == done["at"]
        assert r.modbus_writes() == writes


async def test_commands_over_mutual_tls_like_the_publisher(tmp_path: Path) -> None:
    broker_tls, ca, (cert, key) = tls_files(tmp_path / "tls")
    with Mosquitto(tmp_path / "broker", tls=dataclasses.replace(broker_tls, require_certificate=True)) as broker:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        mqtt = {"url": broker.url, "tls": {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)}}
        async with rig(tmp_path / "data", broker, mqtt=mqtt, client_tls=context) as r:
            await _executed(r, "area-1", "arm")


async def test_read_only_and_commissioning_gateways_take_no_commands(tmp_path: Path) -> None:
    enabled = SiteConfig.model_validate(site_doc(tmp_path, "mqtt://127.0.0.1:1"))
    disabled = SiteConfig.model_validate(site_doc(tmp_path, "mqtt://127.0.0.1:1", enabled=False))
    assert build_commands(enabled, [], CollectingSink()) is not None
    assert build_commands(disabled, [], CollectingSink()) is None
    assert build_commands(enabled, [], StdoutSink()) is None
    assert build_gateway(enabled, sink="stdout").commands is None


async def test_commands_through_the_embedded_demo_broker(tmp_path: Path) -> None:
    """amqtt (the demo's broker) speaks MQTT 3.1.1 only: the processor falls back from MQTT 5 by itself."""
    from amqtt.broker import Broker as Amqtt

    from gateway.tools.embedded_broker import broker_config
    from tests.support.mosquitto import free_port

    port = free_port()
    amqtt = Amqtt(broker_config(port))
    await amqtt.start()
    try:
        # Retained messages on the command topic and elsewhere before the gateway subscribes: amqtt hands a
        # new subscriber retained messages of other topics too. None of them is a command.
        async with aiomqtt.Client("127.0.0.1", port, identifier="retainer") as other:
            stale = {"command_id": "stale", "point_id": "area-1", "action": "arm", "operator": "x",
                     "issued_at": datetime.now(UTC).isoformat(),
                     "expires_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()}
            await other.publish(commands_topic(SITE_ID), json.dumps(stale), qos=1, retain=True)
            for n in range(5):
                await other.publish(f"gcmk/v1/{SITE_ID}/state/p{n}", b'{"schema":"gcmk.state.v1"}', qos=1, retain=True)
        async with rig(tmp_path / "data", Broker(f"mqtt://127.0.0.1:{port}", port)) as r:
            await _executed(r, "area-1", "arm")
            assert await r.coil(0) == 1
            assert r.gateway.commands is not None and r.gateway.commands.stats.retained_ignored >= 1
            assert [e.text for e in r.audit() if "refused" in (e.text or "")] == [], "no audit of non-commands"
            assert r.meldkamer.of("stale") == []
            metrics = await _scrape(r.gateway)
            assert f'gcmk_commands_total{{action="arm",site="{SITE_ID}",status="executed"}} 1.0' in metrics
            assert f'gcmk_command_latency_seconds_count{{site="{SITE_ID}"}} 1.0' in metrics
            assert f'gcmk_command_retained_ignored_total{{site="{SITE_ID}"}}' in metrics
            assert f'gcmk_commands_connected{{site="{SITE_ID}"}} 1.0' in metrics
    finally:
        await amqtt.shutdown()


async def _scrape(gateway: Gateway) -> str:
    import urllib.request

    url = f"http://127.0.0.1:{gateway.operator_port}/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())


def _fresh_command(_: object) -> dict[str, Any]:
    """A valid command as of now (drawn at generation time, so the mutations below start from a live one)."""
    now = datetime.now(UTC)
    return {"command_id": "f", "point_id": "area-1", "action": "arm", "operator": "fuzz",
            "issued_at": now.isoformat(), "expires_at": (now + timedelta(seconds=30)).isoformat()}


def _fuzz_payloads() -> st.SearchStrategy[bytes]:
    keys = ["command_id", "point_id", "action", "operator", "issued_at", "expires_at", "duration", "reason", "x"]
    values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                       st.sampled_from(["area-1", "door-1", "bdoor-1", "bzone-1", "arm", "pulse", "lock", "ghost"]),
                       st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()))
    mutated = st.tuples(st.builds(_fresh_command, st.none()), st.uuids(),
                        st.dictionaries(st.sampled_from(keys), values, max_size=3)).map(
        lambda t: json.dumps({**t[0], "command_id": str(t[1]), **t[2]}).encode()
    )
    return st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode), mutated, mutated)


class _Background:
    """One gateway rig on an event loop in a thread, so hypothesis (synchronous) can feed it example by example."""

    def __init__(self, data: Path, broker: Mosquitto) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_exceptions = LoopExceptionCatcher(self.loop).install()  # what the async tests get from conftest
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-rig", daemon=True)
        self.thread.start()
        self.rig: Rig | None = None
        self._ready: concurrent.futures.Future[Rig] = concurrent.futures.Future()
        self._done = asyncio.Event()
        self._held = asyncio.run_coroutine_threadsafe(self._hold(data, broker), self.loop)
        self.rig = self._ready.result(timeout=30)

    async def _hold(self, data: Path, broker: Mosquitto) -> None:
        try:
            async with rig(data, broker) as r:
                self._ready.set_result(r)
                await self._done.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._done.set)
        try:
            self._held.result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
        self.loop_exceptions.check()


@pytest.fixture
def fuzz_rig(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[_Background]:
    background = _Background(tmp_path / "data", mosquitto)
    try:
        yield background
    finally:
        background.close()


def _answers(m: Meldkamer) -> int:
    """Exactly one answer per message that is not 'accepted' (a replay may echo a stored 'accepted')."""
    return sum(1 for x in m.results if x["status"] != "accepted" or x.get("replay"))


async def _send_and_wait(r: Rig, payloads: list[bytes]) -> None:
    before = _answers(r.meldkamer)
    for payload in payloads:
        await r.meldkamer.send(payload)
    await wait_until(lambda: _answers(r.meldkamer) >= before + len(payloads), 30)


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payloads=st.lists(_fuzz_payloads(), min_size=10, max_size=10))
def test_fuzzed_messages_through_the_broker_leave_the_gateway_up(
    fuzz_rig: _Background, payloads: list[bytes]
) -> None:
    """300 fuzzed messages in batches of 10: each is answered, nothing crashes or restarts."""
    r = fuzz_rig.rig
    assert r is not None and r.gateway.commands is not None
    fuzz_rig.call(_send_and_wait(r, payloads))
    assert not r.gateway.supervisor.restarts
    assert r.gateway.commands.stats.connected
    fuzz_rig.call(_executed(r, "door-1", "lock"))  # and still executes commands



@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_command_subscription_the_broker_refuses_is_one_error_a_gauge_and_backoff(
    tmp_path: Path, protocol: str
) -> None:
    """Without a look at the SUBACK the processor would log `commands_subscribed` and wait for ever for commands
    that cannot come."""
    import structlog
    from prometheus_client import CollectorRegistry

    from gateway.core.normaliser import Normaliser
    from gateway.domain.event import utcnow
    from gateway.ops.metrics import GatewayCollector, Sources

    async with RefusingBroker() as broker:
        doc = site_doc(tmp_path / "data", f"mqtt://127.0.0.1:{broker.port}")
        doc["mqtt"]["protocol"] = protocol
        site = SiteConfig.model_validate(doc)
        commands = build_commands(site, [], CollectingSink())
        assert commands is not None

        def gauge() -> float | None:
            registry = CollectorRegistry()
            normaliser = Normaliser(site, epoch=utcnow()).stats
            sources = Sources(site=site, config_hash="t", normaliser=normaliser, commands=commands.stats)
            registry.register(GatewayCollector(sources))
            return registry.get_sample_value("gcmk_commands_subscription_refused", {"site": SITE_ID})

        with structlog.testing.capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                run = tg.create_task(commands.run())
                await wait_until(lambda: broker.subscribes >= 3, 20, what="three refused subscriptions")
                assert not commands.subscribed.is_set() and not commands.stats.connected
                assert gauge() == 1.0
                broker.refuse = False
                await wait_until(commands.subscribed.is_set, 30, what="subscribed once the broker grants it")
                assert gauge() == 0.0
                run.cancel()
    refused = [e for e in logs if e["event"] == "commands_subscription_refused"]
    assert len(refused) == 1 and f"gcmk/v1/{SITE_ID}/commands" in refused[0]["error"], refused
    assert [e["event"] for e in logs].count("commands_subscribed") == 1
