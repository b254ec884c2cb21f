"""Helpers for the delivery tests and benchmark: a site config, sample events, a subscriber that collects
what the broker delivers, and a gateway process (`python -m tests.support.delivery_harness CONFIG`) that
runs the real DeliverySink fed by a synthetic event generator, so tests can SIGKILL and restart it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config.models import SiteConfig
from gateway.domain.event import Event, PointRef, SourceRef, make_codes, new_event_id
from gateway.domain.state import Batch, PointState
from gateway.domain.taxonomy import TYPES, EventState, EventType
from gateway.testing import wait_until

SITE = "test-site"


def site_config(data_dir: Path, url: str, **mqtt: Any) -> SiteConfig:
    """A one-device site whose MQTT section points at `url` (plain urls get insecure: true). Delivery is
    `confirm: broker` unless a `delivery` section says otherwise: these tests are about the broker path."""
    mqtt_section: dict[str, Any] = {"url": url, "keepalive": 5}
    if url.startswith("mqtt://"):
        mqtt_section["insecure"] = True
    journal = mqtt.pop("journal", {})
    supervision = mqtt.pop("supervision", {})
    delivery = mqtt.pop("delivery", {"confirm": "broker"})
    mqtt_section.update(mqtt)
    return SiteConfig.model_validate(
        {
            "version": 1,
            "site": {"id": SITE, "name": "Testgebouw", "address": "Teststraat 1"},
            "tenants": [{"id": "jv", "name": "Justitie en Veiligheid"}],
            "zones": [{"id": "hal", "name": "Hal", "tenant": "jv"}],
            "mqtt": mqtt_section,
            "supervision": supervision,
            "journal": {"data_dir": str(data_dir), **journal},
            "delivery": delivery,
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


def make_event(
    n: int, event_type: EventType = EventType.FAULT, state: EventState = EventState.ALARM, point: str = "pir-01"
) -> Event:
    """A sample event; `n` goes into the text so tests can tell events apart before they have a seq."""
    now = datetime.now(UTC)
    info = TYPES[event_type]
    return Event(
        event_id=new_event_id(),
        site=SITE,
        tenant="jv",
        category=info.category,
        type=event_type,
        state=state,
        priority=info.priority,
        codes=make_codes(event_type, state),
        point=PointRef(id=point, name="PIR 1", zone="hal"),
        source=SourceRef(protocol="modbus", device_id="panel-1", address="127.0.0.1:502", ref="coil:1", raw=1),
        occurred_at=now,
        detected_at=now,
        text=f"n={n}",
    )


def point_state(point: str, condition: str, value: int) -> PointState:
    return PointState(point_id=point, condition=condition, value=value, since=datetime.now(UTC))


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float
    properties: Any = None

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.payload)
        return data


@dataclass
class Collector:
    """A persistent-session QoS 1 subscriber that reconnects across broker restarts and keeps everything."""

    port: int
    topic: str = f"gcmk/v1/{SITE}/#"
    identifier: str = "test-collector"
    tls: ssl.SSLContext | None = None
    v5: bool = True
    login: dict[str, str] = field(default_factory=dict)  # username / password
    messages: list[Received] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _events: list[dict[str, Any]] = field(default_factory=list)
    _parsed: int = 0

    async def run(self) -> None:
        session: dict[str, Any] = (
            {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": False, "properties": _session_props()}
            if self.v5
            else {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        )
        while True:
            # A fresh client per connection (same id, persistent session): a used aiomqtt client is not
            # reusable after an unexpected disconnect without touching its internals.
            client = aiomqtt.Client(
                "127.0.0.1",
                self.port,
                identifier=self.identifier,
                username=self.login.get("username"),
                password=self.login.get("password"),
                tls_context=self.tls,
                **session,
            )
            try:
                async with client:
                    await client.subscribe(self.topic, qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        self.messages.append(
                            Received(
                                str(message.topic),
                                bytes(message.payload),
                                message.retain,
                                time.time(),
                                message.properties,
                            )
                        )
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.1)  # reconnect backoff, not synchronisation

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    def events(self) -> list[dict[str, Any]]:
        """Event payloads in arrival order (parsed once, incrementally: predicates call this often)."""
        for message in self.messages[self._parsed :]:
            if "/events/" in message.topic:
                self._events.append(message.json())
        self._parsed = len(self.messages)
        return self._events

    async def wait_for(self, predicate: Callable[[], bool], within: float) -> None:
        """Wait until `predicate()` holds; checked every 20 ms (messages accumulate: predicates may be O(n))."""
        try:
            await wait_until(predicate, within, interval=0.02)
        except TimeoutError as timeout:
            raise TimeoutError(f"{timeout} ({len(self.messages)} messages)") from None


def _session_props() -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    return props


# --- the gateway process ---------------------------------------------------------------------------------


BATCH = 5  # events per `accept`


async def _generate(sink: Any, rate: float, stop: asyncio.Event, count: int | None) -> None:
    """Hands events to the sink at `rate` per second (in small batches) until stopped or `count` reached.
    Prints `accepted <event_id>` (flushed) for every event `accept` acknowledged: the test's record of what
    the gateway promised to deliver, whatever happens to the process afterwards."""
    n = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not stop.is_set() and (count is None or n < count):
        batch = Batch(events=tuple(make_event(n + i) for i in range(BATCH)))
        n += BATCH
        accepted = await sink.accept(batch)
        sys.stdout.write("".join(f"accepted {e.event_id}\n" for e in accepted))
        sys.stdout.flush()
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


async def _serve(site: SiteConfig, rate: float, count: int | None) -> None:
    from gateway.delivery.sink import DeliverySink

    sink = DeliverySink(site, config_hash="test", version="test", devices=lambda: (1, 1))
    await sink.load_state()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    run = asyncio.create_task(sink.run())
    print("ready", flush=True)
    try:
        await _generate(sink, rate, stop, count)
        if count is not None:  # a bounded run: deliver everything (confirmed, or PUBACKed), then stop cleanly
            await asyncio.wait_for(sink.outbox.drained(), 60)
            await wait_until(lambda: sink.stats.journal_depth == 0, 60, what="everything delivered")
        else:
            await stop.wait()
    finally:
        await sink.close()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        print(json.dumps({"last_seq": sink.stats.last_seq, "published": sink.stats.published}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path, help="SiteConfig as JSON")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args()
    from gateway.ops.logs import configure_logging

    configure_logging("warning", json=True, stream=sys.stderr)  # stdout carries the protocol with the test
    asyncio.run(_serve(SiteConfig.model_validate_json(args.config.read_text()), args.rate, args.count))
    sys.exit(0)


if __name__ == "__main__":
    main()
