"""One MQTT session on the asyncio loop, driven through paho-mqtt's public external-event-loop API.

paho documents how to run its client from someone else's event loop: it reports its socket through
`on_socket_open` / `on_socket_close`, asks for write readiness through `on_socket_register_write` /
`on_socket_unregister_write`, and the loop calls `loop_read()` when the socket is readable, `loop_write()`
when paho has something to send, and `loop_misc()` about once a second (keepalive). This module does exactly
that and nothing private: callback API version 2, `on_connect` with the CONNACK reason code,
`on_publish(client, userdata, mid, reason_code, properties)` with the MQTT 5 PUBACK reason code, `on_message`
per subscription (`message_callback_add`), `on_disconnect`.

One `Session` is one connection with a FRESH paho client: when it ends, its client is dropped, so paho never
re-sends anything on a later connection; the owner re-sends what was in flight (the delivery outbox does).
The broker-side session persists (MQTT 5 clean_start false + SessionExpiryInterval; 3.1.1 clean_session
false), so subscriptions and queued QoS 1 messages to us survive reconnects.

Design points:
- `connect()` runs paho's blocking `connect()` (DNS, TCP, TLS handshake, CONNECT) on a worker thread, so a
  slow or unreachable broker never blocks the loop. Only `on_socket_open` (TCP_NODELAY) is set while it runs;
  every other callback is attached on the loop thread once it returned, so no paho callback ever runs on the
  worker thread and touches the loop.
- Writes: paho asks for write readiness once per burst; the session then calls `loop_write()` soon (one loop
  callback for everything queued in this iteration), corked (`gateway.mqtt.cork`: the burst leaves as few TCP
  segments, not one per packet), and registers a writer with the loop only if the socket buffer is full.
  Reads: the socket's reader calls `loop_read()` (and drains TLS records already decrypted).
- QoS 1 publishes are not capped by paho (`max_inflight_messages` 0: with a cap paho scans every outgoing
  message on each PUBACK); the owner bounds what is in flight (see `receive_maximum`). Each publish carries a
  token the owner chose; its PUBACK hands back (token, reason code) to the owner's `on_ack`, in paho's read
  callback on the loop. A reason code >= 0x80 is a refusal: the owner decides (the publisher ends the session
  and keeps the event).
- A watchdog in the once-a-second timer fails the session when the oldest PUBACK is overdue.
- Ending: `disconnect()` says DISCONNECT (the broker discards the will); `abort()` shuts the socket down
  without one (the broker publishes the will) and lets paho close it; `fail(error)` from inside a callback
  records the error and aborts one loop iteration later. `wait_closed()` raises what ended the session.
Library exceptions are translated into `SessionError` subclasses here (gateway.domain.errors.DeliveryError).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.domain.errors import DeliveryError
from gateway.mqtt import client as factory_module
from gateway.mqtt.client import ClientFactory
from gateway.mqtt.cork import corked

log = structlog.get_logger(__name__)

T = TypeVar("T")

MISC_INTERVAL = 1.0  # seconds between loop_misc() calls (paho's keepalive) and watchdog checks
CLOSE_TIMEOUT = 1.0  # seconds a clean DISCONNECT may take before the socket is shut down
_ABORT_WRITE = 8  # loop_write() attempts after shutdown() until paho has closed the socket
# A connection closed this soon after a PUBACK was closed "right after that publish": what Mosquitto does, with
# MQTT 3.1.1, to a publish its ACL denies (a plain PUBACK, then the connection closed).
RIGHT_AFTER = 0.5

# What to check when the broker refuses with one of these reason codes (MQTT 5 values; 3.1.1 CONNACK codes
# arrive converted by paho).
_HINTS = {
    0x84: "the broker does not speak this MQTT version",
    0x85: "the broker rejects the client id",
    0x86: "check mqtt.username and the password (mqtt.password_file / password_env)",
    0x87: "the broker does not allow this: check the gateway user's credentials and the broker's ACL",
    # RabbitMQ 3.10 answers 3.1.1 code 3 when the user may not use the client id's session queue
    0x88: "the broker is unavailable, or (RabbitMQ) the user may not use this client id's session: check the"
    " gateway user's credentials and the broker's permissions",
    0x8A: "the broker has banned this client",
    0x8C: "the broker wants another authentication method",
    0x90: "the broker rejects the topic name",
    0x95: "the message is larger than the broker allows",
    0x97: "the broker's quota for this client is exhausted",
    0x99: "the broker rejects the payload format",
}


def reason_label(reason: ReasonCode) -> str:
    """A reason code as a low-cardinality metric label: 'Not authorized' -> 'not_authorized'."""
    return reason.getName().lower().replace(" ", "_").replace("-", "_")


def describe(reason: ReasonCode) -> str:
    """A reason code in plain words, with its number and what to check."""
    hint = _HINTS.get(reason.value)
    text = f"{reason.getName()} (0x{reason.value:02X})"
    return f"{text}: {hint}" if hint else text


def subscription_refusal(granted: Sequence[int | ReasonCode]) -> str | None:
    """What the SUBACK refused, in words, or None when every subscription was granted. aiomqtt returns the
    granted QoS values (MQTT 3.1.1: 0x80 = failure) or MQTT 5 reason codes (>= 0x80 = failure)."""
    for code in granted:
        if isinstance(code, ReasonCode):
            if code.is_failure:
                return describe(code)
        elif code >= 0x80:
            return f"refused (return code 0x{code:02X})"
    return None


# --- errors ----------------------------------------------------------------------------------------------


class SessionError(DeliveryError):
    """The MQTT session could not be established, or it ended."""


class ConnectFailed(SessionError):
    """No connection to the broker: DNS, TCP or TLS failed (the message names the library's error)."""


class ConnectTimeout(SessionError):
    """The connection was made but no CONNACK arrived in time (a broker that does not speak MQTT 5 may do this)."""


class ConnectDropped(SessionError):
    """The broker closed the connection without answering the CONNECT: what RabbitMQ 3.10 (MQTT 3.1.1 only)
    does with an MQTT 5 CONNECT it cannot parse."""


class ConnectRefused(SessionError):
    """The broker answered the CONNECT with a refusal (bad credentials, not authorised, ...)."""

    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(f"the broker refused the connection: {describe(reason)}")
        self.reason = reason
        self.label = reason_label(reason)


class PublishRefused(SessionError):
    """The broker answered a QoS 1 PUBLISH with a PUBACK reason code >= 0x80: the message was not accepted."""

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        super().__init__(f"the broker refused the publish to {topic}: {describe(reason)}")
        self.topic = topic
        self.reason = reason
        self.label = reason_label(reason)


class PubackOverdue(SessionError):
    """A PUBACK did not arrive within the timeout: the link (or the broker) is dead."""


class SessionLost(SessionError):
    """The connection ended without our asking: `by_broker` with the broker's DISCONNECT reason (MQTT 5), else
    the connection dropped (closed by the broker without a reason, reset, keepalive timeout).
    `unacknowledged`: the topic of the oldest publish that awaited its PUBACK then (None if none did);
    `acknowledged`: how many publishes of the session the broker had acknowledged; `just_acknowledged`: the
    topic of the last acknowledged publish if the connection closed within RIGHT_AFTER seconds of its PUBACK."""

    def __init__(
        self,
        message: str,
        *,
        reason: ReasonCode | None = None,
        by_broker: bool = False,
        unacknowledged: str | None = None,
        acknowledged: int = 0,
        just_acknowledged: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.by_broker = by_broker
        self.unacknowledged = unacknowledged
        self.acknowledged = acknowledged
        self.just_acknowledged = just_acknowledged


# --- options ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: str
    properties: Properties | None = None  # MQTT 5 only (PacketTypes.WILLMESSAGE)
    qos: int = 1
    retain: bool = True


def _no_subscriptions() -> Mapping[str, Callable[[bytes], None]]:
    return {}


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Everything one connection needs; `of` takes TLS, credentials and timeouts from the site's ClientFactory
    (reading the TLS files and the password again: raises CredentialsUnreadable)."""

    host: str
    port: int
    client_id: str
    v5: bool = True
    keepalive: int = 10
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    session_expiry: int = 86400  # MQTT 5: seconds the broker keeps the session after a disconnect
    will: Will | None = None
    connect_timeout: float = 10.0  # TCP + TLS, and then again for the CONNACK
    ack_timeout: float = 10.0  # a PUBACK overdue by this much fails the session
    socket_options: tuple[tuple[int, int, int], ...] = ()
    # topic filter -> callback(payload), called on the loop for each message (QoS 1, every session)
    subscriptions: Mapping[str, Callable[[bytes], None]] = field(default_factory=_no_subscriptions)

    @classmethod
    def of(
        cls,
        factory: ClientFactory,
        client_id: str,
        *,
        v5: bool,
        probe: bool = False,
        session_expiry: int,
        will: Will | None = None,
        subscriptions: Mapping[str, Callable[[bytes], None]] | None = None,
    ) -> SessionOptions:
        """`probe`: a first MQTT 5 attempt under protocol auto, answered quickly or taken as 'not MQTT 5'."""
        timeout = factory.timeout
        credentials = factory.credentials()
        return cls(
            host=factory.mqtt.host,
            port=factory.mqtt.port,
            client_id=client_id,
            v5=v5,
            keepalive=max(1, round(factory.mqtt.keepalive)),
            username=factory.mqtt.username,
            password=credentials.password,
            tls=credentials.tls,
            session_expiry=session_expiry,
            will=will,
            connect_timeout=min(timeout, factory_module.PROBE_TIMEOUT) if probe else timeout,
            ack_timeout=timeout,
            socket_options=factory_module.NODELAY,  # read at call time: bench/bench_delivery.py --nagle clears it
            subscriptions=dict(subscriptions or {}),
        )


# --- the session -----------------------------------------------------------------------------------------


class Session(Generic[T]):
    """One MQTT connection; see the module docstring. Build it inside the running loop."""

    def __init__(self, options: SessionOptions, on_ack: Callable[[T, ReasonCode], None]) -> None:
        self.options = options
        self._on_ack = on_ack
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            clean_session=None if options.v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if options.v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,  # never reconnect (or downgrade) inside paho: the owner decides
        )
        client.max_inflight_messages_set(0)  # uncapped: the owner bounds the window
        client.connect_timeout = options.connect_timeout
        if options.username is not None:
            client.username_pw_set(options.username, options.password)
        if options.tls is not None:
            client.tls_set_context(options.tls)
        if options.will is not None:
            will = options.will
            client.will_set(will.topic, will.payload, will.qos, will.retain, will.properties if options.v5 else None)
        client.on_socket_open = self._on_socket_open  # the only callback that runs on the connect thread
        self._client = client
        self._connect_properties: Properties | None = None
        if options.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = options.session_expiry
            self._connect_properties = props
        # mid -> (token, monotonic send time, topic); insertion order = send order, so the first is the oldest
        self._pending: dict[int, tuple[T, float, str]] = {}
        self._waiters: dict[int, tuple[asyncio.Future[ReasonCode | None], float, str]] = {}
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._ended = asyncio.Event()
        self._error: SessionError | None = None
        self._done = False
        self._closing = False  # we asked for the end (disconnect / abort)
        self._sock: socket.socket | None = None
        self._writer = False  # a writer is registered with the loop
        self._flush_soon = False  # a loop_write() call is scheduled
        self._misc: asyncio.TimerHandle | None = None
        self._handoff = threading.Lock()  # connect thread <-> loop: who closes a connection nobody wants
        self._abandoned = False
        self._opened = False
        self.session_present = False
        self.receive_maximum: int | None = None  # MQTT 5 CONNACK: at most this many QoS 1 publishes in flight
        self.acknowledged = 0  # publishes the broker acknowledged (any reason code) in this session
        self._last_ack: tuple[str, float] | None = None  # topic and monotonic time of the latest PUBACK
        self.peak_inflight = 0  # the most publishes awaiting PUBACK at once (tests check the owner's window)
        self.subscribed = False  # the broker granted every subscription of this session (SUBACK)
        self.subscriptions_refused: list[str] = []  # "topic: reason" for each subscription the broker refused

    # --- state -------------------------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Publishes sent and not yet acknowledged."""
        return len(self._pending) + len(self._waiters)

    @property
    def ended(self) -> bool:
        return self._done

    @property
    def error(self) -> SessionError | None:
        return self._error

    async def wait_closed(self) -> None:
        """Returns when the session ended as asked; raises the SessionError that ended it otherwise."""
        await self._ended.wait()
        if self._error is not None:
            raise self._error

    # --- connecting ----------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """TCP (+ TLS), CONNECT, CONNACK, then the subscriptions. Raises ConnectFailed, ConnectTimeout,
        ConnectRefused or SessionLost; the session is then ended (call `abort()` in any case when done)."""
        try:
            await self._loop.run_in_executor(None, self._connect_blocking)
        except asyncio.CancelledError:
            with self._handoff:
                self._abandoned = True
                opened = self._opened
            if opened:  # connected while we were being cancelled: nobody will use it
                self._drop()
            self._end(SessionLost("cancelled while connecting"))
            raise
        except Exception as exc:  # OSError, ssl.SSLError, ValueError (host): paho's connect raises them as they are
            error = ConnectFailed(f"{type(exc).__name__}: {exc}")
            self._end(error)
            raise error from exc
        self._connack = self._loop.create_future()
        self._attach()
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await self._connack
        except TimeoutError:
            timeout = ConnectTimeout(f"no CONNACK within {self.options.connect_timeout:g}s")
            self.fail(timeout)
            raise timeout from None
        except asyncio.CancelledError:
            self.fail(SessionLost("cancelled while connecting"))
            raise
        if self.options.subscriptions:
            self._client.subscribe([(topic, 1) for topic in self.options.subscriptions])

    def _connect_blocking(self) -> None:
        """On the connect thread. Only on_socket_open is set, so paho writes CONNECT itself, synchronously."""
        options = self.options
        if options.v5:
            self._client.connect(
                options.host, options.port, options.keepalive, clean_start=False, properties=self._connect_properties
            )
        else:
            self._client.connect(options.host, options.port, options.keepalive)
        with self._handoff:
            if not self._abandoned:
                self._opened = True
                return
        self._drop()

    def _drop(self) -> None:
        """A connection nobody will use (its connect was cancelled): DISCONNECT, written and closed by paho at
        once because no external-loop callback is attached yet."""
        with contextlib.suppress(Exception):
            self._client.disconnect()

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """On the connect thread, before CONNECT is written: TCP_NODELAY (paho leaves Nagle on)."""
        if isinstance(sock, socket.socket):
            for option in self.options.socket_options:
                sock.setsockopt(*option)

    def _attach(self) -> None:
        """On the loop, once paho's connect() returned: the external-loop callbacks and the socket's reader."""
        client = self._client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_unexpected_message
        for topic, callback in self.options.subscriptions.items():
            client.message_callback_add(topic, self._deliverer(topic, callback))
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        sock = client.socket()
        if not isinstance(sock, socket.socket):  # paho closed it already (cannot happen without a callback)
            self._end(SessionLost("the connection closed before it was set up"))
            return
        self._sock = sock
        self._loop.add_reader(sock, self._readable)
        if client.want_write():  # CONNECT did not fit in the socket buffer (never seen; handled anyway)
            self._add_writer()
        self._misc = self._loop.call_later(min(MISC_INTERVAL, self.options.ack_timeout / 4), self._tick)

    # --- publishing --------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: str | bytes, retain: bool, properties: Properties | None, token: T) -> None:
        """QoS 1, without waiting: the PUBACK calls `on_ack(token, reason_code)`. Raises SessionError when the
        session has ended."""
        if self._done:
            raise self._error or SessionLost("the session has ended")
        info = self._client.publish(topic, payload, 1, retain, properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SessionLost(f"publish failed: {paho.error_string(info.rc)}")
        pending = self._pending
        pending[info.mid] = (token, time.monotonic(), topic)
        self.peak_inflight = max(self.peak_inflight, len(pending))

    async def publish_wait(
        self, topic: str, payload: str | bytes, retain: bool, properties: Properties | None
    ) -> ReasonCode:
        """QoS 1, returns the PUBACK's reason code; raises PublishRefused for one >= 0x80 and SessionError when
        the session ends first (the watchdog bounds the wait)."""
        if self._done:
            raise self._error or SessionLost("the session has ended")
        info = self._client.publish(topic, payload, 1, retain, properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SessionLost(f"publish failed: {paho.error_string(info.rc)}")
        future: asyncio.Future[ReasonCode | None] = self._loop.create_future()
        self._waiters[info.mid] = (future, time.monotonic(), topic)
        try:
            reason = await future
        finally:
            self._waiters.pop(info.mid, None)
        if reason is None:
            raise self._error or SessionLost("the session has ended")
        if reason.is_failure:
            raise PublishRefused(topic, reason)
        return reason

    # --- ending ------------------------------------------------------------------------------------------

    def fail(self, error: SessionError) -> None:
        """Ends the session with `error` (safe inside paho's callbacks): waiters and `wait_closed` see it at once,
        the socket is shut down one loop iteration later (without DISCONNECT: the broker publishes the will)."""
        self._end(error)
        self._loop.call_soon(self.abort)

    async def disconnect(self) -> None:
        """Clean end: DISCONNECT, so the broker discards the will. Falls back to `abort()` after CLOSE_TIMEOUT."""
        if self._sock is not None and not self._done:
            self._closing = True
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._ended.wait()
        self.abort()

    def abort(self) -> None:
        """Ends the session now without DISCONNECT (the broker publishes the will). Idempotent; not from
        inside paho's callbacks (use `fail`)."""
        with self._handoff:  # a connect still running on its thread closes its connection itself
            self._abandoned = True
            opened = self._opened
        sock = self._client.socket() if opened else None
        if isinstance(sock, socket.socket):
            self._closing = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the broker sees the connection end without DISCONNECT
            # paho learns it through its public API: the next write fails at once and paho closes the socket
            # (on_socket_close, on_disconnect). DISCONNECT is queued only so that there is something to write.
            with contextlib.suppress(Exception):
                self._client.disconnect()
                for _ in range(_ABORT_WRITE):
                    if self._client.socket() is None:
                        break
                    self._client.loop_write()
        self._end(SessionLost("the session was closed"))
        self._detach()

    def _end(self, error: SessionError | None) -> None:
        """The first cause wins; later ones (paho's own disconnect report, say) are ignored."""
        if self._done:
            return
        self._done = True
        self._error = error
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error or SessionLost("the session ended before the CONNACK"))
        for future, _sent, _topic in self._waiters.values():
            if not future.done():
                future.set_result(None)
        self._ended.set()

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            if self._writer:
                self._loop.remove_writer(sock)
        self._writer = False

    # --- paho's callbacks (on the loop, inside loop_read / loop_write / loop_misc) -----------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        future = self._connack
        if reason.is_failure:
            self._end(ConnectRefused(reason))  # paho closes the connection right after this callback
            return
        self.session_present = flags.session_present
        if props is not None and hasattr(props, "ReceiveMaximum"):
            self.receive_maximum = int(props.ReceiveMaximum)
        if future is not None and not future.done():
            future.set_result(reason)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        if self._closing:
            self._end(None)
            return
        if self._connack is not None and not self._connack.done():
            self._end(ConnectDropped("the broker closed the connection without answering the CONNECT"))
            return
        oldest = next(iter(self._pending.values()), None) or next(iter(self._waiters.values()), None)
        unacknowledged = oldest[2] if oldest is not None else None
        if flags.is_disconnect_packet_from_server:
            message = f"the broker disconnected the gateway: {describe(reason)}"
        elif reason.value == 0x8D:  # paho's keepalive check: no PINGRESP in time
            message = "no answer from the broker within the keepalive (connection dead)"
        else:
            message = "the connection to the broker was closed or reset"
        if unacknowledged is not None:
            message += f" while the publish to {unacknowledged} awaited its PUBACK"
        last = self._last_ack
        just = last[0] if last is not None and time.monotonic() - last[1] <= RIGHT_AFTER else None
        self._end(
            SessionLost(
                message,
                reason=reason,
                by_broker=flags.is_disconnect_packet_from_server,
                unacknowledged=unacknowledged,
                acknowledged=self.acknowledged,
                just_acknowledged=just,
            )
        )

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        self.acknowledged += 1
        entry = self._pending.pop(mid, None)
        waiter = None if entry is not None else self._waiters.get(mid)
        topic = entry[2] if entry is not None else waiter[2] if waiter is not None else None
        if topic is not None:
            self._last_ack = (topic, time.monotonic())
        if entry is not None:
            self._on_ack(entry[0], reason)
            return
        waiter = self._waiters.pop(mid, None)
        if waiter is not None and not waiter[0].done():
            waiter[0].set_result(reason)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [
            f"{topic}: {describe(reason)}"
            for topic, reason in zip(self.options.subscriptions, reasons, strict=False)
            if reason.is_failure
        ]
        if refused:
            self.subscriptions_refused = refused
            log.error("mqtt_subscription_refused", refused=refused)
        else:
            self.subscribed = True

    def _deliverer(self, topic: str, callback: Callable[[bytes], None]) -> Callable[[paho.Client, Any, Any], None]:
        def deliver(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            payload = message.payload
            try:
                callback(payload if isinstance(payload, bytes) else bytes(payload))
            except Exception:
                # A bug in the consumer. The session ends without acknowledging the message (paho sends the
                # PUBACK only after this returns), so the broker delivers it again on the next session.
                log.exception("mqtt_subscription_callback_failed", topic=topic)
                raise


        return deliver

    def _on_unexpected_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        """A message matching none of our filters (a subscription of an earlier session): acknowledged, dropped."""

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            self._detach()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self._flush_soon and not self._writer:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._writer and self._sock is not None:
            self._loop.remove_writer(self._sock)
        self._writer = False

    # --- the loop's side ---------------------------------------------------------------------------------

    def _add_writer(self) -> None:
        if not self._writer and self._sock is not None:
            self._writer = True
            self._loop.add_writer(self._sock, self._flush)

    def _flush(self) -> None:
        """loop_write(): everything paho queued (one call per loop iteration, not one per publish)."""
        self._flush_soon = False
        if self._sock is None:
            return
        try:
            with corked(self._sock):  # the burst as few TCP segments, pushed out at once (gateway.mqtt.cork)
                self._client.loop_write()
        except Exception as exc:  # a bug in a callback of ours, raised through paho
            self.fail(SessionLost(f"MQTT output failed: {exc!r}"))
            return
        if self._client.want_write():  # the socket buffer is full: wait until it is writable
            self._add_writer()

    def _readable(self) -> None:
        client = self._client
        tls = self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        try:
            client.loop_read()
            # TLS: records already decrypted wait in the SSL object, where the loop's selector cannot see them.
            if tls is not None:
                while tls.pending() and client.socket() is tls:
                    client.loop_read()
        except Exception as exc:  # a callback of ours raised through paho, or a packet paho could not handle
            self.fail(SessionLost(f"MQTT input failed: {exc!r}"))

    def _tick(self) -> None:
        """About once a second: paho's keepalive (PINGREQ, and closing on a missing PINGRESP) and the watchdog."""
        self._misc = None
        if self._done:
            return
        try:
            self._client.loop_misc()
        except Exception as exc:
            self.fail(SessionLost(f"MQTT keepalive failed: {exc!r}"))
            return
        if self._done:
            return
        now = time.monotonic()
        timeout = self.options.ack_timeout
        for table in (self._pending, self._waiters):
            oldest = next(iter(table.values()), None)
            if oldest is not None and now - oldest[1] > timeout:
                self.fail(PubackOverdue(f"no PUBACK within {timeout:g}s for the publish to {oldest[2]}"))
                return
        self._misc = self._loop.call_later(min(MISC_INTERVAL, timeout / 4), self._tick)
