"""The production EventSink: durable journal + MQTT publisher to the meldkamer.

`accept` returns only after the batch's events and state rows are committed (fsync'd) in the journal.
Concurrent callers share commits: they queue (bounded: back-pressure, never a drop) for the single writer,
which commits everything queued in one transaction on the journal's own thread, so SQLite never blocks
the event loop and throughput does not hinge on one fsync per event. The writer is a chain of loop
callbacks rather than a task awaiting futures: the commit's completion resolves the callers in the next
loop iteration, and the next group is planned right after the woken callers queued again (one iteration
later), where awaiting a queue, an executor future and a shield took five iterations, each as long as
all the MQTT work that was ready then. The `_writer` task supervises the chain and re-raises its bugs.
`run` drives the writer, the publisher (status, heartbeats, events, point states), marking of PUBACKs and
the retention pruner.

A failed commit fails its callers with JournalError (a NotAccepted: the pipeline rolls the normaliser back,
the adapters offer the readings again) and starts a journal fault: `journal_writable` (readiness) and the
heartbeat's `journal_ok` are false, `stats.journal_write_failures` counts. The fault is journaled once it
can be: a `journal_fault` alarm (time of the first failure) and its restore go first into the first commit
that succeeds, whether readings offered again bring it or the writer's own retry every FAULT_RETRY seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from gateway.config.models import MqttConfig, SiteConfig
from gateway.core.events import make_event
from gateway.core.lifecycle import RunsInBackground, wait_event
from gateway.core.ports import HealthReport, ReplayOutcome
from gateway.delivery.contract import ConfirmDoc, HeartbeatDoc, StatusDoc, confirm_topic
from gateway.delivery.journal import PRUNE_CHUNK, CommitResult, Journal, Journaled, JournalError, Plan, parse_page
from gateway.delivery.outbox import Outbox
from gateway.delivery.publisher import Publisher
from gateway.delivery.stats import JOURNAL_STALL, DeliveryStats
from gateway.domain.event import Event, PointRef, SourceRef
from gateway.domain.state import Batch, DeviceState, PointState
from gateway.domain.taxonomy import EventState, EventType

log = structlog.get_logger(__name__)

T = TypeVar("T")

QUEUE_BATCHES = 1_024  # accept() callers waiting for the writer before back-pressure
GROUP_MAX = 2_048  # batches per commit
MARK_INTERVAL = 0.1  # seconds between writes of PUBACK marks
PRUNE_INTERVAL = 600.0
PRUNE_PAUSE = 4.0  # pause after each prune chunk, in multiples of the time the chunk took
CLOSE_GRACE = 3.0
FAULT_RETRY = 1.0  # seconds between the writer's own journal attempts while commits fail and nothing is queued
PROBE_INTERVAL = 1.0  # seconds between the probes of the journal's thread
HEARTBEAT_JOURNAL_WAIT = 1.0  # seconds a heartbeat waits for the journal's figures before it uses the last known


@dataclass(slots=True)
class _Pending:
    batch: Batch
    handed_at: float
    future: asyncio.Future[list[Event]]


@dataclass(slots=True)
class _Fault:
    """Commits failing since `since`: journaled as a journal_fault alarm + restore once a commit succeeds."""

    since: datetime
    error: str
    failures: int = 1


def journal_path(site: SiteConfig) -> Path:
    return site.journal.data_dir / f"{site.site.id}.journal.sqlite3"


def delivery_paths(site: SiteConfig) -> tuple[str, ...]:
    """The journal's delivery paths besides MQTT: one per DC-09 receiver (docs/dc09.md)."""
    return tuple(f"dc09:{r.id}" for r in site.dc09.receivers) if site.dc09 is not None else ()


def open_journal(site: SiteConfig) -> Journal:
    """The site's journal as configured (not yet opened: `DeliverySink` opens it on its own thread)."""
    return Journal(
        journal_path(site),
        site=site.site.id,
        max_bytes=site.journal.max_bytes,
        retention=site.journal.retention,
        paths=delivery_paths(site),
    )


