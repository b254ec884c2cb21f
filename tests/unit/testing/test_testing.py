"""gateway.testing: the shared sinks, the waits, the fake clock and the loop-exception catcher."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.core.ports import DeviceStatus, EventSink, Quality, Reading, ReadingSink
from gateway.domain.state import Batch, DeviceState
from gateway.domain.taxonomy import EventState, EventType
from gateway.testing import CollectingReadings, CollectingSink, FakeClock, LoopExceptionCatcher, wait_until
from tests.support.delivery_harness import make_event, point_state

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CONFTEST = Path(__file__).resolve().parents[2] / "conftest.py"


def reading(point_id: str, value: int | str | None, quality: Quality = Quality.GOOD) -> Reading:
    return Reading(point_id, value, quality, T0)


def status(device_id: str, online: bool) -> DeviceStatus:
    return DeviceStatus(device_id, online, T0)


def later(delay: float, action: object) -> asyncio.Task[None]:
    """Run `action` (a coroutine function or plain function) after `delay` seconds, in the background."""

    async def run() -> None:
        await asyncio.sleep(delay)
        result = action()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            await result

    return asyncio.create_task(run())


# --- CollectingSink ------------------------------------------------------------------------------------------


async def test_collecting_sink_numbers_events_across_batches_and_keeps_the_state_rows() -> None:
    sink: EventSink = CollectingSink()
    first = await sink.accept(Batch(events=(make_event(1), make_event(2)), points=(point_state("pir-01", "alarm", 1),)))
    device = DeviceState("panel-1", False, T0)
    restore = make_event(3, EventType.BURGLARY, EventState.RESTORE)
    second = await sink.accept(Batch(events=(restore,), devices=(device,)))
    assert [e.seq for e in (*first, *second)] == [1, 2, 3]
    points, devices = await sink.load_state()
    assert [p.point_id for p in points] == ["pir-01"] and devices == [device]
    assert isinstance(sink, CollectingSink)
    assert [e.text for e in sink.events] == ["n=1", "n=2", "n=3"]
    assert sink.of("pir-01") == [("fault", "alarm"), ("fault", "alarm"), ("burglary", "restore")]
    assert sink.of("other") == []


async def test_collecting_sink_records_run_and_close_in_order() -> None:
    sink = CollectingSink()
    task = asyncio.create_task(sink.run())
    await wait_until(lambda: sink.calls)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sink.close()
    assert sink.calls == ["run", "close"]


async def test_collecting_sink_wait_for_returns_the_events_once_the_predicate_holds() -> None:
    sink = CollectingSink()
    feeder = later(0.02, lambda: sink.accept(Batch(events=(make_event(7),))))
    events = await sink.wait_for(lambda ev: len(ev) == 1, within=5)
    await feeder
    assert [e.seq for e in events] == [1]


async def test_collecting_sink_wait_for_says_what_it_waited_for() -> None:
    sink = CollectingSink()
    await sink.accept(Batch(events=(make_event(1),)))
    with pytest.raises(TimeoutError, match=r"len\(ev\) == 2.*not met within 0.05s; 1 events.*pir-01"):
        await sink.wait_for(lambda ev: len(ev) == 2, within=0.05)


# --- CollectingReadings --------------------------------------------------------------------------------------


async def test_collecting_readings_keeps_readings_and_statuses_in_order() -> None:
    sink: ReadingSink = CollectingReadings()
    await sink.submit(reading("a", 0))
    await sink.device_status(status("d", False))
    await sink.submit(reading("b", 1))
    await sink.submit(reading("a", 1, Quality.BAD))
    assert isinstance(sink, CollectingReadings)
    assert [r.point_id for r in sink.readings] == ["a", "b", "a"]
    assert sink.statuses == [status("d", False)]
    assert [type(x).__name__ for x in sink.log] == ["Reading", "DeviceStatus", "Reading", "Reading"]
    assert [r.value for r in sink.of("a")] == [0, 1]
    assert {p: r.value for p, r in sink.latest().items()} == {"a": 1, "b": 1}
    assert sink.good_value("b") == 1
    assert sink.good_value("a") is None  # the last reading of a is bad
    assert sink.good_value("missing") is None


async def test_collecting_readings_wait_for_returns_the_truthy_value_on_a_notification() -> None:
    sink = CollectingReadings()
    feeder = later(0.02, lambda: sink.submit(reading("a", 5)))
    found = await sink.wait_for(lambda: next((r for r in sink.readings if r.value == 5), None), within=5)
    await feeder
    assert found is sink.readings[0]


async def test_collecting_readings_wait_for_rechecks_conditions_outside_the_sink() -> None:
    sink = CollectingReadings()
    counter = {"polls": 0}
    bump = later(0.02, lambda: counter.update(polls=3))  # nothing notifies the sink about this
    assert await sink.wait_for(lambda: counter["polls"] >= 3, within=5) is True
    await bump


async def test_collecting_readings_wait_reading_skips_the_readings_before_after() -> None:
    sink = CollectingReadings()
    await sink.submit(reading("a", "active"))
    mark = len(sink.readings)
    feeder = later(0.02, lambda: sink.submit(reading("a", "active")))
    found = await sink.wait_reading("a", "active", within=5, after=mark)
    await feeder
    assert found is sink.readings[1]
    with pytest.raises(TimeoutError, match=r"no reading 'inactive' of a within 0.05s \(after #0\).*'active'"):
        await sink.wait_reading("a", "inactive", within=0.05)


async def test_collecting_readings_forwards_first_then_records() -> None:
    downstream = CollectingReadings()
    seen_downstream: list[int] = []

    class Probe:
        async def submit(self, r: Reading) -> None:
            seen_downstream.append(len(tap.readings))  # not yet recorded by the tap
            await downstream.submit(r)

        async def device_status(self, s: DeviceStatus) -> None:
            await downstream.device_status(s)

    tap = CollectingReadings(forward=Probe())
    await tap.submit(reading("a", 1))
    await tap.device_status(status("d", True))
    assert seen_downstream == [0]
    assert downstream.log == tap.log == [reading("a", 1), status("d", True)]


async def test_collecting_readings_wait_for_says_what_it_waited_for() -> None:
    sink = CollectingReadings()
    with pytest.raises(TimeoutError, match=r"sink.statuses.*0.05s; 0 readings, 0 statuses"):
        await sink.wait_for(lambda: sink.statuses, within=0.05)


# --- wait_until ----------------------------------------------------------------------------------------------


async def test_wait_until_returns_the_truthy_value() -> None:
    box: list[str] = []
    filler = later(0.02, lambda: box.append("x"))
    assert await wait_until(lambda: box and box[0], timeout=5) == "x"
    await filler


async def test_wait_until_names_the_condition_when_it_times_out() -> None:
    flag = False
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match=r"<lambda> at test_testing.py:\d+: .*lambda: flag.*not met within 0.05s"):
        await wait_until(lambda: flag, 0.05)
    assert 0.05 <= loop.time() - started < 1
    with pytest.raises(TimeoutError, match=r"^the flag: not met within 0.01s$"):
        await wait_until(lambda: flag, 0.01, what="the flag")


# --- FakeClock -----------------------------------------------------------------------------------------------


def test_fake_clock_stands_still_until_advanced_or_set() -> None:
    clock = FakeClock()
    assert clock.now() == clock() == datetime(2025, 1, 1, tzinfo=UTC)
    assert clock.now().tzinfo is UTC
    assert clock.advance(1.5) == datetime(2025, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    assert clock() == clock.now() == datetime(2025, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    clock.advance(-0.5)
    assert clock.timestamp() == datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC).timestamp()
    clock.set(datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))
    assert clock() == datetime(2025, 6, 1, 12, 0, tzinfo=UTC) and clock().tzinfo is UTC
    assert FakeClock(T0)() == T0


def test_fake_clock_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="aware"):
        FakeClock(datetime(2025, 1, 1))  # naive
    with pytest.raises(ValueError, match="aware"):
        FakeClock().set(datetime(2025, 1, 1))


# --- LoopExceptionCatcher ------------------------------------------------------------------------------------


async def test_catcher_reports_a_future_exception_nobody_retrieved() -> None:
    """What the suite-wide fixture relies on: a lost future's exception fails `check()` (after gc)."""
    loop = asyncio.get_running_loop()
    catcher = LoopExceptionCatcher().install()
    try:
        future = loop.create_future()
        future.set_exception(ValueError("lost in a future"))
        del future
        with pytest.raises(AssertionError) as info:
            catcher.check()
    finally:
        catcher.uninstall()
    assert [c["message"] for c in catcher.contexts] == ["Future exception was never retrieved"]
    report = str(info.value)
    assert "reported 1 unhandled exception(s)" in report
    assert "future: <Future finished exception=ValueError('lost in a future')>" in report
    assert "ValueError: lost in a future" in report


