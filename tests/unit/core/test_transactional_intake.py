"""Transactional intake in the core: a normaliser step takes effect only once the sink accepted its batch.

The normaliser applies a step at once and can take it back (`rollback`); the pipeline commits it after
`accept` returned and rolls it back when `accept` raised, and keeps other steps off the points and device of a
step still awaiting the sink. A refused reading offered again is therefore the same change again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import pipeline as pipeline_module
from gateway.core.normaliser import Normaliser, Step
from gateway.core.pipeline import Pipeline
from gateway.core.ports import DeviceStatus, Quality
from gateway.domain.errors import NotAccepted
from gateway.domain.event import Event
from gateway.domain.state import Batch
from gateway.testing import CollectingSink, FakeClock
from tests.support.readings import SITE, T0
from tests.support.readings import at as _at
from tests.support.readings import events as _events
from tests.support.readings import read as _read

# --- the normaliser ------------------------------------------------------------------------------------


def test_a_rolled_back_alarm_is_an_alarm_again() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_read("pir-01", 0, 0))
    step = norm.offer(_read("pir-01", 1, 1))
    assert _events(step.batch) == [("pir-01", "burglary", "alarm")]
    assert norm.point_state("pir-01").condition == "burglary", "applied at once"
    norm.rollback(step)
    assert norm.point_state("pir-01").condition == "normal"
    assert _events(norm.process(_read("pir-01", 1, 2))) == [("pir-01", "burglary", "alarm")], "offered again"
    assert not norm.process(_read("pir-01", 1, 3))


def test_a_debounced_change_rolled_back_keeps_its_start() -> None:
    norm = Normaliser(SITE, epoch=T0)  # smoke-1 debounces 2 s
    norm.process(_read("smoke-1", "quiet", 0))
    assert not norm.process(_read("smoke-1", "alarm", 10))
    step = norm.offer(_read("smoke-1", "alarm", 12.5))  # held for 2 s: confirmed by the reading
    assert _events(step.batch) == [("smoke-1", "fire", "alarm")]
    norm.rollback(step)
    assert norm.next_due() == _at(12), "pending again since 10, not restarted"
    assert _events(norm.process(_read("smoke-1", "alarm", 13))) == [("smoke-1", "fire", "alarm")]
    # confirmed by the timer, rolled back, confirmed by the next tick
    assert not norm.process(_read("smoke-1", "quiet", 20))
    step = norm.offer_tick(_at(22))
    assert _events(step.batch) == [("smoke-1", "fire", "restore")]
    norm.rollback(step)
    assert norm.point_state("smoke-1").condition == "fire" and norm.next_due() == _at(22)
    assert _events(norm.tick(_at(23))) == [("smoke-1", "fire", "restore")]


def test_a_change_held_for_its_debounce_time_counts_when_the_next_reading_reverts_it() -> None:
    """The timer's step was refused (or the timer was late): a later reading that goes back to normal must not
    make the alarm a flap, it held for longer than the debounce time."""
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_read("smoke-1", "quiet", 0))
    norm.process(_read("smoke-1", "alarm", 10))
    norm.rollback(norm.offer_tick(_at(12)))
    batch = norm.process(_read("smoke-1", "quiet", 12.5))
    assert _events(batch) == [("smoke-1", "fire", "alarm")]
    assert batch.events[0].detected_at == _at(12), "confirmed when it had held 2 s"
    assert norm.next_due() == _at(14.5), "and the restore is debounced from the reading"
    assert norm.stats.suppressed_flaps == 0
    assert _events(norm.tick(_at(14.5))) == [("smoke-1", "fire", "restore")]


def test_a_change_still_debounced_ends_when_an_unknown_point_shows_normal() -> None:
    norm = Normaliser(SITE, epoch=T0)
    assert not norm.process(_read("smoke-1", "alarm", 0))  # unknown -> fire: debounced
    assert not norm.process(_read("smoke-1", "quiet", 1)).events  # unknown -> normal: at once
    assert norm.next_due() is None, "the alarm it no longer shows is not pending"
    assert not norm.tick(_at(5)), "a false alarm"


def test_a_rolled_back_occurrence_of_a_momentary_point_is_an_occurrence_again() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_read("badge-1", "granted", 0))
    step = norm.offer(_read("badge-1", "denied-unknown-credential", 1, occurrence="7"))
    assert _events(step.batch) == [("badge-1", "access_denied", "info")]
    norm.rollback(step)
    again = norm.process(_read("badge-1", "denied-unknown-credential", 2, occurrence="7"))
    assert _events(again) == [("badge-1", "access_denied", "info")], "not taken for a re-read"


def test_a_rolled_back_offline_status_is_a_comm_loss_again() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.device_status(DeviceStatus("panel-1", online=True, at=_at(0)))
    step = norm.offer_status(DeviceStatus("panel-1", online=False, at=_at(1)))
    assert _events(step.batch) == [("panel-1", "comm_loss", "alarm")]
    norm.rollback(step)
    assert norm.device_online("panel-1") is True
    again = norm.device_status(DeviceStatus("panel-1", online=False, at=_at(2)))
    assert _events(again) == [("panel-1", "comm_loss", "alarm")]


def test_only_events_of_committed_steps_are_counted() -> None:
    norm = Normaliser(SITE, epoch=T0)
    norm.process(_read("pir-01", 0, 0))
    norm.rollback(norm.offer(_read("pir-01", 1, 1)))
    assert sum(norm.stats.events.values()) == 0
    norm.commit(norm.offer(_read("pir-01", 1, 2)))
    assert norm.stats.events == {("panel-1", "intrusion", "burglary"): 1}


POINT_VALUES = {
    "pir-01": [0, 1, 5],
    "door-1": ["normal", "forced-open", "door-open-too-long", "tamper", "door-fault"],
    "smoke-1": ["quiet", "alarm", "fault"],
    "badge-1": ["granted", "denied-unknown-credential"],
}
action = st.one_of(
    st.tuples(
        st.just("read"),
        st.sampled_from(sorted(POINT_VALUES)),
        st.integers(0, 5),
        st.booleans(),
        st.floats(0, 3),
        st.integers(0, 2),
    ),
    st.tuples(st.just("tick"), st.just(""), st.just(0), st.just(True), st.floats(0, 3), st.integers(0, 2)),
    st.tuples(
        st.just("device"),
        st.sampled_from(["panel-1", "fire-1"]),
        st.just(0),
        st.booleans(),
        st.floats(0, 3),
        st.integers(0, 2),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(action, max_size=60))
def test_refused_steps_offered_again_give_the_same_events_and_state(actions: list[tuple]) -> None:  # type: ignore[type-arg]
    """A normaliser whose steps are refused (rolled back) up to twice and offered again ends up exactly where
    one whose steps were all accepted does, having made the same events."""
    plain = Normaliser(SITE, epoch=T0)
    refused = Normaliser(SITE, epoch=T0)
    now = 0.0
    made: list[tuple[str, str, str]] = []
    accepted: list[tuple[str, str, str]] = []
    for kind, target, index, flag, dt, refusals in actions:
        now += dt
        if kind == "read":
            values = POINT_VALUES[target]
            quality = Quality.GOOD if flag else Quality.BAD
            reading = _read(target, values[index % len(values)], now, quality, occurrence=str(index))
            made += _events(plain.process(reading))
            offer: Callable[[], Step] = partial(refused.offer, reading)
        elif kind == "tick":
            made += _events(plain.tick(_at(now)))
            offer = partial(refused.offer_tick, _at(now))
        else:
            status = DeviceStatus(target, online=flag, at=_at(now))
            made += _events(plain.device_status(status))
            offer = partial(refused.offer_status, status)
        step = offer()
        for _ in range(refusals):
            if not step.batch:
                break
            refused.rollback(step)
            step = offer()
        refused.commit(step)
        accepted += _events(step.batch)
    assert accepted == made
    for point in SITE.points:
        assert refused.point_state(point.id) == plain.point_state(point.id)
    assert refused.next_due() == plain.next_due()
    assert refused.stats.events == plain.stats.events


# --- the pipeline --------------------------------------------------------------------------------------


class RefusingSink(CollectingSink):
    """Refuses the next `refuse` batches with events, as a journal on a failing disk does; a batch with
    events waits for `gate` while it is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()  # set while a batch waits at the gate

    async def accept(self, batch: Batch) -> Sequence[Event]:
        if batch.events and not self.gate.is_set():
            self.held.set()
            await self.gate.wait()
            self.held.clear()
        if batch.events and self.refuse:
            self.refuse -= 1
            raise NotAccepted("journal commit failed: disk I/O error")
        return await super().accept(batch)


