"""The publisher on paho's public API (gateway/mqtt/session.py) against real brokers on loopback.

Mosquitto started by the test where it can produce the behaviour (window, PUBACK, frozen broker, subscriptions,
bad credentials, a forbidding ACL); a minimal MQTT 5 broker written here where it cannot (a PUBACK with a
reason code >= 0x80 that leaves the connection open; a broker that never answers the CONNECT).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config.models import SiteConfig
from gateway.core.normaliser import NormaliserStats
from gateway.delivery.publisher import Publisher
from gateway.delivery.sink import DeliverySink
from gateway.delivery.stats import DeliveryStats
from gateway.domain.state import Batch
from gateway.mqtt.client import BACKOFF_MAX, BACKOFF_MIN
from gateway.mqtt.session import ConnectTimeout, PubackOverdue, Session, SessionOptions
from gateway.ops.metrics import GatewayCollector, Sources
from gateway.testing import wait_until
from tests.support.delivery_harness import SITE, Collector, make_event, site_config
from tests.support.mosquitto import Mosquitto, mosquitto

__all__ = ["mosquitto"]  # the fixture

STATUS = f"gcmk/v1/{SITE}/status"
EVENTS = f"gcmk/v1/{SITE}/events/technical"


# --- helpers ---------------------------------------------------------------------------------------------


def sink_for(site: SiteConfig, **kwargs: Any) -> DeliverySink:
    return DeliverySink(site, config_hash="cafe", version="1.2.3", close_grace=0.5, **kwargs)


@contextlib.asynccontextmanager
async def running(sink: DeliverySink) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        await sink.load_state()
        run = tg.create_task(sink.run())
        try:
            yield
        finally:
            await sink.close()
            await asyncio.wait_for(run, 15)


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    """The broker process stopped (SIGSTOP): its kernel still accepts our bytes, it answers nothing."""
    assert broker.process is not None
    broker.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.process.send_signal(signal.SIGCONT)


async def attempt_times(count: Callable[[], int], n: int, within: float) -> list[float]:
    """The loop times at which `count()` went up, until it went up `n` times (polled every 10 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    times: list[float] = []
    seen = count()
    while len(times) < n:
        await wait_until(
            lambda before=seen: count() > before, max(0.01, deadline - loop.time()), what=f"attempt {len(times) + 1}"
        )
        seen = count()
        times.append(loop.time())
    return times


def assert_backoff(times: list[float]) -> None:
    """Attempt k+1 comes at least the minimum jittered backoff after attempt k (BACKOFF_MIN * 2**k / 2), so a
    refusing broker is never hammered: 4 attempts take >= 1.4 s, where a tight loop makes hundreds."""
    gaps = [b - a for a, b in itertools.pairwise(times)]
    floors = [min(BACKOFF_MAX, BACKOFF_MIN * 2**k) * 0.5 for k in range(1, len(times))]
    assert all(gap >= floor - 0.02 for gap, floor in zip(gaps, floors, strict=True)), (gaps, floors)


def errors(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["log_level"] in ("error", "critical")]


def metric(stats: DeliveryStats, site: SiteConfig, name: str, **labels: str) -> float | None:
    """One sample of /metrics' families, computed from `stats` as the exporter does."""
    collector = GatewayCollector(Sources(site=site, config_hash="cafe", normaliser=NormaliserStats(), delivery=stats))
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


# --- a minimal MQTT 5 broker -----------------------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


CLOSE = -1  # StubBroker: answer a PUBLISH by closing the connection


class StubBroker:
    """MQTT 5 only, one topic namespace, no routing: CONNACK (unless `silent`), SUBACK, PINGRESP, and a PUBACK
    for each QoS 1 PUBLISH with the reason code `reason(topic)` returns, or (CLOSE) none and the connection
    closed, as Mosquitto does for a publish its ACL denies when its PUBACK does not get through."""

    def __init__(self, reason: Callable[[str], int] = lambda _topic: 0, *, silent: bool = False) -> None:
        self.reason = reason
        self.silent = silent
        self.connects = 0
        self.publishes: list[tuple[str, bytes]] = []
        self.closed = 0  # connections that ended
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> StubBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = first >> 4
                if kind == 1:  # CONNECT
                    self.connects += 1
                    if not self.silent:
                        writer.write(bytes([0x20, 3, 0, 0, 0]))  # CONNACK: no session, success, no properties
                elif kind == 3:  # PUBLISH
                    size = int.from_bytes(body[:2], "big")
                    topic = body[2 : 2 + size].decode()
                    pos = 2 + size
                    mid = body[pos : pos + 2] if first & 0x06 else b""
                    props, pos = _varint(body, pos + len(mid))
                    self.publishes.append((topic, body[pos + props :]))
                    reason = self.reason(topic)
                    if reason == CLOSE:
                        break
                    if mid:
                        writer.write(bytes([0x40, 3]) + mid + bytes([reason]))
                elif kind == 8:  # SUBSCRIBE: granted QoS 1 for each filter
                    props, pos = _varint(body, 2)
                    pos += props
                    filters = 0
                    while pos < len(body):
                        pos += 2 + int.from_bytes(body[pos : pos + 2], "big") + 1
                        filters += 1
                    writer.write(bytes([0x90, 3 + filters]) + body[:2] + b"\x00" + b"\x01" * filters)
                elif kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)


