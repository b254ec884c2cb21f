"""The transmitter against a real, independent DC-09 receiver: pysiaalarm 3.2 (the receiver behind Home
Assistant's SIA integration), started here on a free loopback port. TCP with its asyncio server; UDP with its
threaded server (its asyncio UDP server sends no replies on Python 3.11)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from pysiaalarm import SIAAccount, SIAEvent
from pysiaalarm import SIAClient as ThreadedSIAClient
from pysiaalarm.aio import CommunicationsProtocol, SIAClient

from gateway.core.events import make_event
from gateway.dc09.mapping import dc09_message
from gateway.dc09.transmitter import Endpoint, LinkState, Message, Outcome, Transmitter
from gateway.domain.event import PointRef, SourceRef
from gateway.domain.taxonomy import EventState, EventType, sia_code
from gateway.testing import wait_until

ACCOUNT = "4711"
KEYS = {"aes128": "0123456789ABCDEF", "aes256": "0123456789ABCDEFGHIJKLMNOPQRSTUV"}


class Receiver:
    """pysiaalarm's asyncio TCP receiver; keeps what it accepted (ACKed) in order. `stop()` and `start()`
    again reuse the port of the first start."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.events: list[SIAEvent] = []
        self.times: list[float] = []  # loop time of each event's arrival
        self.port = 0
        self.client: SIAClient | None = None
        self.arrived = asyncio.Event()

    async def _on_event(self, event: SIAEvent) -> None:
        self.events.append(event)
        self.times.append(asyncio.get_running_loop().time())
        self.arrived.set()

    async def start(self) -> None:
        account = SIAAccount(ACCOUNT, self.key)
        self.client = SIAClient(
            "127.0.0.1", self.port, [account], function=self._on_event, protocol=CommunicationsProtocol.TCP
        )
        await self.client.async_start()
        assert self.client.server is not None
        self.port = self.client.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.async_stop()

    @property
    def messages(self) -> list[SIAEvent]:
        return [e for e in self.events if e.message_type is not None and e.message_type.value != "NULL"]

    @property
    def nulls(self) -> list[SIAEvent]:
        return [e for e in self.events if e.message_type is not None and e.message_type.value == "NULL"]

    def endpoint(self, **overrides: object) -> Endpoint:
        values: dict[str, object] = dict(
            host="127.0.0.1",
            port=self.port,
            transport="tcp",
            account=ACCOUNT,
            receiver="1",
            prefix="0",
            key=self.key.encode() if self.key else None,
            supervision=30.0,
            ack_timeout=1.0,
            backoff_initial=0.05,
            backoff_max=0.3,
        )
        values.update(overrides)
        return Endpoint(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def receiver(key: str | None = None) -> AsyncIterator[Receiver]:
    rx = Receiver(key)
    await rx.start()
    try:
        yield rx
    finally:
        await rx.stop()


def _event(event_type: EventType, state: EventState):  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    return make_event(
        site="s1",
        event_type=event_type,
        state=state,
        point=PointRef(id="p", name="P"),
        source=SourceRef(protocol="modbus", device_id="d", address="127.0.0.1:502"),
        occurred_at=now,
        detected_at=now,
        tenant="t1",
    )


def _burglary(zone: int) -> Message:
    return Message("SIA-DCS", ACCOUNT, f"Nri1/BA{zone:03d}")


@pytest.mark.parametrize("key", [None, "aes128", "aes256"])
async def test_every_event_type_arrives_with_its_code_zone_and_area(key: str | None) -> None:
    async with receiver(KEYS.get(key or "")) as rx, Transmitter(rx.endpoint()) as tx:
        expected = []
        for zone, (event_type, state) in enumerate(
            ((t, s) for t in EventType for s in (EventState.ALARM, EventState.RESTORE)), start=1
        ):
            message = dc09_message(_event(event_type, state), fmt="sia-dcs", account=ACCOUNT, zone_no=zone, area_no=2)
            assert await tx.send(message) is Outcome.ACKED
            expected.append((sia_code(event_type, state), "2", f"{zone:03d}"))
        await wait_until(lambda: len(rx.messages) == len(expected), timeout=5)
        assert [(e.code, e.ri, e.message) for e in rx.messages] == expected
        assert all(e.encrypted is bool(key) for e in rx.messages)
        assert [int(e.sequence or 0) for e in rx.messages] == list(range(1, len(expected) + 1))
        assert tx.stats.malformed_replies == 0 and tx.stats.naks == 0 and tx.link.up


@pytest.mark.parametrize("key", [None, "aes256"])
async def test_contact_id_arrives_with_event_qualifier_partition_and_zone(key: str | None) -> None:
    async with receiver(KEYS.get(key or "")) as rx, Transmitter(rx.endpoint()) as tx:
        for state in (EventState.ALARM, EventState.RESTORE):
            message = dc09_message(_event(EventType.FIRE, state), fmt="adm-cid", account=ACCOUNT, zone_no=7, area_no=3)
            assert await tx.send(message) is Outcome.ACKED
        await wait_until(lambda: len(rx.messages) == 2, timeout=5)
        assert [(e.event_qualifier, e.event_type, e.partition, e.ri, e.code) for e in rx.messages] == [
            ("1", "110", "03", "007", "FA"),
            ("3", "110", "03", "007", "FH"),
        ]


async def test_receiver_down_then_back_on_the_same_port_loses_nothing_and_keeps_the_order() -> None:
    rx = Receiver(KEYS["aes128"])
    await rx.start()
    changes: list[LinkState] = []
    try:
        async with Transmitter(rx.endpoint(), on_link_change=changes.append) as tx:
            assert await tx.send(_burglary(1)) is Outcome.ACKED
            await rx.stop()
            second = Receiver(rx.key)
            second.port = rx.port
            sending = asyncio.create_task(_send_all(tx, [_burglary(z) for z in range(2, 7)]))
            await wait_until(lambda: tx.stats.connect_failures >= 3, timeout=10, what="connects refused while down")
            assert not tx.link.up and not sending.done()
            await second.start()
            outcomes = await asyncio.wait_for(sending, 10)
            assert outcomes == [Outcome.ACKED] * 5
            await second.stop()
        arrived = rx.messages + second.messages
        by_seq = {int(e.sequence or 0): e.message for e in arrived}  # a retransmission may arrive twice
        assert [by_seq[s] for s in sorted(by_seq)] == [f"{z:03d}" for z in range(1, 7)]
        assert [e.message for e in arrived] == sorted(e.message or "" for e in arrived)  # in order
        assert [c.up for c in changes] == [True, False, True]
        assert tx.stats.reconnects >= 3
    finally:
        await rx.stop()


async def _send_all(tx: Transmitter, messages: list[Message]) -> list[Outcome]:
    return [await tx.send(m) for m in messages]


@pytest.mark.parametrize("skew", [60.0, -60.0])
async def test_clock_60s_off_gets_nak_then_corrected_then_ack(skew: float) -> None:
    def skewed() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=skew)

    async with receiver(KEYS["aes128"]) as rx, Transmitter(rx.endpoint(), now=skewed) as tx:
        async with asyncio.timeout(5):  # a transmitter that does not correct its clock would NAK forever
            assert await tx.send(_burglary(5)) is Outcome.ACKED
        assert tx.stats.naks == 1
        assert abs(tx.link.clock_offset + skew) <= 2
        assert await tx.send(_burglary(6)) is Outcome.ACKED  # no second NAK: the offset is kept
        assert tx.stats.naks == 1
        await wait_until(lambda: len(rx.messages) == 2, timeout=5)
        stamp = rx.messages[0].timestamp
        assert isinstance(stamp, datetime) and abs((stamp - datetime.now(UTC)).total_seconds()) < 10