async def test_a_refused_submit_raises_and_consumes_nothing() -> None:
    sink = RefusingSink()
    pipeline = Pipeline(Normaliser(SITE, epoch=T0), sink)
    await pipeline.submit(_read("pir-01", 0, 0))
    sink.refuse = 1
    with pytest.raises(NotAccepted):
        await pipeline.submit(_read("pir-01", 1, 1))
    assert sink.events == [] and pipeline.accepted == 0
    assert pipeline.normaliser.point_state("pir-01").condition == "normal"
    await pipeline.submit(_read("pir-01", 1, 2))  # the adapter offers it again
    assert sink.of("pir-01") == [("burglary", "alarm")] and pipeline.accepted == 1
    with pytest.raises(NotAccepted):
        sink.refuse = 1
        await pipeline.device_status(DeviceStatus("panel-1", online=False, at=_at(3)))
    assert pipeline.normaliser.device_online("panel-1") is None
    await pipeline.device_status(DeviceStatus("panel-1", online=False, at=_at(3)))
    assert sink.of("panel-1") == [("comm_loss", "alarm")]


async def test_a_reading_waits_while_the_timer_awaits_the_sink_for_its_point() -> None:
    """The timer confirms smoke-1's alarm and awaits the sink; the detector goes quiet meanwhile. Processed at
    once, the quiet reading would become a pending restore that the refused alarm's rollback then wipes out:
    the point would end in alarm, quiet, with no restore. It waits, and sees the rolled-back state."""
    sink = RefusingSink()
    clock = FakeClock(_at(0))
    pipeline = Pipeline(Normaliser(SITE, epoch=T0), sink, clock=clock)
    await pipeline.submit(_read("smoke-1", "quiet", 0))
    await pipeline.submit(_read("smoke-1", "alarm", 10))
    clock.set(_at(12))
    sink.gate.clear()
    sink.refuse = 1
    async with asyncio.TaskGroup() as tg:
        timer = tg.create_task(pipeline.run_debounce_timer())
        await asyncio.wait_for(sink.held.wait(), 5)  # the timer's alarm awaits the sink
        quiet = tg.create_task(pipeline.submit(_read("smoke-1", "quiet", 12.5)))
        await asyncio.sleep(0)  # one loop iteration: the new task runs up to where it waits (not a delay)
        assert not quiet.done() and pipeline.normaliser.stats.readings == 2, "it waits for the timer's step"
        sink.gate.set()  # the alarm is refused and rolled back; then the quiet reading is processed
        await quiet
        assert sink.of("smoke-1") == [("fire", "alarm")], "held 2 s before the quiet reading: it counts"
        clock.set(_at(14.5))
        await pipeline.submit(_read("pir-01", 0, 14.5))  # any reading wakes the timer to look again
        await sink.wait_for(lambda _events: len(sink.of("smoke-1")) == 2, 5)
        timer.cancel()
    assert sink.of("smoke-1") == [("fire", "alarm"), ("fire", "restore")]
    assert pipeline.normaliser.point_state("smoke-1").condition == "normal"


