"""BACnet adapter and simulator under the conditions of a large site starting up.

Regression tests for: a resync read overtaken by a notification (false restore), unbounded unanswered
confirmed notifications in the simulator (bacpypes3 event-loop hang at 256), and ReadPropertyMultiple
answers that needed segmentation (bacpypes3 AssertionError in a detached task).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bacpypes3.app import Application
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address

from adapters.bacnet.duplicates import RecentRequests
from adapters.bacnet.plan import RPM_ANSWER_BUDGET, Watch, answer_size, read_batches
from gateway.config.models import PointConfig
from gateway.testing import CollectingReadings
from simulators.bacnet.device import MAX_IN_FLIGHT
from simulators.control import Fault
from tests.support.bacnet_site import GatedSink, bacnet_point, bacnet_site, running, simulated


async def test_resync_read_overtaken_by_alarm_notification_reports_no_false_restore() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    async with simulated({"d1": {"timeout": 4, "poll_interval": 60}}, points) as (sim, site):
        device = sim.devices["d1"]
        # every answer leaves the device 1 s late, with the values of request time; notifications do not wait
        await sim.inject("d1", Fault("slow", delay=1.0))
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            # the resync's read of det1 has reached the device: it answers `inactive`, 1 s from now (the first
            # ReadPropertyMultiple of a resync reads the device clock: UTC_Offset, Daylight_Savings_Status)
            await sink.wait_for(lambda: device.requests["ReadPropertyMultipleRequest"] >= 2)
            await sim.raise_alarm("det1")
            alarm = await sink.wait_reading("det1", "active")
            assert alarm.notification is not None  # the event notification overtook the read's answer
            # the session subscribes after the resync: by then the late answer has been handled
            counters = adapter.counters["d1"]
            await sink.wait_for(lambda: counters.cov_subscriptions_active == 1)
            assert [r.value for r in sink.of("det1")] == ["active"]  # no restore the device never made
            assert counters.stale_reads >= 1
            await sim.clear_alarm("det1")  # and the real restore still comes through
            await sink.wait_reading("det1", "inactive", within=10)


async def test_retried_notification_is_answered_but_not_handled_twice() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    # While the reading waits for the journal, bacpypes3 gives up on the transaction after 3 s (its fixed
    # application timeout); the device retries every 2 s, so its retry at 4 s arrives as a new request.
    async with simulated({"d1": {"poll_interval": 60}}, points, apdu_timeout=2.0) as (sim, site):
        sink = GatedSink()
        async with running(site, sink) as adapter:
            await sink.wait_reading("det1", "inactive")
            device = sim.devices["d1"]
            await sim.raise_alarm("det1")
            await sink.wait_for(lambda: adapter.duplicate_notifications >= 1, within=15)
            sink.gate.set()
            await sink.wait_for(lambda: device.notifications_acked == 1)
            notified = [r for r in sink.of("det1") if r.notification is not None]
            assert len(notified) == 1  # a retry handled again would report the (by then old) value again


async def test_unanswered_confirmed_notifications_stay_bounded() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    # the recipient port is bound by nobody: no notification is ever answered
    async with simulated({"d1": {}}, points) as (sim, _site):
        device = sim.devices["d1"]
        for i in range(300):  # bacpypes3 loops forever on the 257th unanswered request to one address
            await (sim.raise_alarm("det1") if i % 2 == 0 else sim.clear_alarm("det1"))
            assert device.in_flight() <= MAX_IN_FLIGHT
        assert device.notifications_sent == 300
        assert device.in_flight() == MAX_IN_FLIGHT
        assert device.notifications_unconfirmed == 300 - MAX_IN_FLIGHT
        # and the device still answers
        assert await sim.read_raw("det1") == "inactive"


async def test_large_device_is_read_without_segmentation() -> None:
    count = 150
    points = [bacnet_point(f"det{i}", "d1", f"binary-input,{i}") for i in range(1, count + 1)]
    # a device that cannot segment aborts any answer larger than one APDU
    async with simulated(
        {"d1": {"cov": False, "poll_interval": 60}}, points, segmentation="no-segmentation", event_reporting=False
    ) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_for(lambda: len({r.point_id for r in sink.readings}) == count, within=15)
            assert not adapter.counters["d1"].errors
            assert sim.devices["d1"].requests["ReadPropertyMultipleRequest"] >= 2


async def test_recent_requests_forget_after_window_limit_and_failure() -> None:
    recent = RecentRequests(window=0.2, limit=3)
    first = recent.begin(("a", 1, b"x"))
    assert recent.earlier(("a", 1, b"x")) is first  # still being handled: a retry waits for it
    assert recent.earlier(("a", 1, b"y")) is None  # same invoke id, other content: a new request
    first.set_result(True)
    failed = recent.begin(("a", 2, b"x"))
    failed.set_result(None)
    assert recent.earlier(("a", 2, b"x")) is None  # the original got no answer: handle the retry afresh
    for i in range(3, 8):
        recent.begin(("a", i, b"x")).set_result(True)
    assert recent.earlier(("a", 1, b"x")) is None  # pushed out by the limit
    assert recent.earlier(("a", 7, b"x")) is not None
    await asyncio.sleep(0.25)
    assert recent.earlier(("a", 7, b"x")) is None  # past the window
    assert recent.duplicates == 2


def _watch(point_id: str, obj: str, prop: str = "present-value") -> Watch:
    source = {"protocol": "bacnet", "object": obj, "property": prop}
    site = bacnet_site({"d1": {}}, [bacnet_point(point_id, "d1", obj, source=source)])
    point: PointConfig = site.points[0]
    return Watch(point, obj, obj.split(",", maxsplit=1)[0], prop)


def test_read_batches_cover_every_point_within_the_budget() -> None:
    watches = [_watch(f"p{i}", f"binary-input,{i}") for i in range(100)]
    watches += [_watch(f"a{i}", f"access-point,{i}", "access-event") for i in range(30)]
    watches.append(_watch("big", "binary-input,999", "description"))
    batches = read_batches(watches)
    assert [w for batch in batches for w in batch] == watches
    for batch in batches:
        objects = {w.object_id for w in batch}
        size = len(objects) * 8 + sum(answer_size(prop) for w in batch for _obj, prop in w.refs())
        assert size <= RPM_ANSWER_BUDGET or len(batch) == 1
    assert len(batches) > 5


async def _client(port: int) -> tuple[Application, Any]:
    """A bare bacpypes3 client on an OS-assigned port, with its link-layer server. It waits 8 s for
    segments, so the device's 1 s segment timeout always fires first."""
    device = DeviceObject(
        objectIdentifier=("device", 999_001),
        objectName="test-client",
        vendorIdentifier=999,
        apduSegmentTimeout=8000,
        apduTimeout=10000,
    )
    network_port = NetworkPortObject(f"127.0.0.1:{port}", objectIdentifier=("network-port", 1), objectName="np")
    app = Application.from_object_list([device, network_port])
    server = next(iter(app.link_layers.values())).server
    await asyncio.gather(*server._transport_tasks)
    return app, server