async def test_catcher_reports_a_task_exception_nobody_retrieved() -> None:
    async def crash() -> None:
        raise RuntimeError("background task crashed")

    catcher = LoopExceptionCatcher().install()
    try:
        task = asyncio.get_running_loop().create_task(crash())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done()
        del task
        with pytest.raises(AssertionError, match=r"(?s)Task exception was never retrieved.*in crash.*crashed"):
            catcher.check()
    finally:
        catcher.uninstall()


async def test_catcher_reports_an_exception_in_a_callback() -> None:
    def callback() -> None:
        raise KeyError("in a callback")

    async with LoopExceptionCatcher() as catcher:
        asyncio.get_running_loop().call_soon(callback)
        await asyncio.sleep(0.01)
        [context] = catcher.contexts
        assert context["message"].startswith(f"Exception in callback {callback.__qualname__}()")
        assert isinstance(context["exception"], KeyError)
        catcher.contexts.clear()  # seen: leaving the block checks again


async def test_catcher_restores_the_previous_handler() -> None:
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    outer = LoopExceptionCatcher().install()
    try:
        with LoopExceptionCatcher(loop) as inner:
            assert loop.get_exception_handler() == inner._record
            assert inner.loop is loop
        assert loop.get_exception_handler() == outer._record
    finally:
        outer.uninstall()
    assert loop.get_exception_handler() is before
    outer.uninstall()  # a second uninstall changes nothing
    assert loop.get_exception_handler() is before


