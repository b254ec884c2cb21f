"""What the gateway tells systemd (Type=notify): ready, alive, what it is doing, stopping.

READY=1 once the journal is open and the inputs run -- whether or not the broker is reachable: from then on
every alarm is journaled and will be delivered, so the building is covered (`/readyz` says whether it can
deliver right now). WATCHDOG=1 comes from a task of the event loop itself, so a loop that is stuck (a
blocking call, a busy callback) stops the pings and systemd restarts the service after `WatchdogSec=`; and
only while the journal's thread makes progress (`journal_stalled_for`): a disk that hangs in fsync takes no
alarm, however lively the loop, so it stops the pings too once it has hung for half of `WatchdogSec=`.
STATUS= (shown by `systemctl status`) is sent whenever it changes; STOPPING=1 as soon as shutdown begins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gateway.core.lifecycle import wait_event
from gateway.ops.sdnotify import SystemdNotifier

log = structlog.get_logger(__name__)

STATUS_INTERVAL = 1.0  # seconds between looks at the status line (sent only when it changed)


@dataclass(frozen=True)
class ServiceView:
    """The facts of the STATUS= line, read at each look. `mqtt_connected` and `undelivered` are None without
    an MQTT link (commissioning with the stdout sink); `confirming`: undelivered = not yet confirmed by the
    meldkamer (otherwise: not yet acknowledged by the broker)."""

    devices_online: Callable[[], tuple[int, int]]
    mqtt_connected: Callable[[], bool] | None = None
    undelivered: Callable[[], int] | None = None
    confirming: bool = True
    journal_stalled_for: Callable[[float], float] | None = None  # seconds, given time.monotonic(); None: no journal
    journal_stall: float = 5.0  # from then on the status line says the journal is stalled


def status_line(view: ServiceView) -> str:
    parts: list[str] = []
    if view.mqtt_connected is None:
        parts.append("no MQTT link (stdout sink)")
    else:
        parts.append("MQTT connected" if view.mqtt_connected() else "MQTT not connected, journaling")
    online, total = view.devices_online()
    parts.append(f"devices online {online}/{total}")
    if view.undelivered is not None:
        parts.append(f"{view.undelivered()} events {'unconfirmed' if view.confirming else 'unacknowledged'}")
    if view.journal_stalled_for is not None:
        stalled = view.journal_stalled_for(time.monotonic())
        if stalled >= view.journal_stall:
            parts.append(f"JOURNAL STALLED for {stalled:.0f} s")
    return "; ".join(parts)


class SystemdSupervision:
    """A component of the gateway's TaskGroup (run under its Supervisor): READY once `started` is set, then
    watchdog pings and status lines until cancelled; STOPPING when `stopping` is set (pings go on until the
    end: shutdown flushes the journal and publishes `offline`)."""

    name = "systemd-notify"

    def __init__(
        self,
        notifier: SystemdNotifier,
        view: ServiceView,
        *,
        started: asyncio.Event,
        stopping: asyncio.Event,
        status_interval: float = STATUS_INTERVAL,
    ) -> None:
        self.notifier = notifier
        self.view = view
        self._started = started
        self._stopping = stopping
        watchdog = notifier.watchdog_interval
        self._ping_every = watchdog / 2 if watchdog else None  # sd_watchdog_enabled(3): ping at half the interval
        self._tick = min(status_interval, self._ping_every) if self._ping_every else status_interval

    def _journal_stalled(self, limit: float) -> bool:
        stalled_for = self.view.journal_stalled_for
        return stalled_for is not None and stalled_for(time.monotonic()) >= limit

    async def run(self) -> None:
        await self._started.wait()
        await asyncio.sleep(0)  # the input tasks created with ours have taken their first step
        status = status_line(self.view)
        self.notifier.send("READY=1", "STATUS=" + status)
        loop = asyncio.get_running_loop()
        next_ping = loop.time()
        stopping_sent = False
        withheld = False
        while True:
            if self._ping_every is not None and loop.time() >= next_ping:
                # at least the journal's own stall bound: a long but legitimate job is not a hang
                if self._journal_stalled(max(self._ping_every, self.view.journal_stall)):
                    if not withheld:
                        log.error("watchdog_withheld", detail="the journal makes no progress: systemd will restart us")
                    withheld = True
                else:
                    withheld = False
                    self.notifier.watchdog()
                next_ping = loop.time() + self._ping_every
            if self._stopping.is_set() and not stopping_sent:
                stopping_sent = True
                self.notifier.send("STOPPING=1", "STATUS=stopping: flushing the journal, publishing offline")
            elif not stopping_sent and (now := status_line(self.view)) != status:
                status = now
                self.notifier.status(status)
            wait = self._tick if self._ping_every is None else min(self._tick, max(0.0, next_ping - loop.time()))
            if stopping_sent:
                await asyncio.sleep(wait)
            else:
                await wait_event(self._stopping, wait)