# --- the window, PUBACKs, the watchdog -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_inflight", "broker_config", "window"),
    [(4, "", 4), (64, "max_inflight_messages 6", 4)],  # Mosquitto announces Receive Maximum = max_inflight_messages
    ids=["configured window", "broker's receive maximum"],
)
async def test_the_window_bounds_what_awaits_puback_and_pubacks_complete_it(
    tmp_path: Path, max_inflight: int, broker_config: str, window: int
) -> None:
    with Mosquitto(tmp_path / "broker", extra_config=broker_config) as broker:
        site = site_config(tmp_path / "journal", broker.url, max_inflight=max_inflight)
        sink = sink_for(site)
        async with running(sink):
            await wait_until(lambda: sink.stats.connected and sink.stats.heartbeats >= 1, 10, what="connected")
            session = sink.publisher.session
            assert session is not None
            with frozen(broker):
                await sink.accept(Batch(events=tuple(make_event(i) for i in range(20))))
                await wait_until(lambda: session.peak_inflight == window, 5, what="the window filled")
                assert sink.stats.published == 0
            await wait_until(lambda: sink.stats.published == 20, 10, what="all PUBACKs")
            assert session.peak_inflight == window, "never more than the window awaiting PUBACK"
            assert sink.publisher.session is session, "one session throughout"
        assert sink.stats.latency_buckets.count == 20 and sink.stats.publish_refused == {}


async def test_an_overdue_puback_fails_the_session_and_the_broker_publishes_the_will(mosquitto: Mosquitto) -> None:
    """The watchdog: a broker that stops answering ends the session (PubackOverdue) without DISCONNECT, so once
    the broker runs again it publishes the will."""
    from gateway.mqtt.session import Will

    acks: list[tuple[str, ReasonCode]] = []
    options = SessionOptions(
        "127.0.0.1", mosquitto.port, "watchdog", keepalive=30, ack_timeout=0.5, will=Will(STATUS, "gone")
    )
    collector = Collector(mosquitto.port, identifier="watcher")
    async with asyncio.TaskGroup() as tg:
        watching = tg.create_task(collector.run())
        await asyncio.wait_for(collector.connected.wait(), 10)
        session: Session[str] = Session(options, lambda token, reason: acks.append((token, reason)))
        await session.connect()
        session.publish(EVENTS, "one", False, None, "one")
        await wait_until(lambda: acks, 5, what="the first PUBACK")
        assert acks[0][0] == "one" and not acks[0][1].is_failure
        with frozen(mosquitto):
            session.publish(EVENTS, "two", False, None, "two")
            with pytest.raises(PubackOverdue, match=r"no PUBACK within 0\.5s for the publish to gcmk/v1"):
                await asyncio.wait_for(session.wait_closed(), 5)
            session.abort()
        await collector.wait_for(lambda: any(m.payload == b"gone" for m in collector.on("/status")), 10)
        watching.cancel()
    assert [token for token, _ in acks] == ["one"], "the overdue publish never completes"


