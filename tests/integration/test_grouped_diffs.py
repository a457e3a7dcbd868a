"""A delta's partitions are diffed a few to a job (`split_source.queue_partitions`): each is
still diffed, recorded and released as when a job diffed one, a job repeated after some of its
partitions were recorded diffs only the others, and a first export keeps a job per partition."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import pytest

from functions.planning import plan_export
from shared.core.messages import ChunkJob, ExportJob, PartitionJob
from shared.core.resource_names import JOBS_QUEUE, RUNS_CONTAINER, SNAPSHOTS_CONTAINER
from shared.core.runs import PartitionResult, Run, SplitResult, Status
from shared.core.snapshot_partition import SnapshotFormatError
from shared.pipeline import diff_partition as diff_step
from shared.pipeline.deliver_chunk import deliver_chunk
from shared.pipeline.diff_partition import diff_partition, diffed_partitions, fail_partition
from shared.pipeline.run_files import snapshot_fallbacks_name
from shared.pipeline.split_source import DELTA_PARTITIONS_PER_JOB, queue_partitions
from shared.pipeline.start import start_run
from tests.integration.conftest import (
    MESSY_HEADER,
    App,
    chunk_jobs,
    csv_bytes,
    export_definition,
    messy_rows,
    queue_message,
    run_in_process,
    split_in_process,
    take,
)

HEADER = MESSY_HEADER
pytestmark = pytest.mark.usefixtures("small_partitions")  # sixteen or so for 2,500 rows


def _rows(count: int) -> list[dict[str, str]]:
    return messy_rows(count, "grp")


def _first_export(app: App, name: str, rows: list[dict[str, str]]) -> str:
    path = f"grouped/{name}.csv"
    app.define([export_definition(name, path, f"Grouped {name}", chunk_size=500)])
    app.upload(path, csv_bytes(rows, HEADER))
    first = run_in_process(app, name)
    assert first.profiles_accepted == 2_450, first.message
    return path


def _one_changed(app: App, name: str, row: int, first_name: str) -> tuple[Run, list[PartitionJob]]:
    """A first export of the messy rows, then a delta changing one row's first name, split."""
    rows = _rows(2_500)
    path = _first_export(app, name, rows)
    rows[row]["FirstName"] = first_name
    app.upload(path, csv_bytes(rows, HEADER))
    app.mark_sandbox_requests()
    return _split(app, name)


def _split(app: App, name: str, **options: Any) -> tuple[Run, list[PartitionJob]]:
    """A run planned and split; its partition jobs, taken off the queue, in partition order."""
    run = start_run(app.services, name, "test", **options).run
    take(app, JOBS_QUEUE, ExportJob, run.run_id)
    split_in_process(app, run)
    split = app.services.runs.get(run.run_id)
    assert split is not None and split.partitions >= 8, split
    jobs = take(app, JOBS_QUEUE, PartitionJob, run.run_id)
    return split, sorted(jobs, key=lambda job: job.partition)


def _finish(app: App, run: Run, jobs: list[PartitionJob]) -> Run:
    for job in jobs:
        diff_partition(job, app.services)
    for chunk in chunk_jobs(app, run.run_id):
        deliver_chunk(chunk, app.services)
    final = app.services.runs.get(run.run_id)
    assert final is not None and final.is_final, final
    return final


def _sent(app: App) -> dict[str, dict[str, Any]]:
    return {o["external_id"]: o for b in app.sandbox_requests() for o in b["attributes"]}


