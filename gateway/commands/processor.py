"""Commands from the meldkamer: receive, check, audit, execute, answer.

One aiomqtt client of its own (`<client id>-cmd`, TLS and credentials exactly as the publisher's, persistent
session) subscribes QoS 1 to `gcmk/v1/{site}/commands` and answers on `gcmk/v1/{site}/command-results`.
Nothing touches a device before the command passed every check (schema, replay, enabled, known point,
allowed action, validity window, rate limit) AND its acceptance is journaled and durably recorded, so the
meldkamer's log is complete and a repeated command_id is answered from the record, even after a restart.
Every result is an audit event (type command) through the gateway's EventSink, published like any event.
See docs/commands.md.

Each connection reads the TLS files and the password again (gateway/mqtt/client.py); `renew_mqtt` (a config
reload) ends the session cleanly after the messages already received are handled, and connects again at once
with what is on disk now.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime

import aiomqtt
import structlog

from gateway.commands.contract import (
    CommandDoc,
    CommandResultDoc,
    Refusal,
    ReplayDoc,
    Status,
    check_command,
    check_replay,
    commands_topic,
    parse_command,
    results_topic,
)
from gateway.commands.executor import RESTORE_TIMEOUT, Executor
from gateway.commands.stats import CommandStats
from gateway.commands.store import CommandStore, CommandStoreError, store_path
from gateway.config.models import DOOR_ACTIONS, MqttConfig, PointAction, PointConfig, SiteConfig
from gateway.core.events import make_event
from gateway.core.lifecycle import wait_event
from gateway.core.ports import EventSink, Replayer
from gateway.domain.event import Event, PointRef, SourceRef, utcnow
from gateway.domain.state import Batch
from gateway.domain.taxonomy import TYPES, Category, EventState, EventType
from gateway.mqtt.client import ClientFactory, CredentialsUnreadable, backoff, first_protocol, refuses_protocol
from gateway.mqtt.session import subscription_refusal

log = structlog.get_logger(__name__)

# How long a shutdown waits for running commands: a restore's own bound plus the time to journal and answer.
DRAIN_TIMEOUT = RESTORE_TIMEOUT + 5.0
SESSION_EXPIRY = 86400  # seconds the broker keeps our subscription (MQTT 5); expired commands are refused anyway
RATE_WINDOW = 60.0
# Put into the client's incoming queue by renew_mqtt: behind every message already received, so those are
# handled first; then the session ends cleanly. Never a message from the broker (`$` topics are not ours).
_RENEW = aiomqtt.Message("$gcmk/renew", b"", qos=0, retain=False, mid=0, properties=None)


class SubscriptionRefused(Exception):
    """The broker answered the command subscription's SUBACK with a failure (e.g. its ACL forbids the topic)."""


