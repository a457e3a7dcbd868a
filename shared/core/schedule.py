"""Export schedules: NCRONTAB expressions with a seconds field, in UTC, as Azure timers use.

A schedule is evaluated on each scheduler tick; a run belongs to a *slot* (the occurrence it
serves), which makes its id deterministic and its creation idempotent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from croniter import croniter

_NUMERIC_FIELD = re.compile(r"^[0-9*/,-]+$")
_NAMED_FIELD = re.compile(r"^(?:[0-9*/,-]|[A-Za-z]{3})+$")  # month and day-of-week: JAN, MON


def is_valid(expression: str) -> bool:
    """Six NCRONTAB fields, restricting day of month or day of week but not both.

    Cron implementations disagree on combining both (OR in Vixie cron, AND in NCrontab), and
    croniter accepts extensions (`L`, `?`, `#`) the Functions host rejects: refuse them all.
    """
    fields = expression.split()
    if len(fields) != 6:
        return False
    if not all(_NUMERIC_FIELD.match(f) for f in fields[:4]):
        return False
    if not all(_NAMED_FIELD.match(f) for f in fields[4:]):
        return False
    if fields[3] != "*" and fields[5] != "*":
        return False
    return croniter.is_valid(expression, second_at_beginning=True)


def latest_slot(expression: str, now: datetime) -> datetime:
    """The most recent occurrence at or before `now` (whole seconds, UTC)."""
    start = now.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    return croniter(expression, start, second_at_beginning=True).get_prev(datetime)


def next_slot(expression: str, now: datetime) -> datetime:
    """The first occurrence strictly after `now`."""
    return croniter(expression, now.astimezone(UTC), second_at_beginning=True).get_next(datetime)


def slot_run_id(export_name: str, slot: datetime) -> str:
    """The one run id a slot can have: duplicate or concurrent ticks collide on it."""
    return f"{export_name}-s{slot.astimezone(UTC):%Y%m%dT%H%M%SZ}"
