"""A first export's partitions go to Braze as each one is diffed, where no safety valve can stop
the run (`release.delivers_while_diffing`). Driven stage by stage in process against Azurite
and the Braze sandbox over HTTP, so what Braze holds between two diffs is known exactly."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from devtools.sample import SampleSegment, make_segment
from shared.core.messages import ChunkJob, ExportJob, PartitionJob, SplitJob
from shared.core.partitioning import partition_of
from shared.core.resource_names import CHUNKS_QUEUE, JOBS_QUEUE
from shared.core.runs import Run, Status, utcnow
from shared.pipeline.deliver_chunk import deliver_chunk
from shared.pipeline.diff_partition import diff_partition, fail_partition
from shared.pipeline.finalize import finish_early
from shared.pipeline.plan_export import plan_run
from shared.pipeline.release import MAX_CHUNK_BLOBS
from shared.pipeline.split_source import split_source
from shared.pipeline.stall_sweep import check_run
from shared.pipeline.start import start_run
from tests.integration.conftest import App, export_definition, run_in_process, take


@pytest.fixture(autouse=True)
def small_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few hundred rows make eight or more partitions."""
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 4096)


def _split_first_export(
    app: App, name: str, rows: int = 300, invalid_every: int = 25, **overrides: Any
) -> tuple[Run, SampleSegment]:
    """A first export of a messy segment, planned and split: the run as the splits left it."""
    sample = make_segment(rows, invalid_every=invalid_every, id_prefix=name)
    app.upload(f"early/{name}.csv", sample.data)
    app.define([export_definition(name, f"early/{name}.csv", sample.segment, **overrides)])
    run = start_run(app.services, name, "test").run
    take(app, JOBS_QUEUE, ExportJob, run.run_id)
    plan_run(ExportJob(run.run_id, run.export_name), app.services)
    for split in take(app, JOBS_QUEUE, SplitJob, run.run_id):
        split_source(split, app.services)
    return _run(app, run.run_id), sample


def _planned(
    app: App, name: str, **overrides: Any
) -> tuple[Run, SampleSegment, list[PartitionJob]]:
    """A 300-row first export, split, with its partition jobs taken."""
    run, sample = _split_first_export(app, name, **overrides)
    jobs = take(app, JOBS_QUEUE, PartitionJob, run.run_id)
    return run, sample, sorted(jobs, key=lambda job: job.partition)


def _profiles_of(sample: SampleSegment, partitions: set[int], count: int) -> dict[str, Any]:
    return {
        customer: profile
        for customer, profile in sample.expected.items()
        if partition_of(customer, count) in partitions
    }


def _run(app: App, run_id: str) -> Run:
    run = app.services.runs.get(run_id)
    assert run is not None
    return run


def test_each_partition_reaches_braze_once_diffed_and_the_run_adds_up(quiet_app: App) -> None:
    run, sample, jobs = _planned(quiet_app, "early")
    assert len(jobs) >= 8 and _run(quiet_app, run.run_id).delivers_while_diffing
    diffed: set[int] = set()
    for job in jobs:
        diff_partition(job, quiet_app.services)
        (chunk,) = take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)
        assert (chunk.chunk_index, chunk.partitions) == (job.partition, [job.partition])
        deliver_chunk(chunk, quiet_app.services)
        diffed.add(job.partition)
        # Braze holds exactly the partitions diffed so far, before the others are diffed.
        assert quiet_app.braze_users() == _profiles_of(sample, diffed, len(jobs))
        if len(diffed) < len(jobs):
            waiting = _run(quiet_app, run.run_id)
            assert (waiting.status, waiting.chunks_total) == (Status.PLANNING, None)

    final = _run(quiet_app, run.run_id)
    assert final.status == Status.PARTIALLY_SUCCEEDED  # the invalid rows
    assert final.chunks_total == len(jobs) and final.requests_sent >= len(jobs)
    assert final.profiles_accepted == final.objects_planned == len(sample.expected)
    assert final.rows_read == final.rows_valid + final.rows_rejected == sample.rows
    text = quiet_app.blob_text(final.rejected_blob)
    rejected = [json.loads(line) for line in text.split("\n") if line]
    assert {row["line"] for row in rejected} == sample.invalid_lines.keys()
    for row in rejected:
        assert sample.invalid_lines[row["line"]] in row["codes"]

    # The snapshot holds everyone: the same file again sends nothing, and a delta (a snapshot
    # to remove people from) waits for its release.
    assert run_in_process(quiet_app, "early").objects_planned == 0
    quiet_app.upload("early/early.csv", sample.data.replace(b"true", b"false", 1))
    delta = run_in_process(quiet_app, "early", full_refresh=True)
    assert not delta.delivers_while_diffing and delta.status == Status.PARTIALLY_SUCCEEDED