async def test_the_timer_offers_a_refused_debounced_change_again() -> None:
    sink = RefusingSink()
    clock = FakeClock(_at(0))
    pipeline = Pipeline(Normaliser(SITE, epoch=T0), sink, clock=clock)
    await pipeline.submit(_read("smoke-1", "quiet", 0))
    await pipeline.submit(_read("smoke-1", "alarm", 10))
    clock.set(_at(12))
    sink.refuse = 1
    async with asyncio.TaskGroup() as tg:
        timer = tg.create_task(pipeline.run_debounce_timer())
        await sink.wait_for(lambda _events: sink.of("smoke-1") == [("fire", "alarm")], 5)  # after REFUSED_RETRY
        timer.cancel()
    assert sink.refuse == 0


async def test_submit_many_is_one_accept_and_a_refusal_rolls_all_of_it_back() -> None:
    """The changes of one poll: one batch for the sink (one journal commit); refused, every reading of it is
    as if never offered, including a point that appears twice (back to before the first of them)."""
    sink = RefusingSink()
    batches: list[int] = []
    accept = sink.accept

    async def counting(batch: Batch) -> Sequence[Event]:
        batches.append(len(batch.events))
        return await accept(batch)

    sink.accept = counting  # type: ignore[method-assign]
    pipeline = Pipeline(Normaliser(SITE, epoch=T0), sink)
    await pipeline.submit_many([_read("pir-01", 0, 0), _read("pir-02", 0, 0)])
    poll = [_read("pir-01", 1, 1), _read("pir-02", 1, 1), _read("pir-01", 0, 1.5)]
    sink.refuse = 1
    with pytest.raises(NotAccepted):
        await pipeline.submit_many(poll)
    assert sink.events == [] and pipeline.accepted == 0
    assert {p: pipeline.normaliser.point_state(p).condition for p in ("pir-01", "pir-02")} == {
        "pir-01": "normal",
        "pir-02": "normal",
    }
    await pipeline.submit_many(poll)  # offered again, the same way
    assert batches[-2:] == [3, 3], "one accept per submit_many"
    assert sink.of("pir-01") == [("burglary", "alarm"), ("burglary", "restore")]
    assert sink.of("pir-02") == [("burglary", "alarm")]
    assert pipeline.accepted == 3


