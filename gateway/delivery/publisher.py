"""The MQTT link to the meldkamer: one long-lived aiomqtt client, QoS 1, bounded in-flight window.

Why this shape: aiomqtt has no offline queue and a publish returns only
after its PUBACK, so the journal is our queue and the outbox decides the order; an unbounded gather of
publishes is several times slower than a bounded window. The client is reused across reconnects (jittered
exponential backoff) with a persistent session; an event is marked delivered only on its PUBACK, and
what was in flight when a session died is published again (same event_id) on the next one.
TLS verifies the broker by default; plain TCP only with `insecure: true`, never as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config.models import SiteConfig
from gateway.delivery.contract import CONTENT_TYPE, HeartbeatDoc, StatusDoc, heartbeat_topic, status_topic
from gateway.delivery.outbox import Outbox, Outgoing
from gateway.delivery.stats import DeliveryStats
from gateway.domain.errors import DeliveryError
from gateway.mqtt.client import PROBE_TIMEOUT, ClientFactory, backoff, refuses_protocol

log = structlog.get_logger(__name__)

SESSION_EXPIRY = 7 * 86400  # seconds the broker keeps our session (MQTT 5)
EXTRA_INFLIGHT = 8  # status and heartbeat publishes (through aiomqtt) besides the event window


class _PackedProperties(Properties):
    """Constant PUBLISH properties, packed once: paho re-packs on every publish, at a cost comparable to
    the rest of the publish."""

    def __init__(self, schema: str, expiry: int | None) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.ContentType = CONTENT_TYPE
        self.UserProperty = [("schema", schema)]
        if expiry is not None:
            self.MessageExpiryInterval = expiry
        object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


def _properties(schema: str, expiry: int | None = None) -> Properties:
    return _PackedProperties(schema, expiry)


class Publisher:
    """Runs MQTT sessions until stopped; each session publishes status, heartbeats and the outbox."""

    def __init__(
        self,
        site: SiteConfig,
        outbox: Outbox,
        stats: DeliveryStats,
        *,
        online: Callable[[], StatusDoc],
        offline: Callable[[str], StatusDoc],
        heartbeat: Callable[[], Awaitable[HeartbeatDoc]],
    ) -> None:
        self._site = site
        self._mqtt = site.mqtt
        self._outbox = outbox
        self._stats = stats
        self._online = online
        self._offline = offline
        self._heartbeat = heartbeat
        self._factory = ClientFactory.of(site.mqtt)
        self._protocol: aiomqtt.ProtocolVersion | None = (
            None
            if self._mqtt.protocol == "auto"
            else aiomqtt.ProtocolVersion.V5
            if self._mqtt.protocol == "5"
            else aiomqtt.ProtocolVersion.V311
        )
        self._stop = asyncio.Event()
        self.client: aiomqtt.Client | None = None  # the current client (tests inspect its socket)
        self._grace = 0.0
        self._v5 = False
        self._event_props: Properties | None = None
        self._state_props: Properties | None = None
        self._status_props: Properties | None = None
        self._heartbeat_props: Properties | None = None
        self._timeout = self._factory.timeout
        self._status_topic = status_topic(site.site.id)
        self._heartbeat_topic = heartbeat_topic(site.site.id)
        stats.insecure = not self._mqtt.uses_tls
        if stats.insecure:
            log.warning("mqtt_insecure", url=self._mqtt.url, detail="plain TCP without TLS (insecure: true)")

    def request_stop(self, grace: float) -> None:
        """Ask the running loop to drain for up to `grace` seconds, publish `offline` and disconnect."""
        self._grace = grace
        self._stop.set()

    # --- the connection loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connects, serves, reconnects with jittered exponential backoff; returns after request_stop."""
        client: aiomqtt.Client | None = None
        failures = 0
        while not self._stop.is_set():
            if client is None:
                client = self._client(self._protocol or aiomqtt.ProtocolVersion.V5)
            error: BaseException | None = None
            try:
                await self._session(client)
            except* (aiomqtt.MqttError, OSError, DeliveryError) as group:
                error = _first(group)
            finally:
                self._disconnected()
            if error is not None:
                if self._protocol is None and self._stats.connects == 0 and refuses_protocol(error):
                    log.info("mqtt_fallback_311", reason=str(error))
                    self._protocol = aiomqtt.ProtocolVersion.V311
                    client = None
                    continue
                failures += 1
                self._stats.last_error = f"{type(error).__name__}: {error}"
                log.warning("mqtt_link_down", error=self._stats.last_error, failures=failures)
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff(failures))

    def _client(self, protocol: aiomqtt.ProtocolVersion) -> aiomqtt.Client:
        v5 = protocol == aiomqtt.ProtocolVersion.V5
        will = self._offline("connection lost")
        client = self._factory.client(
            self._site.client_id,
            protocol,
            session_expiry=SESSION_EXPIRY,
            will=aiomqtt.Will(
                self._status_topic,
                will.to_json(),
                qos=1,
                retain=True,
                properties=_properties("gcmk.status.v1") if v5 else None,
            ),
            # No cap in paho: our window bounds what is in flight (events and states; status and heartbeats add
            # a few), and with a cap paho scans every outgoing message on each PUBACK (_update_inflight).
            max_inflight_messages=0,
        )
        client.pending_calls_threshold = self._mqtt.max_inflight + 2 * EXTRA_INFLIGHT
        self.client = client
        self._v5 = v5
        self._event_props = _properties("gcmk.event.v1") if v5 else None
        self._state_props = _properties("gcmk.state.v1") if v5 else None
        self._status_props = _properties("gcmk.status.v1") if v5 else None
        interval = self._site.supervision.heartbeat_interval
        self._heartbeat_props = _properties("gcmk.heartbeat.v1", max(1, round(3 * interval))) if v5 else None
        return client

    async def _session(self, client: aiomqtt.Client) -> None:
        # aiomqtt 2.5 leaves `_connected` resolved after an unexpected disconnect, so the next __aenter__
        # would return before the CONNACK; a fresh future makes it wait for the real answer.
        if client._connected.done():
            client._connected = asyncio.get_running_loop().create_future()
        probing = self._protocol is None and self._stats.connects == 0
        client.timeout = min(self._timeout, PROBE_TIMEOUT) if probing else self._timeout
        try:
            await client.__aenter__()
        except aiomqtt.MqttError:
            self._stats.connect_errors += 1
            _release(client)
            raise
        except BaseException:
            _release(client)
            raise
        client.timeout = self._timeout
        try:
            await self._serve(client)
        except asyncio.CancelledError:
            # Cancelled without request_stop (service shutting down): still say `offline` if we can.
            await self._say_offline(client)
            raise
        except BaseException:
            await self._leave_with_will(client)
            raise
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
            _release(client)

    async def _leave_with_will(self, client: aiomqtt.Client) -> None:
        """The session failed (e.g. a publish timed out) while the socket may still be up. A plain
        DISCONNECT would make the broker discard the will and leave `online` standing; MQTT 5 can ask for
        the will (reason 4). With 3.1.1 the will fires only when the broker itself notices the loss."""
        if not self._v5 or client._disconnected.done():
            return
        client._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, aName="Disconnect with will message"))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(client._disconnected), 1.0)

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._stats.connected = True
        self._stats.connects += 1
        if self._stats.connects > 1:
            self._stats.reconnects += 1
        self._stats.protocol = "5" if self._v5 else "3.1.1"
        self._outbox.link(True)
        log.info("mqtt_connected", url=self._mqtt.url, protocol=self._stats.protocol)
        await self._publish(client, self._status_topic, self._online().to_json(), True, self._status_props)
        async with asyncio.TaskGroup() as tg:
            watch = tg.create_task(self._watch(client))
            beat = tg.create_task(self._beat(client))
            pump = tg.create_task(self._pump(client))
            await self._stop.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.drained(), self._grace)
            for task in (pump, beat, watch):
                task.cancel()
        await self._say_offline(client)

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            doc = self._offline("shutdown").to_json()
            await asyncio.wait_for(self._publish(client, self._status_topic, doc, True, self._status_props), 2.0)

    def _disconnected(self) -> None:
        if self._stats.connected:
            log.info("mqtt_disconnected")
        self._stats.connected = False
        self._outbox.link(False)
        self._outbox.lost()

    async def _publish(
        self, client: aiomqtt.Client, topic: str, payload: str, retain: bool, props: Properties | None
    ) -> None:
        await client.publish(topic, payload, qos=1, retain=retain, properties=props, timeout=self._timeout)

    # --- tasks of one session ----------------------------------------------------------------------------

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Raises MqttError when the connection drops (we subscribe to nothing, so no message arrives)."""
        async for _ in client.messages:
            pass
        raise DeliveryError("MQTT message stream ended")

    async def _beat(self, client: aiomqtt.Client) -> None:
        interval = self._site.supervision.heartbeat_interval
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            doc = await self._heartbeat()
            await self._publish(client, self._heartbeat_topic, doc.to_json(), False, self._heartbeat_props)
            self._stats.heartbeats += 1
            due = max(due + interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Publishes the outbox through a bounded in-flight window, without a task or awaitable per message:
        paho's PUBACK callback completes each one (see `_Window`). The window's watchdog fails the session
        when a PUBACK is overdue, as a timed-out `client.publish` would."""
        window = _Window(self, client, self._mqtt.max_inflight)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watchdog(window))
                while True:
                    if window.free <= 0:
                        window.room.clear()
                        await window.room.wait()
                        continue
                    item = self._outbox.next_nowait() or await self._outbox.next()
                    window.send(item)
        finally:
            window.forget()

    async def _watchdog(self, window: _Window) -> None:
        period = min(1.0, self._timeout / 4)
        while True:
            await asyncio.sleep(period)
            if window.overdue(self._timeout):
                self._stats.publish_errors += 1
                raise aiomqtt.MqttError("Operation timed out")

    def _acked(self, item: Outgoing) -> None:
        if item.kind == "event":
            self._stats.published += 1
            self._stats.observe_latency(time.time() - item.detected_at)  # end to end: detection -> PUBACK
        else:
            self._stats.published_states += 1
        self._outbox.acked(item)


