"""schedules.cron: what is accepted, and when an expression fires in a time zone across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aipb.exceptions import InvalidInput
from schedules.cron import next_fire, schedule_checked


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def firings(expression: str, zone: str, *, after: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        after = next_fire(expression, zone, after=after)
        found.append(after)
    return found


def test_local_time_follows_the_zone_offset_across_the_spring_change_in_paris():
    # 09:00 in Paris is 08:00Z in winter (CET) and 07:00Z from 29 March 2026 (CEST)
    assert firings("0 9 * * *", "Europe/Paris", after=utc(2026, 3, 27, 12), count=3) == [
        utc(2026, 3, 28, 8),
        utc(2026, 3, 29, 7),
        utc(2026, 3, 30, 7),
    ]


def test_a_skipped_local_time_fires_once_with_the_offset_before_the_change():
    # New York skips 02:00-03:00 on 8 March 2026: 02:30 fires at 02:30 EST = 07:30Z (03:30 by the new clock)
    assert firings("30 2 * * *", "America/New_York", after=utc(2026, 3, 6, 12), count=3) == [
        utc(2026, 3, 7, 7, 30),
        utc(2026, 3, 8, 7, 30),
        utc(2026, 3, 9, 6, 30),
    ]


def test_a_repeated_local_time_fires_once_at_its_first_occurrence():
    # New York repeats 01:00-02:00 on 1 November 2026: a daily 01:30 fires at 01:30 EDT (05:30Z) only,
    # not again at 01:30 EST (06:30Z)
    assert firings("30 1 * * *", "America/New_York", after=utc(2026, 10, 30, 12), count=3) == [
        utc(2026, 10, 31, 5, 30),
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 2, 6, 30),
    ]


def test_inside_the_repeated_hour_the_next_firing_is_after_it():
    # at 01:10 EST (the second 01:10, 06:10Z), every half hour: 01:30 was at 05:30Z already; next is 02:00 EST
    assert next_fire("*/30 * * * *", "America/New_York", after=utc(2026, 11, 1, 6, 10)) == utc(2026, 11, 1, 7)


def test_the_next_firing_is_strictly_after_the_instant_given():
    assert next_fire("0 * * * *", "UTC", after=utc(2026, 12, 3, 12)) == utc(2026, 12, 3, 13)
    assert next_fire("@daily", "Asia/Tokyo", after=utc(2026, 12, 3, 12)) == utc(2026, 12, 3, 15)  # midnight JST


@pytest.mark.parametrize(
    ("cron", "zone", "message"),
    [
        ("", "UTC", "cron must be a cron expression"),
        ("   ", "UTC", "cron must be a cron expression"),
        (5, "UTC", "cron must be a cron expression"),
        ("* * *", "UTC", "must have 5 fields"),
        ("* * * * * *", "UTC", "must have 5 fields"),  # croniter's seconds field: refused
        ("61 * * * *", "UTC", "is not valid"),
        ("* * * * MON-XYZ", "UTC", "is not valid"),
        ("@reboot", "UTC", "cron macro must be one of"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 " * 60, "UTC", "at most 100 characters"),
        ("0 9 * * *", "Mars/Olympus_Mons", "IANA time zone"),
        ("0 9 * * *", "", "IANA time zone"),
        ("0 9 * * *", "utc", "IANA time zone"),
        ("0 9 * * *", "../../etc/passwd", "IANA time zone"),
        ("0 9 * * *", None, "IANA time zone"),
    ],
)
def test_bad_expressions_and_zones_are_refused(cron, zone, message):
    with pytest.raises(InvalidInput, match=message):
        schedule_checked(cron, zone, now=utc(2026, 12, 3))


def test_expressions_are_stored_normalised():
    assert schedule_checked("  0  9 * *   1-5 ", "Europe/Paris", now=utc(2026, 12, 3)) == (
        "0 9 * * 1-5",
        "Europe/Paris",
        utc(2026, 12, 3, 8),
    )
    assert schedule_checked("@HOURLY", "UTC", now=utc(2026, 12, 3))[0] == "@hourly"