def test_offer_many_rolled_back_also_undoes_a_debounce_it_started() -> None:
    """All or nothing: a reading of the hand-over that only started a debounce (no event of its own) is undone
    with the rest, or the next tick would confirm a change whose hand-over the journal refused."""
    norm = Normaliser(SITE, epoch=T0)  # smoke-1 debounces 2 s
    norm.process(_read("smoke-1", "quiet", 0))
    norm.process(_read("pir-01", 0, 0))
    step = norm.offer_many([_read("smoke-1", "alarm", 10), _read("pir-01", 1, 10)])
    assert _events(step.batch) == [("pir-01", "burglary", "alarm")]
    assert norm.next_due() == _at(12), "smoke-1 pending"
    norm.rollback(step)
    assert norm.next_due() is None, "the debounce the refused hand-over started is undone"
    assert norm.point_state("pir-01").condition == "normal"


async def _alarm_held_by_the_sink(refused: bool) -> tuple[RefusingSink, Pipeline, asyncio.Task[None]]:
    """pir-01 normal, then its alarm handed over by a caller task while the sink holds the commit (refusing it once
    released, if `refused`)."""
    sink = RefusingSink()
    pipeline = Pipeline(Normaliser(SITE, epoch=T0), sink)
    await pipeline.submit(_read("pir-01", 0, 0))
    sink.gate.clear()
    sink.refuse = 1 if refused else 0
    caller = asyncio.create_task(pipeline.submit(_read("pir-01", 1, 1)))
    await asyncio.wait_for(sink.held.wait(), 5)
    return sink, pipeline, caller


@pytest.mark.parametrize("refused", [False, True])
async def test_a_caller_cancelled_while_the_sink_commits_gets_the_sinks_outcome(refused: bool) -> None:
    """A device task stopped (reload, shutdown) while its step is being journaled: the journal's outcome decides.
    Committed -> the normaliser keeps the alarm (rolling it back would raise it a second time on the next
    reading); refused -> rolled back, offered again."""
    sink, pipeline, caller = await _alarm_held_by_the_sink(refused)
    caller.cancel()
    sink.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    expected = "normal" if refused else "burglary"
    assert pipeline.normaliser.point_state("pir-01").condition == expected
    assert sink.of("pir-01") == ([] if refused else [("burglary", "alarm")])
    await pipeline.submit(_read("pir-01", 1, 2))  # the next reading: an alarm only if it was not journaled
    assert sink.of("pir-01") == [("burglary", "alarm")]