async def test_unknown_code_gets_duh_and_is_not_resent() -> None:
    async with receiver() as rx, Transmitter(rx.endpoint()) as tx:
        assert rx.client is not None
        async with asyncio.timeout(5):  # a transmitter that resent on DUH would loop here
            assert await tx.send(Message("SIA-DCS", ACCOUNT, "Nri1/AC001")) is Outcome.DUH  # AC: no DC-03 code
        assert await tx.send(_burglary(2)) is Outcome.ACKED  # the receiver reads frames in order
        await wait_until(lambda: len(rx.messages) == 1, timeout=5)
        assert rx.client.counts.error_code == 1  # the DUH'd frame reached it once: no loop
        assert rx.client.counts.events == 2 + tx.stats.null_sent
        assert tx.stats.duhs == 1 and tx.stats.sent - tx.stats.null_sent == 2


@pytest.mark.parametrize("key", [None, "aes256"])
async def test_null_messages_at_the_supervision_interval_when_idle(key: str | None) -> None:
    interval = 0.3
    async with receiver(KEYS.get(key or "")) as rx, Transmitter(rx.endpoint(supervision=interval)) as tx:
        start = asyncio.get_running_loop().time()
        await wait_until(lambda: len(rx.nulls) >= 4, timeout=5, what="four NULL messages")
        assert rx.times[0] - start < interval / 2  # the first at once: the link state is known from the start
        gaps = [b - a for a, b in zip(rx.times, rx.times[1:], strict=False)]
        assert all(interval * 0.9 <= gap < interval * 3 for gap in gaps), gaps
        assert all(e.sequence == "0000" for e in rx.nulls)
        assert tx.stats.null_acked >= 4 and tx.link.up
        assert rx.messages == []


