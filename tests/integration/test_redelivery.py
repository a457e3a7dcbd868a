"""Queue redelivery and poison, in process on Azurite: no row lost, none counted twice.

The functions are called directly here (as the host would call them again after a crash or a
timeout) so each attempt is deterministic; the Braze sandbox answers over HTTP.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.functions.queue import QueueMessage

from devtools.sample import make_segment
from functions.delivery import deliver
from functions.planning import plan_export
from shared.adapters.braze_client import TrackOutcome
from shared.adapters.storage import Storage
from shared.core.messages import ChunkJob, ExportJob, PartitionJob
from shared.core.resource_names import PARTITIONS_QUEUE
from shared.core.runs import Run, Status
from shared.pipeline.deliver_chunk import deliver_chunk
from shared.pipeline.plan_export import plan_run
from shared.pipeline.run_files import partition_piece_name, report_blob_name
from tests.integration.conftest import App, OneAtATime, export_definition, plan_in_process, take


def _new_run(app: App, name: str, path: str, rows: int, **overrides: Any) -> tuple[Run, Any]:
    sample = make_segment(rows, invalid_every=1000, id_prefix=name)
    app.upload(path, sample.data)
    app.define([export_definition(name, path, "R", **{"chunk_size": 100, **overrides})])
    run = Run(f"{name}-run", name, "R", "sandbox", f"segments/{path}", "test")
    app.services.runs.claim_export(name, run.run_id)
    app.services.runs.create(run)
    return run, sample


class FlakyStorage(Storage):
    """Fails one chunk upload, as a storage outage would mid-plan (no local equivalent)."""

    def __init__(self, real: Storage, fail_on: str) -> None:
        self.__dict__.update(real.__dict__)
        self._fail_on = fail_on

    def write_bytes(self, container: str, name: str, data: Any, content_type: str) -> None:
        if name == self._fail_on:
            self._fail_on = ""
            raise ConnectionError("storage went away")
        super().write_bytes(container, name, data, content_type)


def test_a_plan_retried_after_a_transient_error_loses_no_row(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, sample = _new_run(quiet_app, "replan", "redeliver/replan.csv", 250)
    flaky = FlakyStorage(quiet_app.services.storage, partition_piece_name(run.run_id, 0, 0))
    monkeypatch.setattr(quiet_app.services, "storage", flaky)

    with pytest.raises(ConnectionError):
        plan_run(ExportJob(run.run_id, "replan"), quiet_app.services)
    assert take(quiet_app, PARTITIONS_QUEUE, PartitionJob, run.run_id) == []
    assert quiet_app.sandbox_requests() == []  # nothing is sent before the whole plan is done

    jobs = plan_in_process(quiet_app, run)  # the queue's retry
    assert [(j.chunk_index, j.rows) for j in jobs] == [(0, 100), (1, 100), (2, 50)]
    for job in jobs:
        deliver_chunk(job, quiet_app.services)

    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert final.profiles_accepted == final.rows_valid == len(sample.expected) == 250
    assert set(quiet_app.braze_users()) == set(sample.expected)


def test_a_redelivered_chunk_is_not_sent_or_counted_twice(quiet_app: App) -> None:
    run, _ = _new_run(quiet_app, "twice", "redeliver/twice.csv", 150)
    jobs = plan_in_process(quiet_app, run)
    deliver_chunk(jobs[0], quiet_app.services)
    sent = len(quiet_app.sandbox_requests())
    deliver_chunk(jobs[0], quiet_app.services)  # duplicate delivery of the same message
    assert len(quiet_app.sandbox_requests()) == sent
    deliver_chunk(jobs[1], quiet_app.services)
    final = quiet_app.services.runs.get(run.run_id)
    assert (
        final is not None and final.profiles_accepted == 150 and final.requests_sent == 3
    )  # 75+25, 50


def _message(job: ExportJob | ChunkJob, dequeue_count: int) -> QueueMessage:
    return QueueMessage(id="m", body=job.to_json().encode(), dequeue_count=dequeue_count)


def test_a_chunk_that_fails_every_attempt_ends_the_run_with_its_rows_reported(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = _new_run(quiet_app, "poison", "redeliver/poison.csv", 150)
    monkeypatch.setattr("functions.delivery.app_services", lambda: quiet_app.services)
    good, bad = plan_in_process(quiet_app, run)
    deliver(_message(good, 1))
    requests_before = len(quiet_app.sandbox_requests())
    broken = ChunkJob(
        bad.run_id, bad.export_name, bad.chunk_index, bad.blob_names, bad.rows + 1, bad.partitions
    )
    attempts = quiet_app.services.settings.max_dequeue_count
    for attempt in range(1, attempts + 1):
        with pytest.raises(ValueError, match="holds 50 profiles but was planned with 51"):
            deliver(_message(broken, attempt))
        status = quiet_app.services.runs.get(run.run_id).status  # type: ignore[union-attr]
        assert (status == Status.PARTIALLY_SUCCEEDED) == (attempt == attempts)
    assert len(quiet_app.sandbox_requests()) == requests_before

    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None
    assert (final.profiles_accepted, final.profiles_rejected_by_braze) == (100, 50)
    rejected = [json.loads(x) for x in quiet_app.blob_text(final.rejected_blob).splitlines()]
    assert len(rejected) == 50
    assert {r["codes"][0] for r in rejected} == {"delivery_failed"}
    assert "after every retry" in rejected[0]["reasons"][0]


def test_a_plan_that_fails_every_attempt_ends_the_run_saying_why(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = _new_run(quiet_app, "plandead", "redeliver/plandead.csv", 120)
    monkeypatch.setattr("functions.planning.app_services", lambda: quiet_app.services)

    def broken_plan(*args: object) -> None:
        raise ConnectionError("table storage unreachable")

    monkeypatch.setattr("functions.planning.plan_run", broken_plan)
    attempts = quiet_app.services.settings.max_dequeue_count
    for attempt in range(1, attempts + 1):
        with pytest.raises(ConnectionError):
            plan_export(_message(ExportJob(run.run_id, "plandead"), attempt))
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.FAILED
    assert "planning failed after every retry: ConnectionError" in final.message
    assert final.rows_read == final.rows_valid + final.rows_rejected
    assert quiet_app.sandbox_requests() == []


def test_a_finalizer_that_fails_gives_its_claim_back_for_the_retry(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = _new_run(quiet_app, "finfail", "redeliver/finfail.csv", 80)
    (job,) = plan_in_process(quiet_app, run)
    real = quiet_app.services.storage
    flaky = FlakyStorage(real, report_blob_name(run.run_id))
    monkeypatch.setattr(quiet_app.services, "storage", flaky)

    with pytest.raises(ConnectionError):
        deliver_chunk(job, quiet_app.services)  # delivered, then finalizing fails
    assert quiet_app.services.runs.get(run.run_id).status == Status.DELIVERING  # type: ignore[union-attr]

    deliver_chunk(job, quiet_app.services)  # the queue's retry: chunk done, finalize again
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert final.profiles_accepted == 80
    assert json.loads(quiet_app.blob_text(final.report_blob))["status"] == "succeeded"


class CrashingBraze(OneAtATime):
    """Answers `batches` requests through the real client, then dies as a recycled worker would
    (a process cannot be killed inside a test's own process; the fault suite uses SIGKILL)."""

    def __init__(self, real: Any, batches: int) -> None:
        self._real, self._left = real, batches

    def track(self, objects: Any) -> TrackOutcome:
        if self._left == 0:
            raise SystemExit("worker recycled")
        self._left -= 1
        outcome: TrackOutcome = self._real.track(objects)
        return outcome


def test_a_worker_killed_mid_chunk_resumes_at_the_first_unfinished_batch(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, sample = _new_run(quiet_app, "resume", "redeliver/resume.csv", 400, chunk_size=400)
    (job,) = plan_in_process(quiet_app, run)
    connection = quiet_app.services.definitions().connection("sandbox")
    real = quiet_app.services.braze(connection)
    monkeypatch.setattr(quiet_app.services, "braze", lambda _: CrashingBraze(real, 2))
    with pytest.raises(SystemExit):
        deliver_chunk(job, quiet_app.services)
    first = quiet_app.sandbox_requests()
    assert len(first) == 2

    monkeypatch.setattr(quiet_app.services, "braze", lambda _: real)
    deliver_chunk(job, quiet_app.services)  # the message comes back after the crash
    bodies = quiet_app.sandbox_requests()
    assert len(bodies) == 6  # 400 profiles in batches of 75: 2 before the crash, 4 after
    sent = [obj["external_id"] for body in bodies for obj in body["attributes"]]
    assert len(sent) == len(set(sent)) == 400  # no batch sent twice, none skipped
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert (final.profiles_accepted, final.requests_sent) == (400, 6)
    assert set(quiet_app.braze_users()) == set(sample.expected)