async def test_repeated_cancels_do_not_cut_a_callers_wait_for_the_sinks_outcome() -> None:
    """The adapters' stop and the shutdown cancel again every second while a task is left (a cancel swallowed
    in a library, Python 3.11): each further cancel must not turn the wait into a rollback."""
    sink = RefusingSink()
    pipeline = Pipeline(Normaliser(SITE, epoch=T0), sink)
    await pipeline.submit(_read("pir-01", 0, 0))
    sink.gate.clear()
    caller = asyncio.create_task(pipeline.submit(_read("pir-01", 1, 1)))
    await asyncio.wait_for(sink.held.wait(), 5)
    for _ in range(3):
        caller.cancel()
        await asyncio.sleep(0)  # one loop iteration, so that each cancel arrives on its own (not a delay)
    assert not caller.done(), "still waiting for the sink's outcome"
    sink.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, 5)
    await pipeline.submit(_read("pir-01", 1, 2))
    assert sink.of("pir-01") == [("burglary", "alarm")], "journaled once, not rolled back and raised again"
    assert pipeline.accepted == 1


@pytest.mark.parametrize("refused", [False, True])
async def test_a_caller_that_leaves_after_the_grace_leaves_the_step_to_the_sinks_outcome(
    refused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink that has not decided within CANCEL_GRACE (a disk that hangs): the stopped caller leaves, but the step
    is neither committed nor rolled back by guess. Its point stays held: the next reading waits and is judged
    against what the sink decided (journaled: no second alarm; refused: rolled back, the alarm again)."""
    monkeypatch.setattr(pipeline_module, "CANCEL_GRACE", 0.05)
    sink, pipeline, caller = await _alarm_held_by_the_sink(refused)
    with structlog.testing.capture_logs() as logs:
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, 5)  # gone after the grace, the sink still holding the batch
    assert [e["event"] for e in logs] == ["step_outcome_unknown"]
    assert sink.held.is_set() and not sink.events
    following = asyncio.create_task(pipeline.submit(_read("pir-01", 1, 2)))
    sink.gate.set()
    await asyncio.wait_for(following, 5)
    alarms = [e.occurred_at for e in sink.events if e.point.id == "pir-01"]
    assert alarms == ([_at(2)] if refused else [_at(1)]), "one alarm: the stopped caller's if it was journaled"
    assert pipeline.normaliser.point_state("pir-01").condition == "burglary"


async def test_the_timer_waits_for_a_step_holding_its_pending_points() -> None:
    """A reload's batch holds every point while it is journaled: a debounce falling due meanwhile is confirmed
    after it (under the config in force then), never journaled behind the reload's config_changed event."""
    sink = RefusingSink()
    clock = FakeClock(_at(0))
    pipeline = Pipeline(Normaliser(SITE, epoch=T0), sink, clock=clock)
    await pipeline.submit(_read("smoke-1", "quiet", 0))
    await pipeline.submit(_read("smoke-1", "alarm", 10))  # debounced 2 s: pending
    sink.gate.clear()
    held = pipeline.normaliser.offer(_read("pir-01", 1, 10))
    async with asyncio.TaskGroup() as tg:
        applying = tg.create_task(pipeline.apply(held, hold=pipeline.normaliser.pending_keys()))
        await asyncio.wait_for(sink.held.wait(), 5)
        clock.set(_at(12.5))  # smoke-1 falls due while the held step awaits the sink
        timer = tg.create_task(pipeline.run_debounce_timer())
        await asyncio.sleep(0)  # one loop iteration: the timer runs up to where it waits (not a delay)
        assert sink.of("smoke-1") == [] and pipeline.normaliser.next_due() is not None, "the timer waits"
        sink.gate.set()
        await applying
        await sink.wait_for(lambda _events: sink.of("smoke-1") == [("fire", "alarm")], 5)
        timer.cancel()
    assert [e.point.id for e in sink.events][-2:] == ["pir-01", "smoke-1"], "after the held step, not before"
