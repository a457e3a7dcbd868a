"""Timer schedules as the host parses them: NCRONTAB (seconds first) or a TimeSpan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devhost.schedules import (
    ConstantSchedule,
    CronSchedule,
    ScheduleError,
    parse_schedule,
    uses_monitor,
)

MIDDAY = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)  # a Wednesday


def next_of(expression: str, after: datetime = MIDDAY) -> datetime | None:
    schedule = parse_schedule(expression)
    assert isinstance(schedule, CronSchedule)
    return schedule.next_after(after)


def test_six_fields_put_seconds_first() -> None:
    assert next_of("30 */5 * * * *") == datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
    assert next_of("0 */5 * * * *") == datetime(2024, 5, 1, 12, 5, tzinfo=UTC)


def test_five_fields_are_minutes_first_at_second_zero() -> None:
    assert next_of("*/5 * * * *") == datetime(2024, 5, 1, 12, 5, tzinfo=UTC)


def test_the_next_occurrence_is_strictly_later_and_ignores_fractions() -> None:
    just_after = MIDDAY + timedelta(milliseconds=400)
    assert next_of("* * * * * *", just_after) == MIDDAY + timedelta(seconds=1)
    assert next_of("0 0 12 * * *") == MIDDAY + timedelta(days=1)


def test_day_of_month_and_day_of_week_must_both_match_as_in_ncrontab() -> None:
    # Friday the 13th, not "the 13th or any Friday" as in Unix cron.
    assert next_of("0 0 0 13 * 5") == datetime(2024, 9, 13, tzinfo=UTC)


def test_names_are_any_prefix_of_english_names_ignoring_case() -> None:
    assert next_of("0 30 9 * * mon-FRI", MIDDAY) == datetime(2024, 5, 2, 9, 30, tzinfo=UTC)
    assert next_of("0 0 0 1 Jul Monday") == datetime(2024, 7, 1, tzinfo=UTC)


def test_lists_ranges_and_steps() -> None:
    schedule = parse_schedule("0 0 1,5-7,20/2 * * *")
    assert isinstance(schedule, CronSchedule)
    assert schedule.hours == {1, 5, 6, 7, 20, 22}


def test_a_schedule_that_never_occurs_has_no_next_occurrence() -> None:
    assert next_of("0 0 0 30 2 *") is None


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * * 7",  # day of week is 0-6 in NCrontab
        "0 0 * * * * *",  # no year field
        "0 0 0 L * *",
        "0 0 0 ? * *",
        "0 0 0 1W * *",
        "@hourly",
        "0 60 * * * *",
        "0 0 0 0 * *",
        "0 0 0 * Jux *",
    ],
)
def test_what_the_host_refuses_is_refused(expression: str) -> None:
    with pytest.raises(ScheduleError, match="not recognized"):
        parse_schedule(expression)


def test_timespans_are_constant_intervals() -> None:
    schedule = parse_schedule("00:00:05")
    assert isinstance(schedule, ConstantSchedule)
    assert schedule.next_after(MIDDAY) == MIDDAY + timedelta(seconds=5)
    assert isinstance(parse_schedule("1.00:00:00"), ConstantSchedule)
    with pytest.raises(ScheduleError, match="longer than zero"):
        parse_schedule("00:00:00")


def test_use_monitor_is_off_below_a_minute_and_on_by_default_otherwise() -> None:
    assert not uses_monitor(parse_schedule("*/10 * * * * *"), True, MIDDAY)
    assert not uses_monitor(parse_schedule("00:00:30"), True, MIDDAY)
    assert uses_monitor(parse_schedule("0 * * * * *"), None, MIDDAY)
    assert uses_monitor(parse_schedule("00:05:00"), None, MIDDAY)
    assert not uses_monitor(parse_schedule("0 0 2 * * *"), False, MIDDAY)
