"""BACnet adapter against the BACnet simulator over real UDP on loopback."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from gateway.domain.errors import ConfigurationFault, VerificationFailed
from gateway.testing import CollectingReadings
from simulators.bacnet_sim import free_udp_port
from simulators.control import Fault
from tests.support.bacnet_site import GatedSink, bacnet_point, bacnet_site, running, simulated

FIRE = {"type": "fire", "alarm": ["alarm"], "normal": ["quiet"], "fault": ["fault"]}


async def test_cov_change_becomes_reading() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    # Polling every 60 s cannot deliver the change in time: only COV can.
    async with simulated({"d1": {"poll_interval": 60}}, points, event_reporting=False) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("det1", "inactive")
            await sink.wait_for(lambda: adapter.counters["d1"].cov_subscriptions_active == 1)
            await sim.raise_alarm("det1")
            reading = await sink.wait_reading("det1", "active", within=5)
            assert reading.notification is None
            assert adapter.counters["d1"].cov_notifications >= 1
            assert adapter.counters["d1"].polled_objects == 0


async def test_event_notification_carries_device_time_stamp_and_priority() -> None:
    points = [bacnet_point("fire1", "d1", "life-safety-point,7", **FIRE)]
    async with simulated({"d1": {}}, points, priorities=(3, 30, 200)) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink):
            await sink.wait_reading("fire1", "quiet")
            await sim.raise_alarm("fire1")
            reading = await sink.wait_reading("fire1", "alarm")
            device = sim.devices["d1"]
            record = next(iter(device.events.values()))
            assert reading.notification is not None
            assert reading.notification.priority == 3
            assert reading.notification.to_state == "life-safety-alarm"
            assert reading.notification.ack_required is True
            assert reading.notification.notification_class == 1
            stamp = record.stamps[0].dateTime
            assert reading.occurred_at is not None
            # the device stamps local time (its clock runs on the site's zone): occurred_at is that moment in UTC
            local = reading.occurred_at.astimezone(ZoneInfo(site.site.timezone))
            assert (local.hour, local.minute, local.second) == tuple(stamp.time)[:3]
            assert reading.occurred_at.microsecond == stamp.time[3] * 10_000


async def test_unconfirmed_event_notification_becomes_reading() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    async with simulated({"d1": {"cov": False, "poll_interval": 60}}, points, confirmed_notifications=False) as (
        sim,
        site,
    ):
        sink = CollectingReadings()
        async with running(site, sink):
            await sink.wait_reading("det1", "inactive")
            await sim.raise_alarm("det1")
            reading = await sink.wait_reading("det1", "active", within=5)
            assert reading.notification is not None and reading.notification.to_state == "offnormal"


async def test_restart_resync_reports_alarm_with_device_time_and_restore_of_cleared_point() -> None:
    points = [
        bacnet_point("det1", "d1", "binary-input,1"),
        bacnet_point("det2", "d1", "binary-input,2"),
        bacnet_point("fire3", "d1", "life-safety-point,3", **FIRE),
        bacnet_point(
            "door4",
            "d1",
            "access-door,4",
            type="door_forced",
            alarm=["forced-open"],
            normal=["normal"],
            source={"protocol": "bacnet", "object": "access-door,4", "property": "door-alarm-state"},
        ),
    ]
    # page_size 1: GetEventInformation needs several pages for the three objects in alarm
    async with simulated({"d1": {}}, points, page_size=1) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink):
            await sink.wait_reading("det2", "inactive")
            for point_id in ("det1", "det2", "fire3", "door4"):
                await sim.raise_alarm(point_id)
            first = await sink.wait_reading("det1", "active")
            await sink.wait_reading("det2", "active")
            await sink.wait_reading("fire3", "alarm")
            await sink.wait_reading("door4", "forced-open")
        await sim.clear_alarm("det2")  # clears while the gateway is down
        sink2 = CollectingReadings()
        async with running(site, sink2):
            again = await sink2.wait_reading("det1", "active")
            await sink2.wait_reading("det2", "inactive")
            fire = await sink2.wait_reading("fire3", "alarm")
            door = await sink2.wait_reading("door4", "forced-open")
            # the resync carries the device's original transition time, not the restart time
            assert again.occurred_at == first.occurred_at
            for reading in (again, fire, door):
                assert reading.notification is not None and reading.notification.ack_required
            assert fire.notification is not None and fire.notification.to_state == "life-safety-alarm"


async def test_subscriptions_survive_several_lifetimes() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    # lifetime 2 s, renewed every second; polling every 60 s cannot stand in for COV
    async with simulated({"d1": {"cov_lifetime": 2, "poll_interval": 60}}, points, event_reporting=False) as (
        sim,
        site,
    ):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            counters = adapter.counters["d1"]
            await sink.wait_for(lambda: counters.cov_subscriptions_active == 1)
            device = sim.devices["d1"]
            # past three lifetimes the device still holds the subscription (an unrenewed one lapses)
            await sink.wait_for(lambda: counters.cov_notifications >= 6 and device.cov_subscriptions() == 1, within=20)
            await sim.raise_alarm("det1")
            await sink.wait_reading("det1", "active", within=3)
            assert device.cov_subscriptions() == 1


async def test_comm_loss_and_return() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1"), bacnet_point("det9", "d2", "binary-input,9")]
    devices = {"d1": {"timeout": 0.5}, "d2": {"timeout": 0.5}}
    async with simulated(devices, points, offline_after=2.0, event_reporting=False) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink):
            await sink.wait_for(lambda: len({s.device_id for s in sink.statuses if s.online}) == 2)
            await sim.inject("d1", Fault("silent"))
            await sink.wait_for(lambda: any(not s.online for s in sink.statuses), within=10)
            await sim.raise_alarm("det1")  # changes while silent
            await sim.inject("d1", Fault("none"))
            await sink.wait_for(lambda: sink.statuses[-1].online and sink.statuses[-1].device_id == "d1", within=10)
            await sink.wait_reading("det1", "active", within=5)  # resync after return
            offline = [s for s in sink.statuses if not s.online]
            assert [s.device_id for s in offline] == ["d1"]  # once, and only the silent device
            mark = len(sink.readings)
            await sim.clear_alarm("det1")  # re-subscribed: COV delivers again
            await sink.wait_reading("det1", "inactive", after=mark, within=5)


async def test_acknowledge_alarm_reaches_device() -> None:
    points = [bacnet_point("fire1", "d1", "life-safety-point,1", **FIRE)]
    async with simulated({"d1": {}}, points) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("fire1", "quiet")
            await sim.raise_alarm("fire1")
            await sink.wait_reading("fire1", "alarm")
            assert sim.acked_transitions("fire1") == (False, True, True)
            await adapter.acknowledge("fire1", "meldkamer/operator-7")
            assert sim.acked_transitions("fire1") == (True, True, True)
            assert sim.devices["d1"].acks == [("fire1", "meldkamer/operator-7", "life-safety-alarm")]
            with pytest.raises(ConfigurationFault):  # nothing left to acknowledge
                await adapter.acknowledge("fire1", "meldkamer/operator-7")


async def test_acknowledge_after_restore_targets_the_alarm_transition() -> None:
    points = [bacnet_point("fire1", "d1", "life-safety-point,1", **FIRE)]
    async with simulated({"d1": {}}, points) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("fire1", "quiet")
            await sim.raise_alarm("fire1")
            await sink.wait_reading("fire1", "alarm")
            await sim.clear_alarm("fire1")  # to-normal needs no acknowledgement; the alarm still does
            await sink.wait_reading("fire1", "quiet", after=1)
            await adapter.acknowledge("fire1", "op")
            assert sim.acked_transitions("fire1") == (True, True, True)
            assert sim.devices["d1"].acks == [("fire1", "op", "life-safety-alarm")]


async def test_acknowledge_after_restart_uses_event_information() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    async with simulated({"d1": {}}, points) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink):
            await sink.wait_reading("det1", "inactive")
            await sim.raise_alarm("det1")
            await sink.wait_reading("det1", "active")
        sink2 = CollectingReadings()
        async with running(site, sink2) as adapter:
            await sink2.wait_reading("det1", "active")
            await adapter.acknowledge("det1", "op")
            assert sim.acked_transitions("det1")[0] is True


async def test_device_refusing_cov_is_polled() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    async with simulated({"d1": {"poll_interval": 0.2}}, points, event_reporting=False) as (sim, site):
        await sim.inject("d1", Fault("refuse_cov"))
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("det1", "inactive")
            counters = adapter.counters["d1"]
            await sink.wait_for(lambda: counters.errors["DeviceRejected"] >= 1 and counters.polled_objects == 1)
            assert counters.cov_subscriptions_active == 0
            await sim.raise_alarm("det1")
            await sink.wait_reading("det1", "active", within=5)
            await sim.clear_alarm("det1")
            await sink.wait_reading("det1", "inactive", after=2, within=5)


async def test_write_with_priority_is_verified() -> None:
    points = [bacnet_point("out1", "d1", "binary-value,1")]
    async with simulated({"d1": {}}, points, event_reporting=False) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("out1", "inactive")
            await adapter.write("out1", "active", priority=8)
            assert await sim.read_raw("out1") == "active"
            with pytest.raises(ConfigurationFault):
                await adapter.write("out1", "active", property="no-such-property")
            with pytest.raises((ConfigurationFault, VerificationFailed)):
                await adapter.write("out1", "sideways")


async def test_access_point_occurrence_and_credential() -> None:
    points = [
        bacnet_point(
            "ap1",
            "d1",
            "access-point,1",
            type="access_granted",
            kind="momentary",
            alarm=[],
            normal=[],
            events=[{"value": "granted", "type": "access_granted"}],
            source={"protocol": "bacnet", "object": "access-point,1", "property": "access-event"},
        )
    ]
    async with simulated({"d1": {}}, points) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("ap1", "none")
            await sink.wait_for(lambda: adapter.counters["d1"].cov_subscriptions_active == 1)
            await sim.present_credential("ap1", "granted", 41)
            await sim.present_credential("ap1", "granted", 42)
            await sink.wait_for(lambda: len([r for r in sink.of("ap1") if r.value == "granted"]) == 2)
            grants = [r for r in sink.of("ap1") if r.value == "granted"]
            assert [r.occurrence for r in grants] == ["1", "2"]
            assert [r.credential.credential for r in grants if r.credential] == [
                "access-credential,41",
                "access-credential,42",
            ]


async def test_confirmed_event_notification_is_answered_only_after_submit_returned() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    async with simulated({"d1": {"poll_interval": 60}}, points) as (sim, site):
        sink = GatedSink()
        async with running(site, sink):
            await sink.wait_reading("det1", "inactive")
            device = sim.devices["d1"]
            await sim.raise_alarm("det1")
            # no SimpleACK while the reading is not journaled: the device times out and retries
            await sink.wait_for(lambda: device.notification_retries() >= 1)
            assert device.notifications_acked == 0
            sink.gate.set()
            reading = await sink.wait_reading("det1", "active")
            assert reading.notification is not None
            await sink.wait_for(lambda: device.notifications_acked == 1)


async def test_cov_refused_at_renewal_falls_back_to_polling() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    async with simulated({"d1": {"cov_lifetime": 1, "poll_interval": 0.2}}, points, event_reporting=False) as (
        sim,
        site,
    ):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            counters = adapter.counters["d1"]
            await sink.wait_for(lambda: counters.cov_subscriptions_active == 1 and counters.polled_objects == 0)
            await sim.inject("d1", Fault("refuse_cov"))
            await sink.wait_for(lambda: counters.polled_objects == 1 and counters.cov_subscriptions_active == 0)
            await sim.raise_alarm("det1")
            await sink.wait_reading("det1", "active", within=5)


async def test_properties_cov_does_not_report_are_polled() -> None:
    mode = {"protocol": "bacnet", "object": "life-safety-point,1", "property": "mode"}
    points = [
        bacnet_point("fire1", "d1", "life-safety-point,1", **FIRE),
        bacnet_point(
            "arm1", "d1", "life-safety-point,1", type="bypass", alarm=["disarmed"], normal=["armed"], source=mode
        ),
    ]
    async with simulated({"d1": {"poll_interval": 0.2}}, points) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("arm1", "armed")
            await sink.wait_for(lambda: adapter.counters["d1"].cov_subscriptions_active == 1)
            await sim.raise_alarm("arm1")
            await sink.wait_reading("arm1", "disarmed", within=5)
            await sim.raise_alarm("fire1")
            await sink.wait_reading("fire1", "alarm", within=5)


async def test_device_answering_with_errors_stays_online_but_counts_errors() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    async with simulated({"d1": {"poll_interval": 0.2}}, points, offline_after=1.5, event_reporting=False) as (
        sim,
        site,
    ):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("det1", "inactive")
            await sim.inject("d1", Fault("exception"))
            counters = adapter.counters["d1"]
            await sink.wait_for(lambda: counters.errors["DeviceBusy"] >= 3, within=10)
            assert all(s.online for s in sink.statuses)  # it answers: not a comm loss


async def test_device_that_never_answers_is_reported_offline_once() -> None:
    points = [bacnet_point("det1", "d1", "binary-input,1")]
    site = bacnet_site({"d1": {"port": free_udp_port(), "timeout": 0.2}}, points, offline_after=0.8)
    sink = CollectingReadings()
    async with running(site, sink) as adapter:
        await sink.wait_for(lambda: sink.statuses)
        assert [(s.device_id, s.online) for s in sink.statuses] == [("d1", False)]
        await sink.wait_for(lambda: adapter.counters["d1"].errors["DeviceTimeout"] >= 3)
        assert len(sink.statuses) == 1 and not sink.readings
