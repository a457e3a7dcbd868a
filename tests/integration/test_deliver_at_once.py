"""A run released as one chunk job is delivered by the diff that released it, in process on
Azurite against the sandbox over HTTP; its queued message stays the fallback.

The planning trigger is called directly, as the host would call it, so each step is
deterministic. The segment is the sample's (a BOM, accents and emoji, quotes, commas and line
breaks in values, invalid rows)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from devtools.sample import make_segment
from functions.delivery import deliver
from functions.planning import plan_export
from shared.adapters.storage import Storage
from shared.core.messages import ExportJob, PartitionJob, SplitJob
from shared.core.resource_names import JOBS_QUEUE
from shared.core.runs import ChunkProgress, Run, Status
from shared.pipeline.deliver_chunk import deliver_at_once, deliver_chunk
from shared.pipeline.diff_partition import diff_partition
from shared.pipeline.plan_export import plan_run
from shared.pipeline.split_source import split_source
from shared.pipeline.start import start_run
from tests.integration.conftest import (
    App,
    chunk_jobs,
    export_definition,
    queue_message,
    run_in_process,
    take,
)

PATH = "atonce/segment.csv"


def _delta(
    app: App, name: str, monkeypatch: pytest.MonkeyPatch, *, added: int = 20, chunk_size: int = 1000
) -> tuple[Run, list[PartitionJob], set[str]]:
    """A first export of 300 rows, then the same rows and `added` more: a delta whose
    partitions (several: small ones) are planned and split, their diffs left to the caller;
    and the new valid rows' ids."""
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 4096)
    app.define([export_definition(name, PATH, "VIP", chunk_size=chunk_size)])
    before = make_segment(300, id_prefix=name)
    app.upload(PATH, before.data)
    first = run_in_process(app, name)
    assert first.profiles_new == first.rows_valid == len(before.expected)
    after = make_segment(300 + added, id_prefix=name)
    app.upload(PATH, after.data)
    app.mark_sandbox_requests()
    run = start_run(app.services, name, "test").run
    take(app, JOBS_QUEUE, ExportJob, run.run_id)
    plan_run(ExportJob(run.run_id, name), app.services)
    for split in take(app, JOBS_QUEUE, SplitJob, run.run_id):
        split_source(split, app.services)
    partitions = take(app, JOBS_QUEUE, PartitionJob, run.run_id)
    assert len(partitions) > 1
    new = set(after.expected) - set(before.expected)
    assert 0 < len(new) < added  # and an invalid row among them
    return run, partitions, new


def _new_profiles(app: App) -> set[str]:
    return {obj["external_id"] for body in app.sandbox_requests() for obj in body["attributes"]}


def test_a_delta_released_as_one_chunk_goes_to_braze_from_the_diff_that_released_it(
    triggers_on: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet_app = triggers_on
    run, partitions, new = _delta(quiet_app, "atonce", monkeypatch)
    for job in partitions:
        plan_export(queue_message(job))

    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.PARTIALLY_SUCCEEDED  # invalid rows
    assert final.profiles_new == final.profiles_accepted == len(new)
    assert _new_profiles(quiet_app) == new

    (queued,) = chunk_jobs(quiet_app, run.run_id)  # still queued: the fallback
    sent = len(quiet_app.sandbox_requests())
    deliver(queue_message(queued))
    assert len(quiet_app.sandbox_requests()) == sent
    again = quiet_app.services.runs.get(run.run_id)
    assert again is not None and again.profiles_accepted == final.profiles_accepted


def test_delivering_at_once_leaves_a_chunk_another_attempt_holds_and_does_not_wait(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run, partitions, _ = _delta(quiet_app, "held", monkeypatch)
    released = [diff_partition(job, quiet_app.services) for job in partitions]
    (job,) = [found for found in released if found is not None]
    assert chunk_jobs(quiet_app, run.run_id) == [job]
    holder = ChunkProgress(holder="other-attempt")
    assert quiet_app.services.runs.save_progress(run.run_id, job.chunk_index, holder, None)
    # An attempt that waited for the holder would give up at once, saying so (ChunkHeld).
    monkeypatch.setattr("shared.pipeline.deliver_chunk.HOLD_WAIT_SECONDS", -1.0)

    with caplog.at_level(logging.INFO):
        deliver_at_once(job, quiet_app.services)
    assert "being delivered by another attempt; leaving it to that one" in caplog.text
    assert "at once failed" not in caplog.text
    assert quiet_app.sandbox_requests() == []
    assert not quiet_app.services.runs.chunk_done(run.run_id, job.chunk_index)
    current = quiet_app.services.runs.get(run.run_id)
    assert current is not None and current.status == Status.DELIVERING


def test_a_run_released_as_several_chunk_jobs_is_left_to_the_queue(
    triggers_on: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delivering several jobs in the releasing invocation would serialize them on one worker."""
    quiet_app = triggers_on
    run, partitions, new = _delta(quiet_app, "several", monkeypatch, added=200, chunk_size=75)
    for job in partitions:
        plan_export(queue_message(job))
    assert quiet_app.sandbox_requests() == []
    current = quiet_app.services.runs.get(run.run_id)
    assert current is not None and current.status == Status.DELIVERING
    jobs = chunk_jobs(quiet_app, run.run_id)
    assert len(jobs) == current.chunks_total > 1
    for job in jobs:
        deliver_chunk(job, quiet_app.services)
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.profiles_accepted == final.profiles_new == len(new)


class UnreadableChunks(Storage):
    """Fails the first read of chunk blobs, as a storage outage would (no local equivalent)."""

    def __init__(self, real: Storage) -> None:
        self.__dict__.update(real.__dict__)
        self.failed = False

    def read_many(self, container: str, names: list[str]) -> Any:
        if not self.failed and all("/chunks/" in name for name in names):
            self.failed = True
            raise ConnectionError("storage went away")
        return super().read_many(container, names)


def test_a_delivery_at_once_that_fails_is_logged_and_its_queued_message_delivers_the_chunk(
    triggers_on: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_app = triggers_on
    run, partitions, new = _delta(quiet_app, "fallback", monkeypatch)
    flaky = UnreadableChunks(quiet_app.services.storage)
    monkeypatch.setattr(quiet_app.services, "storage", flaky)
    with caplog.at_level(logging.WARNING):
        for job in partitions:
            plan_export(queue_message(job))  # the releasing diff does not raise
    assert flaky.failed
    assert "delivering it at once failed (ConnectionError: storage went away)" in caplog.text
    assert quiet_app.sandbox_requests() == []
    current = quiet_app.services.runs.get(run.run_id)
    assert current is not None and current.status == Status.DELIVERING

    (queued,) = chunk_jobs(quiet_app, run.run_id)
    deliver(queue_message(queued))
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.is_final
    assert final.profiles_new == final.profiles_accepted == len(new)
    assert _new_profiles(quiet_app) == new