async def test_catcher_check_passes_when_nothing_was_reported() -> None:
    async with LoopExceptionCatcher() as catcher:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(ValueError("retrieved"))
        assert isinstance(future.exception(), ValueError)  # retrieved: not a report
        del future
        gc.collect()
    assert catcher.contexts == []


def test_catcher_on_a_loop_of_its_own_checks_when_the_block_ends() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(AssertionError, match="Future exception was never retrieved"), LoopExceptionCatcher(loop):
            future = loop.create_future()
            future.set_exception(OSError("lost"))
            del future
        assert loop.get_exception_handler() is None
        with pytest.raises(ZeroDivisionError), LoopExceptionCatcher(loop) as catcher:  # the block's error wins
            loop.call_exception_handler({"message": "reported"})
            raise ZeroDivisionError
        assert [c["message"] for c in catcher.contexts] == ["reported"]
        assert loop.get_exception_handler() is None
    finally:
        loop.close()


def test_catcher_without_a_loop_needs_one_running() -> None:
    catcher = LoopExceptionCatcher()
    with pytest.raises(RuntimeError, match="no loop given"):
        _ = catcher.loop
    with pytest.raises(RuntimeError, match="no running event loop"):
        catcher.install()


async def test_every_async_test_runs_under_the_suite_catcher(loop_exceptions: LoopExceptionCatcher) -> None:
    """tests/conftest.py installs a catcher on each async test's loop and checks it at teardown."""
    assert loop_exceptions.loop is asyncio.get_running_loop()
    assert asyncio.get_running_loop().get_exception_handler() == loop_exceptions._record
    assert loop_exceptions.contexts == []


async def test_a_report_the_test_expects_can_be_cleared(loop_exceptions: LoopExceptionCatcher) -> None:
    asyncio.get_running_loop().call_exception_handler({"message": "expected by this test"})
    assert [c["message"] for c in loop_exceptions.contexts] == ["expected by this test"]
    loop_exceptions.contexts.clear()  # else the teardown fails the test


def test_catcher_refuses_a_second_install() -> None:
    loop = asyncio.new_event_loop()
    try:
        catcher = LoopExceptionCatcher(loop).install()
        with pytest.raises(RuntimeError, match="already installed"):
            catcher.install()
        catcher.uninstall()
    finally:
        loop.close()


def test_the_suite_fixture_fails_an_async_test_whose_loop_reported_something(pytester: pytest.Pytester) -> None:
    """tests/conftest.py itself, in a pytest run of its own: lost exceptions fail (only) the tests that lost them."""
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(
        test_lost="""
        import asyncio

        async def test_lost_future():
            future = asyncio.get_running_loop().create_future()
            future.set_exception(ValueError("nobody looked"))

        async def test_clean():
            await asyncio.sleep(0)

        def test_sync():
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_lost_future*", "*Future exception was never retrieved*", "*nobody looked*"]
    )