class PublisherFactory(Protocol):
    """How the sink gets its publisher: the outbox and the status documents are the sink's own."""

    def __call__(
        self,
        site: SiteConfig,
        outbox: Outbox,
        stats: DeliveryStats,
        *,
        online: Callable[[], StatusDoc],
        offline: Callable[[str], StatusDoc],
        heartbeat: Callable[[], Awaitable[HeartbeatDoc]],
        subscriptions: Mapping[str, Callable[[bytes], None]] = ...,
    ) -> Publisher: ...


class DeliverySink(RunsInBackground):
    """EventSink of the gateway: see the module docstring. `stats` is exported by the metrics endpoint.
    `async with DeliverySink(...) as sink:` runs it and closes it cleanly (gateway.core.lifecycle)."""

    def __init__(
        self,
        site: SiteConfig,
        *,
        config_hash: str,
        version: str,
        journal: Journal | None = None,
        executor: ThreadPoolExecutor | None = None,
        publisher: PublisherFactory | None = None,
        stats: DeliveryStats | None = None,
        devices: Callable[[], tuple[int, int]] = lambda: (0, 0),
        inputs_ok: Callable[[], bool] = lambda: True,
        close_grace: float = CLOSE_GRACE,
    ) -> None:
        """Collaborators default to the production ones (the composition root, gateway/app/wiring.py, passes
        them explicitly); tests hand in a journal on a failing file system or a publisher of their own."""
        self.site = site
        self.name = "sink"
        self.stats = stats or DeliveryStats()
        self._config_hash = config_hash
        self._version = version
        self._devices = devices
        self._inputs_ok = inputs_ok
        self._close_grace = close_grace
        self._started_at = datetime.now(UTC)
        self._journal = journal or open_journal(site)
        # SQLite runs on one thread of its own, so the event loop never waits for a disk.
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcmk-journal")
        self._pending: deque[_Pending] = deque()  # accept() callers waiting for a commit
        self._room = asyncio.Event()  # set while _pending has room (back-pressure beyond QUEUE_BATCHES)
        self._idle = asyncio.Event()  # nothing pending and no commit under way
        self._idle.set()
        self._commit: Future[None] | None = None  # the write under way on the journal thread
        self._committing = False  # a commit is under way or scheduled
        self._writer_on = False  # the _writer task runs: commits may start
        self._writer_error: BaseException | None = None
        self._writer_failed = asyncio.Event()
        self._open_lock = asyncio.Lock()
        self._opened = False
        self._closed = False
        self._running = False
        self._write_failed = False  # the last journal write (commit or marks) failed
        self._fault: _Fault | None = None  # commits failing, not yet journaled as a journal_fault
        self._fault_timer: asyncio.TimerHandle | None = None  # the writer's next own attempt during a fault
        self._finished = asyncio.Event()
        self.outbox = Outbox(site.site.id, self._read_undelivered)
        self._delivery = site.delivery
        self._confirming = site.delivery.confirm == "meldkamer"
        self._confirms: dict[str, ConfirmDoc] = {}  # latest confirmation per receiver, not yet applied
        self._confirm_wake = asyncio.Event()
        self._replay: tuple[int, int] | None = None  # (next seq, last seq) of a replay being paged in
        self._warned_receivers: set[str] = set()
        self._progress_at = 0.0  # monotonic time the receivers' cumulative confirmation last moved
        self._oldest_at: float | None = None  # journaled_at of the oldest undelivered event, as last read
        self._commit_listeners: list[Callable[[int], None]] = []  # further delivery paths (DC-09), woken by commits
        make_publisher = publisher or Publisher
        subscriptions = {confirm_topic(site.site.id): self._on_confirm} if self._confirming else {}
        self.publisher = make_publisher(
            site,
            self.outbox,
            self.stats,
            online=self._online,
            offline=self._offline,
            heartbeat=self._heartbeat,
            subscriptions=subscriptions,
        )

    def use_config_hash(self, config_hash: str) -> None:
        """A reload applied another site file: the retained status carries its hash from now on."""
        self._config_hash = config_hash
        self.publisher.status_changed()

    def renew_mqtt(self, mqtt: MqttConfig) -> None:
        """A reload: the publisher reconnects cleanly with the TLS files and password read again (from `mqtt`'s
        paths: only credential settings may differ from the running config's, gateway/config/diff.py)."""
        self.publisher.renew(mqtt)

    def health(self) -> HealthReport:
        """For /readyz: MQTT connected and the journal writable."""
        if not self.stats.connected:
            return HealthReport(
                False, "mqtt not connected" + (f": {self.stats.last_error}" if self.stats.last_error else "")
            )
        if not self.journal_writable:
            return HealthReport(False, "journal not writable" + (f": {self._fault.error}" if self._fault else ""))
        if (stalled := self.stats.journal_stalled_for(time.monotonic())) >= JOURNAL_STALL:
            return HealthReport(False, f"journal stalled: its thread has not answered for {stalled:.0f} s")
        return HealthReport(True, "mqtt connected, journal writable")

    # --- EventSink ---------------------------------------------------------------------------------------

    async def load_state(self) -> tuple[list[PointState], list[DeviceState]]:
        await self._open()
        return await self._db(self._journal.load_state)

    async def accept(self, batch: Batch) -> Sequence[Event]:
        """Journals the batch; returns its events with seq (shed info events are left out)."""
        if self._closed:
            raise JournalError("delivery sink is closed")
        if not batch:
            return []
        while len(self._pending) >= QUEUE_BATCHES:
            self._room.clear()
            await self._room.wait()
            if self._closed:
                raise JournalError("delivery sink is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Event]] = loop.create_future()
        self._pending.append(_Pending(batch, time.time(), future))
        self._idle.clear()
        if self._writer_on and not self._committing:
            self._committing = True
            loop.call_soon(self._start_commit)  # after the other callers woken in this iteration queued
        return await future

    async def run(self) -> None:
        await self._open()
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._writer())
                tg.create_task(self._marker())
                tg.create_task(self._pruner())
                tg.create_task(self._confirmer())
                tg.create_task(self._redeliverer())
                tg.create_task(self._prober())
                await self.publisher.run()  # returns after close() asked it to stop
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self._running = False
            if self._fault_timer is not None:
                self._fault_timer.cancel()
            if self._commit is not None:  # let the commit under way finish: its callers learn the outcome
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(self._commit)
            self._fail_queued(JournalError("delivery sink stopped"))
            await self._flush_marks()
            self._finished.set()

    async def close(self) -> None:
        """Clean shutdown: commit what is queued, drain for a short grace, publish `offline`, disconnect."""
        if self._closed:
            return
        if self._running:
            await wait_event(self._idle, self._close_grace)
        self._closed = True
        if self._running:
            self.publisher.request_stop(self._close_grace)
            await wait_event(self._finished, self._close_grace + 5.0)
        if self._opened:
            await self._flush_marks()
            await self._db(self._journal.close)
        self._executor.shutdown(wait=True)

    @property
    def journal_writable(self) -> bool:
        """For readiness: False once closed, and after a failed journal write until one succeeds again."""
        return self._opened and not self._closed and not self._write_failed

    # --- journal access ----------------------------------------------------------------------------------

    @property
    def journal(self) -> Journal:
        return self._journal

    def add_commit_listener(self, listener: Callable[[int], None]) -> None:
        """`listener(last_seq)` runs on the loop after each commit that journaled events (DC-09 paths)."""
        self._commit_listeners.append(listener)

    async def journal_call(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs `fn(*args)` on the journal's thread, after the journal was opened (the DC-09 paths' reads
        and marks share the one SQLite connection and thread with the sink)."""
        await self._open()
        return await self._db(fn, *args)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args))
        except sqlite3.Error as exc:  # not all of the journal's methods map them (marks, confirm, prune, reads)
            raise JournalError(f"journal {getattr(fn, '__name__', 'job')} failed: {exc}") from exc

    async def _open(self) -> None:
        async with self._open_lock:
            if self._opened:
                return
            await self._db(self._journal.open)
            self._opened = True
            first = await self._db(self._journal.first_undelivered_seq)
            states = await self._db(self._journal.dirty_states)
            self.outbox.start(first, self._journal.last_seq, states)
            self.stats.last_seq = self._journal.last_seq
            self.stats.journal_depth = self._journal.depth
            self.stats.published_seq = await self._db(self._journal.published_up_to)
            if self._confirming:
                self.stats.confirmed_seq = await self._db(self._journal.confirmed_up_to, self._delivery.receivers)
            else:
                self.stats.confirmed_seq = self.stats.published_seq

    async def _read_undelivered(self, from_seq: int, limit: int) -> list[Journaled]:
        return parse_page(await self._db(self._journal.read_undelivered_json, from_seq, limit))

    # --- tasks -------------------------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Enables the commit chain (see the module docstring) while it runs; raises what the chain hit."""
        self._writer_on = True
        try:
            if self._pending and not self._committing:
                self._committing = True
                asyncio.get_running_loop().call_soon(self._start_commit)
            await self._writer_failed.wait()
            assert self._writer_error is not None
            raise self._writer_error
        finally:
            self._writer_on = False

    def _crash(self, exc: BaseException) -> None:
        """A bug in the commit chain (not an I/O error): stop committing and let `_writer` raise it."""
        self._writer_on = False
        if self._writer_error is None:
            self._writer_error = exc
        self._writer_failed.set()

    def _start_commit(self, retry: bool = False) -> None:
        """Plans everything queued (up to GROUP_MAX batches) and hands it to the journal thread. During a
        journal fault the fault's events go first; `retry` (the fault timer) commits them alone if need be."""
        self._committing = False
        fault = self._fault_batch()
        if not self._writer_on or not (self._pending or (retry and fault)):
            if not self._pending:
                self._idle.set()
            return
        group = [self._pending.popleft() for _ in range(min(GROUP_MAX, len(self._pending)))]
        self._room.set()
        now = time.time()
        try:
            plan = self._journal.plan(
                [fault, *(item.batch for item in group)] if fault else [item.batch for item in group],
                now=now,
                link_down=not self.stats.connected,
                handed_at=[now, *(item.handed_at for item in group)] if fault else [i.handed_at for i in group],
            )
            self._committing = True
            commit = self._executor.submit(self._journal.write, plan)
        except BaseException as exc:  # a bug, not an I/O error: fail the callers, then crash loudly
            self._committing = False
            self._finish(group, exc)
            self._crash(exc)
            return
        self._commit = commit
        loop = asyncio.get_running_loop()
        commit.add_done_callback(lambda done: loop.call_soon_threadsafe(self._commit_done, group, plan, done))

    def _fault_batch(self) -> Batch:
        """The journal_fault alarm (at the first failure) and its restore (now), while a fault is not journaled."""
        fault = self._fault
        if fault is None:
            return Batch()
        now = datetime.now(UTC)
        common: dict[str, Any] = {
            "site": self.site.site.id,
            "event_type": EventType.JOURNAL_FAULT,
            "point": PointRef(id="gateway.journal", name="gateway journal"),
            "source": SourceRef(protocol="gateway", device_id="gateway", address=str(self._journal.path)),
        }
        alarm = make_event(
            **common,
            state=EventState.ALARM,
            occurred_at=fault.since,
            detected_at=fault.since,
            text=f"journal writes failing: {fault.error}",
        )
        restore = make_event(
            **common,
            state=EventState.RESTORE,
            occurred_at=now,
            detected_at=now,
            text=f"journal writable again after {fault.failures} failed commit(s)",
        )
        return Batch(events=(alarm, restore))

    def _retry_fault(self) -> None:
        """The fault timer: nothing else may come to commit (a quiet site), so try the journal on its own."""
        self._fault_timer = None
        if self._fault is not None and self._writer_on and not self._committing:
            self._committing = True
            self._start_commit(retry=True)

    def _commit_done(self, group: list[_Pending], plan: Plan, done: Future[None]) -> None:
        """On the loop: resolves the group's callers, then plans the next group one iteration later, after
        the callers woken here have queued their next batches. The events go to the outbox last, so that in
        that iteration the publisher wakes after the next commit was handed to the journal thread: it then
        publishes while the journal thread waits for the fsync."""
        self._commit = None
        try:
            exc = done.exception()
            self._finish(group, plan.result if exc is None else exc)
        except BaseException as error:
            self._committing = False
            self._crash(error)
            return
        if exc is not None and not isinstance(exc, JournalError):
            self._committing = False
            self._crash(exc)
            return
        if exc is not None and self._fault_timer is None:
            self._fault_timer = asyncio.get_running_loop().call_later(FAULT_RETRY, self._retry_fault)
        if self._writer_on:
            asyncio.get_running_loop().call_soon(self._start_commit)  # _committing stays True until then
        else:
            self._committing = False
            if not self._pending:
                self._idle.set()
        if exc is None:
            self.outbox.committed(plan.result.journaled, plan.result.states)
            if plan.result.journaled:
                for listener in self._commit_listeners:
                    listener(self._journal.last_seq)

    def _finish(self, group: list[_Pending], outcome: CommitResult | BaseException) -> None:
        if isinstance(outcome, CommitResult):
            self._committed(group, outcome)
            return
        error = outcome if isinstance(outcome, JournalError) else JournalError(f"journal writer failed: {outcome!r}")
        self._write_failed = True
        self.stats.journal_write_failures += 1
        if self._fault is None:
            self._fault = _Fault(datetime.now(UTC), str(error))
        else:
            self._fault.failures += 1
        log.error("journal_commit_failed", error=str(error), batches=len(group), failures=self._fault.failures)
        for item in group:
            if not item.future.done():
                item.future.set_exception(error)

    def _committed(self, group: list[_Pending], result: CommitResult) -> None:
        self._write_failed = False
        if self._fault is not None:  # its events went first into this commit
            log.info("journal_writable_again", since=self._fault.since.isoformat(), failures=self._fault.failures)
            self._fault = None
        self.stats.commits += 1
        self.stats.committed_batches += len(group)
        self.stats.journaled += len(result.journaled)
        self.stats.last_seq = self._journal.last_seq
        self.stats.journal_depth = self._journal.depth
        if result.shed:
            self.stats.shed += result.shed
            log.warning("journal_info_shed", count=result.shed, total=self._journal.shed_total)
        per_batch = result.per_batch[len(result.per_batch) - len(group) :]  # after the fault's batch, if any
        for item, events in zip(group, per_batch, strict=True):
            if not item.future.done():
                item.future.set_result(events)

    def _fail_queued(self, exc: Exception) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(exc)
        self._room.set()
        if not self._committing:
            self._idle.set()

    async def _prober(self) -> None:
        """Proves that the journal's thread makes progress: a no-op job every PROBE_INTERVAL, queued behind
        whatever it has to do. While one waits, `stats.journal_waiting_since` says since when: a disk that
        hangs in fsync stalls every commit without failing one, and that must show (readiness, heartbeat
        `journal_ok`, systemd's watchdog: gateway/ops/systemd.py) rather than look like a quiet building."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                since = self.stats.journal_waiting_since = time.monotonic()
                try:
                    probe = loop.run_in_executor(self._executor, time.monotonic)
                except RuntimeError:  # the executor was shut down (close() gave up waiting for run): done
                    return
                stalled = False
                while True:
                    try:  # asyncio.timeout, not wait_for: see gateway.core.lifecycle.wait_event
                        async with asyncio.timeout(JOURNAL_STALL):
                            await asyncio.shield(probe)
                        break
                    except TimeoutError:
                        if not stalled:
                            stalled = True
                            log.error("journal_stalled", detail=f"its thread has not answered for {JOURNAL_STALL:g} s")
                if stalled:
                    log.warning("journal_progressing_again", stalled_s=round(time.monotonic() - since, 1))
                self.stats.journal_waiting_since = None
                await asyncio.sleep(PROBE_INTERVAL)
        finally:
            self.stats.journal_waiting_since = None  # stopped: no stale "stalled" for the status line or metrics

    async def _marker(self) -> None:
        while True:
            await asyncio.sleep(MARK_INTERVAL)
            await self._flush_marks()

    async def _flush_marks(self) -> None:
        seqs, states = self.outbox.take_marks()
        if not (seqs or states) or not self._opened or self._journal_closed():
            self.outbox.put_back(seqs, states)  # written once the journal is open again
            return
        try:
            # Shielded: the marks are already taken from the outbox, so a cancel (the marker task at
            # shutdown) must not cancel the queued write; close() runs after it on the same executor thread.
            await asyncio.shield(self._write_marks(seqs, states))
        except JournalError as exc:
            self._write_failed = True
            self.stats.journal_write_failures += 1
            self.outbox.put_back(seqs, states)  # never dropped: the next flush tries again
            log.error("journal_mark_failed", error=str(exc), marks=len(seqs) + len(states))
        else:
            if self._fault is None:  # writable again (while commits fail, only a commit says so)
                self._write_failed = False
            if seqs:
                self.stats.published_seq = max(self.stats.published_seq, *seqs)
                if not self._confirming:  # confirm: broker: the PUBACK is the confirmation
                    self.stats.confirmed_seq = self.stats.published_seq
        self.stats.journal_depth = self._journal.depth

    async def _write_marks(self, seqs: list[int], states: list[tuple[str, int]]) -> None:
        """Both marks in one job on the journal's thread, so nothing queued after it can come between. A
        PUBACK makes an event published (confirm: meldkamer) or delivered (confirm: broker)."""
        mark = self._journal.mark_published if self._confirming else self._journal.mark_delivered

        def write(at: float) -> None:
            mark(seqs, at)
            self._journal.mark_states_published(states)

        await self._db(write, time.time())

    def _journal_closed(self) -> bool:
        try:
            _ = self._journal.db
        except JournalError:
            return True
        return False

    async def _pruner(self) -> None:
        while True:
            try:
                pruned = await self.prune(time.time())
            except JournalError as exc:
                log.error("journal_prune_failed", error=str(exc))
            else:
                if pruned:
                    log.info("journal_pruned", events=pruned)
            await asyncio.sleep(PRUNE_INTERVAL)

    async def prune(self, now: float) -> int:
        """Retention: deletes delivered events older than it in chunks of PRUNE_CHUNK rows, each its own job
        on the journal thread, started only while no commit waits, and followed by a pause PRUNE_PAUSE times
        as long as the chunk took. An alarm's commit thus waits behind one small chunk at most, and the disk
        is busy with housekeeping a fifth of the time at most (bench/bench_prune.py)."""
        total = 0
        loop = asyncio.get_running_loop()
        while True:
            await self._idle.wait()
            started = loop.time()
            chunk = await self._db(self._journal.prune, now, PRUNE_CHUNK)
            total += chunk
            if chunk < PRUNE_CHUNK:
                return total
            await asyncio.sleep(PRUNE_PAUSE * (loop.time() - started))  # pacing: commits get the disk between chunks

    # --- meldkamer confirmation, redelivery, replay ---------------------------------------------------

    def _on_confirm(self, payload: bytes) -> None:
        """A message on the confirm topic (on the loop, from the publisher's session): checked, then merged
        into the latest confirmation of its receiver; `_confirmer` applies it on the journal thread."""
        try:
            doc = ConfirmDoc.model_validate_json(payload)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            self.stats.confirmations_invalid += 1
            n = self.stats.confirmations_invalid
            if n in (1, 10, 100, 1000) or n % 10_000 == 0:  # counted always; logged without flooding
                log.warning("confirmation_invalid", error=str(exc).splitlines()[0], total=n)
            return
        if doc.site != self.site.site.id or doc.receiver not in self._delivery.receivers:
            self.stats.confirmations_invalid += 1
            if doc.receiver not in self._warned_receivers:
                self._warned_receivers.add(doc.receiver)
                log.warning(
                    "confirmation_ignored",
                    receiver=doc.receiver,
                    site=doc.site,
                    detail="not a receiver of this site (delivery.receivers) or another site's",
                )
            return
        earlier = self._confirms.get(doc.receiver)
        if earlier is not None:
            up_to = max(doc.up_to_seq, earlier.up_to_seq)
            seqs = sorted({s for s in (*earlier.seqs, *doc.seqs) if s > up_to})
            doc = doc.model_copy(update={"up_to_seq": up_to, "seqs": seqs})
        self._confirms[doc.receiver] = doc
        self._confirm_wake.set()

    async def _confirmer(self) -> None:
        while True:
            await self._confirm_wake.wait()
            self._confirm_wake.clear()
            pending, self._confirms = self._confirms, {}
            for receiver, doc in pending.items():
                try:
                    newly = await self._db(
                        self._journal.confirm,
                        receiver,
                        doc.up_to_seq,
                        doc.seqs,
                        self._delivery.receivers,
                        time.time(),
                    )
                except JournalError as exc:
                    log.error("journal_confirm_failed", error=str(exc))
                    self._write_failed = True
                    self.stats.journal_write_failures += 1
                    self._confirms.setdefault(receiver, doc)  # applied with the next one
                    self._confirm_wake.set()
                    await asyncio.sleep(MARK_INTERVAL)  # a failing disk: retry soon, not in a tight loop
                    continue
                self.stats.confirmations += 1
                self.stats.confirmed += newly
                if self._journal.confirmed_seq > self.stats.confirmed_seq:  # the cumulative floor moved
                    self._progress_at = time.monotonic()
                self.stats.confirmed_seq = self._journal.confirmed_seq
                self.stats.journal_depth = self._journal.depth

    async def _redeliverer(self) -> None:
        """Pages events into the outbox again: those published but unconfirmed past the confirm timeout
        (confirm: meldkamer), and the range of a replay request."""
        timeout = self._delivery.confirm_timeout
        period = min(1.0, timeout / 4)
        while True:
            await asyncio.sleep(period)  # a periodic scan, bounded by the outbox's room
            room = self.outbox.redelivery_room
            if not self.stats.connected or room <= 0:
                continue
            try:
                if self._replay is not None:
                    start, last = self._replay
                    page = parse_page(await self._db(self._journal.read_range_json, start, last, room))
                    self._replay = (page[-1].seq + 1, last) if page and page[-1].seq < last else None
                elif self._confirming and time.monotonic() - self._progress_at > timeout:
                    # Only while the cumulative confirmation stalls: a receiver that is catching up (just
                    # slower than we publish) would otherwise get everything twice; a gap below isolated
                    # confirmations stalls it, so the missing event does come again.
                    page = parse_page(await self._db(self._journal.read_unconfirmed_json, time.time(), timeout, room))
                else:
                    continue
            except JournalError as exc:
                log.error("journal_read_failed", error=str(exc))
                continue
            self.stats.redelivered += self.outbox.redeliver(page)

    async def replay(self, from_seq: int, to_seq: int | None) -> ReplayOutcome:
        """gateway.core.ports.Replayer: publish journaled events from_seq..to_seq again (paged in by
        `_redeliverer`). Refused when the range is no longer (or not yet) journaled."""
        if not self._opened:
            return ReplayOutcome(False, "replay_unavailable", "the journal is not open yet")
        first, last = await self._db(lambda: (self._journal.first_seq(), self._journal.last_seq))
        if from_seq > last:
            return ReplayOutcome(False, "beyond_last_seq", f"seq {from_seq} is beyond the last seq {last}", None, last)
        if from_seq < first:
            return ReplayOutcome(
                False, "pruned", f"seq {from_seq}..{first - 1} are no longer journaled (retention)", first, last
            )
        end = min(to_seq if to_seq is not None else last, last)
        self._replay = (
            (from_seq, end) if self._replay is None else (min(from_seq, self._replay[0]), max(end, self._replay[1]))
        )
        self.stats.replays += 1
        return ReplayOutcome(True, None, f"seq {from_seq}..{end} queued for publication again", from_seq, end)

    # --- documents ---------------------------------------------------------------------------------------

    def _online(self) -> StatusDoc:
        return self._status("online", "connected", last_seq=self.stats.last_seq, at=datetime.now(UTC))

    def _offline(self, reason: str) -> StatusDoc:
        if reason in ("shutdown", "reconnecting"):
            return self._status("offline", reason, last_seq=self.stats.last_seq, at=datetime.now(UTC))
        return self._status("offline", "connection lost", last_seq=None, at=None)

    def _status(self, status: Any, reason: Any, *, last_seq: int | None, at: datetime | None) -> StatusDoc:
        return StatusDoc(
            site=self.site.site.id,
            status=status,
            reason=reason,
            version=self._version,
            config_hash=self._config_hash,
            started_at=self._started_at,
            at=at,
            last_seq=last_seq,
            published_seq=self.stats.published_seq if at is not None else None,
            confirmed_seq=self.stats.confirmed_seq if at is not None else None,
        )

    async def _heartbeat(self) -> HeartbeatDoc:
        """Published even while the journal fails or stalls (then with journal_ok false and the last known age)."""
        now = time.time()
        stalled = self.stats.journal_stalled_for(time.monotonic()) >= JOURNAL_STALL
        try:
            if stalled:  # its thread is stuck: do not queue behind it, the heartbeat must go out on time
                raise JournalError("journal stalled")
            async with asyncio.timeout(HEARTBEAT_JOURNAL_WAIT):  # not wait_for: gateway.core.lifecycle.wait_event
                oldest = await self._db(self._journal.oldest_undelivered_at)
        except (JournalError, TimeoutError):
            oldest = self._oldest_at  # the last one read: its age keeps growing while the journal cannot say
        else:
            self._oldest_at = oldest
        online, total = self._devices()
        self.stats.journal_depth = self._journal.depth
        self.stats.oldest_undelivered_age = None if oldest is None else max(0.0, now - oldest)
        return HeartbeatDoc(
            site=self.site.site.id,
            at=datetime.fromtimestamp(now, UTC),
            interval=self.site.supervision.heartbeat_interval,
            last_seq=self.stats.last_seq,
            journal_depth=self._journal.depth,
            oldest_undelivered_age=self.stats.oldest_undelivered_age,
            published_seq=self.stats.published_seq,
            confirmed_seq=self.stats.confirmed_seq,
            devices_online=online,
            devices_total=total,
            inputs_ok=self._inputs_ok(),
            journal_ok=not (self._write_failed or stalled),
            info_shed=self._journal.shed_total,
        )


class _Stopped(Exception):
    """Internal: the publisher returned after close(); ends run()'s task group."""
