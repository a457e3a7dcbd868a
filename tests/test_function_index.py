"""The function index as the Functions host builds it from function_app.py.

Catches what otherwise shows up only in Azure as "0 functions found": an import error, a
renamed queue, a wrong connection setting, a duplicate function name.
"""

import json
from pathlib import Path

import pytest

from shared.core.resource_names import (
    CHUNKS_QUEUE,
    DROPS_CONTAINER,
    JOBS_QUEUE,
    RUNS_CONTAINER,
    RUNS_TABLE,
    SNAPSHOTS_CONTAINER,
    STORAGE_CONNECTION,
)


@pytest.fixture(scope="module")
def index() -> dict[str, list[dict]]:
    import function_app

    functions = function_app.app.get_functions()  # once: a second call raises by design
    return {f.get_function_name(): json.loads(f.get_function_json())["bindings"] for f in functions}


def test_exactly_the_expected_functions(index: dict[str, list[dict]]) -> None:
    assert sorted(index) == [
        "dashboard",
        "deliver_chunk",
        "get_run",
        "get_run_rejected_rows",
        "get_run_report",
        "list_export_runs",
        "list_exports",
        "plan_export",
        "replay_run",
        "schedule_exports",
        "segment_dropped",
        "start_export_run",
        "start_teardown",
    ]


@pytest.mark.parametrize(
    ("function", "queue"),
    [
        ("plan_export", JOBS_QUEUE),
        ("deliver_chunk", CHUNKS_QUEUE),
    ],
)
def test_queue_triggers(index: dict[str, list[dict]], function: str, queue: str) -> None:
    (binding,) = index[function]
    assert binding == {
        "direction": "IN",
        "type": "queueTrigger",
        "name": "msg",
        "queueName": queue,
        "connection": STORAGE_CONNECTION,
    }


def test_timer_runs_every_minute_and_is_monitored(index: dict[str, list[dict]]) -> None:
    (binding,) = index["schedule_exports"]
    assert binding["type"] == "timerTrigger"
    assert binding["schedule"] == "0 * * * * *"
    assert binding["runOnStartup"] is False and binding["useMonitor"] is True


@pytest.mark.parametrize(
    ("function", "method", "route"),
    [
        ("start_export_run", "POST", "exports/{name}/runs"),
        ("list_export_runs", "GET", "exports/{name}/runs"),
        ("list_exports", "GET", "exports"),
        ("get_run", "GET", "runs/{run_id}"),
        ("dashboard", "GET", "dashboard"),
        ("get_run_report", "GET", "runs/{run_id}/report"),
        ("get_run_rejected_rows", "GET", "runs/{run_id}/rejected"),
    ],
)
def test_http_routes_require_a_function_key(
    index: dict[str, list[dict]], function: str, method: str, route: str
) -> None:
    trigger, output = index[function]
    assert trigger["type"] == "httpTrigger" and output["type"] == "http"
    assert trigger["methods"] == [method] and trigger["route"] == route
    assert trigger["authLevel"] == "FUNCTION"


def test_blob_drop_uses_event_grid_on_the_segments_container(
    index: dict[str, list[dict]],
) -> None:
    (binding,) = index["segment_dropped"]
    assert binding["type"] == "blobTrigger"
    assert binding["source"] == "EventGrid"
    assert binding["path"] == f"{DROPS_CONTAINER}/{{name}}"
    assert binding["connection"] == STORAGE_CONNECTION


def test_storage_names_match_the_infrastructure() -> None:
    """Bicep creates the queues, container and table; the code must use the same names."""
    bicep = (Path(__file__).resolve().parents[1] / "infra" / "main.bicep").read_text()
    names = (
        JOBS_QUEUE,
        CHUNKS_QUEUE,
        RUNS_CONTAINER,
        SNAPSHOTS_CONTAINER,
        RUNS_TABLE,
        DROPS_CONTAINER,
    )
    for name in names:
        assert f"= '{name}'" in bicep, f"{name} is not declared in infra/main.bicep"
    queues = (
        "exportJobsQueueName",
        "exportChunksQueueName",
    )
    for queue in queues:
        assert f"'${{{queue}}}-poison'" in bicep