def test_a_delta_diffs_its_partitions_a_few_to_a_job_and_sends_what_changed(
    split_app: App,
) -> None:
    rows = _rows(2_500)
    path = _first_export(split_app, "delta", rows)
    rows[3]["FirstName"] = "Zoë-Renamed 🎉"
    rows[10]["Note"] = 'now "quoted", with\na line break'
    gone = [row for row in rows if row["CustomerId"] in ("grp-00701", "grp-01401")]
    rows = [row for row in rows if row not in gone]
    rows.append({**rows[5], "CustomerId": "grp-new", "Email": "new@example.com"})
    split_app.upload(path, csv_bytes(rows, HEADER))
    split_app.mark_sandbox_requests()

    run, jobs = _split(split_app, "delta")  # the run as stored
    assert run.partitions_per_job == DELTA_PARTITIONS_PER_JOB
    assert [job.count for job in jobs] == [DELTA_PARTITIONS_PER_JOB] * len(jobs)
    assert [p for job in jobs for p in job.numbers] == list(range(run.partitions))
    queue_partitions(run, split_app.services)  # as a repeated split queues them again
    again = take(split_app, JOBS_QUEUE, PartitionJob, run.run_id)
    assert sorted(again, key=lambda job: job.partition) == jobs
    final = _finish(split_app, run, jobs)

    assert final.status == Status.PARTIALLY_SUCCEEDED  # the invalid emails, the duplicate
    assert (final.profiles_changed, final.profiles_new, final.profiles_removed) == (2, 1, 2)
    assert final.rows_rejected == 51 and final.profiles_accepted == 5
    sent = _sent(split_app)
    assert sent["grp-00003"] == {"external_id": "grp-00003", "first_name": "Zoë-Renamed 🎉"}
    assert sent["grp-00010"] == {
        "external_id": "grp-00010",
        "note": 'now "quoted", with\na line break',
    }
    assert sent["grp-new"]["email"] == "new@example.com"
    assert set(sent) == {"grp-00003", "grp-00010", "grp-new", *(r["CustomerId"] for r in gone)}
    users = split_app.braze_users()
    assert all(users[r["CustomerId"]]["segments"] == [] for r in gone)


def test_a_run_whose_splits_filed_few_rows_by_the_index_keeps_a_job_per_partition(
    split_app: App,
) -> None:
    """A first export sends each partition as soon as it is diffed, and a delta where most
    rows changed diffs as one does: a job of several would hold partitions back, or take the
    work of several first-export partitions."""
    rows = _rows(2_500)
    split_app.define([export_definition("few", "grouped/few.csv", "Grouped few")])
    split_app.upload("grouped/few.csv", csv_bytes(rows, HEADER))
    first, jobs = _split(split_app, "few")
    assert first.delivers_while_diffing and first.partitions_per_job == 1
    assert [(job.partition, job.count) for job in jobs] == [(p, 1) for p in range(first.partitions)]
    assert _finish(split_app, first, jobs).profiles_accepted == 2_450

    for n, row in enumerate(rows):
        row["LoyaltyPoints"] = str(n * 7 + 1)  # a balance that moves every day
    split_app.upload("grouped/few.csv", csv_bytes(rows, HEADER))
    run, jobs = _split(split_app, "few")
    assert not run.delivers_while_diffing and run.partitions_per_job == 1
    assert [job.count for job in jobs] == [1] * run.partitions
    final = _finish(split_app, run, jobs)
    assert final.profiles_changed == 2_450 and final.profiles_accepted == 2_450


def test_a_repeated_job_diffs_only_its_partitions_not_recorded_yet(split_app: App) -> None:
    """An attempt that recorded one partition of its job and died: the repeated job leaves
    that partition as recorded (its files are not written again) and diffs the others."""
    run, jobs = _one_changed(split_app, "repeat", 42, "Changed")
    storage = split_app.services.storage

    job = jobs[0]
    done = job.partition + 1
    diff_partition(replace(job, partition=done, count=1), split_app.services)
    fallbacks = snapshot_fallbacks_name(run.run_id, done)
    written = storage.etag(RUNS_CONTAINER, fallbacks)
    assert split_app.services.runs.partitions_diffed(run.run_id) == 1

    diff_partition(job, split_app.services)
    assert storage.etag(RUNS_CONTAINER, fallbacks) == written
    assert split_app.services.runs.partitions_diffed(run.run_id) == job.count
    final = _finish(split_app, run, jobs[1:])
    assert final.profiles_changed == 1 and final.profiles_unchanged == 2_449
    assert _sent(split_app) == {"grp-00042": {"external_id": "grp-00042", "first_name": "Changed"}}