@pytest.mark.parametrize(
    ("answer", "label", "says"),
    [(0x97, "quota_exceeded", "Quota exceeded (0x97)"), (CLOSE, "connection_closed", "closed or reset")],
    ids=["PUBACK 0x97", "connection closed before the PUBACK"],
)
async def test_a_refused_publish_keeps_the_event_backs_off_and_delivers_once_accepted(
    tmp_path: Path, answer: int, label: str, says: str
) -> None:
    """A PUBACK reason code >= 0x80 (here 0x97, quota exceeded, the connection staying up), or the broker closing
    the connection instead of acknowledging the session's first event: the event is not acknowledged to the
    outbox, the session ends and the next one, after backoff, publishes the same event again; one error line
    for the lot; once the broker accepts it, it is delivered and the refusal is over."""
    refusing = True

    def reason(topic: str) -> int:
        return answer if refusing and "/events/" in topic else 0

    async with StubBroker(reason) as stub:
        site = site_config(tmp_path / "journal", f"mqtt://127.0.0.1:{stub.port}")
        sink = sink_for(site)
        with structlog.testing.capture_logs() as logs:
            async with running(sink):
                done = await sink.accept(Batch(events=(make_event(1),)))
                times = await attempt_times(lambda: sink.stats.publish_refused.get(label, 0), 4, 20)
                assert sink.stats.published == 0, "a refused event is not acknowledged"
                assert sink.stats.refused_topics == {EVENTS}
                assert metric(sink.stats, site, "gcmk_mqtt_refused", stage="publish") == 1
                assert (metric(sink.stats, site, "gcmk_mqtt_publish_refused_total", reason=label) or 0) >= 4
                refusing = False
                await wait_until(lambda: sink.stats.published == 1, 20, what="delivered once accepted")
                assert metric(sink.stats, site, "gcmk_mqtt_refused", stage="publish") == 0
        assert_backoff(times)
        sent = [payload for topic, payload in stub.publishes if topic == EVENTS]
        assert len(sent) >= 5 and all(str(done[0].event_id).encode() in p for p in sent), "the same event again"
        assert [e["event"] for e in errors(logs)] == ["mqtt_publish_refused"], errors(logs)
        assert says in errors(logs)[0]["detail"] and errors(logs)[0]["topic"] == EVENTS
        assert any(e["event"] == "mqtt_publish_accepted" for e in logs)
        assert sink.stats.connects >= 5 and sink.stats.published == 1


# --- connecting ------------------------------------------------------------------------------------------


async def test_no_connack_is_a_connect_timeout_and_a_cancelled_connect_leaves_nothing_open() -> None:
    async with StubBroker(silent=True) as stub:
        session: Session[None] = Session(
            SessionOptions("127.0.0.1", stub.port, "silent", connect_timeout=0.3), lambda *_: None
        )
        with pytest.raises(ConnectTimeout, match=r"no CONNACK within 0\.3s"):
            await session.connect()
        session.abort()
        await wait_until(lambda: stub.closed == 1, 5, what="the connection closed")
        assert session.ended

        waiting: Session[None] = Session(SessionOptions("127.0.0.1", stub.port, "cancelled"), lambda *_: None)
        task = asyncio.create_task(waiting.connect())
        await wait_until(lambda: stub.connects == 2, 5, what="CONNECT sent")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: stub.closed == 2, 5, what="the abandoned connection closed by connect() itself")
        assert waiting.ended


# --- subscriptions ---------------------------------------------------------------------------------------


def _subscribed(sink: DeliverySink) -> bool:
    session = sink.publisher.session
    return session is not None and session.subscribed and not session.ended


async def test_subscriptions_reach_their_callback_on_the_loop_on_every_session(tmp_path: Path) -> None:
    """QoS 1 subscriptions are made on every session: after a broker crash that lost the session (SIGKILL:
    nothing persisted) messages arrive again; one published while the gateway is away arrives on reconnect."""
    received: list[tuple[bytes, bool]] = []
    loop_thread = threading.get_ident()

    def on_message(payload: bytes) -> None:
        received.append((payload, threading.get_ident() == loop_thread))

    def publisher(*args: Any, **kwargs: Any) -> Publisher:
        return Publisher(*args, **{**kwargs, "subscriptions": {f"gcmk/v1/{SITE}/test-in/#": on_message}})

    with Mosquitto(tmp_path / "broker") as broker:
        sink = sink_for(site_config(tmp_path / "journal", broker.url), publisher=publisher)
        async with running(sink):
            await wait_until(lambda: sink.stats.connected, 10, what="connected")

            async def send(payload: bytes) -> None:
                async with aiomqtt.Client("127.0.0.1", broker.port, identifier="meldkamer") as meldkamer:
                    await meldkamer.publish(f"gcmk/v1/{SITE}/test-in/a", payload, qos=1)

            await wait_until(lambda: _subscribed(sink), 10, what="subscribed")
            await send(b"first")
            await wait_until(lambda: len(received) == 1, 10, what="first message")
            broker.kill()
            await wait_until(lambda: not sink.stats.connected, 10, what="link down")
            broker.start()
            first = sink.publisher.session
            await wait_until(lambda: sink.publisher.session is not first and _subscribed(sink), 20, what="again")
            await send(b"second")
            await wait_until(lambda: len(received) == 2, 10, what="second message")
            session = sink.publisher.session
            assert session is not None
            session.abort()  # the gateway goes away for a moment; its broker session stays
            await wait_until(lambda: not sink.stats.connected, 10, what="link down")
            await send(b"third")
            await wait_until(lambda: len(received) == 3, 20, what="third message, queued by the broker")
    assert received == [(b"first", True), (b"second", True), (b"third", True)]


