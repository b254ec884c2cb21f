"""SystemdSupervision in-process against a fake notify socket: READY after start, STATUS on change only,
watchdog pings only when systemd asked for them, STOPPING once."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from gateway.ops.sdnotify import SystemdNotifier
from gateway.ops.systemd import ServiceView, SystemdSupervision, status_line
from tests.support.notify import NotifySocket, status_of


def test_status_line() -> None:
    view = ServiceView(lambda: (3, 4), mqtt_connected=lambda: False, undelivered=lambda: 7)
    assert status_line(view) == "MQTT not connected, journaling; devices online 3/4; 7 events unconfirmed"
    broker = ServiceView(lambda: (4, 4), mqtt_connected=lambda: True, undelivered=lambda: 0, confirming=False)
    assert status_line(broker) == "MQTT connected; devices online 4/4; 0 events unacknowledged"
    assert status_line(ServiceView(lambda: (0, 1))) == "no MQTT link (stdout sink); devices online 0/1"


async def test_ready_after_start_status_on_change_and_stopping_once() -> None:
    online = [0]
    started, stopping = asyncio.Event(), asyncio.Event()
    with NotifySocket() as notify:
        supervision = SystemdSupervision(
            SystemdNotifier(notify.address),  # no WATCHDOG_USEC: no pings
            ServiceView(lambda: (online[0], 2)),
            started=started,
            stopping=stopping,
            status_interval=0.01,
        )
        task = asyncio.create_task(supervision.run())
        try:
            await asyncio.sleep(0.05)
            assert not notify.messages  # nothing before the gateway has started
            started.set()
            ready = await notify.until(lambda m: "READY=1" in m, 2)
            assert status_of(ready) == "no MQTT link (stdout sink); devices online 0/2"
            online[0] = 1
            assert await notify.until(lambda m: True, 2) == ["STATUS=no MQTT link (stdout sink); devices online 1/2"]
            stopping.set()
            assert (await notify.until(lambda m: True, 2))[0] == "STOPPING=1"
            online[0] = 2  # after STOPPING the status line stays "stopping"
            await asyncio.sleep(0.1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        while True:
            try:
                async with asyncio.timeout(0.05):
                    await notify.receive()
            except TimeoutError:
                break
    assert len(notify.messages) == 3, notify.messages  # READY, one status change, STOPPING: no pings


async def test_watchdog_pings_at_half_the_interval() -> None:
    started, stopping = asyncio.Event(), asyncio.Event()
    started.set()
    interval = 0.4
    with NotifySocket() as notify:
        notifier = SystemdNotifier(notify.address, watchdog_interval=interval)
        supervision = SystemdSupervision(notifier, ServiceView(lambda: (0, 0)), started=started, stopping=stopping)
        task = asyncio.create_task(supervision.run())
        try:
            await notify.until(lambda m: "READY=1" in m, 2)
            loop = asyncio.get_running_loop()
            pings = []
            for _ in range(4):
                await notify.until(lambda m: m == ["WATCHDOG=1"], 2)
                pings.append(loop.time())
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            assert min(gaps) >= interval / 2 * 0.75, gaps  # paced at half the interval, not a busy loop
            assert sum(gaps) / len(gaps) < interval, gaps  # well within what systemd waits for
            stopping.set()
            await notify.until(lambda m: "STOPPING=1" in m, 2)
            await notify.until(lambda m: m == ["WATCHDOG=1"], 2)  # and on while shutting down
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_status_looks_do_not_add_watchdog_pings() -> None:
    started, stopping = asyncio.Event(), asyncio.Event()
    started.set()
    with NotifySocket() as notify:
        notifier = SystemdNotifier(notify.address, watchdog_interval=4.0)  # a ping every 2 s
        supervision = SystemdSupervision(
            notifier, ServiceView(lambda: (0, 0)), started=started, stopping=stopping, status_interval=0.01
        )
        task = asyncio.create_task(supervision.run())
        try:
            await notify.until(lambda m: "READY=1" in m, 2)
            await notify.until(lambda m: m == ["WATCHDOG=1"], 2)  # the first one at once
            await asyncio.sleep(0.3)  # some 30 looks at the status meanwhile
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        while True:
            try:
                async with asyncio.timeout(0.05):
                    await notify.receive()
            except TimeoutError:
                break
    assert sum(m == ["WATCHDOG=1"] for m in notify.messages) == 1, notify.messages


async def test_a_stalled_journal_withholds_the_watchdog_pings_and_says_so() -> None:
    """A disk that hangs in fsync takes no alarm however lively the loop: once the journal's thread has not
    answered for half of WatchdogSec the pings stop (systemd restarts the service), and they resume with it."""
    started, stopping = asyncio.Event(), asyncio.Event()
    started.set()
    stalled = [0.0]
    view = ServiceView(lambda: (1, 1), journal_stalled_for=lambda _now: stalled[0], journal_stall=5.0)
    with NotifySocket() as notify:
        notifier = SystemdNotifier(notify.address, watchdog_interval=0.2)  # a ping every 0.1 s
        supervision = SystemdSupervision(notifier, view, started=started, stopping=stopping, status_interval=0.01)
        task = asyncio.create_task(supervision.run())
        try:
            await notify.until(lambda m: "READY=1" in m, 2)
            await notify.until(lambda m: m == ["WATCHDOG=1"], 2)
            stalled[0] = 6.0
            status = await notify.until(lambda m: any("STALLED" in x for x in m), 2)
            assert status_of(status) == "no MQTT link (stdout sink); devices online 1/1; JOURNAL STALLED for 6 s"
            with pytest.raises(TimeoutError):  # 0.5 s: five ping intervals without a ping
                await notify.until(lambda m: m == ["WATCHDOG=1"], 0.5)
            stalled[0] = 0.0
            await notify.until(lambda m: m == ["WATCHDOG=1"], 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
