"""Per-site security at the broker: deploy/mosquitto/acl, as shipped, loaded by the test's own Mosquitto.

Each gateway's broker user is its site id; the ACL lets it publish only under its own gcmk/v1/<site>/ and read
only its own confirmations and commands; the receiver's user reads every site and confirms and commands.
A gateway that presents another site's identity (or publishes another site's topics) is refused: one clear
error line per change, a metric and the `refused` gauge the alerts fire on, attempts spaced by backoff, no
reconnect storm and no loop-callback exception (tests/conftest.py fails a test on one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog

from gateway.app.wiring import build_commands
from gateway.commands.contract import CommandDoc, commands_topic
from gateway.config.models import SiteConfig
from gateway.core.normaliser import NormaliserStats
from gateway.delivery.sink import DeliverySink
from gateway.delivery.stats import DeliveryStats
from gateway.domain.state import Batch
from gateway.mqtt.client import BACKOFF_MAX, BACKOFF_MIN
from gateway.ops.metrics import GatewayCollector, Sources
from gateway.testing import wait_until
from gateway.tools.receiver import ReceiverState
from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions
from tests.integration.interop.test_contract_brokers import event
from tests.support.mosquitto import Mosquitto
from tests.support.paths import REPO
from tests.support.rabbitmq import RABBITMQ_BIN, RabbitMQ, rabbitmq

__all__ = ["rabbitmq"]  # the module-scoped fixture

ACL = REPO / "deploy" / "mosquitto" / "acl"
USERS = {"site-a": "pw-a", "site-b": "pw-b", "meldkamer": "pw-mk"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker", users=USERS, extra_config=f"acl_file {ACL}") as mosquitto:
        yield mosquitto


def config(tmp_path: Path, broker: Mosquitto | RabbitMQ, site: str, user: str, protocol: str = "auto") -> SiteConfig:
    secret = tmp_path / f"{user}.password"
    secret.write_text(USERS[user] + "\n")
    return SiteConfig.model_validate(
        {
            "version": 1,
            "site": {"id": site, "name": "ACL", "address": "Teststraat 1"},
            "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
            "zones": [{"id": "hal", "name": "Hal", "tenant": "jv"}],
            "mqtt": {"url": broker.url, "insecure": True, "keepalive": 5, "username": user, "protocol": protocol,
                     "password_file": str(secret)},
            "supervision": {"heartbeat_interval": "300ms"},
            "journal": {"data_dir": str(tmp_path / f"journal-{site}")},
            "delivery": {"confirm": "meldkamer", "receivers": ["meldkamer"], "confirm_timeout": "1s"},
            "commands": {"enabled": True, "rate_limit": 1000},
            "devices": [{"protocol": "modbus", "id": "panel-1", "name": "Centrale", "host": "127.0.0.1"}],
            "points": [
                {"id": "pir-01", "name": "PIR 1", "device": "panel-1", "tenant": "jv", "zone": "hal",
                 "type": "burglary", "source": {"protocol": "modbus", "table": "coil", "address": 1},
                 "alarm": [1], "normal": [0]}
            ],
        }
    )


@contextlib.asynccontextmanager
async def running(site: SiteConfig) -> AsyncIterator[DeliverySink]:
    sink = DeliverySink(site, config_hash="cafe", version="1.2.3", devices=lambda: (1, 1))
    commands = build_commands(site, [], sink)
    assert commands is not None
    async with sink, asyncio.TaskGroup() as tg:
        task = tg.create_task(commands.run())
        try:
            yield sink
        finally:
            task.cancel()


def metric(stats: DeliveryStats, site: SiteConfig, name: str, **labels: str) -> float | None:
    collector = GatewayCollector(Sources(site=site, config_hash="cafe", normaliser=NormaliserStats(), delivery=stats))
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def attempt_times(count: Any, n: int, within: float) -> list[float]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    times: list[float] = []
    seen = count()
    while len(times) < n:
        await wait_until(lambda before=seen: count() > before, max(0.01, deadline - loop.time()),
                         what=f"attempt {len(times) + 1}")
        seen = count()
        times.append(loop.time())
    return times


def assert_backoff(times: list[float]) -> None:
    gaps = [b - a for a, b in itertools.pairwise(times)]
    floors = [min(BACKOFF_MAX, BACKOFF_MIN * 2**k) * 0.5 for k in range(1, len(times))]
    assert all(gap >= floor - 0.02 for gap, floor in zip(gaps, floors, strict=True)), (gaps, floors)


async def test_the_sites_gateway_and_the_receiver_work_under_the_acl(tmp_path: Path, broker: Mosquitto) -> None:
    site = config(tmp_path, broker, "site-a", "site-a")
    state_dir = tmp_path / "receiver"
    host = f"mqtt://meldkamer:{USERS['meldkamer']}@127.0.0.1:{broker.port}"
    link = ReceiverLink(host, ReceiverState(), lambda _n: None, ReceiverOptions(identifier="meldkamer",
                                                                              state_dir=state_dir,
                                                                              reorder_timeout=0.5))
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        async with running(site) as sink:
            task = asyncio.create_task(link.run(stop))
            try:
                await wait_until(lambda: sink.stats.connected, 10, what="gateway connected")
                await sink.accept(Batch(events=tuple(event("site-a", i) for i in range(5))))
                await wait_until(lambda: sink.stats.confirmed_seq >= 5 and sink.stats.journal_depth == 0, 20,
                                 what="confirmed through the ACL")
                now = datetime.now(UTC)
                command = CommandDoc(command_id="acl-1", point_id="pir-01", action="pulse", issued_at=now,
                                     expires_at=now + timedelta(seconds=60), operator="acl")
                async with aiomqtt.Client("127.0.0.1", broker.port, username="meldkamer",
                                          password=USERS["meldkamer"], identifier="mk-cmd") as client:
                    await client.subscribe("gcmk/v1/site-a/command-results", qos=1)
                    await client.publish(commands_topic("site-a"), command.model_dump_json(exclude_none=True), qos=1)
                    async with asyncio.timeout(10):
                        async for message in client.messages:
                            assert b'"acl-1"' in bytes(message.payload)
                            break
                view = link.state.view("site-a")
                await wait_until(lambda: view.heartbeat is not None, 10, what="heartbeats through the ACL")
                assert view.status is not None and view.status.status == "online"
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    assert sink.stats.publish_refused == {} and sink.stats.connect_refused == {}


@pytest.mark.parametrize(
    ("site_id", "user"),
    [("site-a", "site-b"), ("site-b", "site-a")],
    ids=["site-a-with-site-b-identity", "site-a-user-on-site-b-topics"],
)
@pytest.mark.parametrize("protocol", ["auto", "3.1.1"], ids=["mqtt5", "mqtt311"])
async def test_another_sites_identity_is_refused_once_with_metric_and_backoff(
    tmp_path: Path, broker: Mosquitto, site_id: str, user: str, protocol: str
) -> None:
    """Mosquitto 2.0 answers the first publish the ACL denies (the retained `online` status of the site the
    gateway claims) with PUBACK 0x87 and closes the connection: one `mqtt_publish_refused` error line naming the
    topic however many attempts, the counter and the `gcmk_mqtt_refused{stage="publish"}` gauge behind
    GcmkPublishRefused, attempts spaced by backoff, and the event waits in the journal. With MQTT 3.1.1 the
    PUBACK cannot say so (Mosquitto acknowledges, then closes the connection): the close right after the
    PUBACK is taken for the refusal it is."""
    site = config(tmp_path, broker, site_id, user, protocol)
    status = f"gcmk/v1/{site_id}/status"
    with structlog.testing.capture_logs() as logs:
        async with running(site) as sink:
            await sink.accept(Batch(events=(event(site_id, 1),)))
            times = await attempt_times(lambda: sum(sink.stats.publish_refused.values()), 4, 30)
            assert sink.stats.published == 0 and sink.stats.journal_depth == 1
            assert sink.stats.refused_topics == {status}
            assert set(sink.stats.publish_refused) <= {"not_authorized", "connection_closed"}
            assert metric(sink.stats, site, "gcmk_mqtt_refused", stage="publish") == 1
            refused = sum(sink.stats.publish_refused.values())
            assert sum(metric(sink.stats, site, "gcmk_mqtt_publish_refused_total", reason=r) or 0
                       for r in sink.stats.publish_refused) == refused
            connects = sink.stats.connects
    assert_backoff(times)
    assert connects <= refused + 1  # one session per attempt, no reconnect storm
    publisher_errors = [e for e in logs if e["log_level"] in ("error", "critical") and e["event"].startswith("mqtt_")]
    assert [e["event"] for e in publisher_errors] == ["mqtt_publish_refused"], publisher_errors
    assert publisher_errors[0]["topic"] == status
    expected = "Not authorized (0x87)" if protocol == "auto" else f"not authorised to publish on {status}?"
    assert expected in publisher_errors[0]["detail"] and "ACL" in publisher_errors[0]["detail"]
    # and no warning per attempt either: the refusal is the one line
    assert not [e for e in logs if e["event"] == "mqtt_link_down" and e["log_level"] != "debug"]


# --- RabbitMQ: deploy/rabbitmq/gcmk-permissions on the test's own node ---------------------------------------

PERMISSIONS = REPO / "deploy" / "rabbitmq" / "gcmk-permissions"


@pytest.fixture(scope="module")
def rabbit_users(rabbitmq: RabbitMQ, tmp_path_factory: pytest.TempPathFactory) -> RabbitMQ:
    """The node of this module with the users of USERS, set up by the deployed script."""
    secrets_dir = tmp_path_factory.mktemp("rabbit-secrets")
    env = {**rabbitmq.env(), "RABBITMQCTL": f"{RABBITMQ_BIN / 'rabbitmqctl'} -n {rabbitmq.node}"}
    for user, password in USERS.items():
        secret = secrets_dir / user
        secret.write_text(password + "\n")
        kind = "receiver" if user == "meldkamer" else "site"
        subprocess.run([str(PERMISSIONS), kind, user, str(secret)], env=env, check=True, capture_output=True,
                       timeout=120)
    return rabbitmq


@pytest.mark.slow
async def test_rabbitmq_the_sites_gateway_and_the_receiver_work_under_the_topic_permissions(
    tmp_path: Path, rabbit_users: RabbitMQ
) -> None:
    site = config(tmp_path, rabbit_users, "site-a", "site-a")
    link = ReceiverLink(f"mqtt://meldkamer:{USERS['meldkamer']}@127.0.0.1:{rabbit_users.port}", ReceiverState(),
                        lambda _n: None, ReceiverOptions(identifier="meldkamer", state_dir=tmp_path / "receiver",
                                                         reorder_timeout=0.5))
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        async with running(site) as sink:
            task = asyncio.create_task(link.run(stop))
            try:
                await wait_until(lambda: sink.stats.connected, 20, what="gateway connected")
                await sink.accept(Batch(events=tuple(event("site-a", i) for i in range(5))))
                await wait_until(lambda: sink.stats.confirmed_seq >= 5 and sink.stats.journal_depth == 0, 30,
                                 what="confirmed through the topic permissions")
                view = link.state.view("site-a")
                await wait_until(lambda: view.heartbeat is not None, 10, what="heartbeats")
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


@pytest.mark.slow
async def test_rabbitmq_another_sites_identity_is_refused_once_with_metric_and_backoff(
    tmp_path: Path, rabbit_users: RabbitMQ
) -> None:
    """Site A's gateway has run (its persistent session's queue exists); now it presents site B's credentials.
    RabbitMQ refuses the CONNECT (3.1.1 code 3, "server unavailable", because B may not use A's session
    queue): one `mqtt_connect_refused` line that says what to check, the counter and the gauge behind
    GcmkMqttConnectRefused, backoff; the event waits in the journal."""
    async with aiomqtt.Client("127.0.0.1", rabbit_users.port, identifier="gcmk-gw-site-a", clean_session=False,
                              username="site-a", password=USERS["site-a"]) as earlier:
        await earlier.subscribe("gcmk/v1/site-a/confirm", qos=1)  # A's session queue, as A's gateway left it
    site = config(tmp_path, rabbit_users, "site-a", "site-b")
    with structlog.testing.capture_logs() as logs:
        async with running(site) as sink:
            await sink.accept(Batch(events=(event("site-a", 1),)))
            times = await attempt_times(lambda: sum(sink.stats.connect_refused.values()), 4, 40)
            assert sink.stats.published == 0 and sink.stats.journal_depth == 1
            assert set(sink.stats.connect_refused) == {"server_unavailable"}, sink.stats.connect_refused
            assert metric(sink.stats, site, "gcmk_mqtt_refused", stage="connect") == 1
    assert_backoff(times)
    publisher_errors = [e for e in logs if e["log_level"] in ("error", "critical") and e["event"].startswith("mqtt_")]
    assert [e["event"] for e in publisher_errors] == ["mqtt_connect_refused"], publisher_errors
    assert "may not use this client id's session" in publisher_errors[0]["detail"]
    assert not [e for e in logs if e["event"] == "mqtt_link_down" and e["log_level"] != "debug"]
