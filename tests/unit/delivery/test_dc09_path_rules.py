"""The DC-09 path against a fake transmitter (the real one is tested in tests/unit/dc09 and against pysiaalarm in
tests/integration/delivery/test_dc09_path.py): routing, order, DUH, durable cursor, restart, path faults."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import pytest

from gateway.dc09.transmitter import Endpoint, LinkState, Message, Outcome
from gateway.delivery.dc09_path import Dc09Path, fault_point
from gateway.delivery.journal import Journal
from gateway.domain.errors import SiteConfigFault
from gateway.domain.event import Event
from gateway.domain.state import Batch
from gateway.domain.taxonomy import EventState, EventType
from gateway.testing import wait_until
from tests.support.dc09 import JournalHost, with_dc09
from tests.support.delivery_harness import SITE, make_event, site_config


class FakeReceiver:
    """What the fake transmitters talk to: up or down, DUH for chosen texts, every accepted message in order."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.up.set()
        self.messages: list[Message] = []
        self.duh_for: set[str] = set()
        self.duh_all = False  # a receiving centre that never set up our account
        self.first_seqs: list[int] = []  # the first message sequence number of each transmitter


class FakeTransmitter:
    """The Transmitter contract: send returns only on ACK or DUH and retries internally while the receiver is down."""

    def __init__(
        self,
        receiver: FakeReceiver,
        endpoint: Endpoint,
        *,
        on_link_change: Any = None,
        on_ignored: Any = None,
        first_seq: int = 1,
    ) -> None:
        self.receiver = receiver
        self.endpoint = endpoint
        self._on_link_change = on_link_change
        self.last_seq = first_seq - 1  # the message sequence number last used
        receiver.first_seqs.append(first_seq)
        self._link = LinkState(False, time.monotonic(), None, 0, 0.0)

    @property
    def link(self) -> LinkState:
        return self._link

    def _set(self, up: bool) -> None:
        if up != self._link.up:
            ack = datetime.now(UTC) if up else self._link.last_ack_at
            self._link = LinkState(up, time.monotonic(), ack, 0 if up else 1, 0.0)
            if self._on_link_change is not None:
                self._on_link_change(self._link)

    async def __aenter__(self) -> Self:
        self._set(self.receiver.up.is_set())
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, message: Message) -> Outcome:
        while not self.receiver.up.is_set():
            self._set(False)
            await self.receiver.up.wait()
        self._set(True)
        self.last_seq = self.last_seq % 9999 + 1
        if message.data in self.receiver.duh_for or self.receiver.duh_all:
            return Outcome.DUH
        self.receiver.messages.append(message)
        return Outcome.ACKED


def fake_message(event: Event, *, fmt: str, account: str, zone_no: int, area_no: int) -> Message:
    return Message("SIA-DCS", account, f"{event.type}/{event.state}/{event.text}/z{zone_no}/a{area_no}")


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, receiver: FakeReceiver, **options: Any
) -> AsyncIterator[tuple[JournalHost, Dc09Path]]:
    site = with_dc09(site_config(tmp_path / "journal", "mqtt://127.0.0.1:1"), tmp_path, 9, **options)
    journal = Journal(tmp_path / "j.sqlite3", site=site.site.id, max_bytes=1 << 30, retention=60.0, paths=("dc09:ats",))
    host = JournalHost(journal)
    path = Dc09Path(
        site,
        0,
        host,
        transmitter=lambda endpoint, **kw: FakeTransmitter(receiver, endpoint, **kw),
        message=fake_message,
    )
    task = asyncio.create_task(path.run())
    try:
        yield host, path
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await host.close()


async def add(host: JournalHost, *events: Event) -> None:
    for event in events:
        await host.accept(Batch(events=(event,)))


def texts(receiver: FakeReceiver) -> list[str]:
    return [m.data.split("/")[2] for m in receiver.messages]


async def test_routed_events_go_in_seq_order_info_stays_home_and_duh_moves_on(tmp_path: Path) -> None:
    receiver = FakeReceiver()
    receiver.duh_for = {"fault/alarm/n=2/z1/a1"}
    async with running(tmp_path, receiver) as (host, path):
        info = make_event(99, EventType.ACCESS_GRANTED, EventState.INFO)
        await add(host, *(make_event(i) for i in range(2)), info, *(make_event(i) for i in range(2, 4)))
        await wait_until(lambda: path.stats.cursor == 5, 5, what="every seq handled")
        assert texts(receiver) == ["n=0", "n=1", "n=3"], "the DUH'd one is not resent, info not routed"
        assert host.journal.path_outcomes("dc09:ats") == [(1, "acked"), (2, "acked"), (4, "duh"), (5, "acked")]
        assert (path.stats.acked, path.stats.duh) == (3, 1)
        assert receiver.messages[0].account == "4711" and receiver.messages[0].data.endswith("/z1/a1")