class _Ack:
    """One message awaiting its PUBACK. It takes the place of the asyncio.Event that aiomqtt's `publish` would
    register under the message id: aiomqtt's on_publish handler calls `set()` when the PUBACK arrives (in
    its socket-read callback, on the event loop). Per message that saves a task, an Event, a `wait_for` with
    its task and timer, and aiomqtt's scan of all pending ids: about a third of the publish path's CPU."""

    __slots__ = ("item", "mid", "sent_at", "window")

    def __init__(self, window: _Window, item: Outgoing, mid: int) -> None:
        self.window = window
        self.item = item
        self.mid = mid
        self.sent_at = time.monotonic()

    def set(self) -> None:
        self.window.acked(self)


class _Window:
    """The in-flight window of one session: at most `size` messages sent and not yet acknowledged."""

    def __init__(self, publisher: Publisher, client: aiomqtt.Client, size: int) -> None:
        self._publisher = publisher
        self._client = client
        self._pending: dict[int, Any] = client._pending_publishes  # aiomqtt's table: mid -> object with set()
        self._inflight: dict[int, _Ack] = {}  # insertion order = send order: the first is the oldest
        self.free = size
        self.room = asyncio.Event()

    def send(self, item: Outgoing) -> None:
        publisher = self._publisher
        props = publisher._event_props if item.kind == "event" else publisher._state_props
        info = self._client._client.publish(item.topic, item.payload, 1, item.kind == "state", props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            publisher._stats.publish_errors += 1
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        ack = _Ack(self, item, info.mid)
        self._pending[info.mid] = ack  # QoS 1: paho reports the PUBACK later, from the socket-read callback
        self._inflight[info.mid] = ack
        self.free -= 1

    def acked(self, ack: _Ack) -> None:
        if self._inflight.pop(ack.mid, None) is None:
            return
        self.free += 1
        self.room.set()
        self._publisher._acked(ack.item)

    def overdue(self, timeout: float) -> bool:
        oldest = next(iter(self._inflight.values()), None)
        return oldest is not None and time.monotonic() - oldest.sent_at > timeout

    def forget(self) -> None:
        """The session ended: unacknowledged messages go back to the outbox (`Outbox.lost`), not here."""
        for mid, ack in self._inflight.items():
            if self._pending.get(mid) is ack:
                del self._pending[mid]
        self._inflight.clear()


def _release(client: aiomqtt.Client) -> None:
    """aiomqtt keeps its reuse lock when connect or disconnect is interrupted; the client must stay reusable."""
    if client._lock.locked():
        client._lock.release()


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
