"""The function index as the Functions host builds it from function_app.py.

Catches what otherwise shows up only in Azure as "0 functions found": an import error, a
renamed queue, a wrong connection setting, a duplicate function name.
"""

import json
from pathlib import Path

import pytest

from shared.config import (
    CHUNKS_QUEUE,
    JOBS_QUEUE,
    RUNS_CONTAINER,
    RUNS_TABLE,
    STORAGE_CONNECTION,
)


@pytest.fixture(scope="module")
def index() -> dict[str, list[dict]]:
    import function_app

    functions = function_app.app.get_functions()  # once: a second call raises by design
    return {f.get_function_name(): json.loads(f.get_function_json())["bindings"] for f in functions}


def test_exactly_the_expected_functions(index: dict[str, list[dict]]) -> None:
    assert sorted(index) == ["deliver_chunk", "plan_export"]


@pytest.mark.parametrize(
    ("function", "queue"), [("plan_export", JOBS_QUEUE), ("deliver_chunk", CHUNKS_QUEUE)]
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


def test_storage_names_match_the_infrastructure() -> None:
    """Bicep creates the queues, container and table; the code must use the same names."""
    bicep = (Path(__file__).resolve().parents[1] / "infra" / "main.bicep").read_text()
    for name in (JOBS_QUEUE, CHUNKS_QUEUE, RUNS_CONTAINER, RUNS_TABLE):
        assert f"= '{name}'" in bicep, f"{name} is not declared in infra/main.bicep"
    assert "'${exportJobsQueueName}-poison'" in bicep
    assert "'${exportChunksQueueName}-poison'" in bicep
