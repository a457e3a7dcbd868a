"""Starting a run when its insert's answer was lost: the storage client sends the insert again
(`RETRIED_METHODS`), and had the first landed, the second finds the run existing. The run this
call made is told by its creation time and gets its planning job; a run another trigger made
first (a duplicate event) gets none from this call."""

from __future__ import annotations

import pytest

from shared.core.messages import ExportJob
from shared.core.resource_names import JOBS_QUEUE
from shared.core.runs import Run, RunConflict
from shared.pipeline.start import start_run
from tests.integration.conftest import App, export_definition, take


@pytest.fixture
def defined(quiet_app: App) -> App:
    quiet_app.define(
        [
            export_definition("start-own", "start/own.csv", "Start own"),
            export_definition("start-twice", "start/twice.csv", "Start twice"),
        ]
    )
    return quiet_app


def test_a_runs_own_insert_found_existing_still_gets_its_planning_job(
    defined: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = defined.services.runs
    real = runs.create

    def answer_lost(run: Run) -> None:
        real(run)  # the insert landed; the repeat then finds it
        raise RunConflict(f"run {run.run_id} already exists")

    monkeypatch.setattr(runs, "create", answer_lost)
    started = start_run(defined.services, "start-own", "test")
    assert started.created
    (job,) = take(defined, JOBS_QUEUE, ExportJob, started.run.run_id)
    assert job.export_name == "start-own"


def test_a_run_another_trigger_inserted_first_gets_no_second_planning_job(
    defined: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two triggers of one blob event, one run id: the other inserts between this call's look
    and its insert."""
    runs = defined.services.runs
    first = start_run(defined.services, "start-twice", "test", run_id="start-twice-event-1").run
    real_get = runs.get
    looks: list[str] = []

    def look(run_id: str) -> Run | None:
        looks.append(run_id)
        return None if len(looks) == 1 else real_get(run_id)  # the first finds nothing yet

    monkeypatch.setattr(runs, "get", look)
    again = start_run(defined.services, "start-twice", "test", run_id="start-twice-event-1")
    assert not again.created and again.run.created_at == first.created_at
    assert len(take(defined, JOBS_QUEUE, ExportJob, first.run_id)) == 1  # the first trigger's
