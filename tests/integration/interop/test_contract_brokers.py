"""The whole gateway <-> meldkamer contract on every broker GCMK may run on, one scenario per test, the same on each.

Brokers (the `topology` parameter):
- `mosquitto-mqtt5`: one Mosquitto, the gateway on protocol `auto` (MQTT 5 chosen); the receiver (not a tier
  member) speaks MQTT 3.1.1 everywhere (gateway/tools/receiver_link.py: cheaper per message);
- `mosquitto-mqtt311`: one Mosquitto, the gateway configured for 3.1.1: no user properties, no message expiry;
- `rabbitmq`: a RabbitMQ 3.10 node started for this module (`rabbitmq_mqtt`, MQTT 3.1.1 only): the gateway on
  `auto` must find out by itself that MQTT 5 is not spoken and fall back (slow: the node boots in ~12 s);
- `bridge`: the gateway on a site Mosquitto bridged (deploy/mosquitto/site-bridge.conf's topic lines) to a
  central Mosquitto where the receiver is.

The real DeliverySink with its journal, the real command processor (commands and replay requests), and the
reference receiver (store, then confirm; replays on gaps). Every test has its own site id, so the tests
sharing the RabbitMQ node do not see each other's sessions or retained messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.app.wiring import build_commands
from gateway.commands.contract import CommandDoc, ReplayDoc, commands_topic, results_topic
from gateway.config.models import SiteConfig
from gateway.delivery.sink import DeliverySink
from gateway.domain.event import Event
from gateway.domain.state import Batch
from gateway.testing import wait_until
from gateway.tools.receiver import Notice, ReceiverState
from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions
from tests.support.delivery_harness import Collector, make_event, point_state
from tests.support.mosquitto import Bridge, Mosquitto
from tests.support.paths import REPO
from tests.support.rabbitmq import RabbitMQ, rabbitmq

__all__ = ["rabbitmq"]  # the module-scoped fixture

BRIDGE_CONF = REPO / "deploy" / "mosquitto" / "site-bridge.conf"


@dataclass(frozen=True)
class Topology:
    name: str
    gateway_port: int  # where the gateway connects
    receiver_port: int  # where the meldkamer side (receiver, test clients) connects
    protocol: str  # the gateway's mqtt.protocol
    expect_v5: bool  # the gateway should end up on MQTT 5 (user properties on its messages)
    # retained messages delivered to a wildcard subscription (`state/#`); RabbitMQ 3.10 delivers them only to a
    # subscription of the exact topic (docs/deployment.md)
    retained_wildcards: bool = True

    def url(self, port: int) -> str:
        return f"mqtt://127.0.0.1:{port}"


def bridge_topics(site: str) -> tuple[str, ...]:
    """The `topic` lines of the deployed site bridge config, for `site`."""
    lines = BRIDGE_CONF.read_text().splitlines()
    return tuple(line.replace("SITE", site) for line in lines if line.startswith("topic "))


@pytest.fixture(params=["mosquitto-mqtt5", "mosquitto-mqtt311", pytest.param("rabbitmq", marks=pytest.mark.slow),
                        "bridge"])
def topology(request: pytest.FixtureRequest, tmp_path: Path, site_id: str) -> Iterator[Topology]:
    name: str = request.param
    if name == "rabbitmq":
        node: RabbitMQ = request.getfixturevalue("rabbitmq")
        yield Topology(name, node.mqtt_port, node.mqtt_port, "auto", expect_v5=False, retained_wildcards=False)
        return
    if name == "bridge":
        with Mosquitto(tmp_path / "central") as central, Mosquitto(
            tmp_path / "site", bridge=Bridge(central.port, bridge_topics(site_id), client_id=f"bridge-{site_id}")
        ) as site_broker:
            yield Topology(name, site_broker.port, central.port, "auto", expect_v5=True)
        return
    with Mosquitto(tmp_path / "broker") as broker:
        v5 = name == "mosquitto-mqtt5"
        yield Topology(name, broker.port, broker.port, "auto" if v5 else "3.1.1", expect_v5=v5)


@pytest.fixture
def site_id() -> str:
    return f"interop-{secrets.token_hex(3)}"


def site_config(site: str, data_dir: Path, url: str, protocol: str) -> SiteConfig:
    return SiteConfig.model_validate(
        {
            "version": 1,
            "site": {"id": site, "name": "Interop", "address": "Teststraat 1"},
            "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
            "zones": [{"id": "hal", "name": "Hal", "tenant": "jv"}],
            "mqtt": {"url": url, "insecure": True, "keepalive": 5, "protocol": protocol},
            "supervision": {"heartbeat_interval": "300ms"},
            "journal": {"data_dir": str(data_dir)},
            "delivery": {"confirm": "meldkamer", "receivers": [receiver_id(site)], "confirm_timeout": "1s"},
            "commands": {"enabled": True, "rate_limit": 1000},
            "devices": [{"protocol": "modbus", "id": "panel-1", "name": "Centrale", "host": "127.0.0.1"}],
            "points": [
                {
                    "id": "pir-01",
                    "name": "PIR 1",
                    "device": "panel-1",
                    "tenant": "jv",
                    "zone": "hal",
                    "type": "burglary",
                    "source": {"protocol": "modbus", "table": "coil", "address": 1},
                    "alarm": [1],
                    "normal": [0],
                }
            ],
        }
    )


def receiver_id(site: str) -> str:
    return f"mk-{site}"


def event(site: str, n: int) -> Event:
    return make_event(n).model_copy(update={"site": site})


@dataclass
class Gateway:
    site: SiteConfig
    sink: DeliverySink

    async def accept(self, n: int, start: int = 0) -> list[int]:
        site = self.site.site.id
        accepted = await self.sink.accept(Batch(events=tuple(event(site, i) for i in range(start, start + n))))
        return [e.seq for e in accepted if e.seq is not None]


@contextlib.asynccontextmanager
async def gateway(topology: Topology, site: str, data_dir: Path) -> AsyncIterator[Gateway]:
    """The delivery sink and the command processor of one site, as the app wires them."""
    config = site_config(site, data_dir, topology.url(topology.gateway_port), topology.protocol)
    sink = DeliverySink(config, config_hash="cafe", version="1.2.3", devices=lambda: (1, 1))
    commands = build_commands(config, [], sink)
    assert commands is not None
    async with sink, asyncio.TaskGroup() as tg:
        task = tg.create_task(commands.run())
        try:
            await wait_until(lambda: sink.stats.connected and commands.subscribed.is_set(), 30, what="gateway up")
            yield Gateway(config, sink)
        finally:
            task.cancel()


@contextlib.asynccontextmanager
async def receiver(topology: Topology, site: str, state_dir: Path) -> AsyncIterator[tuple[ReceiverLink, list[Notice]]]:
    notices: list[Notice] = []
    link = ReceiverLink(
        topology.url(topology.receiver_port),
        ReceiverState(site=site),
        notices.append,
        ReceiverOptions(identifier=receiver_id(site), state_dir=state_dir, reorder_timeout=0.5),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        yield link, notices
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def collector(topology: Topology, site: str, topic: str) -> AsyncIterator[Collector]:
    """A 3.1.1 subscriber on the meldkamer side (every broker speaks 3.1.1)."""
    found = Collector(topology.receiver_port, topic=f"gcmk/v1/{site}/{topic}", identifier=f"c-{secrets.token_hex(4)}",
                      v5=False)
    task = asyncio.create_task(found.run())
    try:
        await asyncio.wait_for(found.connected.wait(), 10)
        yield found
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def meldkamer_publish(topology: Topology, topic: str, payload: str) -> None:
    async with aiomqtt.Client("127.0.0.1", topology.receiver_port, identifier=f"mk-cmd-{secrets.token_hex(4)}") as c:
        await c.publish(topic, payload, qos=1)


def stored_seqs(link: ReceiverLink, site: str) -> tuple[int, list[int]]:
    tracker = link._durable.get(site)  # the receiver's durable position (tests may read their own tool)
    return (tracker.up_to, list(tracker.above)) if tracker is not None else (0, [])


# --- the scenarios -------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_events_confirmed_heartbeats_retained_status_and_state(
    topology: Topology, site_id: str, tmp_path: Path
) -> None:
    """Events journaled before the receiver ever connected (the broker has no session for it: they reach it
    only through the heartbeat's last_seq and a replay) and live events afterwards: all stored once, all
    confirmed, journal empty; heartbeats and the retained status and point state arrive on every broker."""
    async with gateway(topology, site_id, tmp_path / "journal") as gw:
        assert gw.sink.stats.protocol == ("5" if topology.expect_v5 else "3.1.1"), gw.sink.stats.protocol
        early = await gw.accept(5)
        await gw.sink.accept(Batch(points=(point_state("pir-01", "burglary", 1),)))
        async with receiver(topology, site_id, tmp_path / "receiver") as (link, _notices):
            # (each replay the receiver asks for is audited as an event of its own: seq goes beyond the 5)
            await wait_until(lambda: gw.sink.stats.confirmed_seq >= early[-1], 30, what="early events confirmed")
            live = await gw.accept(5, start=5)
            await wait_until(
                lambda: gw.sink.stats.confirmed_seq == live[-1] and gw.sink.stats.journal_depth == 0,
                20,
                what="live events confirmed",
            )
            last = gw.sink.stats.last_seq
            assert last == live[-1] and stored_seqs(link, site_id) == (last, [])
            view = link.state.view(site_id)
            await wait_until(lambda: view.heartbeat is not None and view.heartbeat.last_seq == last, 10, what="beat")
            assert view.status is not None and view.status.status == "online"  # retained: an exact topic
            # The point state was retained before the receiver subscribed `state/#`: RabbitMQ does not hand
            # retained messages to a wildcard subscription.
            assert view.in_alarm == ({"pir-01": "burglary"} if topology.retained_wildcards else {})
            assert view.invalid == 0 and link.state.unparsable == 0
        # A meldkamer client that connects later and subscribes the exact topics gets both at once, everywhere.
        async with collector(topology, site_id, "status") as status, collector(topology, site_id, "state/pir-01") as st:
            await status.wait_for(lambda: bool(status.messages), 10)
            await st.wait_for(lambda: bool(st.messages), 10)
            assert status.messages[0].retain and status.messages[0].json()["status"] == "online"
            assert st.messages[0].retain and st.messages[0].json()["in_alarm"] is True


@pytest.mark.timeout(90)
async def test_last_will_replay_request_and_commands(topology: Topology, site_id: str, tmp_path: Path) -> None:
    """The will (retained `offline`, "connection lost") when the gateway's link dies, `online` again after the
    reconnect; a replay request answered and served; a command answered on command-results."""
    async with (
        gateway(topology, site_id, tmp_path / "journal") as gw,
        receiver(topology, site_id, tmp_path / "receiver") as (link, _notices),
        collector(topology, site_id, "#") as seen,
    ):
        seqs = await gw.accept(3)
        await wait_until(lambda: gw.sink.stats.confirmed_seq >= seqs[-1], 20, what="confirmed")

        # The link dies without DISCONNECT: the broker publishes the will.
        session = gw.sink.publisher.session
        assert session is not None
        session.abort()

        def statuses() -> list[tuple[str, str]]:
            return [(m.json()["status"], m.json()["reason"]) for m in seen.on("/status")]

        await seen.wait_for(lambda: ("offline", "connection lost") in statuses(), 20)
        await seen.wait_for(lambda: statuses()[-1] == ("online", "connected"), 20)

        # A replay request from the meldkamer side.
        now = datetime.now(UTC)
        replay = ReplayDoc(schema_="gcmk.replay.v1", command_id=f"rp-{site_id}", from_seq=1, to_seq=2,
                           issued_at=now, expires_at=now + timedelta(seconds=60), operator="interop")
        await meldkamer_publish(topology, commands_topic(site_id), replay.model_dump_json(by_alias=True))

        def results(command_id: str) -> list[dict[str, Any]]:
            return [r for m in seen.on("/command-results") if (r := m.json())["command_id"] == command_id]

        await seen.wait_for(lambda: any(r["status"] == "executed" for r in results(replay.command_id)), 20)
        done = next(r for r in results(replay.command_id) if r["status"] == "executed")
        assert (done["first_seq"], done["last_seq"]) == (1, 2)
        await seen.wait_for(
            lambda: {e["seq"] for e in seen.events() if e.get("redelivered")} >= {1, 2}, 20
        )
        await wait_until(lambda: link.state.view(site_id).duplicates >= 2, 10, what="replayed copies seen")
        await wait_until(lambda: gw.sink.stats.journal_depth == 0, 10, what="the replay's audit event confirmed")
        assert stored_seqs(link, site_id) == (gw.sink.stats.last_seq, [])  # every seq once: de-duplicated

        # A command (this point has no actions: refused, with the reason, on command-results).
        command = CommandDoc(command_id=f"cmd-{site_id}", point_id="pir-01", action="pulse", issued_at=now,
                             expires_at=now + timedelta(seconds=60), operator="interop")
        await meldkamer_publish(topology, commands_topic(site_id), command.model_dump_json(exclude_none=True))
        await seen.wait_for(lambda: bool(results(command.command_id)), 20)
        (answer,) = results(command.command_id)
        assert answer["status"] == "refused" and answer["reason"], answer
        assert seen.on("/command-results")[0].topic == results_topic(site_id)


@pytest.mark.timeout(60)
async def test_mqtt5_properties_only_where_mqtt5_is_spoken(topology: Topology, site_id: str, tmp_path: Path) -> None:
    """On MQTT 5 the messages carry content type and the `schema` user property; on 3.1.1 (configured, or
    found out by the probe) they do not, and nothing of the contract depends on them: the payload carries
    `schema` too."""
    v5_collector = topology.name != "rabbitmq"  # RabbitMQ 3.10 does not speak MQTT 5 at all
    found = Collector(topology.receiver_port, topic=f"gcmk/v1/{site_id}/events/#",
                      identifier=f"c5-{secrets.token_hex(4)}", v5=v5_collector)
    task = asyncio.create_task(found.run())
    try:
        await asyncio.wait_for(found.connected.wait(), 10)
        async with gateway(topology, site_id, tmp_path / "journal") as gw:
            await gw.accept(1)
            await found.wait_for(lambda: bool(found.events()), 20)
        message = found.messages[0]
        assert json.loads(message.payload)["schema"] == "gcmk.event.v1"
        props = message.properties
        user = dict(getattr(props, "UserProperty", []) or []) if props is not None else {}
        if topology.expect_v5:
            assert user.get("schema") == "gcmk.event.v1" and props.ContentType == "application/json"
        else:
            assert "schema" not in user
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
