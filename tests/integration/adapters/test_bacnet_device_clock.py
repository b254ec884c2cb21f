"""Device time stamps are local time: a simulated panel's event notification arrives with the right UTC
occurred_at (site zone, the device's UTC_Offset / Daylight_Savings_Status, a device's own timezone:)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.core.ports import Reading
from gateway.testing import CollectingReadings
from simulators.bacnet_sim import BacnetSiteSimulator
from tests.support.bacnet_site import bacnet_point, running, simulated

FIRE = {"type": "fire", "alarm": ["alarm"], "normal": ["quiet"], "fault": ["fault"]}
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
NEW_YORK = ZoneInfo("America/New_York")


def _device_stamp(sim: BacnetSiteSimulator) -> datetime:
    """The naive local date-time the simulated device put on its to-offnormal transition."""
    record = next(iter(sim.devices["d1"].events.values()))
    return _naive(record.stamps[0])


def _naive(stamp: Any) -> datetime:
    date_time = stamp.dateTime
    year, month, day, _dow = date_time.date
    hour, minute, second, hundredths = date_time.time
    return datetime(1900 + year, month, day, hour, minute, second, 10_000 * hundredths)


async def _alarm(device: dict[str, Any], **sim_options: Any) -> tuple[Reading, datetime, str]:
    points = [bacnet_point("fire1", "d1", "life-safety-point,7", **FIRE)]
    async with simulated({"d1": device}, points, **sim_options) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("fire1", "quiet")  # after the resync, which reads the device clock
            await sim.raise_alarm("fire1")
            reading = await sink.wait_reading("fire1", "alarm")
            assert reading.notification is not None
            return reading, _device_stamp(sim), adapter.sessions["d1"].clock.source


def _assert_true_instant(reading: Reading, local: datetime, zone: tzinfo) -> None:
    assert reading.occurred_at is not None and reading.occurred_at.tzinfo is not None
    # the device stamped it just before the gateway received it: the same instant, not 1-2 h off
    assert timedelta(0) <= reading.detected_at - reading.occurred_at < timedelta(seconds=5), (
        reading.occurred_at,
        reading.detected_at,
    )
    # and it is the device's wall-clock time in its zone
    assert reading.occurred_at.astimezone(zone).replace(tzinfo=None) == local


async def test_local_time_stamp_of_a_panel_in_the_site_zone_arrives_as_utc() -> None:
    # the simulated panel's clock runs on the site's zone (default Europe/Amsterdam), as Dutch panels do
    reading, local, source = await _alarm({})
    _assert_true_instant(reading, local, AMSTERDAM)
    assert source == "site"
    assert reading.notification is not None and reading.notification.time_stamp == local.isoformat()


def _dutch_dst_now() -> bool:
    return bool(datetime.now(AMSTERDAM).dst())


@pytest.mark.parametrize(
    ("device", "sim_options", "zone", "source"),
    [
        # a Dutch panel whose UTC_Offset (-60: east of Greenwich is negative) and DST status agree
        ({}, {"utc_offset": -60, "daylight_savings_status": _dutch_dst_now()}, AMSTERDAM, "site"),
        # a panel kept on UTC that says so: its own offset wins over the site's zone
        ({}, {"zone": UTC, "utc_offset": 0, "daylight_savings_status": False}, UTC, "device"),
        # a device's timezone: wins over properties that are wrong
        (
            {"timezone": "America/New_York"},
            {"utc_offset": 0, "daylight_savings_status": False},
            NEW_YORK,
            "device-config",
        ),
    ],
    ids=["utc-offset-agrees", "utc-offset-disagrees", "device-timezone-setting"],
)
async def test_device_clock_properties_and_override(
    device: dict[str, Any], sim_options: dict[str, Any], zone: tzinfo, source: str
) -> None:
    reading, local, used = await _alarm(device, **sim_options)
    _assert_true_instant(reading, local, zone)
    assert used == source


async def test_time_of_acknowledgment_is_sent_in_the_device_clock() -> None:
    points = [bacnet_point("fire1", "d1", "life-safety-point,1", **FIRE)]
    async with simulated({"d1": {}}, points) as (sim, site):
        sink = CollectingReadings()
        async with running(site, sink) as adapter:
            await sink.wait_reading("fire1", "quiet")
            await sim.raise_alarm("fire1")
            await sink.wait_reading("fire1", "alarm")
            await adapter.acknowledge("fire1", "meldkamer/operator-7")
            sent = _naive(sim.devices["d1"].ack_times[-1])
            device_now = sim.devices["d1"].local_now()  # the panel's clock: Europe/Amsterdam wall time
            assert timedelta(0) <= device_now - sent < timedelta(seconds=5), (sent, device_now)
