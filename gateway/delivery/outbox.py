"""What the publisher sends next: journaled events in seq order, urgent live alarms first after an outage.

The outbox holds no durable state of its own: the journal is the truth. Recently committed events are kept
in memory (bounded) so that the steady state never reads SQLite back; when the publisher falls behind that
window (an outage, a restart), it pages undelivered events from the journal instead.

`buffered` (contract): an event is flagged `buffered: true` when its (re)publication starts more than
`buffered_after` seconds (default 2 s) after it was handed to the sink: held back by an outage of the
link or of the gateway, or stuck behind such a backlog. Live events on a healthy link are not flagged.

Redeliveries (events published but unconfirmed by the meldkamer in time, and replays on request) come
from the journal through `redeliver`, flagged `redelivered: true`: priority 1-2 ones before the live
cursor, the rest when the cursor has nothing to send, so a flood of old events never delays a new alarm.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.delivery.contract import PointStateDoc, event_topic, state_topic
from gateway.delivery.journal import Journaled, StateDoc, in_alarm

BUFFERED_AFTER = 2.0  # seconds
URGENT_PRIORITY = 2  # priority 1-2 events overtake a backlog
RECENT_MAX = 16_384
URGENT_MAX = 4_096
PAGE = 1_000
REDELIVERY_MAX = 2_000  # redeliveries held in memory; the sink pages more in as these go out

Reader = Callable[[int, int], Awaitable[list[Journaled]]]


@dataclass(slots=True)
class Outgoing:
    kind: Literal["event", "state"]
    topic: str
    payload: str
    seq: int = 0  # events
    point: tuple[str, int] | None = None  # states: (point_id, version)
    handed_at: float = 0.0  # events: when journaled (epoch seconds)
    detected_at: float = 0.0  # events: the event's detected_at (epoch seconds), where its latency starts
    buffered: bool = False
    urgent: bool = False
    redelivered: bool = False


class _Read:
    """Sentinel: the next events must be paged from the journal."""


_READ = _Read()


class Outbox:
    def __init__(
        self,
        site: str,
        reader: Reader,
        *,
        clock: Callable[[], float] = time.time,
        buffered_after: float = BUFFERED_AFTER,
        recent_max: int = RECENT_MAX,
        page: int = PAGE,
    ) -> None:
        self._site = site
        self._reader = reader
        self._clock = clock
        self._buffered_after = buffered_after
        self._page = page
        self._recent: deque[Journaled] = deque(maxlen=recent_max)
        self._urgent: deque[Journaled] = deque(maxlen=URGENT_MAX)
        self._paged: deque[Journaled] = deque()
        self._states: OrderedDict[str, StateDoc] = OrderedDict()
        self._inflight: set[int] = set()
        self._inflight_states: dict[str, StateDoc] = {}
        self._ahead: set[int] = set()  # seqs sent out of order (urgent); the cursor skips them
        self._redeliver_urgent: deque[Journaled] = deque()
        self._redeliver: deque[Journaled] = deque()
        self._redelivering: set[int] = set()  # seqs queued for redelivery
        self._next_seq = 1
        self._last_seq = 0
        self._behind = False
        self._link_up = False
        self._epoch = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self.marks: list[int] = []  # acknowledged seqs, to mark delivered in the journal
        self.state_marks: list[tuple[str, int]] = []

    # --- fed by the journal writer -----------------------------------------------------------------------

    def start(self, first_undelivered: int, last_seq: int, states: Sequence[StateDoc]) -> None:
        self._next_seq = first_undelivered
        self._last_seq = last_seq
        for doc in states:
            self._states[doc.point_id] = doc
        self._wakeup.set()

    def committed(self, journaled: Sequence[Journaled], states: Sequence[StateDoc]) -> None:
        for item in journaled:
            self._recent.append(item)
            if item.priority <= URGENT_PRIORITY and (not self._link_up or self._behind):
                self._urgent.append(item)
        if journaled:
            self._last_seq = journaled[-1].seq
        for doc in states:
            self._states[doc.point_id] = doc
            self._states.move_to_end(doc.point_id)
        if journaled or states:
            self._idle.clear()
            self._wakeup.set()

    def redeliver(self, items: Sequence[Journaled]) -> int:
        """Queue journaled events to be published again (flagged redelivered); returns how many were taken.
        Events already queued or in flight are skipped."""
        taken = 0
        for item in items:
            if item.seq in self._redelivering or item.seq in self._inflight or self.redelivery_room <= 0:
                continue
            self._redelivering.add(item.seq)
            (self._redeliver_urgent if item.priority <= URGENT_PRIORITY else self._redeliver).append(item)
            taken += 1
        if taken:
            self._idle.clear()
            self._wakeup.set()
        return taken

    @property
    def redelivery_room(self) -> int:
        return REDELIVERY_MAX - len(self._redelivering)

    def put_back(self, marks: Sequence[int], states: Sequence[tuple[str, int]]) -> None:
        """Marks whose journal write failed: kept for the next attempt, never dropped."""
        self.marks[:0] = marks
        self.state_marks[:0] = states

    # --- used by the publisher ---------------------------------------------------------------------------

    def link(self, up: bool) -> None:
        self._link_up = up

    @property
    def backlogged(self) -> bool:
        return not self._link_up or self._behind

    async def next(self) -> Outgoing:
        """The next message to publish, in the order the contract promises; waits when there is none."""
        while True:
            picked = self._pick()
            if isinstance(picked, Outgoing):
                return picked
            if picked is _READ:
                epoch, start = self._epoch, self._next_seq
                page = await self._reader(start, self._page)
                if epoch != self._epoch or start != self._next_seq:
                    continue
                if page:
                    self._paged.extend(page)
                else:  # everything from start on was delivered (e.g. by urgent publication)
                    self._next_seq = self._last_seq + 1
                if self._ahead:  # forget urgent seqs the cursor can no longer meet
                    self._ahead = {seq for seq in self._ahead if seq >= self._next_seq}
                continue
            self._wakeup.clear()
            self._check_idle()
            if self._pick_possible():
                continue
            await self._wakeup.wait()

    def next_nowait(self) -> Outgoing | None:
        """The next message if one is at hand without paging or waiting (the publisher's fast path)."""
        picked = self._pick()
        return picked if isinstance(picked, Outgoing) else None

    def acked(self, item: Outgoing) -> None:
        if item.kind == "event":
            self._inflight.discard(item.seq)
            self.marks.append(item.seq)
        elif item.point is not None:
            point_id, version = item.point
            sent = self._inflight_states.get(point_id)
            if sent is not None and sent.version == version:
                del self._inflight_states[point_id]
            self.state_marks.append(item.point)
        self._check_idle()

    def lost(self) -> None:
        """The session ended: whatever was in flight is sent again (same event_id) on the next one."""
        unacked = set(self._inflight)
        self._next_seq = min(unacked | {self._next_seq})
        self._ahead -= unacked
        self._inflight.clear()
        self._paged.clear()
        for point_id, doc in self._inflight_states.items():
            self._states.setdefault(point_id, doc)
        self._inflight_states.clear()
        self._redelivering.clear()  # still unconfirmed in the journal: the sink queues them again
        self._redeliver_urgent.clear()
        self._redeliver.clear()
        self._epoch += 1
        self._wakeup.set()

    def take_marks(self) -> tuple[list[int], list[tuple[str, int]]]:
        marks, states = self.marks, self.state_marks
        self.marks, self.state_marks = [], []
        return marks, states

    async def drained(self) -> None:
        """Returns once nothing is left to send or awaiting PUBACK."""
        self._check_idle()
        await self._idle.wait()

    # --- internals ---------------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        if not self._inflight and not self._inflight_states and not self._pick_possible():
            self._idle.set()
        else:
            self._idle.clear()

    def _pick_possible(self) -> bool:
        return bool(
            self._urgent
            or self._redeliver_urgent
            or self._redeliver
            or self._states
            or self._paged
            or self._next_seq <= self._last_seq
        )

    def _pick(self) -> Outgoing | _Read | None:
        while self._urgent:
            item = self._urgent.popleft()
            if item.seq >= self._next_seq and item.seq not in self._ahead:
                self._ahead.add(item.seq)
                return self._event(item, urgent=True)
        if (again := self._pick_redelivery(self._redeliver_urgent)) is not None:
            return again
        picked = self._pick_live()
        if picked is None:
            return self._pick_redelivery(self._redeliver)
        return picked

    def _pick_redelivery(self, queue: deque[Journaled]) -> Outgoing | None:
        while queue:
            item = queue.popleft()
            self._redelivering.discard(item.seq)
            if item.seq not in self._inflight:
                return self._event(item, urgent=item.priority <= URGENT_PRIORITY, redelivered=True)
        return None

    def _pick_live(self) -> Outgoing | _Read | None:
        """Fresh live events before point states: in an alarm flood the events are the record and are bounded
        by the 2 s from detection to confirmation, while a state is a picture of which only the latest matters
        (a state queued behind events is replaced by a later change of its point, never sent twice). While
        the cursor is behind (draining a backlog after an outage) or must page from the journal, states go
        first, as before: the meldkamer's current picture before old events."""
        if self._states and self._behind:
            return self._next_state()
        picked = self._pick_event()
        if isinstance(picked, Outgoing) or not self._states:
            return picked
        return self._next_state()

    def _next_state(self) -> Outgoing:
        point_id, doc = self._states.popitem(last=False)
        self._inflight_states[point_id] = doc
        return self._state(doc)

    def _pick_event(self) -> Outgoing | _Read | None:
        while True:
            if self._paged:
                item = self._paged.popleft()
            else:
                while self._recent and self._recent[0].seq < self._next_seq:
                    self._recent.popleft()
                if self._recent and self._recent[0].seq == self._next_seq:
                    item = self._recent.popleft()
                elif self._next_seq <= self._last_seq:
                    return _READ
                else:
                    self._behind = False
                    return None
            if item.seq < self._next_seq:
                continue
            self._next_seq = item.seq + 1
            if item.seq in self._ahead:
                self._ahead.discard(item.seq)
                continue
            out = self._event(item, urgent=False)
            self._behind = self._clock() - item.journaled_at > self._buffered_after
            return out

    def _event(self, item: Journaled, *, urgent: bool, redelivered: bool = False) -> Outgoing:
        self._inflight.add(item.seq)
        buffered = self._clock() - item.journaled_at > self._buffered_after
        payload = item.payload.replace('"buffered":false', '"buffered":true', 1) if buffered else item.payload
        if redelivered:
            payload = payload.replace('"redelivered":false', '"redelivered":true', 1)
        return Outgoing(
            kind="event",
            topic=event_topic(self._site, item.category),
            payload=payload,
            seq=item.seq,
            handed_at=item.journaled_at,
            detected_at=item.detected_at or item.journaled_at,
            buffered=buffered,
            urgent=urgent,
            redelivered=redelivered,
        )

    def _state(self, doc: StateDoc) -> Outgoing:
        payload = PointStateDoc(
            site=self._site,
            point_id=doc.point_id,
            condition=doc.condition,
            in_alarm=in_alarm(doc.condition),
            value=doc.value,
            since=doc.since,
            as_of_seq=doc.as_of_seq,
            version=doc.version,
        ).to_json()
        return Outgoing(
            kind="state",
            topic=state_topic(self._site, doc.point_id),
            payload=payload,
            point=(doc.point_id, doc.version),
        )
