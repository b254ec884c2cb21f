"""What the reference receiver costs per message (issue 17, the alarm flood), seen from the broker's log: a
receiver outside a tier speaks MQTT 3.1.1 (no MQTT 5 Properties to build and parse per PUBLISH) and takes the
retained point states at QoS 0 (no PUBACK per state); a tier member stays on MQTT 5 (noLocal). The picture of
the retained states still arrives."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt

from gateway.delivery.contract import PointStateDoc, state_topic
from gateway.domain.event import utcnow
from gateway.testing import wait_until
from gateway.tools.receiver import ReceiverState
from gateway.tools.receiver_link import ReceiverLink, ReceiverOptions
from tests.support.mosquitto import Mosquitto

LOGGED = "log_type subscribe"  # Mosquitto logs "<client id> <qos> <filter>" per subscription


@asynccontextmanager
async def running(link: ReceiverLink) -> AsyncIterator[ReceiverLink]:
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(link.run(stop))
        try:
            yield link
        finally:
            stop.set()


def connected_as(broker: Mosquitto, client_id: str) -> str | None:
    """The protocol Mosquitto logged for the client's latest connection: p2 = MQTT 3.1.1, p5 = MQTT 5."""
    found = re.findall(rf"as {re.escape(client_id)} \((p\d),", broker.log_file.read_text(errors="replace"))
    return found[-1] if found else None


def subscribed(broker: Mosquitto, client_id: str) -> dict[str, int]:
    """filter -> the QoS byte Mosquitto logged for the client's subscriptions (the latest of each)."""
    lines = re.findall(rf"{re.escape(client_id)} (\d+) (\S+)$", broker.log_file.read_text(errors="replace"), re.M)
    return {topic: int(qos) for qos, topic in lines}


async def test_a_receiver_outside_a_tier_uses_mqtt_311_and_takes_states_at_qos_0(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", extra_config=LOGGED) as broker:
        link = ReceiverLink(broker.url, ReceiverState(), lambda _n: None, ReceiverOptions(state_dir=tmp_path / "rx"))
        async with running(link):
            await wait_until(lambda: len(subscribed(broker, "meldkamer")) >= 5, 10, what="the receiver subscribed")
            assert link.protocol == "3.1.1"
        assert connected_as(broker, "meldkamer") == "p2", "MQTT 3.1.1: paho parses no Properties per message"
        qos = subscribed(broker, "meldkamer")
        assert qos["gcmk/v1/+/state/#"] == 0, "retained states at QoS 0: no PUBACK per state"
        assert qos["gcmk/v1/+/events/#"] == 1, "events stay QoS 1"
        assert qos["gcmk/v1/+/heartbeat"] == 1 and qos["gcmk/v1/+/command-results"] == 1


async def test_a_tier_member_stays_on_mqtt_5(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", extra_config=LOGGED) as broker:
        options = ReceiverOptions(state_dir=tmp_path / "rx", group="g", member="m1")
        link = ReceiverLink(broker.url, ReceiverState(), lambda _n: None, options)
        async with running(link):
            await wait_until(lambda: connected_as(broker, options.client_id) is not None, 10, what="connected")
            assert link.protocol == "5"
        assert connected_as(broker, options.client_id) == "p5", "noLocal on the confirm topics needs MQTT 5"


async def test_retained_states_published_while_away_are_the_picture_after_a_restart(tmp_path: Path) -> None:
    """QoS 0 loses nothing of the picture: every connection subscribes again and gets every retained state."""
    site = "flood-site"
    with Mosquitto(tmp_path / "broker", extra_config=LOGGED) as broker:
        options = ReceiverOptions(state_dir=tmp_path / "rx")
        async with running(ReceiverLink(broker.url, ReceiverState(), lambda _n: None, options)):
            await wait_until(lambda: len(subscribed(broker, "meldkamer")) >= 5, 10, what="the session exists")
        async with aiomqtt.Client(broker.host, broker.port) as publisher:
            for n in range(50):
                doc = PointStateDoc(
                    site=site,
                    point_id=f"pir-{n}",
                    condition="burglary",
                    in_alarm=True,
                    value=1,
                    since=utcnow(),
                    as_of_seq=n + 1,
                    version=1,
                )
                await publisher.publish(state_topic(site, f"pir-{n}"), doc.to_json(), qos=1, retain=True)
        state = ReceiverState()
        async with running(ReceiverLink(broker.url, state, lambda _n: None, options)):
            await wait_until(
                lambda: site in state.sites and len(state.sites[site].in_alarm) == 50, 10, what="the whole picture"
            )
