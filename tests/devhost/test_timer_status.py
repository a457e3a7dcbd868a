"""The schedule monitor's status blob and its past-due rule, on a real Azurite."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient
from devhost_testkit import Azurite

from devhost.schedules import parse_schedule
from devhost.timers import DEFAULT_TIME, ScheduleMonitor, ScheduleStatus, TimerFunction

HOURLY = "0 0 * * * *"
NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


@pytest.fixture
def hosts_container(azurite: Azurite) -> ContainerClient:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    with contextlib.suppress(ResourceExistsError):
        service.create_container("azure-webjobs-hosts")
    return service.get_container_client("azure-webjobs-hosts")


@pytest.fixture
def monitor(hosts_container: ContainerClient) -> ScheduleMonitor:
    return ScheduleMonitor(hosts_container, f"status-{uuid.uuid4().hex[:8]}")


def hourly_timer() -> TimerFunction:
    return TimerFunction(
        name="hourly",
        trigger_arg="timer",
        outputs=(),
        user_function=lambda timer: None,
        schedule=parse_schedule(HOURLY),
        run_on_startup=False,
        use_monitor=True,
    )


def test_a_first_start_records_the_next_occurrence_and_is_not_past_due(
    monitor: ScheduleMonitor,
) -> None:
    past_due, status = monitor.check_past_due(hourly_timer(), NOW, None)

    assert not past_due
    assert status == ScheduleStatus(DEFAULT_TIME, datetime(2024, 5, 1, 13, tzinfo=UTC), NOW)
    assert monitor.get("hourly") == status


def test_a_recorded_next_occurrence_in_the_past_is_past_due(monitor: ScheduleMonitor) -> None:
    last = datetime(2024, 5, 1, 9, tzinfo=UTC)
    recorded = ScheduleStatus(last, last + timedelta(hours=1), last)

    past_due, status = monitor.check_past_due(hourly_timer(), NOW, recorded)

    assert past_due
    assert status == recorded


def test_a_changed_schedule_is_recomputed_rather_than_past_due(monitor: ScheduleMonitor) -> None:
    # Written under a daily schedule: Next does not follow from Last under the hourly one.
    last = datetime(2024, 4, 28, 2, tzinfo=UTC)
    recorded = ScheduleStatus(last, last + timedelta(days=1), last)

    past_due, status = monitor.check_past_due(hourly_timer(), NOW, recorded)

    assert not past_due
    assert status == ScheduleStatus(DEFAULT_TIME, datetime(2024, 5, 1, 13, tzinfo=UTC), NOW)
    assert monitor.get("hourly") == status


def test_the_status_blob_is_where_and_how_the_host_writes_it(
    monitor: ScheduleMonitor, hosts_container: ContainerClient
) -> None:
    blob = hosts_container.get_blob_client(monitor.blob_name("hourly"))
    assert blob.blob_name.endswith("/Host.Functions.hourly/status")
    assert blob.blob_name.startswith("timers/status-")
    # As Newtonsoft writes DateTimes: seven fraction digits, an offset.
    host_json = {
        "Last": "2024-05-01T11:00:00.0012345+00:00",
        "Next": "2024-05-01T12:00:00+00:00",
        "LastUpdated": "0001-01-01T00:00:00",
    }
    blob.upload_blob(json.dumps(host_json), overwrite=True)

    status = monitor.get("hourly")

    assert status == ScheduleStatus(
        datetime(2024, 5, 1, 11, 0, 0, 1234, tzinfo=UTC),
        datetime(2024, 5, 1, 12, tzinfo=UTC),
        DEFAULT_TIME,
    )
    assert json.loads(json.dumps(status.to_json()))["Next"] == "2024-05-01T12:00:00+00:00"
