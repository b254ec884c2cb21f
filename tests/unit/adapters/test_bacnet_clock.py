"""Device clocks: BACnet time stamps are local wall-clock time without a zone; converting them to UTC.

Europe/Amsterdam in 2026: summer time starts on Sunday 29 March at 02:00 CET (01:00 UTC), the clock jumps to
03:00 CEST, so 02:00-03:00 never happens; it ends on Sunday 25 October at 03:00 CEST (01:00 UTC), the clock
goes back to 02:00 CET, so 02:00-03:00 happens twice (00:00-01:00 UTC, then 01:00-02:00 UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.bacnet.values import DeviceClock

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
CLOCK = DeviceClock(AMSTERDAM)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_winter_and_summer_offsets() -> None:
    assert CLOCK.to_utc(datetime(2026, 1, 15, 12, 0), utc(2026, 1, 15, 11, 0)) == utc(2026, 1, 15, 11, 0)
    assert CLOCK.to_utc(datetime(2026, 7, 15, 12, 0), utc(2026, 7, 15, 10, 0)) == utc(2026, 7, 15, 10, 0)


def test_spring_forward_skipped_hour_reads_with_the_offset_before_the_switch() -> None:
    received = utc(2026, 3, 29, 1, 30, 1)
    assert CLOCK.to_utc(datetime(2026, 3, 29, 1, 59, 59), received) == utc(2026, 3, 29, 0, 59, 59)
    # 02:00-03:00 does not exist: a clock that still shows it has not switched yet, so it is CET (UTC+1)
    assert CLOCK.to_utc(datetime(2026, 3, 29, 2, 0), received) == utc(2026, 3, 29, 1, 0)
    assert CLOCK.to_utc(datetime(2026, 3, 29, 2, 30), received) == utc(2026, 3, 29, 1, 30)
    # ... whatever the receive time: the choice does not depend on it
    assert CLOCK.to_utc(datetime(2026, 3, 29, 2, 30), utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 1, 30)
    assert CLOCK.to_utc(datetime(2026, 3, 29, 3, 0), received) == utc(2026, 3, 29, 1, 0)  # CEST from here
    assert CLOCK.to_utc(datetime(2026, 3, 29, 3, 30), received) == utc(2026, 3, 29, 1, 30)


def test_fall_back_repeated_hour_takes_the_meaning_closest_to_the_receive_time() -> None:
    stamp = datetime(2026, 10, 25, 2, 30)
    # first pass (CEST, UTC+2), received a moment later
    assert CLOCK.to_utc(stamp, utc(2026, 10, 25, 0, 30, 0, 200_000)) == utc(2026, 10, 25, 0, 30)
    # second pass (CET, UTC+1)
    assert CLOCK.to_utc(stamp, utc(2026, 10, 25, 1, 30, 0, 200_000)) == utc(2026, 10, 25, 1, 30)
    # a device clock a few minutes off still lands on the right pass
    assert CLOCK.to_utc(stamp, utc(2026, 10, 25, 0, 41)) == utc(2026, 10, 25, 0, 30)
    assert CLOCK.to_utc(stamp, utc(2026, 10, 25, 1, 19)) == utc(2026, 10, 25, 1, 30)
    # a tie (exactly between both) takes the earlier
    assert CLOCK.to_utc(stamp, utc(2026, 10, 25, 1, 0)) == utc(2026, 10, 25, 0, 30)
    # an old stamp resynced much later gets the later meaning (closer to now); documented
    assert CLOCK.to_utc(stamp, utc(2026, 12, 1, 9, 0)) == utc(2026, 10, 25, 1, 30)
    # just outside the repeated hour there is one meaning only
    assert CLOCK.to_utc(datetime(2026, 10, 25, 1, 59, 59), utc(2026, 10, 25, 1, 30)) == utc(2026, 10, 24, 23, 59, 59)
    assert CLOCK.to_utc(datetime(2026, 10, 25, 3, 0), utc(2026, 10, 25, 0, 0)) == utc(2026, 10, 25, 2, 0)


@pytest.mark.parametrize("transition", [utc(2026, 3, 29, 1, 0), utc(2026, 10, 25, 1, 0)])
@given(
    offsets=st.lists(st.integers(min_value=-3 * 3600, max_value=3 * 3600), min_size=2, max_size=40, unique=True),
    delay_ms=st.integers(min_value=0, max_value=60_000),
)
def test_live_events_across_a_transition_keep_their_order_and_instant(
    transition: datetime, offsets: list[int], delay_ms: int
) -> None:
    """Events stamped by a device clock that follows the zone, received up to a minute later, convert back to
    their true instant, so their order survives both DST changes (it broke at each with local-as-UTC)."""
    moments = sorted(transition + timedelta(seconds=s) for s in offsets)
    converted = []
    for moment in moments:
        wall_clock = moment.astimezone(AMSTERDAM).replace(tzinfo=None)
        converted.append(CLOCK.to_utc(wall_clock, moment + timedelta(milliseconds=delay_ms)))
    assert converted == moments


def test_fixed_offset_clock_has_no_transitions() -> None:
    clock = DeviceClock(timezone(timedelta(hours=1)), "device")
    assert clock.to_utc(datetime(2026, 10, 25, 2, 30), utc(2026, 10, 25, 1, 30)) == utc(2026, 10, 25, 1, 30)
    assert clock.to_utc(datetime(2026, 7, 1, 12, 0), utc(2026, 7, 1, 11, 0)) == utc(2026, 7, 1, 11, 0)
    assert clock.local_now(utc(2026, 7, 1, 11, 0)) == datetime(2026, 7, 1, 12, 0)
    assert CLOCK.local_now(utc(2026, 7, 1, 11, 0)) == datetime(2026, 7, 1, 13, 0)  # CEST


# UTC_Offset (clause 12.11.25): minutes of local STANDARD time behind UTC, positive west, negative east;
# UTC = local standard time + UTC_Offset. A Dutch panel: -60, and Daylight_Savings_Status TRUE in summer.
WINTER, SUMMER = utc(2026, 1, 15, 12, 0), utc(2026, 7, 15, 12, 0)


@pytest.mark.parametrize(
    ("utc_offset", "dst", "now", "expected"),
    [
        # agrees with Europe/Amsterdam: the zone's rules apply (so a later DST change is followed too)
        (-60, False, WINTER, AMSTERDAM),
        (-60, True, SUMMER, AMSTERDAM),
        (-60, None, SUMMER, AMSTERDAM),  # no Daylight_Savings_Status: standard offsets agree
        # absent or out of range: the configured zone
        (None, None, SUMMER, AMSTERDAM),
        (None, True, SUMMER, AMSTERDAM),
        (5000, False, SUMMER, AMSTERDAM),
        # disagrees: the device's own offset, fixed
        (0, False, SUMMER, UTC),  # a panel kept on UTC
        (-60, False, SUMMER, timezone(timedelta(hours=1))),  # a panel that never switches to summer time
        (300, False, WINTER, timezone(timedelta(hours=-5))),  # west of Greenwich is positive
        (300, True, SUMMER, timezone(timedelta(hours=-4))),
        (-120, None, WINTER, timezone(timedelta(hours=2))),
    ],
)
def test_device_clock_from_utc_offset_and_daylight_savings_status(
    utc_offset: int | None, dst: bool | None, now: datetime, expected: object
) -> None:
    clock = DeviceClock.of_device(AMSTERDAM, utc_offset, dst, now)
    assert clock.zone == expected
    assert clock.source == ("site" if expected is AMSTERDAM else "device")


def test_sign_of_utc_offset_on_a_real_conversion() -> None:
    """A New York panel (UTC_Offset +300, summer) stamps 08:00: that is 12:00 UTC."""
    clock = DeviceClock.of_device(AMSTERDAM, 300, True, SUMMER)
    assert clock.to_utc(datetime(2026, 7, 15, 8, 0), SUMMER) == SUMMER
