"""Timer triggers and admin invoke on a real Azurite: schedules, catch-up, no singleton."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from devhost_testkit import Azurite, RecordingApp, host_env, wait_until

from devhost import LocalHost

ROOT = Path(__file__).resolve().parents[2]

TIMER_FUNCTIONS = """

@bp.timer_trigger(arg_name="timer", schedule="%FAST_SCHEDULE%")
def fast(timer: func.TimerRequest) -> None:
    record_call("fast", past_due=timer.past_due, status=timer.schedule_status)


@bp.timer_trigger(arg_name="timer", schedule="%DAILY_SCHEDULE%", use_monitor=True)
def daily(timer: func.TimerRequest) -> None:
    record_call("daily", past_due=timer.past_due, status=timer.schedule_status)


@bp.timer_trigger(
    arg_name="timer", schedule="%DAILY_SCHEDULE%", run_on_startup=True, use_monitor=False
)
def on_startup(timer: func.TimerRequest) -> None:
    record_call("on_startup", past_due=timer.past_due)


@bp.queue_trigger(arg_name="msg", queue_name="%REMEMBER_QUEUE%", connection="AzureWebJobsStorage")
def remember(msg: func.QueueMessage) -> None:
    record_call("remember", id=msg.id, body=msg.get_body().decode(), count=msg.dequeue_count)
"""


def daily_schedule(now: datetime) -> tuple[str, datetime]:
    """A daily schedule whose latest occurrence was 6 hours ago, so the next is 18 hours off."""
    latest = (now - timedelta(hours=6)).replace(second=0, microsecond=0)
    return f"0 {latest.minute} {latest.hour} * * *", latest


def timer_env(azurite: Azurite, app: RecordingApp, **extra: str) -> dict[str, str]:
    schedule, _ = daily_schedule(datetime.now(UTC))
    return host_env(
        azurite,
        app,
        "unused-work-queue",
        FAST_SCHEDULE="* * * * * *",
        DAILY_SCHEDULE=schedule,
        REMEMBER_QUEUE=f"remember-{uuid.uuid4().hex[:12]}",
        **extra,
    )


def test_a_setting_schedule_fires_every_second(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=TIMER_FUNCTIONS)

    with LocalHost(app.app_dir, env=timer_env(azurite, app), functions=["fast"]) as host:
        assert host.functions[0].describe() == "fast: timerTrigger (schedule=* * * * * *)"
        calls = wait_until(lambda: len(app.calls("fast")) >= 3 and app.calls("fast"), "3 ticks")

    assert all(call["past_due"] is False for call in calls)
    # More than once a minute: the host turns schedule monitoring off, so no status is sent.
    assert all(call["status"] == {} for call in calls)


def test_a_timespan_schedule_fires_too(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=TIMER_FUNCTIONS)
    env = timer_env(azurite, app)
    env["FAST_SCHEDULE"] = "00:00:01"

    with LocalHost(app.app_dir, env=env, functions=["fast"]):
        wait_until(lambda: len(app.calls("fast")) >= 2, "two ticks")


def test_run_on_startup_fires_once_at_start(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=TIMER_FUNCTIONS)

    with LocalHost(app.app_dir, env=timer_env(azurite, app), functions=["on_startup"]):
        (call,) = wait_until(lambda: app.calls("on_startup"), "the startup run")

    assert call["past_due"] is False


def test_a_missed_occurrence_is_caught_up_once_with_past_due(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=TIMER_FUNCTIONS)
    host_id = f"catch-up-{uuid.uuid4().hex[:8]}"
    env = timer_env(azurite, app, AzureFunctionsWebHost__hostid=host_id)
    now = datetime.now(UTC)
    env["DAILY_SCHEDULE"], latest = daily_schedule(now)
    # The host last ran three days ago and expected to run again two days ago: it was down.
    recorded = {
        "Last": (latest - timedelta(days=3)).isoformat(),
        "Next": (latest - timedelta(days=2)).isoformat(),
        "LastUpdated": (latest - timedelta(days=3)).isoformat(),
    }
    hosts = BlobServiceClient.from_connection_string(azurite.connection_string)
    with contextlib.suppress(ResourceExistsError):
        hosts.create_container("azure-webjobs-hosts")
    status_blob = hosts.get_blob_client(
        "azure-webjobs-hosts", f"timers/{host_id}/Host.Functions.daily/status"
    )
    status_blob.upload_blob(json.dumps(recorded), overwrite=True)

    with LocalHost(app.app_dir, env=env, functions=["daily"]):
        (call,) = wait_until(lambda: app.calls("daily"), "the catch-up run")
        status = wait_until(
            lambda: (
                (s := json.loads(status_blob.download_blob().readall()))["Last"] != recorded["Last"]
                and s
            ),
            "the status was updated after the run",
        )
        # Any further run is due only at the recorded Next, 18 hours away.
        assert datetime.fromisoformat(status["Next"]) > now + timedelta(hours=17)
        assert len(app.calls("daily")) == 1, "one catch-up, not one per missed occurrence"

    assert call["past_due"] is True
    assert call["status"]["Next"] == recorded["Next"]


def test_admin_invoke_runs_a_timer_and_a_queue_function_once(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=TIMER_FUNCTIONS)
    env = timer_env(azurite, app)

    with LocalHost(app.app_dir, env=env, functions=["daily", "remember"]) as host:
        admin = f"{host.http_url}/admin/functions"
        timer = requests.post(f"{admin}/daily", json={"input": ""}, timeout=30)
        queue = requests.post(f"{admin}/remember", json={"input": "hi"}, timeout=30)
        unknown = requests.post(f"{admin}/nope", json={"input": ""}, timeout=30)
        no_body = requests.post(f"{admin}/daily", timeout=30)

        assert [timer.status_code, queue.status_code] == [202, 202]
        assert [unknown.status_code, no_body.status_code] == [404, 400]
        (timer_call,) = wait_until(lambda: app.calls("daily"), "the timer ran")
        (queue_call,) = wait_until(lambda: app.calls("remember"), "the queue function ran")

    assert timer_call["past_due"] is False
    assert timer_call["status"]["Next"], "a monitored timer gets its schedule status"
    assert queue_call == {**queue_call, "id": None, "body": "hi", "count": 0}


def test_two_devhost_processes_both_fire_as_there_is_no_singleton_lock(
    azurite: Azurite, make_app: Callable[..., RecordingApp]
) -> None:
    app = make_app(extra_functions=TIMER_FUNCTIONS)
    values = timer_env(azurite, app)
    settings = app.app_dir / "dev.settings.json"
    settings.write_text(json.dumps({"Values": values}))
    command = [sys.executable, "-m", "devhost", "--app-dir", str(app.app_dir), "--port", "0"]
    command += ["--settings", str(settings), "--functions", "on_startup"]
    environment = {key: value for key, value in os.environ.items() if key not in values}
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    try:
        calls = wait_until(
            lambda: len(app.calls("on_startup")) == 2 and app.calls("on_startup"), "both fired"
        )
        assert {call["pid"] for call in calls} == {process.pid for process in processes}
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(timeout=60) == 0
