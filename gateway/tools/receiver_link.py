"""The reference receiver's connection: subscribe, store, confirm, ask for replays. What a meldkamer team
can copy.

- One fixed client id and a persistent session (MQTT 5 session expiry / 3.1.1 clean_session false), so
  messages published while it reconnects wait at the broker instead of being lost.
- Every event is stored durably (`ReceiverStore`) BEFORE it is confirmed on `gcmk/v1/{site}/confirm`;
  confirmations are cumulative (up_to_seq plus the isolated seqs beyond it) and sent after each commit.
- A gap older than `reorder_timeout` (live alarms may overtake a draining backlog, so a young gap is not
  yet missing), or a tail gap behind the heartbeat's last_seq, is asked for with a `gcmk.replay.v1`
  request; a range the gateway no longer holds (`pruned`) is written off and reported, never silently
  skipped. After a restart the receiver resumes from its stored position.
- Bounded memory: a bounded queue between the MQTT consumer and the store writer, trackers in O(gaps).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from gateway.commands.contract import CommandResultDoc, ReplayDoc, commands_topic
from gateway.delivery.contract import MAX_CONFIRM_SEQS, ROOT, ConfirmDoc, confirm_topic
from gateway.domain.event import utcnow
from gateway.mqtt.client import NODELAY, PROBE_TIMEOUT, refuses_protocol
from gateway.tools.receiver import Notice, ReceiverState
from gateway.tools.receiver_store import Received, ReceiverStore
from gateway.tools.seqtrack import SeqTracker

log = structlog.get_logger(__name__)

QUEUE_MAX = 10_000  # events received but not yet stored
BATCH_MAX = 1_000  # events per store transaction
SESSION_EXPIRY = 7 * 86400
REPLAY_RETRY = 10.0  # seconds before the same gap is asked for again
REPLAY_TTL = 60.0
CONFIRM_TIMEOUT = 2.0  # seconds a confirmation may wait for its PUBACK before the next round retries it


@dataclass
class ReceiverOptions:
    identifier: str = "meldkamer"
    state_dir: Path = Path("receiver-state")
    reorder_timeout: float = 2.0
    ca_file: str | None = None


@dataclass
class _Gap:
    first_seen: float
    asked_at: float | None = None
    asks: int = 0


@dataclass
class ReceiverLink:
    """Runs until `stop` is set; `state` gets every message, `on_notice` every notice."""

    broker_url: str
    state: ReceiverState
    on_notice: Callable[[Notice], None]
    options: ReceiverOptions = field(default_factory=ReceiverOptions)
    confirms_sent: int = 0
    replays_asked: int = 0
    _client: aiomqtt.Client | None = None
    _connected_once: bool = False
    _lasted: bool = False  # the current connection got as far as its subscriptions
    _durable: dict[str, SeqTracker] = field(default_factory=dict)
    _unconfirmed: set[str] = field(default_factory=set)  # sites stored since their last confirmation
    _confirm_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _gaps: dict[tuple[str, int], _Gap] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        store = ReceiverStore(self.options.state_dir, self.options.identifier)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcmk-receiver-store")
        loop = asyncio.get_running_loop()
        try:
            self._durable = await loop.run_in_executor(executor, store.open)
            for site, tracker in self._durable.items():  # the consumer's view starts where the store is
                self.state.view(site).seqs = SeqTracker(tracker.up_to, list(tracker.above), list(tracker.written_off))
            queue: asyncio.Queue[Received] = asyncio.Queue(QUEUE_MAX)
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._consume(queue)),
                    tg.create_task(self._write(queue, store, executor)),
                    tg.create_task(self._send_confirmations()),
                    tg.create_task(self._ask_for_replays()),
                    tg.create_task(self._watch_heartbeats()),
                ]
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            await loop.run_in_executor(executor, store.close)
            executor.shutdown(wait=True)

    # --- MQTT ----------------------------------------------------------------------------------------

    def _new_client(self, v5: bool) -> aiomqtt.Client:
        """MQTT 5 with a session expiry, or 3.1.1 with clean_session false: a persistent session either way."""
        url = urlsplit(self.broker_url)
        tls = aiomqtt.TLSParameters(ca_certs=self.options.ca_file) if url.scheme == "mqtts" else None
        session: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY
            session = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": False, "properties": props}
        return aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or (8883 if tls else 1883),
            identifier=self.options.identifier,
            tls_params=tls,
            keepalive=10,
            socket_options=NODELAY,  # confirmations are small packets behind others: no Nagle delay
            timeout=PROBE_TIMEOUT if v5 and not self._connected_once else 10.0,
            **session,
        )

    def _topics(self) -> list[str]:
        site = self.state.site_filter or "+"
        return [
            f"{ROOT}/{site}/events/#",
            f"{ROOT}/{site}/status",
            f"{ROOT}/{site}/heartbeat",
            f"{ROOT}/{site}/state/#",
            f"{ROOT}/{site}/command-results",
        ]

    async def _consume(self, queue: asyncio.Queue[Received]) -> None:
        backoff = 0.2
        v5 = True
        while True:
            client = self._new_client(v5)  # a fresh client per connection: same id, same persistent session
            try:
                await self._session(client, queue)
            except aiomqtt.MqttError as exc:
                if v5 and not self._connected_once and refuses_protocol(exc):
                    v5 = False  # a 3.1.1-only broker (e.g. the demo's): same session semantics
                    continue
                log.warning("receiver connection lost; reconnecting", error=str(exc), in_s=backoff)
                if self._lasted:
                    backoff = 0.2
            finally:
                self._client = None
            await asyncio.sleep(backoff)  # backoff between attempts, not synchronisation
            backoff = min(backoff * 2, 5.0)

    async def _session(self, client: aiomqtt.Client, queue: asyncio.Queue[Received]) -> None:
        """One connection. Reads while it subscribes: with a persistent session the broker pushes the whole
        backlog before it acknowledges the SUBSCRIBE, which would otherwise wait for all of it."""
        self._lasted = False
        async with client:
            try:
                async with asyncio.TaskGroup() as tg:
                    subscribing = tg.create_task(self._subscribe(client))
                    self._client = client
                    self._connected_once = True
                    self._confirm_all()  # cumulative: repairs confirmations lost while away
                    async for message in client.messages:
                        self._lasted = self._lasted or subscribing.done()
                        await self._on_message(str(message.topic), _payload(message.payload), queue)
            except BaseExceptionGroup as group:
                lost = group.subgroup(aiomqtt.MqttError)
                if lost is None:
                    raise
                first: BaseException = lost
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from None

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        for topic in self._topics():
            await client.subscribe(topic, qos=1)

    async def _on_message(self, topic: str, payload: bytes, queue: asyncio.Queue[Received]) -> None:
        if topic.endswith("/command-results"):
            self._on_result(topic.split("/")[2], payload)
            return
        for notice in self.state.on_message(topic, payload, received=utcnow(), mono=time.monotonic()):
            self.on_notice(notice)
            event = notice.event
            if notice.kind == "event" and event is not None and event.seq is not None:
                await queue.put(Received(event.site, event.seq, str(event.event_id), payload.decode()))

    # --- store, then confirm -------------------------------------------------------------------------

    async def _write(self, queue: asyncio.Queue[Received], store: ReceiverStore, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < BATCH_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            touched = {}
            for item in batch:
                tracker = self._durable.setdefault(item.site, SeqTracker())
                tracker.add(item.seq)
                touched[item.site] = tracker
            await loop.run_in_executor(executor, store.store, batch, touched)
            self._unconfirmed.update(touched)  # confirmed by `_send_confirmations`: the store never waits
            self._confirm_wake.set()

    def _confirm_all(self) -> None:
        self._unconfirmed.update(self._durable)
        self._confirm_wake.set()

    async def _send_confirmations(self) -> None:
        """Publishes the latest position of every site stored since the last round. Its own task, so a
        confirmation whose PUBACK never comes (the broker died) holds up neither storing nor reading: the
        next round, on the next connection, carries the same (cumulative) position."""
        while True:
            await self._confirm_wake.wait()
            self._confirm_wake.clear()
            client = self._client
            if client is None:
                continue  # _confirm_all() on the next connection
            sites, self._unconfirmed = self._unconfirmed, set()
            for site in sites:
                tracker = self._durable[site]
                doc = ConfirmDoc(
                    site=site,
                    receiver=self.options.identifier,
                    up_to_seq=tracker.up_to,
                    seqs=tracker.above[:MAX_CONFIRM_SEQS],
                    at=utcnow(),
                )
                try:
                    await client.publish(confirm_topic(site), doc.to_json(), qos=1, timeout=CONFIRM_TIMEOUT)
                    self.confirms_sent += 1
                except aiomqtt.MqttError:
                    self._unconfirmed.add(site)  # sent again with the next round

    # --- replays -------------------------------------------------------------------------------------

    def _missing(self, site: str, tracker: SeqTracker) -> list[tuple[int, int]]:
        gaps = tracker.gaps()
        heartbeat = self.state.sites[site].heartbeat if site in self.state.sites else None
        if heartbeat is not None and heartbeat.last_seq > tracker.highest:
            gaps.append((tracker.highest + 1, heartbeat.last_seq))  # journaled there, never seen here
        return gaps

    async def _ask_for_replays(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, self.options.reorder_timeout / 2))  # a periodic check
            now = time.monotonic()
            current: set[tuple[str, int]] = set()
            for site in {*self._durable, *self.state.sites}:
                tracker = self._durable.setdefault(site, SeqTracker())
                for first, last in self._missing(site, tracker)[:10]:
                    key = (site, first)
                    current.add(key)
                    gap = self._gaps.setdefault(key, _Gap(first_seen=now))
                    young = now - gap.first_seen < self.options.reorder_timeout
                    asked_recently = gap.asked_at is not None and now - gap.asked_at < REPLAY_RETRY
                    if not young and not asked_recently:
                        gap.asked_at, gap.asks = now, gap.asks + 1
                        await self._ask(site, first, last, gap.asks)
            for key in set(self._gaps) - current:
                del self._gaps[key]

    async def _ask(self, site: str, first: int, last: int, attempt: int) -> None:
        client = self._client
        if client is None:
            return
        now = datetime.now(UTC)
        request = ReplayDoc(
            schema_="gcmk.replay.v1",
            command_id=f"replay-{self.options.identifier}-{site}-{first}-{last}-{attempt}",
            from_seq=first,
            to_seq=last,
            issued_at=now,
            expires_at=now + timedelta(seconds=REPLAY_TTL),
            operator=self.options.identifier,
            reason="gap in the receiver's store",
        )
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(commands_topic(site), request.model_dump_json(by_alias=True), qos=1)
            self.replays_asked += 1
            self.on_notice(Notice("replay", site, f"asked for seq {first}..{last} again"))

    def _on_result(self, site: str, payload: bytes) -> None:
        """A replay the gateway cannot serve because it no longer holds the range: write it off, loudly."""
        try:
            result = CommandResultDoc.model_validate_json(payload)
        except (ValidationError, ValueError):
            return
        if result.action != "replay" or result.reason != "pruned" or result.first_seq is None:
            return
        tracker = self._durable.setdefault(site, SeqTracker())
        last = result.first_seq - 1
        if last > tracker.up_to:
            first = tracker.up_to + 1
            tracker.write_off(first, last)
            self.state.view(site).seqs.write_off(first, last)
            self.on_notice(Notice("written_off", site, f"seq {first}..{last} no longer held by the gateway"))

    async def _watch_heartbeats(self) -> None:
        while True:
            for notice in self.state.check(time.monotonic()):
                self.on_notice(notice)
            await asyncio.sleep(0.5)  # a periodic check, not synchronisation


def _payload(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


async def receive(
    broker_url: str,
    state: ReceiverState,
    on_notice: Callable[[Notice], None],
    *,
    stop: asyncio.Event,
    options: ReceiverOptions | None = None,
) -> ReceiverLink:
    """Run the reference receiver until `stop` is set; returns the link (its counters)."""
    link = ReceiverLink(broker_url, state, on_notice, options or ReceiverOptions())
    await link.run(stop)
    return link
