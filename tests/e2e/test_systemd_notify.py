"""`gcmk-gateway run` as a Type=notify service: READY, WATCHDOG, STATUS and STOPPING on a fake notify socket.

The gateway is a real process against simulated devices; the test binds the notify socket and sets
NOTIFY_SOCKET and WATCHDOG_USEC as systemd would.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

from tests.support.gateway_process import WATCHDOG_USEC, gateway_process, journal_file, log_of
from tests.support.mosquitto import Mosquitto, free_port, mosquitto
from tests.support.notify import NotifySocket, status_of

__all__ = ["mosquitto"]  # the fixture

async def test_ready_with_the_broker_unreachable_then_watchdog_status_and_stopping(tmp_path: Path) -> None:
    with NotifySocket() as notify:
        async with gateway_process(tmp_path, f"mqtt://127.0.0.1:{free_port()}", notify) as (process, simulator):
            ready = await notify.until(lambda m: "READY=1" in m or "STOPPING=1" in m)
            assert "READY=1" in ready, notify.messages
            assert journal_file(tmp_path).exists(), "READY=1 before the journal was opened"
            status = status_of(ready)
            assert status is not None and status.startswith("MQTT not connected"), status
            after_ready = len(notify.messages)

            for _ in range(3):  # pings go on (their pace: tests/unit/ops/test_systemd_supervision.py)
                await notify.until(lambda m: m == ["WATCHDOG=1"], 5 * WATCHDOG_USEC / 1e6)
            online = await notify.until(lambda m: "devices online 2/2" in (status_of(m) or ""), since=after_ready)
            assert "0 events unconfirmed" in (status_of(online) or ""), online

            await simulator.raise_alarm("pir-02")  # journaled, not deliverable: the broker is unreachable
            alarmed = await notify.until(lambda m: "1 events unconfirmed" in (status_of(m) or ""), 10)
            assert (status_of(alarmed) or "").startswith("MQTT not connected"), alarmed

            process.send_signal(signal.SIGTERM)
            stopping = await notify.until(lambda m: "STOPPING=1" in m, 10)
            assert status_of(stopping) == "stopping: flushing the journal, publishing offline"
            async with asyncio.timeout(20):
                await process.wait()
            assert process.returncode == 0, log_of(tmp_path)[-2000:]
    assert sum("READY=1" in m for m in notify.messages) == 1


async def test_status_says_connected_with_a_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with NotifySocket() as notify:
        async with gateway_process(tmp_path, mosquitto.url, notify) as (process, _simulator):
            await notify.until(lambda m: "READY=1" in m)
            await notify.until(lambda m: (status_of(m) or "").startswith("MQTT connected; devices online 2/2"))
            mosquitto.stop()
            await notify.until(lambda m: (status_of(m) or "").startswith("MQTT not connected"), 15)
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()
            assert process.returncode == 0, log_of(tmp_path)[-2000:]


async def test_no_ready_when_the_journal_cannot_be_opened(tmp_path: Path) -> None:
    path = journal_file(tmp_path)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:  # a journal of a newer release: refused at start, left untouched
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '999')")
    with NotifySocket() as notify:
        async with gateway_process(tmp_path, f"mqtt://127.0.0.1:{free_port()}", notify) as (process, _simulator):
            async with asyncio.timeout(30):
                await process.wait()
            assert process.returncode != 0
            assert "999" in log_of(tmp_path), log_of(tmp_path)[-2000:]
        while True:  # what it sent before it exited is queued on the socket: read it all
            try:
                async with asyncio.timeout(0.2):
                    await notify.receive()
            except TimeoutError:
                break
    assert not any("READY=1" in m for m in notify.messages), notify.messages