class CommandProcessor:
    """A supervised component of the Gateway (`run` returns only when cancelled or on a fatal error)."""

    name = "commands"

    def __init__(
        self,
        site: SiteConfig,
        adapters: Sequence[object],
        sink: EventSink,
        *,
        store: CommandStore | None = None,
        replayer: Replayer | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.site = site
        self.sink = sink
        self.replayer = replayer  # serves gcmk.replay.v1 requests (the delivery sink), if any
        self.stats = CommandStats()
        self.executor = Executor(adapters)
        self.store = store or CommandStore(store_path(site), retention=site.journal.retention)
        self.subscribed = asyncio.Event()  # set while subscribed (tests wait on it)
        self._clock = clock
        self._mqtt = site.mqtt
        self._factory = ClientFactory.of(site.mqtt)
        self._topic = commands_topic(site.site.id)
        self._results = results_topic(site.site.id)
        self._points = {p.id: p for p in site.points}
        self._client: aiomqtt.Client | None = None
        self._inflight: set[str] = set()
        self._accepted: deque[float] = deque()  # monotonic times of accepted commands (rate limit)
        self._slots: asyncio.Semaphore | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._executions: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()  # no new commands; running pulses end their hold and restore now
        self._renew = asyncio.Event()  # renew_mqtt was asked: end the session and connect again
        self._inbox: asyncio.Queue[aiomqtt.Message] | None = None  # the current client's incoming queue

    def use_site(self, site: SiteConfig) -> None:
        """A reload changed points (names, tenants, actions): commands are checked against the new config from
        now on; a command already executing finishes with the point it was checked against. The MQTT and
        commands settings are the same (a change of those needs a restart: gateway/config/diff.py)."""
        self.site = site
        self._points = {p.id: p for p in site.points}

    def renew_mqtt(self, mqtt: MqttConfig) -> None:
        """A reload: end the session cleanly (messages already received are handled first) and connect again
        at once, reading the TLS files and password again from `mqtt`'s paths (only credential settings may
        differ: gateway/config/diff.py). Also ends a backoff wait."""
        self._mqtt = mqtt
        self._factory = ClientFactory(mqtt)
        self._renew.set()
        inbox = self._inbox
        if inbox is not None:
            inbox.put_nowait(_RENEW)  # the queue is unbounded (max_queued_incoming_messages 0)

    def _queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's `queue_type`: its incoming queue, remembered so that renew_mqtt can put _RENEW into it."""
        processor = self

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                processor._inbox = self

        return Inbox

    # --- lifecycle ------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.store.open()
        self._slots = asyncio.Semaphore(self.site.commands.max_concurrent)
        await self._finish_interrupted()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                try:
                    await self._link()
                except Exception:  # the link crashed: running commands still finish or restore first
                    await self._finish_running(DRAIN_TIMEOUT)
                    raise
        finally:
            self._tasks = None
            self._inflight.clear()
            with contextlib.suppress(CommandStoreError):  # never mask why run() ended
                await asyncio.shield(self.store.close())

    async def _link(self) -> None:
        """Connect, subscribe, serve; reconnect with jittered exponential backoff."""
        failures = 0
        protocol = first_protocol(self._mqtt)
        reported: str | None = None  # the credentials problem last logged (logged again only when it changes)
        while True:
            self._renew.clear()
            renewed = False
            probing = self._mqtt.protocol == "auto" and protocol == aiomqtt.ProtocolVersion.V5
            try:
                client = self._factory.client(
                    f"{self.site.client_id}-cmd",
                    protocol,
                    session_expiry=SESSION_EXPIRY,
                    probe=probing and self.stats.connects == 0,
                    logger="gateway.commands.mqtt",
                    queue_type=self._queue_type(),
                )
                reported = None
                async with client:
                    self._client = client
                    self.stats.connects += 1
                    refusal = subscription_refusal(await client.subscribe(self._topic, qos=1))
                    if refusal is not None:
                        raise SubscriptionRefused(f"{self._topic}: {refusal}")
                    if self.stats.subscription_refused is not None:
                        log.info("commands_subscription_granted", topic=self._topic)
                    self.stats.subscription_refused = None
                    self.stats.connected = True
                    failures = 0
                    self.subscribed.set()
                    log.info("commands_subscribed", topic=self._topic)
                    await self._republish()
                    async for message in client.messages:
                        if message is _RENEW:
                            if self._renew.is_set():
                                break
                            continue  # a stale one (renewed while connecting)
                        if message.retain:
                            self._ignore_retained(str(message.topic))
                            continue
                        await self._on_message(message.payload)
                    renewed = True
                    log.info("commands_session_renewing", detail="a reload: reconnecting with credentials re-read")
            except CredentialsUnreadable as exc:
                failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                (log.debug if str(exc) == reported else log.error)(
                    "commands_credentials_unreadable", error=str(exc), failures=failures
                )
                reported = str(exc)
            except SubscriptionRefused as exc:
                failures += 1
                self.stats.last_error = str(exc)
                if self.stats.subscription_refused != str(exc):  # one error line per change, not per attempt
                    log.error(
                        "commands_subscription_refused",
                        error=str(exc),
                        detail="the broker does not let this gateway read its command topic: no command can reach it",
                    )
                self.stats.subscription_refused = str(exc)
            except aiomqtt.MqttError as exc:
                if probing and self.stats.connects == 0 and refuses_protocol(exc):
                    protocol = aiomqtt.ProtocolVersion.V311  # a 3.1.1-only broker
                    continue
                failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("commands_link_down", error=self.stats.last_error, failures=failures)
            finally:
                self._client = None
                self._inbox = None
                self.stats.connected = False
                self.subscribed.clear()
            if renewed:
                continue
            await wait_event(self._renew, backoff(failures))  # a renew_mqtt ends the wait

    async def drain(self, within: float = DRAIN_TIMEOUT) -> None:
        """The first step of every shutdown: take no more commands, and let each running one finish or
        restore (a pulse relocks now instead of at the end of its hold) with its result journaled and
        published, while the adapters and the sink are still running. Bounded by `within` seconds."""
        await self._finish_running(within)

    async def _finish_running(self, within: float) -> None:
        self._stopping.set()
        running = {t for t in self._executions if not t.done()}
        if running:
            log.info("commands_draining", running=len(running))
            _done, pending = await asyncio.wait(running, timeout=within)
            if pending:
                log.error("commands_not_finished", running=len(pending), within_s=within)

    def _ignore_retained(self, topic: str) -> None:
        """Commands are never retained (a retained one would be replayed at every reconnect). A retained
        delivery is a misconfigured publisher or a broker handing out other topics' retained messages on
        subscribe (amqtt, the demo broker, does): counted and logged, never executed nor audited."""
        self.stats.retained_ignored += 1
        if self.stats.retained_ignored in (1, 10, 100, 1000) or self.stats.retained_ignored % 10_000 == 0:
            log.warning("retained message on the command topic ignored", topic=topic, total=self.stats.retained_ignored)

    # --- one message ------------------------------------------------------------------------------------

    async def _on_message(self, payload: object) -> None:
        received, started = self._clock(), time.monotonic()
        self.stats.messages += 1
        if not isinstance(payload, bytes | bytearray | str):
            parsed: CommandDoc | ReplayDoc | Refusal = Refusal("malformed", "empty or non-text payload")
        else:
            parsed = parse_command(payload)
        if isinstance(parsed, Refusal):
            await self._conclude(
                parsed.command_id,
                parsed.point_id,
                parsed.action,
                None,
                "refused",
                parsed.reason,
                parsed.detail,
                received,
                started,
                store=False,
            )
            return
        if isinstance(parsed, ReplayDoc):
            await self._replay_request(parsed, received, started)
            return
        cmd = parsed
        if self._stopping.is_set():
            why = Refusal("shutting_down", "the gateway is stopping; nothing was executed")
            await self._refuse(cmd, why, received, started)
            return
        stored = await self.store.get(cmd.command_id)
        if stored is not None:
            await self._replay(cmd, stored.result)
            return
        checked = check_command(cmd, self.site, received)
        if isinstance(checked, Refusal):
            await self._refuse(cmd, checked, received, started)
            return
        point, action = checked
        if not self._take_rate_slot(started):
            limit = f"more than {self.site.commands.rate_limit} commands per minute"
            await self._refuse(cmd, Refusal("rate_limited", limit), received, started)
            return
        duration = (cmd.duration or action.pulse_default) if cmd.action == "pulse" else None
        detail = f"pulse {duration:g}s" if duration is not None else "executing"
        self._inflight.add(cmd.command_id)
        await self._conclude(cmd.command_id, cmd.point_id, cmd.action, cmd, "accepted", None, detail, received, started)
        assert self._slots is not None and self._tasks is not None
        await self._slots.acquire()
        execution = self._tasks.create_task(self._execute(cmd, point, action, received, started))
        self._executions.add(execution)
        execution.add_done_callback(self._executions.discard)

    async def _replay_request(self, doc: ReplayDoc, received: datetime, started: float) -> None:
        """A receiver asks for journaled events again: checked like a command (idempotent by command_id,
        validity window, rate limit, audited), answered with what was queued or why not."""
        stored = await self.store.get(doc.command_id)
        if stored is not None:
            await self._replay(doc, stored.result)
            return
        refusal = check_replay(doc, self.site, received)
        if refusal is None and self._stopping.is_set():
            refusal = Refusal("shutting_down", "the gateway is stopping")
        if refusal is None and self.replayer is None:
            refusal = Refusal("replay_unavailable", "this gateway has no journal to replay from")
        if refusal is None and not self._take_rate_slot(started):
            refusal = Refusal("rate_limited", f"more than {self.site.commands.rate_limit} commands per minute")
        if refusal is not None:
            await self._refuse(doc, refusal, received, started)
            return
        assert self.replayer is not None
        outcome = await self.replayer.replay(doc.from_seq, doc.to_seq)
        await self._conclude(
            doc.command_id,
            None,
            "replay",
            doc,
            "executed" if outcome.ok else "refused",
            outcome.reason,
            outcome.detail,
            received,
            started,
            seqs=(outcome.first_seq, outcome.last_seq),
        )

    def _take_rate_slot(self, now: float) -> bool:
        while self._accepted and now - self._accepted[0] >= RATE_WINDOW:
            self._accepted.popleft()
        if len(self._accepted) >= self.site.commands.rate_limit:
            return False
        self._accepted.append(now)
        return True

    async def _execute(
        self, cmd: CommandDoc, point: PointConfig, action: PointAction, received: datetime, started: float
    ) -> None:
        try:
            outcome = await self.executor.execute(
                point,
                action,
                operator=cmd.operator,
                duration=cmd.duration,
                limit=self.site.commands.timeout,
                release=self._stopping,
            )
            status: Status = "executed" if outcome.ok else "failed"
            await self._conclude(
                cmd.command_id, cmd.point_id, cmd.action, cmd, status, outcome.reason, outcome.detail, received, started
            )
        finally:
            self._inflight.discard(cmd.command_id)
            assert self._slots is not None
            self._slots.release()

    async def _replay(self, cmd: CommandDoc | ReplayDoc, stored: str) -> None:
        """A command_id seen before: re-send its stored result, touch nothing (audited as well)."""
        self.stats.replays += 1
        previous = CommandResultDoc.model_validate_json(stored)
        text = (
            f"repeated command_id {cmd.command_id} ({cmd.action} on {cmd.point_id} by {cmd.operator}): "
            f"stored result '{previous.status}' re-sent, nothing executed"
        )
        await self._audit(cmd.point_id, cmd.action, text, received=self._clock(), failed=False)
        await self._publish(previous.model_copy(update={"replay": True}), None)

    async def _refuse(
        self, cmd: CommandDoc | ReplayDoc, refusal: Refusal, received: datetime, started: float
    ) -> None:
        """A well-formed command refused by the checks: audited, recorded (replays get it) and answered."""
        await self._conclude(
            cmd.command_id, cmd.point_id, cmd.action, cmd, "refused", refusal.reason, refusal.detail, received, started
        )

    async def _conclude(
        self,
        command_id: str | None,
        point_id: str | None,
        action: str | None,
        cmd: CommandDoc | ReplayDoc | None,
        status: Status,
        reason: str | None,
        detail: str,
        received: datetime,
        started: float,
        *,
        store: bool = True,
        seqs: tuple[int | None, int | None] = (None, None),
    ) -> None:
        """Audit (journal) first, then the durable record, then the answer on the results topic."""
        who = f" by {cmd.operator}" if cmd is not None else ""
        why = f"; operator's reason: {cmd.reason[:200]}" if cmd is not None and cmd.reason else ""
        outcome = f"{status}" + (f" ({reason}: {detail})" if reason else f": {detail}")
        text = f"command {command_id or '?'}: {action or '?'} on {point_id or '?'}{who} -> {outcome}{why}"
        seq = await self._audit(point_id, action, text, received=received, failed=status == "failed")
        result = CommandResultDoc(
            site=self.site.site.id,
            command_id=command_id,
            point_id=point_id,
            action=action,
            status=status,
            reason=reason,
            detail=detail,
            received_at=received,
            at=self._clock(),
            audit_seq=seq,
            first_seq=seqs[0],
            last_seq=seqs[1],
        )
        payload = result.to_json()
        if store and command_id is not None:
            await self.store.put(command_id, status, payload)
        self.stats.result(action, status, reason)
        if status != "accepted":
            self.stats.latency(time.monotonic() - started)
        log.info("command_result", command_id=command_id, point=point_id, action=action, status=status, reason=reason)
        await self._publish(result, command_id if store else None)

    async def _audit(
        self, point_id: str | None, action: str | None, text: str, *, received: datetime, failed: bool
    ) -> int | None:
        event = audit_event(self.site, self._points.get(point_id or ""), action, text, received, failed=failed)
        accepted = await self.sink.accept(Batch(events=(event,)))
        return accepted[0].seq if accepted else None

    async def _publish(self, result: CommandResultDoc, stored_id: str | None) -> None:
        """Publish now if connected; a result that cannot be sent stays unpublished in the record and goes
        out on the next connection."""
        client = self._client
        if client is None:
            return
        payload = result.to_json()
        try:
            await client.publish(self._results, payload, qos=1)
        except aiomqtt.MqttError as exc:
            log.warning("command_result_not_published", command_id=result.command_id, error=str(exc))
            return
        if stored_id is not None:
            await self.store.mark_published(stored_id, payload)

    async def _republish(self) -> None:
        for row in await self.store.unpublished():
            if row.command_id in self._inflight and row.status == "accepted":
                continue  # its final result follows
            client = self._client
            if client is None:
                return
            await client.publish(self._results, row.result, qos=1)
            await self.store.mark_published(row.command_id, row.result)

    async def _finish_interrupted(self) -> None:
        """Commands accepted by an earlier run that never concluded: we cannot know what the device did."""
        for row in await self.store.interrupted():
            previous = CommandResultDoc.model_validate_json(row.result)
            await self._conclude(
                row.command_id,
                previous.point_id,
                previous.action,
                None,
                "failed",
                "interrupted",
                "the gateway stopped while executing; the device state is unknown",
                previous.received_at,
                time.monotonic(),
            )


def audit_event(
    site: SiteConfig, point: PointConfig | None, action: str | None, text: str, received: datetime, *, failed: bool
) -> Event:
    """The journal's record of a command or result: type command, state info; access for door actions."""
    category = Category.ACCESS if action in DOOR_ACTIONS else Category.SUPERVISION
    info = TYPES[EventType.COMMAND]
    ref = (
        PointRef(id=point.id, name=point.name, zone=point.zone, location=point.location)
        if point
        else PointRef(id="gateway.commands", name="command processor")
    )
    return make_event(
        site=site.site.id,
        tenant=point.tenant if point else None,
        category=category,
        event_type=EventType.COMMAND,
        state=EventState.INFO,
        priority=min(info.priority, 3) if failed else info.priority,
        point=ref,
        source=SourceRef(
            protocol="gateway",
            device_id=point.device if point else "gateway",
            address=commands_topic(site.site.id),
            raw=action,
        ),
        occurred_at=received,
        detected_at=utcnow(),
        commissioning=point.commissioning if point else False,
        text=text[:1000],
    )