async def test_segmented_answer_whose_first_ack_is_late_is_retransmitted() -> None:
    """bacpypes3 0.0.110 failed an assert in a detached task here and never finished the answer."""
    count = 120
    points = [bacnet_point(f"det{i}", "d1", f"binary-input,{i}") for i in range(1, count + 1)]
    async with simulated({"d1": {}}, points, event_reporting=False) as (_sim, site):
        device = site.devices[0]
        app, server = await _client(0)
        try:
            segments_zero = 0
            arrived = asyncio.Event()
            send, receive = server.indication, server.confirmation

            async def drop_segment_acks(pdu: Any) -> None:
                if _apdu_type(pdu.pduData) != 4:  # SegmentAck: the client is "late" forever
                    await send(pdu)

            async def count_first_segments(pdu: Any) -> None:
                nonlocal segments_zero
                data = pdu.pduData
                offset = _apdu_offset(data)
                if data[offset] >> 4 == 3 and data[offset] & 0x08 and data[offset + 2] == 0:  # seg ComplexAck #0
                    segments_zero += 1
                    if segments_zero >= 2:
                        arrived.set()
                await receive(pdu)

            server.indication, server.confirmation = drop_segment_acks, count_first_segments
            refs: list[Any] = []
            for i in range(1, count + 1):
                refs.extend([f"binary-input,{i}", ["present-value", "status-flags", "event-state"]])
            request = asyncio.ensure_future(app.read_property_multiple(Address(f"127.0.0.1:{device.port}"), refs))
            try:
                async with asyncio.timeout(10):
                    await arrived.wait()  # the device resent the first segment instead of dying
            finally:
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
        finally:
            app.close()


def _apdu_offset(data: bytes) -> int:
    """Offset of the APDU in a BVLL + NPDU datagram (no network-layer addresses on loopback)."""
    control = data[5]
    offset = 6
    if control & 0x20:  # destination specifier
        offset += 3 + data[offset + 2] + 1
    if control & 0x08:  # source specifier
        offset += 3 + data[offset + 2]
    return offset


def _apdu_type(data: bytes) -> int:
    return data[_apdu_offset(data)] >> 4