# --- refusals by a real Mosquitto ------------------------------------------------------------------------


async def test_bad_credentials_one_error_line_backoff_metric_and_recovery(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", users={"gw": "right"}) as broker:
        secret = tmp_path / "password"
        secret.write_text("wrong\n")
        site = site_config(tmp_path / "journal", broker.url, username="gw", password_file=str(secret))
        sink = sink_for(site)
        with structlog.testing.capture_logs() as logs:
            async with running(sink):
                times = await attempt_times(lambda: sink.stats.connect_errors, 4, 20)
                assert sink.stats.connects == 0
                assert sink.stats.connect_refused == {"not_authorized": sink.stats.connect_errors}
                assert "Not authorized (0x87)" in sink.stats.last_error
                assert metric(sink.stats, site, "gcmk_mqtt_refused", stage="connect") == 1
                assert (metric(sink.stats, site, "gcmk_mqtt_connect_refused_total", reason="not_authorized") or 0) >= 4
                # the operator fixes the broker's password file; Mosquitto reloads it on SIGHUP
                passwords = broker.workdir / "passwords"
                update = await asyncio.create_subprocess_exec("mosquitto_passwd", "-b", str(passwords), "gw", "wrong")
                assert await update.wait() == 0
                assert broker.process is not None
                broker.process.send_signal(signal.SIGHUP)
                await wait_until(lambda: sink.stats.connected, 20, what="accepted after the fix")
                assert metric(sink.stats, site, "gcmk_mqtt_refused", stage="connect") == 0
        assert_backoff(times)
        refused = errors(logs)
        assert [e["event"] for e in refused] == ["mqtt_connect_refused"], refused
        assert refused[0]["detail"].startswith("the broker refused the connection: Not authorized (0x87)")
        assert [e["event"] for e in logs if e["event"].startswith("mqtt_connected")] == ["mqtt_connected"]


async def test_a_topic_the_broker_acl_forbids_one_error_line_backoff_metric_and_recovery(tmp_path: Path) -> None:
    """Mosquitto 2.0 answers a publish its ACL denies by closing the connection (its PUBACK 0x87, when it gets
    through before the reset, says the same): the event stays undelivered, sessions are spaced by backoff, one
    error line names the topic, and once the ACL allows it (reloaded on SIGHUP) the event is delivered."""
    acl = tmp_path / "acl"
    allowed = [f"gcmk/v1/{SITE}/status", f"gcmk/v1/{SITE}/heartbeat", f"gcmk/v1/{SITE}/state/#"]
    acl.write_text("user gw\n" + "".join(f"topic readwrite {t}\n" for t in allowed) + f"topic read gcmk/v1/{SITE}/#\n")
    with Mosquitto(tmp_path / "broker", users={"gw": "pw"}, extra_config=f"acl_file {acl}") as broker:
        secret = tmp_path / "password"
        secret.write_text("pw\n")
        site = site_config(tmp_path / "journal", broker.url, username="gw", password_file=str(secret))
        sink = sink_for(site)
        with structlog.testing.capture_logs() as logs:
            async with running(sink):
                await sink.accept(Batch(events=(make_event(1),)))
                times = await attempt_times(lambda: sum(sink.stats.publish_refused.values()), 4, 30)
                assert sink.stats.published == 0 and sink.stats.refused_topics == {EVENTS}
                assert set(sink.stats.publish_refused) <= {"connection_closed", "not_authorized"}
                assert metric(sink.stats, site, "gcmk_mqtt_refused", stage="publish") == 1
                acl.write_text(acl.read_text() + f"topic write gcmk/v1/{SITE}/events/#\n")
                assert broker.process is not None
                broker.process.send_signal(signal.SIGHUP)
                await wait_until(lambda: sink.stats.published == 1, 30, what="delivered once allowed")
                assert metric(sink.stats, site, "gcmk_mqtt_refused", stage="publish") == 0
        assert_backoff(times)
        refused = errors(logs)
        assert [e["event"] for e in refused] == ["mqtt_publish_refused"], refused
        assert refused[0]["topic"] == EVENTS
        assert sum(e["event"] == "mqtt_publish_accepted" for e in logs) == 1


# --- renewing the session (a reload: credentials read again) ---------------------------------------------


async def test_a_renewal_lets_the_window_be_acknowledged_then_reconnects_cleanly(tmp_path: Path) -> None:
    """`renew_mqtt` while the whole window awaits its PUBACKs: nothing more is taken from the outbox, the PUBACKs
    are awaited, then `offline` (reason reconnecting: a clean DISCONNECT discards the will, and a reconnect that
    fails must not leave a retained `online`), DISCONNECT and a new session: every event arrives exactly once."""
    with Mosquitto(tmp_path / "broker") as broker:
        site = site_config(tmp_path / "journal", broker.url, max_inflight=8)
        sink = sink_for(site)
        collector = Collector(broker.port)
        async with asyncio.TaskGroup() as tg:
            collecting = tg.create_task(collector.run())
            await asyncio.wait_for(collector.connected.wait(), 10)
            with structlog.testing.capture_logs() as logs:
                async with running(sink):
                    await wait_until(lambda: sink.stats.connected and sink.stats.heartbeats >= 1, 10, what="up")
                    old = sink.publisher.session
                    assert old is not None
                    with frozen(broker):
                        await sink.accept(Batch(events=tuple(make_event(i) for i in range(20))))
                        await wait_until(lambda: old.inflight >= 8, 5, what="the window filled")
                        sink.renew_mqtt(site.mqtt)
                    await wait_until(lambda: sink.stats.connects == 2 and sink.stats.connected, 10, what="renewed")
                    await wait_until(lambda: sink.stats.published == 20, 10, what="all PUBACKs")
                    assert old.acknowledged >= 8 + 1, "the window's PUBACKs came in the old session"
                    assert sink.publisher.session is not old
                    texts = lambda: [e["text"] for e in collector.events()]  # noqa: E731
                    await wait_until(lambda: len(texts()) >= 20, 10, what="all events at the subscriber")
                    statuses = [m for m in collector.on("/status") if not m.retain]
                    reasons = [json.loads(m.payload)["reason"] for m in statuses]
                    assert "reconnecting" in reasons and "connection lost" not in reasons, reasons
                    assert reasons[-1] == "connected", "online again after the renewal"
            collecting.cancel()
    assert sorted(texts()) == sorted(f"n={i}" for i in range(20)), "each event exactly once"
    assert "mqtt_session_renewing" in [e["event"] for e in logs]
    assert sink.stats.connect_errors == 0 and not errors(logs)


async def test_a_reloads_status_change_and_renewal_together_with_nothing_in_flight_reconnect(tmp_path: Path) -> None:
    """What a reload does, in one go: the retained status must be published again (new config hash) and the
    session renewed, while no publish awaits its PUBACK. The heartbeat task's wait for the status change ends
    in the loop iteration in which the session cancels it (twice: `_settle` has nothing to wait for); on
    Python 3.11 `asyncio.wait_for` swallowed both cancels, the heartbeat task went on for ever, the session
    never ended and nothing was published any more (tests/e2e/test_tenant_move.py under CPU load)."""
    with Mosquitto(tmp_path / "broker") as broker:
        site = site_config(tmp_path / "journal", broker.url)
        sink = sink_for(site)
        async with running(sink):
            await wait_until(lambda: sink.stats.connected and sink.stats.heartbeats >= 1, 10, what="up")
            old = sink.publisher.session
            assert old is not None
            await wait_until(lambda: not old.inflight, 5, what="nothing in flight")
            sink.use_config_hash("beef")  # as gateway/app/reload.py: the new hash, then the renewal
            sink.renew_mqtt(site.mqtt)
            await wait_until(lambda: sink.stats.connects == 2 and sink.stats.connected, 10, what="renewed")
            await sink.accept(Batch(events=(make_event(1),)))
            await wait_until(lambda: sink.stats.published == 1, 10, what="published on the new session")