async def test_a_restart_resumes_at_the_cursor_without_resending(tmp_path: Path) -> None:
    receiver = FakeReceiver()
    async with running(tmp_path, receiver) as (host, path):
        await add(host, *(make_event(i) for i in range(3)))
        await wait_until(lambda: path.stats.cursor == 3, 5)
    async with running(tmp_path, receiver) as (host, path):
        assert path.stats.cursor in (0, 3)
        await add(host, make_event(3))
        await wait_until(lambda: path.stats.cursor == 4, 5)
    assert texts(receiver) == ["n=0", "n=1", "n=2", "n=3"], "nothing sent twice"
    assert receiver.first_seqs == [1, 4], "the restarted path goes on with the next message sequence number"


async def test_a_receiver_that_processes_nothing_is_a_path_fault_although_it_answers(tmp_path: Path) -> None:
    receiver = FakeReceiver()
    receiver.duh_all = True
    async with running(tmp_path, receiver) as (host, path):
        await add(host, make_event(0), make_event(1))
        await wait_until(lambda: path.stats.fault_active, 5, what="path fault on DUH with the link up")
        (fault,) = [e for e in host.journal.events() if e.type is EventType.PATH_FAULT]
        assert "seq 1 answered DUH" in (fault.text or ""), fault.text
        receiver.duh_all = False
        await add(host, make_event(2))
        await wait_until(lambda: not path.stats.fault_active, 5, what="restore once a message is ACKed")
        assert host.journal.path_outcomes("dc09:ats")[:2] == [(1, "duh"), (2, "duh")]


async def test_a_failing_path_raises_a_path_fault_for_the_other_paths_and_a_restore(tmp_path: Path) -> None:
    receiver = FakeReceiver()
    receiver.up.clear()
    async with running(tmp_path, receiver) as (host, path):
        started = time.monotonic()
        await add(host, make_event(0), make_event(1))
        await wait_until(lambda: path.stats.fault_active, 5, what="path fault")
        assert 1.0 <= time.monotonic() - started < 2.5, "raised after the supervision interval (1 s), not later"
        await wait_until(lambda: path.stats.unacknowledged == 2, 5, what="backlog gauge")
        receiver.up.set()
        await wait_until(lambda: not path.stats.fault_active and path.stats.cursor == 4, 5, what="restore")
        faults = [e for e in host.journal.events() if e.type is EventType.PATH_FAULT]
        assert [(e.state, e.point.id) for e in faults] == [
            (EventState.ALARM, fault_point("ats")),
            (EventState.RESTORE, fault_point("ats")),
        ]
        assert texts(receiver) == ["n=0", "n=1"], "its own fault events are not sent on the path itself"
        assert host.journal.path_fault_active("dc09:ats") is False
        assert path.stats.faults == 1


async def test_an_unreadable_or_wrong_key_file_stops_with_the_config_path(tmp_path: Path) -> None:
    receiver = FakeReceiver()
    for content, message in ((None, "cannot read the AES key"), ("00112233", "holds 4 bytes"), ("xyz", "cannot read")):
        site = with_dc09(site_config(tmp_path / "journal", "mqtt://127.0.0.1:1"), tmp_path, 9)
        key_file = tmp_path / "dc09.key"
        if content is None:
            key_file.unlink()
        else:
            key_file.write_text(content, encoding="ascii")
        journal = Journal(tmp_path / "k.sqlite3", site=SITE, max_bytes=1 << 30, retention=60.0, paths=("dc09:ats",))
        host = JournalHost(journal)
        path = Dc09Path(site, 0, host, transmitter=lambda e, **kw: FakeTransmitter(receiver, e, **kw))
        try:
            with pytest.raises(SiteConfigFault, match=message) as info:
                await path.run()
            assert info.value.path == "dc09.receivers[0].key_file"
        finally:
            await host.close()


async def test_the_backlog_count_is_paced_by_what_it_costs_the_journal_thread(tmp_path: Path) -> None:
    """The count scans the path's backlog on the journal's thread, where alarms are committed; after a long
    outage that scan is slow. Its refresh waits BACKLOG_PACING times as long as the scan took, instead of
    running every watch interval (0.25 s here) whatever it costs."""
    receiver = FakeReceiver()
    async with running(tmp_path, receiver) as (host, _path):
        scans: list[float] = []
        plain = host.journal_call

        async def journal_call(fn: Any, *args: Any) -> Any:
            if fn == host.journal.path_backlog:
                scans.append(time.monotonic())
                await asyncio.sleep(0.1)  # a slow scan: the gauge waits 2 s for the next one
            return await plain(fn, *args)

        host.journal_call = journal_call  # type: ignore[method-assign]
        await wait_until(lambda: len(scans) >= 1, 5)
        watching = time.monotonic()
        await asyncio.sleep(1.5)  # the span measured: 4-5 scans without pacing (every 0.25 + 0.1 s), 1 with it
        assert len([t for t in scans if t > watching]) <= 1, scans
