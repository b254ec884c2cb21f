"""The MQTT link to the meldkamer: one MQTT session at a time, QoS 1, bounded in-flight window.

Why this shape: the journal is our queue and the outbox decides the order, so the link needs no offline queue
of its own; an event is marked delivered only on its PUBACK, and what was in flight when a session died is
published again (same event_id) on the next one. Each session is a `gateway.mqtt.session.Session`: paho-mqtt
driven from this loop through its public external-loop API, a fresh paho client per connection (so paho never
re-sends on its own: at most one extra copy per in-flight event after a failure), with a persistent broker
session (clean_start false + SessionExpiryInterval; 3.1.1 clean_session false). Sessions are re-established
with jittered exponential backoff; TLS verifies the broker by default; plain TCP only with `insecure: true`,
never as a fallback. Protocol `auto` probes MQTT 5 once and falls back to 3.1.1 (the demo's amqtt broker).

Refusals: a PUBACK reason code >= 0x80 means the broker did NOT take the message. The event is not
acknowledged to the outbox, it is counted (`publish_refused`), the session ends and the next one starts after
backoff, re-sending from that event; the log says so once per refused topic, not per attempt. A broker that
refuses the CONNECT (bad credentials) or drops the connection while a publish awaits its PUBACK before
acknowledging any event of the session (what Mosquitto does when its ACL forbids a topic) is handled the same
way: one error line per change, counters and the `refused` gauges for the alerts, backoff. With MQTT 3.1.1 a
PUBACK cannot refuse: Mosquitto acknowledges a publish its ACL denies and closes the connection at once. So on
3.1.1 a connection the broker closes within RIGHT_AFTER of a PUBACK, in a session younger than STABLE_SESSION,
counts as a refusal of that publish ("not authorised to publish on <topic>?"), and only a session that lasted
STABLE_SESSION ends the refusal (a 3.1.1 PUBACK proves nothing).

Credentials: every session reads the TLS files and the password again (gateway/mqtt/client.py); one that
cannot be read is counted as a connect error, logged once per change, and retried with backoff. `renew()` (a
config reload) ends the current session cleanly so the next one uses what is on disk now: the pump stops
taking from the outbox, the PUBACKs of what is in flight are awaited (bounded by RENEW_SETTLE), then
DISCONNECT (the broker discards the will; no `offline` is published) and a new session at once. What is still
unacknowledged then is re-sent by the outbox on the new session, as after any session end (QoS 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config.models import MqttConfig, SiteConfig
from gateway.core.lifecycle import wait_event
from gateway.delivery.contract import CONTENT_TYPE, HeartbeatDoc, StatusDoc, heartbeat_topic, status_topic
from gateway.delivery.outbox import Outbox, Outgoing
from gateway.delivery.stats import DeliveryStats
from gateway.domain.errors import DeliveryError
from gateway.mqtt.client import ClientFactory, CredentialsUnreadable, backoff
from gateway.mqtt.session import (
    ConnectDropped,
    ConnectRefused,
    ConnectTimeout,
    PubackOverdue,
    PublishRefused,
    Session,
    SessionError,
    SessionLost,
    SessionOptions,
    Will,
    reason_label,
)

log = structlog.get_logger(__name__)

SESSION_EXPIRY = 7 * 86400  # seconds the broker keeps our session (MQTT 5)
RESERVED_INFLIGHT = 2  # the status and heartbeat publishes, outside the event window, within Receive Maximum
STABLE_SESSION = 10.0  # seconds a session must last for the backoff to start again from its minimum
RENEW_SETTLE = 2.0  # seconds a renewal waits for the PUBACKs of what is in flight before it disconnects
# A DISCONNECT (MQTT 5) with one of these reasons, while a publish awaits its PUBACK, refuses that publish.
_REFUSING_DISCONNECTS = frozenset({0x80, 0x83, 0x87, 0x90, 0x93, 0x95, 0x97, 0x99})

_NO_SUBSCRIPTIONS: Mapping[str, Callable[[bytes], None]] = MappingProxyType({})


class _PackedProperties(Properties):
    """Constant PUBLISH properties, packed once: paho re-packs on every publish, at a cost comparable to
    the rest of the publish."""

    def __init__(self, schema: str, expiry: int | None, packet_type: int = PacketTypes.PUBLISH) -> None:
        super().__init__(packet_type)  # type: ignore[no-untyped-call]
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


class _Window:
    """The event/state window of one session: at most `size` outbox messages awaiting their PUBACK."""

    __slots__ = ("delivered", "free", "room")

    def __init__(self, size: int) -> None:
        self.free = size
        self.room = asyncio.Event()
        self.delivered = 0  # outbox messages the broker accepted in this session


class Publisher:
    """Runs MQTT sessions until stopped; each session publishes status, heartbeats and the outbox, and hands the
    messages of `subscriptions` (topic filter -> callback(payload), QoS 1, on every session) to their callback
    on the loop (the meldkamer's confirmations)."""

    def __init__(
        self,
        site: SiteConfig,
        outbox: Outbox,
        stats: DeliveryStats,
        *,
        online: Callable[[], StatusDoc],
        offline: Callable[[str], StatusDoc],
        heartbeat: Callable[[], Awaitable[HeartbeatDoc]],
        subscriptions: Mapping[str, Callable[[bytes], None]] = _NO_SUBSCRIPTIONS,
    ) -> None:
        self._site = site
        self._mqtt = site.mqtt
        self._outbox = outbox
        self._stats = stats
        self._online = online
        self._offline = offline
        self._heartbeat = heartbeat
        self._subscriptions = dict(subscriptions)
        self._factory = ClientFactory.of(site.mqtt)
        self._protocol: str | None = None if self._mqtt.protocol == "auto" else self._mqtt.protocol
        self._stop = asyncio.Event()
        self._renew = asyncio.Event()  # end the session cleanly and start a new one (credentials re-read)
        self._wake = asyncio.Event()  # stop or renew: ends the session's wait and the backoff
        self._status_changed = asyncio.Event()  # the retained status must be published again (a reload)
        self.session: Session[Outgoing] | None = None  # the current session (tests inspect it)
        self._window = _Window(0)
        self._grace = 0.0
        self._trouble: str | None = None  # what the last error log reported; repeats of it are not logged again
        self._acks_prove = True  # MQTT 5: a PUBACK says whether the broker took the publish; 3.1.1: it does not
        self._event_props: Properties | None = None
        self._state_props: Properties | None = None
        self._status_props: Properties | None = None
        self._heartbeat_props: Properties | None = None
        self._status_topic = status_topic(site.site.id)
        self._heartbeat_topic = heartbeat_topic(site.site.id)
        stats.insecure = not self._mqtt.uses_tls
        if stats.insecure:
            log.warning("mqtt_insecure", url=self._mqtt.url, detail="plain TCP without TLS (insecure: true)")

    def status_changed(self) -> None:
        """The status document changed (a reload's config hash): publish it again, retained, at once if
        connected (else with the next connection, as always)."""
        self._status_changed.set()

    def request_stop(self, grace: float) -> None:
        """Ask the running loop to drain for up to `grace` seconds, publish `offline` and disconnect."""
        self._grace = grace
        self._stop.set()
        self._wake.set()

    def renew(self, mqtt: MqttConfig | None = None) -> None:
        """A reload: end the current session cleanly and connect again at once, reading the TLS files and the
        password again (from `mqtt`'s paths when given: only credential settings may differ, see
        gateway/config/diff.py). Also ends a backoff wait."""
        if mqtt is not None:
            self._mqtt = mqtt
            self._factory = ClientFactory(mqtt)
        self._renew.set()
        self._wake.set()

    # --- the connection loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connects, serves, reconnects with jittered exponential backoff; returns after request_stop."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()  # a renew asked before this point is served by this session's fresh credentials
            self._renew.clear()
            probing = self._protocol is None and self._stats.connects == 0
            session: Session[Outgoing] | None = None
            began: float | None = None
            error: BaseException | None = None
            try:
                session = self._session(v5=self._protocol != "3.1.1", probing=probing)
                await self._connect(session)
                began = loop.time()
                await self._serve(session)
            except* DeliveryError as group:
                error = _first(group)
            finally:
                if session is not None:
                    session.abort()
                self._disconnected()
            if error is not None:
                if probing and _refuses_v5(error):
                    log.info("mqtt_fallback_311", reason=str(error))
                    self._protocol = "3.1.1"
                    continue
                if began is not None and loop.time() - began >= STABLE_SESSION:
                    failures = 0  # a session that worked for a while: reconnect quickly
                failures += 1
                self._failed(error)
            if self._stop.is_set():
                break
            if error is None and self._renew.is_set():
                continue  # renewed: connect again at once
            await wait_event(self._wake, backoff(failures))

    def _session(self, *, v5: bool, probing: bool) -> Session[Outgoing]:
        """A new session with the credentials as they are on disk now (CredentialsUnreadable: counted)."""
        will = self._offline("connection lost")
        try:
            options = SessionOptions.of(
                self._factory,
                self._site.client_id,
                v5=v5,
                probe=probing,
                session_expiry=SESSION_EXPIRY,
                will=Will(
                    self._status_topic,
                    will.to_json(),
                    _PackedProperties("gcmk.status.v1", None, PacketTypes.WILLMESSAGE) if v5 else None,
                ),
                subscriptions=self._subscriptions,
            )
        except CredentialsUnreadable:
            self._stats.connect_errors += 1
            raise
        self._event_props = _properties("gcmk.event.v1") if v5 else None
        self._state_props = _properties("gcmk.state.v1") if v5 else None
        self._status_props = _properties("gcmk.status.v1") if v5 else None
        interval = self._site.supervision.heartbeat_interval
        self._heartbeat_props = _properties("gcmk.heartbeat.v1", max(1, round(3 * interval))) if v5 else None
        return Session(options, self._acked)

    async def _connect(self, session: Session[Outgoing]) -> None:
        try:
            await session.connect()
        except SessionError:
            self._stats.connect_errors += 1
            raise

    async def _serve(self, session: Session[Outgoing]) -> None:
        stats = self._stats
        self.session = session
        size = self._mqtt.max_inflight
        if session.receive_maximum is not None:  # the broker's limit (MQTT 5), which the window must respect
            size = max(1, min(size, session.receive_maximum - RESERVED_INFLIGHT))
        self._window = _Window(size)
        stats.connected = True
        stats.connects += 1
        if stats.connects > 1:
            stats.reconnects += 1
        stats.protocol = "5" if session.options.v5 else "3.1.1"
        self._acks_prove = session.options.v5
        stats.refused_connect = False
        self._outbox.link(True)
        refusing = self._trouble is not None and self._trouble.startswith("publish_refused")
        if not refusing:
            self._trouble = None  # the connection works again: a new failure is news
        (log.debug if refusing else log.info)(
            "mqtt_connected", url=self._mqtt.url, protocol=stats.protocol, window=size
        )
        try:
            await self._publish_wait(session, self._status_topic, self._online().to_json(), True, self._status_props)
            async with asyncio.TaskGroup() as tg:
                watch = tg.create_task(self._watch(session))
                beat = tg.create_task(self._beat(session))
                pump = tg.create_task(self._pump(session))
                stable = tg.create_task(self._stable())
                await self._wake.wait()
                if self._stop.is_set():
                    with contextlib.suppress(TimeoutError):  # asyncio.timeout: a cancel always ends it
                        async with asyncio.timeout(self._grace):
                            await self._outbox.drained()
                else:  # renew: take nothing more, let what is in flight be acknowledged
                    pump.cancel()
                    beat.cancel()
                    await self._settle(session)
                for task in (pump, beat, watch, stable):
                    task.cancel()
        except asyncio.CancelledError:
            # Cancelled without request_stop (service shutting down): still say `offline` if we can.
            await self._say_offline(session)
            await session.disconnect()
            raise
        if self._stop.is_set():
            await self._say_offline(session)
        else:  # a clean DISCONNECT discards the will: say it, so a reconnect that fails is not silent `online`
            await self._say_offline(session, "reconnecting")
            log.info("mqtt_session_renewing", detail="a reload: reconnecting with the TLS files and password re-read")
        await session.disconnect()

    async def _settle(self, session: Session[Outgoing]) -> None:
        """Until no publish of the session awaits its PUBACK (or RENEW_SETTLE passed, or the session ended)."""
        window = self._window
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RENEW_SETTLE):
                while session.inflight and not session.ended:
                    window.room.clear()
                    await window.room.wait()

    async def _say_offline(self, session: Session[Outgoing], reason: str = "shutdown") -> None:
        if session.ended:
            return
        with contextlib.suppress(DeliveryError, TimeoutError):
            doc = self._offline(reason).to_json()
            async with asyncio.timeout(2.0):
                await session.publish_wait(self._status_topic, doc, True, self._status_props)

    def _disconnected(self) -> None:
        if self._stats.connected:
            refusing = self._trouble is not None and self._trouble.startswith("publish_refused")
            (log.debug if refusing else log.info)("mqtt_disconnected")
        self._stats.connected = False
        self._outbox.link(False)
        self._outbox.lost()

    async def _publish_wait(
        self, session: Session[Outgoing], topic: str, payload: str, retain: bool, props: Properties | None
    ) -> None:
        try:
            await session.publish_wait(topic, payload, retain, props)
        except PublishRefused as exc:
            self._count_refusal(exc.topic, exc.label)
            raise
        if self._stats.refused_topics:
            self._accepted(topic)

    # --- what went wrong, said once ----------------------------------------------------------------------

    def _failed(self, error: BaseException) -> None:
        """After a session ended on `error`: counters, the `refused` gauges, and one log line per change."""
        stats = self._stats
        stats.last_error = f"{type(error).__name__}: {error}"
        if isinstance(error, PubackOverdue):
            stats.publish_errors += 1
        if isinstance(error, CredentialsUnreadable):  # counted as a connect error in _session
            self._report(f"credentials:{error}", "error", "mqtt_credentials_unreadable", detail=str(error))
            return
        if isinstance(error, ConnectRefused):
            stats.connect_refused[error.label] = stats.connect_refused.get(error.label, 0) + 1
            stats.refused_connect = True
            self._report(f"connect_refused:{error.label}", "error", "mqtt_connect_refused", detail=str(error))
            return
        if isinstance(error, PublishRefused):  # counted when the PUBACK arrived
            self._report(
                f"publish_refused:{error.topic}", "error", "mqtt_publish_refused", topic=error.topic, detail=str(error)
            )
            return
        topic = self._dropped_publish(error)
        if topic is not None:
            assert isinstance(error, SessionLost)
            label = "connection_closed" if error.reason is None or not error.by_broker else reason_label(error.reason)
            self._count_refusal(topic, label)
            if error.unacknowledged is None:  # MQTT 3.1.1
                detail = (
                    f"not authorised to publish on {topic}? The broker closed the connection right after"
                    " acknowledging it (Mosquitto does this with MQTT 3.1.1 when its ACL forbids the topic):"
                    " check the gateway user's rights in the broker's ACL"
                )
            else:
                detail = (
                    f"{error}, before it acknowledged any event of this session: the broker does not take this"
                    " publish (Mosquitto closes the connection like this when its ACL forbids the topic)"
                )
            self._report(f"publish_refused:{topic}", "error", "mqtt_publish_refused", topic=topic, detail=detail)
            return
        self._report(f"link:{stats.last_error}", "warning", "mqtt_link_down", error=stats.last_error)

    async def _stable(self) -> None:
        """MQTT 3.1.1: a session that lasted STABLE_SESSION ends a refusal its PUBACKs could not disprove."""
        if self._acks_prove:
            return
        await asyncio.sleep(STABLE_SESSION)
        for topic in list(self._stats.refused_topics):
            self._accepted(topic, proven=True)

    def _dropped_publish(self, error: BaseException) -> str | None:
        """The topic of the publish the broker refused by ending the connection, if that is what happened: the
        session ended by the broker (closed without a reason, or a DISCONNECT whose reason refuses the
        publish) while a publish awaited its PUBACK and no outbox message of the session was accepted."""
        if not isinstance(error, SessionLost):
            return None
        if not self._acks_prove and error.unacknowledged is None:  # 3.1.1: PUBACK, then the connection closed
            closed = not error.by_broker and (error.reason is None or error.reason.value != 0x8D)
            return error.just_acknowledged if closed else None
        if error.unacknowledged is None or self._window.delivered:
            return None
        if error.by_broker:
            refusing = error.reason is not None and error.reason.value in _REFUSING_DISCONNECTS
        else:
            refusing = error.reason is None or error.reason.value != 0x8D  # not our keepalive timeout
        return error.unacknowledged if refusing else None

    def _report(self, key: str, level: str, event: str, **fields: Any) -> None:
        if key == self._trouble:
            log.debug(event, **fields)
            return
        self._trouble = key
        getattr(log, level)(event, **fields)

    def _count_refusal(self, topic: str, label: str) -> None:
        stats = self._stats
        stats.publish_refused[label] = stats.publish_refused.get(label, 0) + 1
        stats.refused_topics.add(topic)

    def _accepted(self, topic: str, *, proven: bool = False) -> None:
        """A publish to `topic` was accepted: a refusal of that topic is over (on 3.1.1 only once `proven`)."""
        stats = self._stats
        if topic in stats.refused_topics and (proven or self._acks_prove):
            stats.refused_topics.discard(topic)
            if not stats.refused_topics and self._trouble is not None and self._trouble.startswith("publish_refused"):
                self._trouble = None
                log.info("mqtt_publish_accepted", topic=topic, detail="the broker accepts the gateway's publishes")

    # --- tasks of one session ----------------------------------------------------------------------------

    async def _watch(self, session: Session[Outgoing]) -> None:
        """Raises the session's error when it ends (connection lost, PUBACK overdue or refused, ...)."""
        await session.wait_closed()
        raise SessionLost("the MQTT session ended")

    async def _beat(self, session: Session[Outgoing]) -> None:
        interval = self._site.supervision.heartbeat_interval
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if self._status_changed.is_set():
                self._status_changed.clear()
                status = self._online().to_json()
                await self._publish_wait(session, self._status_topic, status, True, self._status_props)
            if loop.time() >= due:
                doc = await self._heartbeat()
                await self._publish_wait(session, self._heartbeat_topic, doc.to_json(), False, self._heartbeat_props)
                self._stats.heartbeats += 1
                due = max(due + interval, loop.time())
            await wait_event(self._status_changed, due - loop.time())

    async def _pump(self, session: Session[Outgoing]) -> None:
        """Publishes the outbox through the bounded window, without a task or awaitable per message: each PUBACK
        comes back through `_acked` (paho's read callback). The session's watchdog fails the session when a
        PUBACK is overdue."""
        window = self._window
        outbox = self._outbox
        publish = session.publish
        event_props, state_props = self._event_props, self._state_props
        while True:
            if window.free <= 0:
                window.room.clear()
                await window.room.wait()
                continue
            item = outbox.next_nowait() or await outbox.next()
            if item.kind == "event":
                publish(item.topic, item.payload, False, event_props, item)
            else:
                publish(item.topic, item.payload, True, state_props, item)
            window.free -= 1

    def _acked(self, item: Outgoing, reason: ReasonCode) -> None:
        """The PUBACK of an outbox message (in paho's read callback, on the loop)."""
        window = self._window
        window.free += 1
        window.room.set()
        if reason.value >= 0x80:  # refused: not acknowledged to the outbox, so it is sent again
            self._count_refusal(item.topic, reason_label(reason))
            if self.session is not None:
                self.session.fail(PublishRefused(item.topic, reason))
            return
        window.delivered += 1
        stats = self._stats
        if item.kind == "event":
            stats.published += 1
            stats.observe_latency(time.time() - item.detected_at)  # end to end: detection -> PUBACK
        else:
            stats.published_states += 1
        if stats.refused_topics:
            self._accepted(item.topic)
        self._outbox.acked(item)


def _refuses_v5(error: BaseException) -> bool:
    """A 3.1.1-only broker answers an MQTT 5 CONNECT with 'unsupported protocol version' (paho maps the 3.1.1
    code 1 onto MQTT 5's 0x84), or never answers (amqtt, which cannot parse an MQTT 5 will), or closes the
    connection without a CONNACK (RabbitMQ 3.10, which cannot parse the CONNECT): the TCP connection worked,
    MQTT 5 did not."""
    if isinstance(error, ConnectRefused):
        return error.reason.value in (0x01, 0x84)
    return isinstance(error, ConnectTimeout | ConnectDropped)


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
