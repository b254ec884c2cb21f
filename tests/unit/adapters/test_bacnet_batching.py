"""Per-device group commit of BACnet readings (adapters/bacnet/batching.py), and the cheap retry key.

No network: a sink whose commits are held open by the test stands for a slow journal.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from typing import Any

import pytest
from bacpypes3.apdu import APDU, APCISequence, ConfirmedCOVNotificationRequest
from bacpypes3.basetypes import BinaryPV, PropertyIdentifier, PropertyValue, StatusFlags
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.constructeddata import SequenceOf
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from adapters.bacnet.batching import GroupCommit
from adapters.bacnet.duplicates import request_key
from adapters.bacnet.session import DeviceSession
from gateway.core.ports import DeviceStatus, Quality, Reading
from gateway.domain.errors import NotAccepted
from gateway.domain.event import utcnow
from tests.support.bacnet_site import bacnet_point, bacnet_site


class HeldSink:
    """Every commit waits until the test releases it; records what each commit held, in order."""

    def __init__(self) -> None:
        self.commits: list[list[tuple[str, Any]]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.refuse = False

    async def _commit(self, readings: Sequence[Reading]) -> None:
        self.started.set()
        await self.release.wait()
        if self.refuse:
            raise NotAccepted("journal full")
        self.commits.append([(r.point_id, r.value) for r in readings])

    async def submit(self, reading: Reading) -> None:
        await self._commit([reading])

    async def submit_many(self, readings: Sequence[Reading]) -> None:
        await self._commit(readings)

    async def device_status(self, status: DeviceStatus) -> None:
        return None


def reading(point_id: str, value: str) -> Reading:
    return Reading(point_id=point_id, value=value, quality=Quality.GOOD, detected_at=utcnow())


async def test_readings_that_arrive_during_a_commit_are_committed_together_in_order() -> None:
    sink = HeldSink()
    commits = GroupCommit(sink)
    accepted: list[str] = []

    def add(point_id: str, value: str) -> asyncio.Task[None]:
        batch = commits.add(reading(point_id, value), lambda: accepted.append(f"{point_id}={value}"), lambda: None)
        return asyncio.create_task(commits.wait(batch))

    first = add("a", "active")
    await sink.started.wait()  # the first commit is under way: everything after it waits for the next one
    later = [add("b", "active"), add("a", "inactive"), add("c", "active"), add("a", "active")]
    await asyncio.sleep(0)
    assert not any(t.done() for t in [first, *later])  # nobody is answered before its commit returned
    sink.release.set()
    await asyncio.gather(first, *later)
    assert sink.commits == [
        [("a", "active")],
        [("b", "active"), ("a", "inactive"), ("c", "active"), ("a", "active")],  # one commit, order kept
    ]
    assert accepted == ["a=active", "b=active", "a=inactive", "c=active", "a=active"]
    assert commits.commits == 2


async def test_a_refused_batch_fails_every_reading_in_it_and_accepts_none() -> None:
    sink = HeldSink()
    commits = GroupCommit(sink)
    outcome: list[str] = []
    batch = commits.add(reading("a", "active"), lambda: outcome.append("accepted"), lambda: outcome.append("refused"))
    commits.add(reading("b", "active"), lambda: outcome.append("accepted"), lambda: outcome.append("refused"))
    waiters = [asyncio.create_task(commits.wait(batch)) for _ in range(3)]
    await sink.started.wait()
    sink.refuse = True
    sink.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, NotAccepted) for r in results)
    assert outcome == ["refused", "refused"]


async def test_a_cancelled_commit_fails_its_readings_instead_of_acknowledging_them() -> None:
    sink = HeldSink()
    commits = GroupCommit(sink)
    batch = commits.add(reading("a", "active"), lambda: None, lambda: None)
    committer = asyncio.create_task(commits.wait(batch))
    await sink.started.wait()
    other = asyncio.create_task(commits.wait(batch))
    await asyncio.sleep(0)
    committer.cancel()
    with pytest.raises(NotAccepted):
        await other
    with pytest.raises(asyncio.CancelledError):
        await committer


def _session(sink: HeldSink) -> DeviceSession:
    site = bacnet_site({"d1": {}}, [bacnet_point("p1", "d1", "binary-input,1")])
    return DeviceSession(None, site, site.devices[0], sink)  # type: ignore[arg-type]  # no requests are sent


async def test_a_repeated_value_is_answered_only_once_the_commit_holding_it_returned() -> None:
    sink = HeldSink()
    session = _session(sink)
    watch = session.watches["p1"]
    first = asyncio.create_task(session._observe(watch, BinaryPV("active")))
    await sink.started.wait()
    # the same value again (a second notification) while the first is still being committed: not a new reading,
    # but its sender must not be answered before the value is durable
    again = asyncio.create_task(session._observe(watch, BinaryPV("active")))
    await asyncio.sleep(0.01)
    assert not again.done()
    sink.release.set()
    await asyncio.gather(first, again)
    assert sink.commits == [[("p1", "active")]]
    assert watch.reported == ("active", None)


async def test_a_value_queued_behind_a_refused_one_is_offered_again() -> None:
    sink = HeldSink()
    session = _session(sink)
    watch = session.watches["p1"]
    first = asyncio.create_task(session._observe(watch, BinaryPV("active")))
    await sink.started.wait()
    sink.refuse = True
    sink.release.set()
    with pytest.raises(NotAccepted):
        await first
    assert watch.reported is None and watch.pending is None  # not reported: the next notification is a change
    sink.refuse = False
    await session._observe(watch, BinaryPV("active"))
    assert sink.commits == [[("p1", "active")]]


def _cov_wire(value: str, invoke_id: int = 7, time_remaining: int = 250) -> APDU:
    """A confirmed COV notification as received: encoded, then decoded again."""
    request = ConfirmedCOVNotificationRequest(
        subscriberProcessIdentifier=1,
        initiatingDeviceIdentifier=ObjectIdentifier("device,1000"),
        monitoredObjectIdentifier=ObjectIdentifier("binary-input,1"),
        timeRemaining=time_remaining,
        listOfValues=SequenceOf(PropertyValue)(
            [
                PropertyValue(propertyIdentifier=PropertyIdentifier("present-value"), value=AnyValue(BinaryPV(value))),
                PropertyValue(
                    propertyIdentifier=PropertyIdentifier("status-flags"), value=AnyValue(StatusFlags([0, 0, 0, 0]))
                ),
            ]
        ),
    )
    request.apduInvokeID = invoke_id
    request.apduSeg, request.apduMor, request.apduSA = False, False, True
    request.apduMaxSegs, request.apduMaxResp = 0, 5  # encoded: no segments, 1476 octets
    wire = request.encode().encode()  # the service data, then the PDU's bytes
    decoded = APCISequence.decode(APDU.decode(wire))
    assert isinstance(decoded, ConfirmedCOVNotificationRequest)
    decoded.pduSource = Address("127.0.0.1:47900")
    return decoded


def test_the_retry_key_of_a_cov_notification_tells_a_retry_from_a_new_notification() -> None:
    assert request_key(_cov_wire("active")) == request_key(_cov_wire("active"))  # a retransmission
    assert request_key(_cov_wire("active")) != request_key(_cov_wire("inactive"))
    assert request_key(_cov_wire("active")) != request_key(_cov_wire("active", invoke_id=8))
    assert request_key(_cov_wire("active")) != request_key(_cov_wire("active", time_remaining=249))


def test_a_remembered_retry_key_costs_the_garbage_collector_nothing() -> None:
    """Thousands of keys are remembered at once: each must leave the collector's lists at its first collection
    (plain values only), or every full collection walks them all (30-44 ms at 1,000 notifications/s)."""
    key = request_key(_cov_wire("active"))
    gc.collect(0)
    assert not gc.is_tracked(key)
