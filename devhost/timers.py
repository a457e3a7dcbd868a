"""The Timers extension: fire on schedule, catch up once after downtime, run on startup.

Mirrors `TimerListener` and `ScheduleMonitor` of Microsoft.Azure.WebJobs.Extensions: one
invocation at a time, the next occurrence computed from when the last one was due (so an
overrun fires once more at once, never a burst), and with `useMonitor` the schedule status
(`Last`, `Next`, `LastUpdated`) kept in blob `azure-webjobs-hosts/timers/<host id>/
Host.Functions.<name>/status` of the host storage. At start, a recorded `Next` in the past
means occurrences were missed: the function runs once at once with `past_due=True`, however
many were missed. The real host also runs each timer as a singleton through a blob lease;
devhost does not, so two devhost processes both fire.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.meta import Datum
from azure.functions.timer import TimerRequestConverter
from azure.storage.blob import ContainerClient

from devhost.execution import BackgroundLoop, FunctionRunner
from devhost.indexing import FunctionInfo
from devhost.invocation import (
    FunctionLoadError,
    HostedFunction,
    annotation_mismatch,
    is_subclass,
    prepare_outputs,
    resolve_setting,
    trigger_annotation,
)
from devhost.schedules import Schedule, ScheduleError, parse_schedule, uses_monitor

FUNCTION_ID_PREFIX = "Host.Functions."
# DateTime.MinValue, which the host writes for "never"; anything in year 1 counts as unset.
DEFAULT_TIME = datetime(1, 1, 1, tzinfo=UTC)
_UNSET_BEFORE = DEFAULT_TIME.replace(year=2)
_ISO_FRACTION = re.compile(r"(\.\d{6})\d+")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimerFunction(HostedFunction):
    """A timer-triggered function ready to be served."""

    schedule: Schedule
    run_on_startup: bool
    use_monitor: bool


def prepare_timer_function(
    info: FunctionInfo, settings: Mapping[str, str], now: datetime
) -> TimerFunction:
    """Resolve and parse the schedule and settle `useMonitor` as the host does."""
    outputs = prepare_outputs(info, settings)
    annotation = trigger_annotation(info, [output.arg_name for output in outputs])
    if annotation is not None and not is_subclass(annotation, func.TimerRequest):
        raise annotation_mismatch(info, annotation)
    expression = resolve_setting(info.name, str(info.trigger["schedule"]), settings)
    try:
        schedule = parse_schedule(expression)
    except ScheduleError as error:
        raise FunctionLoadError(info.name, str(error)) from None
    return TimerFunction(
        name=info.name,
        trigger_arg=str(info.trigger["name"]),
        outputs=outputs,
        user_function=info.user_function,
        schedule=schedule,
        run_on_startup=bool(info.trigger.get("runOnStartup", False)),
        use_monitor=uses_monitor(schedule, info.trigger.get("useMonitor"), now),
    )


@dataclass
class ScheduleStatus:
    """The host's record of a timer: last occurrence, next one, and when it was computed."""

    last: datetime
    next: datetime
    last_updated: datetime

    def to_json(self) -> dict[str, str]:
        return {
            "Last": self.last.isoformat(),
            "Next": self.next.isoformat(),
            "LastUpdated": self.last_updated.isoformat(),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ScheduleStatus:
        """Read what the host (Newtonsoft, ISO dates, 7-digit fractions) or devhost wrote."""
        return cls(*(_parse_time(document.get(key)) for key in ("Last", "Next", "LastUpdated")))


class ScheduleMonitor:
    """Schedule statuses in the host storage, shared with the real host under the same host id."""

    def __init__(self, container: ContainerClient, host_id: str) -> None:
        self._container = container
        self._directory = f"timers/{host_id}"

    def blob_name(self, function_name: str) -> str:
        return f"{self._directory}/{FUNCTION_ID_PREFIX}{function_name}/status"

    def get(self, function_name: str) -> ScheduleStatus | None:
        try:
            content = self._container.download_blob(self.blob_name(function_name)).readall()
        except ResourceNotFoundError:
            return None
        return ScheduleStatus.from_json(json.loads(content))

    def update(self, function_name: str, status: ScheduleStatus) -> None:
        """Best effort, as in the host: a failed write is logged, not raised."""
        try:
            try:
                self._upload(function_name, status)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    self._container.create_container()
                self._upload(function_name, status)
        except AzureError as error:
            logger.error(
                "Function '%s' failed to update the timer trigger status: %s", function_name, error
            )

    def check_past_due(
        self, function: TimerFunction, now: datetime, status: ScheduleStatus | None
    ) -> tuple[bool, ScheduleStatus]:
        """Whether an occurrence was missed, and the status to go on from (ScheduleMonitor).

        A status whose `Next` no longer follows from `Last` under the current schedule means
        the schedule changed; it is recomputed rather than reported as past due.
        """
        schedule = function.schedule
        if status is None:
            status = ScheduleStatus(DEFAULT_TIME, _next(schedule, now), now)
            self.update(function.name, status)
            return False, status
        if status.last > _UNSET_BEFORE:
            expected, computed_at = _next(schedule, status.last), status.last
        elif status.last_updated > _UNSET_BEFORE:
            expected, computed_at = _next(schedule, status.last_updated), status.last_updated
        else:
            expected, computed_at = _next(schedule, now), now
        if status.next != expected:
            if now > expected:
                expected, computed_at = _next(schedule, now), now
            status = ScheduleStatus(DEFAULT_TIME, expected, computed_at)
            self.update(function.name, status)
        return now > status.next, status

    def _upload(self, function_name: str, status: ScheduleStatus) -> None:
        self._container.upload_blob(
            self.blob_name(function_name), json.dumps(status.to_json()), overwrite=True
        )


class TimerListener(BackgroundLoop):
    """Fires one timer function on its schedule, from a background thread."""

    def __init__(
        self, function: TimerFunction, *, runner: FunctionRunner, monitor: ScheduleMonitor | None
    ) -> None:
        self._function = function
        self._runner = runner
        self._monitor = monitor if function.use_monitor else None
        self._status = ScheduleStatus(DEFAULT_TIME, DEFAULT_TIME, DEFAULT_TIME)
        super().__init__(f"devhost-timer-{function.name}")
        # Whether an invocation is due at once: None, or whether it is a past-due catch-up.
        self._startup_past_due: bool | None = None

    def start(self) -> None:
        """Read (or record) the schedule status, then fire on schedule in the background."""
        now = datetime.now(UTC)
        past_due = False
        if self._monitor is not None:
            recorded = self._monitor.get(self._function.name)
            past_due, self._status = self._monitor.check_past_due(self._function, now, recorded)
        else:
            next_due = _next(self._function.schedule, now)
            self._status = ScheduleStatus(DEFAULT_TIME, next_due, DEFAULT_TIME)
        if past_due:
            logger.info("Function '%s' is past due on startup. Executing now.", self._function.name)
            self._startup_past_due = True
        elif self._function.run_on_startup:
            logger.info(
                "Function '%s' is configured to run on startup. Executing now.", self._function.name
            )
            self._startup_past_due = False
        logger.info(
            "Function '%s' next occurrence: %s (schedule %s, useMonitor %s)",
            self._function.name,
            self._status.next.isoformat(),
            self._function.schedule,
            self._monitor is not None,
        )
        self._thread.start()

    def invoke_directly(self, text: str | None) -> None:
        """Admin invoke: one invocation now, not past due, outside the schedule."""
        self._runner.run(
            self._function,
            lambda: self._timer_request(past_due=False),
            "This function was programmatically called via the host APIs.",
        )

    def _run(self) -> None:
        if self._startup_past_due is not None and not self._stopping.is_set():
            self._fire(datetime.now(UTC), past_due=self._startup_past_due, unscheduled=True)
        while not self._stopping.is_set():
            due = self._status.next
            if due <= DEFAULT_TIME:
                return
            wait_seconds = (due - datetime.now(UTC)).total_seconds()
            if wait_seconds > 0 and self._stopping.wait(wait_seconds):
                return
            self._fire(datetime.now(UTC), past_due=False, unscheduled=False)

    def _fire(self, fired_at: datetime, *, past_due: bool, unscheduled: bool) -> None:
        self._runner.run(
            self._function,
            lambda: self._timer_request(past_due=past_due),
            f"Timer fired at {fired_at.isoformat()}",
        )
        # A timer that fired a little early counts from its due time, so the same occurrence
        # cannot come up again (TimerListener.InvokeJobFunction).
        counted_from = fired_at
        if not unscheduled and self._status.next > fired_at:
            counted_from = self._status.next
        self._status = ScheduleStatus(
            counted_from, _next(self._function.schedule, counted_from), counted_from
        )
        if self._monitor is not None:
            self._monitor.update(self._function.name, self._status)

    def _timer_request(self, *, past_due: bool) -> func.TimerRequest:
        """The `TimerInfo` the host sends, decoded by the library's converter like the worker."""
        info = {
            "Schedule": {"AdjustForDST": True},
            "ScheduleStatus": self._status.to_json() if self._monitor is not None else None,
            "IsPastDue": past_due,
        }
        return TimerRequestConverter.decode(Datum(json.dumps(info), "json"), trigger_metadata={})


def _next(schedule: Schedule, moment: datetime) -> datetime:
    """The next occurrence, or DEFAULT_TIME for a schedule that has none left."""
    return schedule.next_after(moment) or DEFAULT_TIME


def _parse_time(text: Any) -> datetime:
    """An ISO date as .NET writes it; a missing or zone-less value is taken as UTC."""
    if not isinstance(text, str) or not text:
        return DEFAULT_TIME
    parsed = datetime.fromisoformat(_ISO_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