def test_a_segment_that_shrank_keeps_a_job_per_partition(split_app: App) -> None:
    """Its rows are all unchanged, but a fifth of the snapshot's profiles left: each partition
    writes a removal for each of them, work a first export's partition does."""
    rows = _rows(2_500)
    path = _first_export(split_app, "shrank", rows)
    split_app.upload(path, csv_bytes(rows[:2_000], HEADER))
    run, jobs = _split(split_app, "shrank")
    assert run.partitions_per_job == 1 and [job.count for job in jobs] == [1] * run.partitions
    final = _finish(split_app, run, jobs)
    assert (final.profiles_unchanged, final.profiles_removed) == (1_960, 490)


def test_a_run_tells_which_of_a_range_of_its_partitions_are_recorded(split_app: App) -> None:
    """One range query, bounds included, among the run's other records and another run's."""
    runs = split_app.services.runs
    for partition in (3, 4, 7, 8):
        runs.record_partition("range-run", PartitionResult(partition))
    runs.record_partition("range-run-2", PartitionResult(5))
    runs.record_split("range-run", SplitResult(5))
    runs.save_split_progress("range-run", 6, 100)
    assert runs.partitions_recorded("range-run", 4, 7) == {4, 7}
    assert runs.partitions_recorded("range-run", 5, 6) == set()
    assert runs.partitions_recorded("range-run", 0, 255) == {3, 4, 7, 8}


def test_a_teardown_keeps_a_job_per_partition(split_app: App) -> None:
    """Each of its partitions writes a removal for every profile the snapshot holds."""
    _first_export(split_app, "down", _rows(2_500))
    run, jobs = _split(split_app, "down", teardown=True)
    assert [job.count for job in jobs] == [1] * run.partitions
    final = _finish(split_app, run, jobs)
    assert final.status == Status.SUCCEEDED and final.profiles_removed == 2_450
    assert all(user["segments"] == [] for user in split_app.braze_users().values())


