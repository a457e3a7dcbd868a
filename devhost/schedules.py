"""Timer schedules as the Timers extension reads them: an NCRONTAB expression or a TimeSpan.

The host parses `schedule` with NCrontab (six fields with seconds, or the classic five), and
only if that fails as a .NET TimeSpan. NCrontab differs from Unix cron in ways that matter for
a schedule written here and run in Azure: seconds come first, day-of-month and day-of-week
must *both* match, names may be any prefix of an English month or day name, day-of-week runs
0-6 only, and there is no `?`, `L`, `W`, `#` or `@hourly`. Libraries such as croniter follow
Unix cron instead (trailing seconds, OR-ed days, extensions), so this module reimplements
NCrontab's grammar and search. Times are UTC, as on Flex Consumption.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from devhost.hostconfig import HostConfigError, parse_timespan

ONE_MINUTE = timedelta(minutes=1)

# (name, lowest, highest, value names) for each NCrontab field, seconds first.
_FIELDS = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    (
        "month",
        1,
        12,
        (
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ),
    ),
    (
        "day of week",
        0,
        6,
        ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"),
    ),
)


class ScheduleError(Exception):
    """The expression is neither an NCRONTAB expression nor a TimeSpan the host accepts."""


@dataclass(frozen=True)
class CronSchedule:
    """An NCRONTAB schedule: the allowed values of each field."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]

    def next_after(self, moment: datetime) -> datetime | None:
        """The first occurrence strictly after `moment` (whole seconds), None if none is left.

        Days must match both the day-of-month and the day-of-week field, as in NCrontab.
        """
        candidate = moment.replace(microsecond=0) + timedelta(seconds=1)
        try:
            while True:
                if candidate.month not in self.months:
                    candidate = _first_of_next_month(candidate)
                elif (
                    candidate.day not in self.days
                    or _cron_weekday(candidate) not in self.days_of_week
                ):
                    candidate = candidate.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                elif candidate.hour not in self.hours:
                    candidate = candidate.replace(minute=0, second=0) + timedelta(hours=1)
                elif candidate.minute not in self.minutes:
                    candidate = candidate.replace(second=0) + timedelta(minutes=1)
                elif candidate.second not in self.seconds:
                    candidate += timedelta(seconds=1)
                else:
                    return candidate
        except (OverflowError, ValueError):
            # Past year 9999: the schedule has no occurrence left (e.g. 30 February).
            return None

    def __str__(self) -> str:
        return self.expression


@dataclass(frozen=True)
class ConstantSchedule:
    """A TimeSpan schedule: every `interval` from the previous occurrence."""

    expression: str
    interval: timedelta

    def next_after(self, moment: datetime) -> datetime:
        return moment + self.interval

    def __str__(self) -> str:
        return self.expression


Schedule = CronSchedule | ConstantSchedule


def parse_schedule(expression: str) -> Schedule:
    """A resolved `schedule` value: NCRONTAB first, then a TimeSpan, as the host tries them."""
    try:
        return parse_ncrontab(expression)
    except ScheduleError as cron_error:
        try:
            interval = parse_timespan(expression)
        except HostConfigError:
            raise ScheduleError(
                f"'{expression}' was not recognized as a valid cron expression or timespan "
                f"string ({cron_error})"
            ) from None
    if interval <= timedelta(0):
        raise ScheduleError(f"the TimeSpan schedule '{expression}' must be longer than zero")
    return ConstantSchedule(expression, interval)


def parse_ncrontab(expression: str) -> CronSchedule:
    """Six space-separated fields (seconds first), or five without seconds (seconds = 0)."""
    tokens = [token for token in expression.split(" ") if token]
    if len(tokens) == 5:
        tokens = ["0", *tokens]
    elif len(tokens) != 6:
        raise ScheduleError(
            f"'{expression}' must have 6 fields (second minute hour day month day-of-week) or 5"
        )
    values = [_parse_field(token, *field) for token, field in zip(tokens, _FIELDS, strict=True)]
    return CronSchedule(expression, *values)


def uses_monitor(schedule: Schedule, use_monitor: bool | None, now: datetime) -> bool:
    """The host's effective `useMonitor`: off for sub-minute schedules, on unless set otherwise."""
    if isinstance(schedule, CronSchedule):
        first = schedule.next_after(now)
        second = first and schedule.next_after(first)
        if second is not None and second < now + ONE_MINUTE:
            return False
    elif schedule.interval < ONE_MINUTE:
        return False
    return True if use_monitor is None else use_monitor


def _parse_field(
    token: str, kind: str, lowest: int, highest: int, names: tuple[str, ...]
) -> frozenset[int]:
    """One field: `*`, values, ranges and steps, comma-separated, as NCrontab accepts them."""
    allowed: set[int] = set()
    for item in token.split(","):
        expression, slash, step_text = item.partition("/")
        if slash and not step_text.isdigit():
            raise ScheduleError(f"'{token}' is not a valid [{kind}] field: bad step")
        step = max(1, int(step_text)) if slash else 1
        if expression == "*":
            start, end = lowest, highest
        elif "-" in expression[1:]:
            first, _, last = expression.partition("-")
            start, end = sorted(
                (_value(first, kind, names, lowest), _value(last, kind, names, lowest))
            )
        else:
            start = _value(expression, kind, names, lowest)
            end = highest if slash else start
        if start < lowest or end > highest:
            raise ScheduleError(
                f"'{token}' is not a valid [{kind}] field: values must be between {lowest} "
                f"and {highest}"
            )
        allowed.update(range(start, end + 1, step))
    return frozenset(allowed)


def _value(text: str, kind: str, names: tuple[str, ...], lowest: int) -> int:
    """A number, or (for months and days) any prefix of the English name, ignoring case."""
    if text[:1].isdigit():
        if not text.isdigit():
            raise ScheduleError(f"'{text}' is not a valid [{kind}] value")
        return int(text)
    for index, name in enumerate(names):
        if text and name.casefold().startswith(text.casefold()):
            return index + lowest
    raise ScheduleError(f"'{text}' is not a valid [{kind}] value")


def _cron_weekday(moment: datetime) -> int:
    """Sunday = 0, as in cron (Python counts from Monday = 0)."""
    return (moment.weekday() + 1) % 7


def _first_of_next_month(moment: datetime) -> datetime:
    year, month = divmod(moment.month, 12)
    return datetime(moment.year + year, month + 1, 1, tzinfo=moment.tzinfo)
