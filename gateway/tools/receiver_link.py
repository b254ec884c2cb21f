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
- Cheap per message, because an alarm flood (issue 17: 10,000 events within a second) is paid for per
  message: a receiver that is not a tier member speaks MQTT 3.1.1 (nothing of the contract needs MQTT 5,
  docs/deployment.md; paho builds and parses a Properties object per MQTT 5 PUBLISH, the largest part of its
  reading cost), and takes the retained point states at QoS 0 (no PUBACK per state: the state is a picture,
  which every resubscription, i.e. every connection, receives again in full; the events stay QoS 1).
  A tier member stays on MQTT 5: it needs noLocal on the confirm topics.
- With `group` set it is one member of a receiver tier (`gateway.tools.receiver_tier`): it serves only the
  sites the group's live members assign to it, confirms as the tier's receiver id, and takes over the sites
  of a member that dies from the tier's position (other members' confirmations, the heartbeat's
  confirmed_seq), with the gateway's republication and replays filling what the dead member held unconfirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from gateway.commands.contract import CommandResultDoc, ReplayDoc, commands_topic
from gateway.delivery.contract import MAX_CONFIRM_SEQS, ROOT, ConfirmDoc, HeartbeatDoc, confirm_topic
from gateway.domain.event import utcnow
from gateway.mqtt.client import NODELAY, PROBE_TIMEOUT, refuses_protocol
from gateway.mqtt.session import subscription_refusal
from gateway.tools.receiver import Notice, ReceiverState
from gateway.tools.receiver_store import Received, ReceiverStore
from gateway.tools.receiver_tier import (
    LEASE_PERIODS,
    PRESENCE_REFRESH,
    Membership,
    presence_filter,
    presence_payload,
    presence_topic,
)
from gateway.tools.seqtrack import SeqTracker

log = structlog.get_logger(__name__)

T = TypeVar("T")

QUEUE_MAX = 10_000  # events received but not yet stored
BATCH_MAX = 1_000  # events per store transaction
SESSION_EXPIRY = 7 * 86400
REPLAY_RETRY = 10.0  # seconds before the same gap is asked for again
REPLAY_TTL = 60.0
OPERATION_TIMEOUT = 10.0  # seconds a SUBSCRIBE or PUBLISH may take (the client's own timeout)
CONFIRM_TIMEOUT = 2.0  # seconds a confirmation may wait for its PUBACK before the next round retries it