def test_a_job_that_fails_part_way_queues_its_partitions_left_a_job_each(
    split_app: App,
) -> None:
    """Each then has its own retries, as when every job took one partition; those diffed
    before the failure stay recorded. The failure: a snapshot partition that cannot be read
    (damaged), put right before the jobs queued again run."""
    run, jobs = _one_changed(split_app, "partway", 7, "Changed ✓")
    job = jobs[1]
    broken = job.partition + 2
    storage = split_app.services.storage
    name = f"partway/sandbox/{run.previous_snapshot}/part-{broken:04d}.jsonl"
    intact = storage.read_bytes(SNAPSHOTS_CONTAINER, name)
    storage.write_bytes(SNAPSHOTS_CONTAINER, name, intact[: len(intact) // 2], "text/plain")

    assert diff_partition(job, split_app.services) is None  # it ends, having queued them
    recorded = split_app.services.runs.partitions_recorded(run.run_id, 0, run.partitions - 1)
    assert recorded == {job.partition, job.partition + 1}
    again = take(split_app, JOBS_QUEUE, PartitionJob, run.run_id)
    assert sorted((j.partition, j.count) for j in again) == [(broken, 1), (broken + 1, 1)]

    with pytest.raises(SnapshotFormatError):  # a job of one raises, to be retried
        diff_partition(replace(job, partition=broken, count=1), split_app.services)
    storage.write_bytes(SNAPSHOTS_CONTAINER, name, intact, "application/octet-stream")
    final = _finish(split_app, run, [jobs[0], *again, *jobs[2:]])
    assert final.status == Status.PARTIALLY_SUCCEEDED and final.profiles_changed == 1
    assert _sent(split_app) == {
        "grp-00007": {"external_id": "grp-00007", "first_name": "Changed ✓"}
    }


def test_a_job_that_fails_after_its_run_ended_queues_nothing_again(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another job failed the run while this one diffed its partitions, then this one failed
    too: the partitions it had left are not queued again, since the run has ended, and the run
    stays failed with the other job's reason."""
    run, jobs = _one_changed(split_app, "ended", 7, "Changed")
    job = jobs[1]
    real_diff = diff_step._diff

    def run_ended_then_fails(
        run_: Run, definitions: Any, partition_job: PartitionJob, *rest: Any
    ) -> PartitionResult:
        if partition_job.partition == job.partition + 1:
            fail_partition(jobs[0], ConnectionError("storage went away"), split_app.services)
            raise ConnectionError("the storage account is unreachable")
        return real_diff(run_, definitions, partition_job, *rest)

    monkeypatch.setattr(diff_step, "_diff", run_ended_then_fails)

    assert diff_partition(job, split_app.services) is None
    assert take(split_app, JOBS_QUEUE, PartitionJob, run.run_id) == []
    recorded = split_app.services.runs.partitions_recorded(run.run_id, 0, run.partitions - 1)
    assert recorded == {job.partition}
    failed = split_app.services.runs.get(run.run_id)
    assert failed is not None and failed.status == Status.FAILED
    assert "storage went away" in failed.message


def test_a_job_of_several_partitions_that_fails_names_them(split_app: App) -> None:
    run, jobs = _one_changed(split_app, "fails", 1, "Changed")

    fail_partition(jobs[1], ConnectionError("storage went away"), split_app.services)
    failed = split_app.services.runs.get(run.run_id)
    assert failed is not None and failed.status == Status.FAILED
    last = jobs[1].partition + jobs[1].count - 1
    assert f"partitions {jobs[1].partition}-{last} of {run.partitions}" in failed.message
    assert "storage went away" in failed.message


def test_a_job_of_several_delivered_again_queues_its_partitions_left_a_job_each(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its earlier attempt did not finish (its host was killed, say, which raises nothing):
    whichever partition did that must not use up the others' attempts. The one the earlier
    attempt recorded stays recorded; the others each get a job, and the run ends as usual."""
    monkeypatch.setattr("shared.adapters.services.app_services", lambda: split_app.services)
    run, jobs = _one_changed(split_app, "redelivered", 42, "Changed, again")
    job = jobs[0]
    assert job.count == 4
    diff_partition(replace(job, partition=job.partition + 1, count=1), split_app.services)

    plan_export(queue_message(job, 2))
    assert split_app.services.runs.partitions_diffed(run.run_id) == 1  # nothing diffed again
    again = take(split_app, JOBS_QUEUE, PartitionJob, run.run_id)
    left = [partition for partition in job.numbers if partition != job.partition + 1]
    assert sorted((j.partition, j.count) for j in again) == [(p, 1) for p in left]

    final = _finish(split_app, run, [*again, *jobs[1:]])
    assert final.status == Status.PARTIALLY_SUCCEEDED and final.profiles_changed == 1
    assert _sent(split_app) == {
        "grp-00042": {"external_id": "grp-00042", "first_name": "Changed, again"}
    }


def test_a_job_of_several_delivered_again_with_all_recorded_goes_on_to_the_release(
    split_app: App,
) -> None:
    """Its earlier attempt recorded every partition, then did not finish: nothing is queued
    again, and the run, every partition being recorded, is released by this attempt."""
    run, jobs = _one_changed(split_app, "released", 7, "Zoë 🎉")
    job = jobs[-1]
    for other in jobs[:-1]:
        diff_partition(other, split_app.services)
    with contextlib.closing(diffed_partitions(run, job, split_app.services)) as diffed:
        for _, result in diffed:  # what the earlier attempt did before it stopped
            assert result is not None
            split_app.services.runs.record_partition(run.run_id, result)
    assert split_app.services.runs.partitions_diffed(run.run_id) == run.partitions
    assert chunk_jobs(split_app, run.run_id) == []  # all recorded, but not released

    released = diff_partition(job, split_app.services, attempt=2)
    assert take(split_app, JOBS_QUEUE, PartitionJob, run.run_id) == []
    assert isinstance(released, ChunkJob)
    (chunk,) = chunk_jobs(split_app, run.run_id)
    deliver_chunk(chunk, split_app.services)
    final = split_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.PARTIALLY_SUCCEEDED
    assert _sent(split_app) == {"grp-00007": {"external_id": "grp-00007", "first_name": "Zoë 🎉"}}