async def test_no_null_while_messages_keep_the_path_busy() -> None:
    async with receiver() as rx, Transmitter(rx.endpoint(supervision=0.5)) as tx:
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.2
        zone = 0
        while loop.time() < end:
            zone += 1
            await tx.send(_burglary(zone % 999 + 1))
            await asyncio.sleep(0.05)
        assert tx.stats.null_sent <= 1  # at most the one at the start, if it came before the first message


class ThreadedUdpReceiver:
    """pysiaalarm's threaded UDP server (socketserver), the one of its UDP servers that replies."""

    def __init__(self, key: str | None) -> None:
        self.events: list[SIAEvent] = []
        self.lock = threading.Lock()
        self.client = ThreadedSIAClient(
            "127.0.0.1", 0, [SIAAccount(ACCOUNT, key)], function=self._on_event, protocol=CommunicationsProtocol.UDP
        )
        self.port: int = self.client.sia_server.server_address[1]

    def _on_event(self, event: SIAEvent) -> None:
        with self.lock:
            self.events.append(event)

    def snapshot(self) -> list[SIAEvent]:
        with self.lock:
            return list(self.events)


@pytest.mark.parametrize("key", [None, "aes128"])
async def test_udp_against_the_threaded_receiver(key: str | None) -> None:
    udp = ThreadedUdpReceiver(KEYS.get(key or ""))
    udp.client.start()
    try:
        endpoint = Endpoint(
            host="127.0.0.1",
            port=udp.port,
            transport="udp",
            account=ACCOUNT,
            receiver=None,
            prefix="0",
            key=key and KEYS[key].encode(),
            supervision=30.0,
            ack_timeout=1.0,
        )
        async with Transmitter(endpoint) as tx:
            for zone in (1, 2, 3):
                assert await tx.send(_burglary(zone)) is Outcome.ACKED
        got: Callable[[], list[SIAEvent]] = udp.snapshot
        await wait_until(lambda: len(got()) == 3, timeout=5)
        # One thread per datagram in socketserver: each ACK goes out before its callback, so the callbacks of
        # consecutive messages may run in either order. The order on the wire is one outstanding message at a
        # time (each send returned ACKED before the next); the TCP tests check the order of arrival.
        assert sorted((e.code, e.message) for e in got()) == [("BA", "001"), ("BA", "002"), ("BA", "003")]
    finally:
        await asyncio.to_thread(udp.client.stop)