def test_a_run_a_valve_might_stop_sends_nothing_before_its_release(quiet_app: App) -> None:
    """300 rows could write 300 x 7 data points; with room for fewer, the run waits for the
    release, which counts the real ones: here fewer than the valve allows, so all are sent."""
    run, sample, jobs = _planned(quiet_app, "valved", max_data_points=300 * 7 - 1)
    assert not _run(quiet_app, run.run_id).delivers_while_diffing
    for job in jobs[:-1]:
        diff_partition(job, quiet_app.services)
    assert take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id) == []
    assert quiet_app.braze_users() == {}
    diff_partition(jobs[-1], quiet_app.services)
    for chunk in take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id):
        deliver_chunk(chunk, quiet_app.services)
    final = _run(quiet_app, run.run_id)
    assert final.data_points_estimated < 300 * 7 - 1
    assert final.profiles_accepted == len(sample.expected) == len(quiet_app.braze_users())


def test_the_valve_still_stops_a_first_export_with_nothing_sent(quiet_app: App) -> None:
    run, _, jobs = _planned(quiet_app, "stopped", max_data_points=100)
    for job in jobs:
        diff_partition(job, quiet_app.services)
    final = _run(quiet_app, run.run_id)
    assert (final.status, final.stopped_by) == (Status.STOPPED, "max_data_points")
    assert take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id) == []
    assert quiet_app.braze_users() == {}


def test_a_failure_in_planning_keeps_what_was_sent_says_so_and_the_next_run_sends_all(
    quiet_app: App,
) -> None:
    run, sample, jobs = _planned(quiet_app, "broken")
    half = jobs[: len(jobs) // 2]
    for job in half:
        diff_partition(job, quiet_app.services)
    chunks = take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)
    assert [chunk.chunk_index for chunk in chunks] == [job.partition for job in half]
    deliver_chunk(chunks[0], quiet_app.services)

    fail_partition(jobs[-1], TimeoutError("kept timing out"), quiet_app.services)
    # The run ends once the jobs already queued are delivered, not before; a diff finishing
    # meanwhile counts for nothing and sends nothing (its partition was abandoned), and
    # releases nothing.
    assert not _run(quiet_app, run.run_id).is_final
    diff_partition(jobs[-2], quiet_app.services)
    assert take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id) == []
    assert _run(quiet_app, run.run_id).status == Status.PLANNING
    for chunk in chunks[1:]:
        deliver_chunk(chunk, quiet_app.services)
    final = _run(quiet_app, run.run_id)
    assert final.status == Status.FAILED
    assert f"the {len(half)} partition(s) diffed before that go to Braze" in final.message
    sent = _profiles_of(sample, {job.partition for job in half}, len(jobs))
    assert quiet_app.braze_users() == sent
    # The counts add up (else the run would say so): what was planned is what was sent.
    assert final.profiles_accepted == final.objects_planned == final.profiles_new == len(sent)
    assert final.rows_valid == len(sent) and final.rows_not_validated > 0
    assert quiet_app.services.snapshots.current("broken", "sandbox") is None

    again = run_in_process(quiet_app, "broken")
    assert again.full_refresh_reason == "first run of this export on this connection"
    assert again.profiles_accepted == len(sample.expected)
    assert quiet_app.braze_users() == sample.expected


