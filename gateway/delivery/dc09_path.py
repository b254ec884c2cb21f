"""One SIA DC-09 delivery path: the journal's events routed to one receiver, sent one by one in seq order.

Why this shape: the journal is the queue (as for MQTT). The path keeps a durable cursor (every seq up to it
is handled: ACKed, answered DUH, or not routed here) and an outcome row per event it sent; it reads what
lies beyond the cursor in seq order, sends each routed event through one `Transmitter` (one outstanding
message, retries and NULL supervision inside), and records the outcome in the journal before it sends the
next one. A restart resumes at the cursor: an event ACKed here is never sent again over DC-09, whatever the
MQTT path did, and vice versa (`Journal`: an event is pruned only when every path is done with it).

DUH (understood, not processed) is recorded, counted, logged and alerted on (`gcmk_dc09_duh_total`); the
path moves on, never loops. A path failing (link down, or a message unanswered beyond `ack_timeout`) for
longer than its supervision interval journals a `path_fault` alarm, which reaches the meldkamer over MQTT
and the OTHER DC-09 paths (a path never routes its own fault), and a restore when it works again. The fault
state is kept in the journal, so a restart neither repeats nor forgets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from gateway.config.models import Dc09Config, Dc09Receiver, Dc09Routing, SiteConfig
from gateway.core.events import make_event
from gateway.dc09.frame import SEQ_MIN, next_seq
from gateway.dc09.mapping import dc09_message
from gateway.dc09.transmitter import Endpoint, LinkState, Message, Outcome, Transmitter
from gateway.delivery.journal import NO_PATH_FLOOR, Journal, JournalError, NumberConflict, PathMark, parse_page
from gateway.delivery.stats import PathStats
from gateway.domain.errors import SiteConfigFault
from gateway.domain.event import Event, PointRef, SourceRef
from gateway.domain.state import Batch
from gateway.domain.taxonomy import EventState, EventType

log = structlog.get_logger(__name__)

T = TypeVar("T")

PAGE = 200  # events read from the journal at once
BACKLOG_PACING = 20  # the backlog gauges wait 20x as long as their query took (see _watch)
WATCH_INTERVAL = 1.0  # seconds between fault checks and backlog refreshes (at most; less for short supervision)


class JournalHost(Protocol):
    """What a path needs of the delivery sink: its journal thread, its commits, and journaling events."""

    @property
    def journal(self) -> Journal: ...

    async def journal_call(self, fn: Callable[..., T], *args: Any) -> T: ...

    def add_commit_listener(self, listener: Callable[[int], None]) -> None: ...

    async def accept(self, batch: Batch) -> Sequence[Event]: ...


def path_name(receiver_id: str) -> str:
    return f"dc09:{receiver_id}"


def fault_point(receiver_id: str) -> str:
    """The point id of a path's own path_fault events."""
    return f"gateway.dc09.{receiver_id}"