@dataclass
class ReceiverOptions:
    identifier: str = "meldkamer"
    state_dir: Path = Path("receiver-state")
    reorder_timeout: float = 2.0
    ca_file: str | None = None
    group: str | None = None  # a receiver tier: the sites are shared by the group's live members
    member: str | None = None  # this member's id in the group (required with `group`)
    presence_refresh: float = PRESENCE_REFRESH  # tier: seconds between announcements (a lease, see receiver_tier)

    @property
    def presence_ttl(self) -> float:
        """Seconds a member's announcement holds: at the broker (MQTT 5 message expiry) and for the others."""
        return LEASE_PERIODS * self.presence_refresh

    @property
    def client_id(self) -> str:
        return f"{self.identifier}-{self.group}-{self.member}" if self.group else self.identifier

    @property
    def store_name(self) -> str:
        return f"{self.identifier}-{self.group}-{self.member}" if self.group else self.identifier


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
    membership: Membership | None = None  # tier mode: who serves which site
    _subscribed: set[str] = field(default_factory=set)  # tier mode: sites whose events we subscribe to
    _acquired: dict[str, float] = field(default_factory=dict)  # tier mode: taken, no heartbeat since (monotonic)
    _tier_wake: asyncio.Event = field(default_factory=asyncio.Event)
    sites_taken: int = 0  # tier mode: sites acquired after the first assignment (take-overs)
    subscriptions_refused: int = 0  # SUBACKs that refused a topic (the broker's ACL)
    _refused_topics: set[str] = field(default_factory=set)  # refused now: logged once each
    _assigned: bool = False
    _v5: bool = True
    _leaving: bool = False
    _inbox: asyncio.Queue[aiomqtt.Message] | None = None  # the current client's incoming queue

    async def run(self, stop: asyncio.Event) -> None:
        if self.options.group and not self.options.member:
            raise ValueError("a receiver tier member needs a member id")
        store = ReceiverStore(self.options.state_dir, self.options.store_name)
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
                await self._leave()
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
        tier = self.options.group is not None
        self._v5 = v5
        # A tier member starts clean: a dead member's persistent session would hoard the events of sites the
        # survivors now serve, and replay them at it when it comes back. What it misses while away the
        # gateway publishes again (unconfirmed after confirm_timeout) or replays on request.
        session: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": tier}
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0 if tier else SESSION_EXPIRY
            session = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": tier, "properties": props}
        if tier:
            assert self.options.group is not None and self.options.member is not None
            self.membership = Membership(self.options.group, self.options.member, uuid.uuid4().hex)
            self._subscribed = set()
            # The broker clears our presence when the connection dies: the others take our sites over.
            session["will"] = aiomqtt.Will(
                presence_topic(self.options.group, self.options.member), b"", qos=1, retain=True
            )
        link = self

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            """aiomqtt's queue of incoming messages (its public `queue_type`), kept by the link: see `_session`."""

            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                link._inbox = self

        return aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or (8883 if tls else 1883),
            identifier=self.options.client_id,
            username=url.username,  # mqtt://user:password@host: the broker's ACL (deploy/mosquitto/acl)
            password=url.password,
            tls_params=tls,
            keepalive=10,
            socket_options=NODELAY,  # confirmations are small packets behind others: no Nagle delay
            timeout=PROBE_TIMEOUT if v5 and not self._connected_once else 10.0,
            queue_type=Inbox,
            **session,
        )

    def _topics(self) -> list[str]:
        if self.options.group:  # a tier member: every site's small messages; events only of its own sites
            return [
                presence_filter(self.options.group),
                f"{ROOT}/+/status",
                f"{ROOT}/+/heartbeat",
                f"{ROOT}/+/confirm",
            ]
        site = self.state.site_filter or "+"
        return [
            f"{ROOT}/{site}/events/#",
            f"{ROOT}/{site}/status",
            f"{ROOT}/{site}/heartbeat",
            f"{ROOT}/{site}/state/#",
            f"{ROOT}/{site}/command-results",
        ]

    @property
    def protocol(self) -> str:
        """The MQTT version of the current (or last) connection: "5" or "3.1.1"."""
        return "5" if self._v5 else "3.1.1"

    async def _consume(self, queue: asyncio.Queue[Received]) -> None:
        backoff = 0.2
        v5 = self.options.group is not None  # only a tier member needs MQTT 5 (noLocal): see the docstring
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
                    if self.options.group:
                        tg.create_task(self._reconcile(client))
                        tg.create_task(self._keep_announcing(client))
                    self._client = client
                    self._connected_once = True
                    self._confirm_all()  # cumulative: repairs confirmations lost while away
                    inbox = self._inbox
                    async for message in client.messages:
                        self._lasted = self._lasted or subscribing.done()
                        await self._on_message(str(message.topic), _payload(message.payload), queue)
                        # What is queued already is taken without the iterator's task and asyncio.wait per
                        # message (an alarm flood is paid per message); the order stays the broker's.
                        while inbox is not None and not inbox.empty():
                            queued = inbox.get_nowait()
                            await self._on_message(str(queued.topic), _payload(queued.payload), queue)
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
            if self._v5 and topic.endswith("/confirm"):  # our own confirmations need not come back (MQTT 5)
                granted = await _bounded(
                    client.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True), timeout=math.inf)
                )
            else:
                granted = await _bounded(client.subscribe(topic, qos=topic_qos(topic), timeout=math.inf))
            self._check_granted(topic, granted)
        if self.options.group and self.membership is not None:  # after the presence subscription: see `ready`
            await self._announce(client)

    def _check_granted(self, topic: str, granted: Sequence[int | ReasonCode]) -> bool:
        """True if the SUBACK refused `topic` (e.g. the broker's ACL): one error line per topic, counted."""
        refusal = subscription_refusal(granted)
        if refusal is None:
            self._refused_topics.discard(topic)
            return False
        self.subscriptions_refused += 1
        if topic not in self._refused_topics:
            self._refused_topics.add(topic)
            log.error("receiver_subscription_refused", topic=topic, refusal=refusal)
        return True

    # --- the receiver tier ---------------------------------------------------------------------------

    async def _leave(self) -> None:
        """A clean stop sends DISCONNECT, which suppresses the will: clear our presence ourselves, so that the
        others take our sites over now rather than never."""
        client, membership = self._client, self.membership
        self._leaving = True
        if client is None or membership is None:
            return
        with contextlib.suppress(aiomqtt.MqttError):
            topic = presence_topic(membership.group, membership.me)
            await _bounded(client.publish(topic, b"", qos=1, retain=True, timeout=math.inf), 5.0)

    def serves(self, site: str) -> bool:
        """Whether this receiver serves `site` now (always, outside a tier)."""
        return self.membership is None or self.membership.owns(site)

    async def _reconcile(self, client: aiomqtt.Client) -> None:
        """Subscribes to the events of the sites we own and drops the others, whenever membership or the
        set of known sites changes. Its own task: (un)subscribing waits for the broker, reading must not."""
        membership = self.membership
        assert membership is not None
        while True:
            await self._tier_wake.wait()
            self._tier_wake.clear()
            if not membership.ready:
                continue
            known = {*self.state.sites, *self._durable}
            wanted = {site for site in known if membership.owns(site)}
            gained, lost = sorted(wanted - self._subscribed), sorted(self._subscribed - wanted)
            if lost:
                await _bounded(client.unsubscribe([t for site in lost for t in _site_topics(site)], timeout=math.inf))
                self._subscribed -= set(lost)
                log.info("receiver tier: sites handed over", member=membership.me, sites=len(lost))
            now = time.monotonic()
            for site in gained:
                self._acquired[site] = now  # replays wait for the site's next heartbeat: its position
            if self._assigned:
                self.sites_taken += len(gained)
            self._assigned = True
            for start in range(0, len(gained), 50):
                chunk = gained[start : start + 50]
                topics = [t for site in chunk for t in _site_topics(site)]
                subscribing = client.subscribe([(t, topic_qos(t)) for t in topics], timeout=math.inf)
                codes: Sequence[int | ReasonCode] = list(await _bounded(subscribing))
                # a refused site is not served: another wake tries again; said, never silent
                refused = {t for t, code in zip(topics, codes, strict=False) if self._check_granted(t, [code])}
                self._subscribed |= {site for site in chunk if not refused & set(_site_topics(site))}
            if gained:
                log.info("receiver tier: sites taken", member=membership.me, sites=len(gained))
                self._unconfirmed.update(s for s in gained if s in self._durable)
                self._confirm_wake.set()

    def _on_tier_message(self, topic: str, payload: bytes) -> bool:
        """Presence and confirmations of the tier; True when the message was one of those."""
        membership = self.membership
        assert membership is not None
        if topic.startswith(presence_filter(membership.group)[:-1]):
            if membership.on_presence(topic, payload, time.monotonic()):
                self._tier_wake.set()
            return True
        if topic.endswith("/confirm"):
            try:
                doc = ConfirmDoc.model_validate_json(payload)
            except (ValidationError, ValueError):
                return True
            if doc.receiver == self.options.identifier:  # the tier's own confirmations, by any member
                self._merge(doc.site, doc.up_to_seq, doc.seqs)
            return True
        return False

    def _merge(self, site: str, up_to: int, seqs: list[int]) -> None:
        """The tier holds these seqs of `site` (some member stored them): our position moves with them."""
        known = site in self._durable or site in self.state.sites
        self._durable.setdefault(site, SeqTracker()).merge(up_to, seqs)
        self.state.view(site).seqs.merge(up_to, seqs)
        if not known:
            self._tier_wake.set()

    async def _on_message(self, topic: str, payload: bytes, queue: asyncio.Queue[Received]) -> None:
        if self.membership is not None:
            if self._on_tier_message(topic, payload):
                if self.membership.cleared_me and self._client is not None and not self._leaving:
                    self.membership.cleared_me = False
                    await self._announce(self._client)
                return
            parts = topic.split("/")
            site = parts[2] if len(parts) > 3 else ""
            if parts[3:4] != ["status"] and parts[3:4] != ["heartbeat"] and not self.serves(site):
                return  # in flight when we handed the site over: its new owner has it
            new_site = site not in self.state.sites
            if parts[3:4] == ["heartbeat"]:
                self._heartbeat_position(site, payload)
            if new_site:
                self._tier_wake.set()
        if topic.endswith("/command-results"):
            self._on_result(topic.split("/")[2], payload)
            return
        for notice in self.state.on_message(topic, payload, received=utcnow(), mono=time.monotonic()):
            if self.serves(notice.site):
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
            touched: dict[str, SeqTracker] = {}
            for item in batch:
                tracker = self._durable.setdefault(item.site, SeqTracker())
                tracker.add(item.seq)
                touched[item.site] = tracker
            # copies: the loop may merge a tier position into a tracker while the store thread writes it
            snapshot = {site: SeqTracker(t.up_to, list(t.above), list(t.written_off)) for site, t in touched.items()}
            await loop.run_in_executor(executor, store.store, batch, snapshot)
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
                if not self.serves(site):
                    continue  # its owner confirms it
                tracker = self._durable[site]
                doc = ConfirmDoc(
                    site=site,
                    receiver=self.options.identifier,
                    up_to_seq=tracker.up_to,
                    seqs=tracker.above[:MAX_CONFIRM_SEQS],
                    at=utcnow(),
                )
                try:
                    await _bounded(
                        client.publish(confirm_topic(site), doc.to_json(), qos=1, timeout=math.inf), CONFIRM_TIMEOUT
                    )
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
                if not self.serves(site) or self._resuming(site):
                    continue
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

    def _heartbeat_position(self, site: str, payload: bytes) -> None:
        """Tier mode: the gateway says the tier confirmed everything up to confirmed_seq: held by the tier."""
        try:
            heartbeat = HeartbeatDoc.model_validate_json(payload)
        except (ValidationError, ValueError):
            return  # the state counts it as invalid
        if heartbeat.site == site:
            self._merge(site, heartbeat.confirmed_seq, [])
            self._acquired.pop(site, None)

    def _resuming(self, site: str) -> bool:
        """A site just taken over: until its next heartbeat we do not know the tier's position for sure."""
        return site in self._acquired

    async def _ask(self, site: str, first: int, last: int, attempt: int) -> None:
        client = self._client
        if client is None:
            return
        now = datetime.now(UTC)
        request = ReplayDoc(
            schema_="gcmk.replay.v1",
            command_id=f"replay-{self.options.client_id}-{site}-{first}-{last}-{attempt}",
            from_seq=first,
            to_seq=last,
            issued_at=now,
            expires_at=now + timedelta(seconds=REPLAY_TTL),
            operator=self.options.identifier,
            reason="gap in the receiver's store",
        )
        with contextlib.suppress(aiomqtt.MqttError):
            payload = request.model_dump_json(by_alias=True)
            await _bounded(client.publish(commands_topic(site), payload, qos=1, timeout=math.inf))
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
            self._expire_members()
            await asyncio.sleep(0.5)  # a periodic check, not synchronisation

    # --- the tier's presence lease -------------------------------------------------------------------

    async def _announce(self, client: aiomqtt.Client) -> None:
        """Our presence, retained; on MQTT 5 it expires at the broker after the lease's TTL, so a member that
        died without a will (the broker was down) does not look alive to a newcomer either."""
        membership = self.membership
        assert membership is not None
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = max(1, round(self.options.presence_ttl))
        await _bounded(
            client.publish(
                presence_topic(membership.group, membership.me),
                presence_payload(membership.me, membership.nonce),
                qos=1,
                retain=True,
                properties=properties,
                timeout=math.inf,
            )
        )

    async def _keep_announcing(self, client: aiomqtt.Client) -> None:
        """Tier mode, per connection: the lease is renewed every `presence_refresh` seconds."""
        while True:
            await asyncio.sleep(self.options.presence_refresh)  # the lease's period, not synchronisation
            if self.membership is not None and self.membership.ready and not self._leaving:
                await self._announce(client)

    def _expire_members(self) -> None:
        """Members whose lease ran out (no announcement for 3 x presence_refresh) are gone: their sites move."""
        membership = self.membership
        if membership is None or not membership.ready:
            return
        gone = membership.expire(time.monotonic(), self.options.presence_ttl)
        if gone:
            log.warning("receiver tier: members gone without a will (lease expired)", members=sorted(gone))
            self._tier_wake.set()


async def _bounded(call: Awaitable[T], seconds: float = OPERATION_TIMEOUT) -> T:
    """An aiomqtt call (made with `timeout=math.inf`) bounded here with `asyncio.timeout`: aiomqtt's own bound is
    `asyncio.wait_for`, which on Python 3.11 swallows a cancel that arrives as the PUBACK/SUBACK completes, and
    these calls run in loops that must end when the link stops (gateway.core.lifecycle.wait_event). A timeout is
    an MqttError, as aiomqtt's own."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except TimeoutError:
        raise aiomqtt.MqttError("Operation timed out") from None


def topic_qos(topic_filter: str) -> int:
    """QoS 0 for the retained point states (a picture: a resubscription restores it), QoS 1 for the rest."""
    return 0 if topic_filter.endswith("/state/#") else 1


def _site_topics(site: str) -> list[str]:
    return [f"{ROOT}/{site}/events/#", f"{ROOT}/{site}/state/#", f"{ROOT}/{site}/command-results"]


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