def test_a_planning_failure_retried_after_recording_the_abandoned_partitions_still_ends(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ending the run records each partition not diffed as abandoned, then its job as empty.
    An attempt that died in between (or whose inserts' answers were lost) left abandoned
    partitions without their jobs: the retry must record those too, or the run waits for
    jobs that never come."""
    run, _, jobs = _planned(quiet_app, "retried")
    services = quiet_app.services
    diff_partition(jobs[0], services)
    (chunk,) = take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)
    real = services.runs.record_chunk

    def died(*_: object) -> bool:
        raise ConnectionError("the worker died after recording the abandoned partitions")

    monkeypatch.setattr(services.runs, "record_chunk", died)
    with pytest.raises(ConnectionError):
        fail_partition(jobs[-1], TimeoutError("kept timing out"), services)
    monkeypatch.setattr(services.runs, "record_chunk", real)
    abandoned = [r for r in services.runs.partition_results(run.run_id) if r.abandoned]
    assert len(abandoned) == len(jobs) - 1  # recorded by the attempt that died

    fail_partition(jobs[-1], TimeoutError("kept timing out"), services)  # the queue's retry
    deliver_chunk(chunk, services)
    final = _run(quiet_app, run.run_id)
    assert final.status == Status.FAILED and "kept timing out" in final.message
    assert services.runs.chunks_recorded(run.run_id) == len(jobs)


def test_a_second_failure_holding_an_older_copy_leaves_the_ended_run_as_it_was(
    quiet_app: App,
) -> None:
    """Two jobs fail at once (a storage outage poisons several), each read the run before the
    other ended it: the later one must not write its older copy over the finished run."""
    run, _, jobs = _planned(quiet_app, "twofail")
    services = quiet_app.services
    older = _run(quiet_app, run.run_id)  # what the second failing job read
    fail_partition(jobs[-1], TimeoutError("kept timing out"), services)
    ended = _run(quiet_app, run.run_id)
    assert ended.is_final  # nothing was diffed, so nothing is under way: it ends at once
    finish_early(older, services, message="planning failed: the second job", failed=True)
    after = _run(quiet_app, run.run_id)
    assert (after.status, after.message) == (ended.status, ended.message)
    assert (after.finished_at, after.etag) == (ended.finished_at, ended.etag)  # not written


def test_a_second_failure_while_the_ended_runs_jobs_are_delivered_keeps_the_first_reason(
    quiet_app: App,
) -> None:
    run, _, jobs = _planned(quiet_app, "tworeasons")
    services = quiet_app.services
    diff_partition(jobs[0], services)
    (chunk,) = take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)
    fail_partition(jobs[-1], TimeoutError("the first reason"), services)
    ended = _run(quiet_app, run.run_id)
    assert not ended.is_final  # its queued job is still to be delivered
    fail_partition(jobs[-2], TimeoutError("a second reason"), services)
    assert _run(quiet_app, run.run_id).etag == ended.etag  # left as the first end wrote it
    deliver_chunk(chunk, services)
    final = _run(quiet_app, run.run_id)
    assert final.status == Status.FAILED
    assert "the first reason" in final.message and "a second reason" not in final.message


def test_a_repeated_diff_job_queues_the_partition_once_and_again_only_after_a_crash(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _, jobs = _planned(quiet_app, "again")
    services = quiet_app.services
    diff_partition(jobs[0], services)
    assert len(take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)) == 1
    diff_partition(jobs[0], services)  # a repeated message: the job is queued already
    assert take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id) == []

    real = services.storage.send_messages

    def crash(*_: object) -> None:
        raise ConnectionError("the worker died after recording its partition")

    monkeypatch.setattr(services.storage, "send_messages", crash)
    with pytest.raises(ConnectionError):
        diff_partition(jobs[1], services)
    monkeypatch.setattr(services.storage, "send_messages", real)
    diff_partition(jobs[1], services)  # the queue's retry of that message
    (chunk,) = take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)
    assert chunk.chunk_index == jobs[1].partition


def test_a_queued_job_lost_after_a_planning_failure_is_ended_by_the_stall_sweep(
    quiet_app: App,
) -> None:
    run, sample, jobs = _planned(quiet_app, "lost")
    services = quiet_app.services
    for job in jobs[:3]:
        diff_partition(job, services)
    first, lost, third = take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)
    fail_partition(jobs[-1], TimeoutError("kept timing out"), services)
    deliver_chunk(first, services)
    deliver_chunk(third, services)
    assert not _run(quiet_app, run.run_id).is_final  # waiting for `lost`, which never comes

    future = utcnow() + services.settings.stall_after + timedelta(minutes=1)
    assert check_run(services, _run(quiet_app, run.run_id), future) == "stalled: 1 chunk(s) ended"
    final = _run(quiet_app, run.run_id)
    assert final.status == Status.FAILED
    assert "kept timing out" in final.message  # the planning failure stays the run's message
    never = _profiles_of(sample, {lost.chunk_index}, len(jobs))
    text = quiet_app.blob_text(final.rejected_blob)
    failed = [json.loads(line) for line in text.split("\n") if line]
    assert {r["customer_id"] for r in failed if "delivery_failed" in r["codes"]} == set(never)
    assert final.profiles_accepted + final.profiles_rejected_by_braze == final.objects_planned


def test_the_rows_of_each_partition_not_the_rows_read_bound_its_job(quiet_app: App) -> None:
    """5,000 rows at 75 profiles a blob would be 67 blobs in one job, over the 64 a message
    names; spread over 128 partitions of about 40 rows, each job holds one."""
    run, _ = _split_first_export(quiet_app, "spread", 5_000, 97, chunk_size=75)
    assert run.rows_read > 75 * MAX_CHUNK_BLOBS and run.delivers_while_diffing
    for job in take(quiet_app, JOBS_QUEUE, PartitionJob, run.run_id):
        diff_partition(job, quiet_app.services)
    chunks = take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)
    assert len(chunks) == run.partitions and all(len(c.blob_names) == 1 for c in chunks)
    for chunk in chunks:
        deliver_chunk(chunk, quiet_app.services)
    final = _run(quiet_app, run.run_id)
    assert final.profiles_accepted == final.objects_planned == final.rows_valid


def test_a_partition_too_big_for_one_job_waits_for_the_release(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 512 * 1024)
    run, _ = _split_first_export(quiet_app, "lumpy", 10_000, 97, chunk_size=75)  # 846 KB
    assert run.partitions == 2 and not run.delivers_while_diffing  # about 5,000 rows each
    for job in take(quiet_app, JOBS_QUEUE, PartitionJob, run.run_id):
        diff_partition(job, quiet_app.services)
    chunks = take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)
    assert all(len(chunk.blob_names) <= MAX_CHUNK_BLOBS for chunk in chunks)
    assert len(chunks) == _run(quiet_app, run.run_id).chunks_total > run.partitions