class Route:
    """Which events one path carries: the site's DC-09 routing, minus the path's own path_fault events."""

    def __init__(self, routing: Dc09Routing, own_point: str) -> None:
        self.routing = routing
        self.own_point = own_point

    def __call__(self, event: Event) -> bool:
        if event.point.id == self.own_point:
            return False
        return self.routing.routes(event.category.value, event.state.value, event.priority)

    def sql(self) -> tuple[str, list[object]]:
        """The same rule as an SQL condition on the journal's events table (for the backlog metrics)."""
        where = [
            "state IN (SELECT value FROM json_each(?))",
            "priority <= ?",
            "json_extract(payload, '$.point.id') IS NOT ?",
        ]
        params: list[object] = [json.dumps([s.value for s in self.routing.states]), self.routing.max_priority]
        params.append(self.own_point)
        if self.routing.categories is not None:
            where.append("category IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([c.value for c in self.routing.categories]))
        return " AND ".join(where), params


def read_key(receiver: Dc09Receiver, where: str) -> bytes | None:
    """The receiver's AES key from its key_file (hex), or None with insecure: true."""
    if receiver.key_file is None:
        return None
    try:
        text = Path(receiver.key_file).read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SiteConfigFault(where, f"cannot read the AES key (hex) from {receiver.key_file}: {exc}") from None
    if len(key) not in (16, 24, 32):
        raise SiteConfigFault(
            where, f"{receiver.key_file} holds {len(key)} bytes; an AES key has 16, 24 or 32 (32, 48 or 64 hex digits)"
        )
    return key


def numbers(journal: Journal, site: SiteConfig, now: float) -> tuple[dict[str, int], dict[str, int]]:
    """Zone numbers per point and area numbers per tenant: overrides, else the journal's table (first seen,
    never reused). On the journal's thread. Raises SiteConfigFault for numbers that cannot be reconciled."""
    assert site.dc09 is not None
    zones = [(p.id, p.dc09_zone, f"points[{i}].dc09_zone") for i, p in enumerate(site.points)]
    areas = [(t.id, t.dc09_area, f"tenants[{i}].dc09_area") for i, t in enumerate(site.tenants)]
    try:
        return (
            journal.assign_dc09_numbers("zone", zones, site.dc09.max_zone, now),
            journal.assign_dc09_numbers("area", areas, 99, now),
        )
    except NumberConflict as exc:
        raise SiteConfigFault(exc.config_path, exc.problem) from None


class Dc09Path:
    """One receiver's path; `run()` until cancelled (a supervised component of the Gateway)."""

    def __init__(
        self,
        site: SiteConfig,
        index: int,
        host: JournalHost,
        *,
        transmitter: Callable[..., Transmitter] = Transmitter,
        message: Callable[..., Message] = dc09_message,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`transmitter` and `message` default to gateway.dc09's (tests hand in fakes of the same shape)."""
        assert site.dc09 is not None
        self.site = site
        self.dc09: Dc09Config = site.dc09
        self.receiver = self.dc09.receivers[index]
        self._where = f"dc09.receivers[{index}]"
        self.name = path_name(self.receiver.id)
        self.stats = PathStats(self.name, self.receiver.id, insecure=self.receiver.insecure)
        self._host = host
        self._make_transmitter = transmitter
        self._message = message
        self._clock = clock
        self.route = Route(self.dc09.routing, fault_point(self.receiver.id))
        self._wake = asyncio.Event()
        self._sending_since: float | None = None  # monotonic: a message awaits its reply
        self._refused: tuple[float, int, str] | None = None  # since (monotonic), seq, outcome: not processed
        self._tx: Transmitter | None = None
        self._zones: Mapping[str, int] = {}
        self._areas: Mapping[str, int] = {}
        host.add_commit_listener(self._committed)

    async def numbers_for(self, site: SiteConfig) -> tuple[Mapping[str, int], Mapping[str, int]]:
        """Zone and area numbers for `site` (a reload's new config): new points and tenants get theirs in the
        journal's table now, before any event of theirs can be sent. Raises SiteConfigFault on a conflict."""
        return await self._host.journal_call(numbers, self._host.journal, site, self._clock())

    def use_site(self, site: SiteConfig, site_numbers: tuple[Mapping[str, int], Mapping[str, int]]) -> None:
        """Adopt a reloaded config (same dc09 section: a change there needs a restart) and its numbers."""
        self.site = site
        self._zones, self._areas = site_numbers

    def _committed(self, last_seq: int) -> None:
        if last_seq > self.stats.cursor:
            self._wake.set()

    async def run(self) -> None:
        key = read_key(self.receiver, f"{self._where}.key_file")
        journal = self._host.journal
        self._zones, self._areas = await self._host.journal_call(numbers, journal, self.site, self._clock())
        self.stats.cursor = await self._host.journal_call(journal.path_cursor, self.name)
        self.stats.fault_active = await self._host.journal_call(journal.path_fault_active, self.name)
        last_message_seq = await self._host.journal_call(journal.path_message_seq, self.name)
        r = self.receiver
        endpoint = Endpoint(
            host=r.host,
            port=r.port,
            transport=r.transport,
            account=r.account,
            receiver=r.receiver,
            prefix=r.prefix,
            key=key,
            supervision=r.supervision,
            ack_timeout=r.ack_timeout,
        )
        log.info("dc09_path_starting", path=self.name, host=r.host, port=r.port, cursor=self.stats.cursor)
        started = time.monotonic()
        try:
            first_seq = next_seq(last_message_seq) if last_message_seq else SEQ_MIN
            async with self._make_transmitter(
                endpoint, on_link_change=self._link_changed, on_ignored=self._reply_ignored, first_seq=first_seq
            ) as tx:
                self._tx = tx
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watch(started))
                    await self._send_all(tx)
        finally:
            self._tx = None
            self._sending_since = None

    def _reply_ignored(self, reason: str) -> None:
        self.stats.replies_ignored[reason] = self.stats.replies_ignored.get(reason, 0) + 1

    def _link_changed(self, state: LinkState) -> None:
        self.stats.up = state.up
        if state.last_ack_at is not None:
            self.stats.last_ack_at = state.last_ack_at.timestamp()

    # --- sending -----------------------------------------------------------------------------------------

    async def _send_all(self, tx: Transmitter) -> None:
        journal = self._host.journal
        while True:
            self._wake.clear()
            text = await self._host.journal_call(journal.read_range_json, self.stats.cursor + 1, NO_PATH_FLOOR, PAGE)
            page = parse_page(text)
            if not page:
                await self._wake.wait()
                continue
            passed = self.stats.cursor  # not routed here: the cursor moves past without a message
            for item in page:
                event = Event.from_json(item.payload)
                if not self.route(event):
                    passed = item.seq
                    continue
                outcome = await self._send(tx, event)
                # DUH or unencodable: not at the receiving centre. Until a message is ACKed again the path counts
                # as failing (a receiver that never set up our account DUHs every alarm with the link up).
                if outcome == "acked":
                    self._refused = None
                elif self._refused is None:
                    self._refused = (time.monotonic(), item.seq, outcome)
                await self._mark(PathMark(item.seq, [(item.seq, outcome)], message_seq=tx.last_seq))
                passed = item.seq
            if passed > self.stats.cursor:
                await self._mark(PathMark(passed))

    async def _send(self, tx: Transmitter, event: Event) -> str:
        tenant = event.tenant
        account = self.dc09.accounts.get(tenant, self.receiver.account) if tenant else self.receiver.account
        try:
            message = self._message(
                event,
                fmt=self.dc09.format,
                account=account,
                zone_no=self._zones.get(event.point.id, 0),
                area_no=self._areas.get(tenant, 0) if tenant else 0,
            )
        except (ValueError, KeyError) as exc:  # the mapping's refusal of one event: recorded, never retried
            self.stats.unmapped += 1
            log.error("dc09_event_unmapped", path=self.name, seq=event.seq, type=event.type, error=str(exc))
            return "unmapped"
        self._sending_since = time.monotonic()
        try:
            outcome = await tx.send(message)
        finally:
            self._sending_since = None
        if outcome is Outcome.DUH:
            self.stats.duh += 1
            log.error("dc09_duh", path=self.name, seq=event.seq, type=event.type, detail="receiver did not process it")
        else:
            self.stats.acked += 1
        return outcome.value

    async def _mark(self, mark: PathMark) -> None:
        """Durable before the next message goes out. A failing journal write is retried (the event is not
        sent again meanwhile), so the cursor never skips an outcome."""
        journal = self._host.journal
        while True:
            try:
                await self._host.journal_call(journal.mark_path, self.name, mark, self._clock())
            except JournalError as exc:
                log.error("dc09_mark_failed", path=self.name, seq=mark.up_to_seq, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            self.stats.cursor = max(self.stats.cursor, mark.up_to_seq)
            return

    # --- supervision -------------------------------------------------------------------------------------

    def failing_since(self, now: float) -> float | None:
        """Monotonic time since which the path fails (link down, or a message unanswered beyond its
        ack_timeout), or None while it works."""
        tx = self._tx
        if tx is None:
            return None
        link = tx.link
        if not link.up:
            return link.since
        sending = self._sending_since
        if sending is not None and now - sending > self.receiver.ack_timeout:
            return sending
        if self._refused is not None:
            return self._refused[0]
        return None

    async def _watch(self, started: float) -> None:
        interval = min(WATCH_INTERVAL, self.receiver.supervision / 4)
        journal = self._host.journal
        where, params = self.route.sql()
        next_backlog = 0.0
        while True:
            now = time.monotonic()
            since = self.failing_since(now)
            if since is not None:
                since = max(since, started)  # a link state from before this run: count from the start
            if since is not None and not self.stats.fault_active and now - since >= self.receiver.supervision:
                await self._fault(True, now - since)
            elif since is None and self.stats.fault_active:
                await self._fault(False, 0.0)
            if now >= next_backlog:
                scan_at = time.monotonic()
                with contextlib.suppress(JournalError):
                    count, oldest = await self._host.journal_call(journal.path_backlog, self.name, where, params)
                    self.stats.unacknowledged = count
                    self.stats.oldest_unacknowledged_age = None if oldest is None else max(0.0, self._clock() - oldest)
                # The count scans the backlog (large after a long outage) on the journal's thread, where alarms
                # are committed: paced so that it takes at most 1/BACKLOG_PACING of that thread's time.
                next_backlog = scan_at + max(interval, BACKLOG_PACING * (time.monotonic() - scan_at))
            await asyncio.sleep(interval)

    async def _fault(self, active: bool, failing_for: float) -> None:
        """Journals the path_fault alarm or restore (to MQTT and the other paths), then records the state."""
        r = self.receiver
        at = datetime.now(UTC)
        if not active:
            text = f"DC-09 receiver {r.id} ({r.host}:{r.port}) answering again"
        elif self._refused is not None and self._tx is not None and self._tx.link.up:
            _since, seq, outcome = self._refused
            why = "answered DUH (understood, not processed)" if outcome == "duh" else "could not be sent (unmapped)"
            text = (
                f"DC-09 receiver {r.id} ({r.host}:{r.port}): event seq {seq} {why} and nothing ACKed since"
                f" ({failing_for:.0f}s): alarms may not reach the receiving centre (account, codes?)"
            )
        else:
            text = (
                f"DC-09 receiver {r.id} ({r.host}:{r.port}) not answering for {failing_for:.0f}s"
                f" (supervision {r.supervision:g}s); events wait in the journal"
            )
        event = make_event(
            site=self.site.site.id,
            event_type=EventType.PATH_FAULT,
            state=EventState.ALARM if active else EventState.RESTORE,
            point=PointRef(id=fault_point(r.id), name=f"DC-09 receiver {r.id}"),
            source=SourceRef(protocol="gateway", device_id="gateway", address=f"{r.host}:{r.port}", ref=self.name),
            occurred_at=at,
            detected_at=at,
            text=text,
        )
        await self._host.accept(Batch(events=(event,)))  # JournalError: raised, the supervisor restarts the path
        journal = self._host.journal
        await self._host.journal_call(journal.set_path_fault, self.name, active)
        self.stats.fault_active = active
        if active:
            self.stats.faults += 1
            log.error("dc09_path_fault", path=self.name, failing_for=round(failing_for, 1))
        else:
            log.info("dc09_path_restored", path=self.name)


def build_paths(site: SiteConfig, host: JournalHost) -> list[Dc09Path]:
    """One path per configured DC-09 receiver (none without a dc09: section)."""
    if site.dc09 is None:
        return []
    return [Dc09Path(site, index, host) for index in range(len(site.dc09.receivers))]
