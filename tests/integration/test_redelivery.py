"""Queue redelivery and poison, in process on Azurite: no row lost, none counted twice.

The functions are called directly here (as the host would call them again after a crash or a
timeout) so each attempt is deterministic; the Braze sandbox answers over HTTP.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from devtools.sample import make_segment
from functions.delivery import deliver
from functions.planning import plan_export
from shared.adapters.braze_client import TrackOutcome
from shared.adapters.storage import Storage
from shared.core.messages import ChunkJob, ExportJob, PartitionJob, SplitJob
from shared.core.resource_names import JOBS_QUEUE
from shared.core.runs import Run, Status
from shared.pipeline.deliver_chunk import ChunkHeld, _Ledger, deliver_chunk, fail_chunk
from shared.pipeline.plan_export import plan_run
from shared.pipeline.run_files import read_chunk, report_blob_name, run_prefix
from tests.integration.conftest import (
    App,
    OneAtATime,
    export_definition,
    plan_in_process,
    queue_message,
    take,
    wait_for,
)

LEASE = "shared.pipeline.deliver_chunk"  # where the lease's timings are set


def _new_run(app: App, name: str, path: str, rows: int, **overrides: Any) -> tuple[Run, Any]:
    sample = make_segment(rows, invalid_every=1000, id_prefix=name)
    app.upload(path, sample.data)
    app.define([export_definition(name, path, "R", **{"chunk_size": 100, **overrides})])
    run = Run(f"{name}-run", name, "R", "sandbox", f"segments/{path}", "test")
    app.services.runs.claim_export(name, run.run_id)
    app.services.runs.create(run)
    return run, sample


class FlakyStorage(Storage):
    """Fails the first upload whose name starts with `fail_on`, as a storage outage would
    mid-plan (no local equivalent)."""

    def __init__(self, real: Storage, fail_on: str) -> None:
        self.__dict__.update(real.__dict__)
        self._fail_on = fail_on

    def write_bytes(
        self, container: str, name: str, data: Any, content_type: str, **options: Any
    ) -> None:
        if self._fail_on and name.startswith(self._fail_on):
            self._fail_on = ""
            raise ConnectionError("storage went away")
        super().write_bytes(container, name, data, content_type, **options)


def test_a_plan_retried_after_a_transient_error_loses_no_row(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, sample = _new_run(quiet_app, "replan", "redeliver/replan.csv", 250)
    flaky = FlakyStorage(quiet_app.services.storage, f"{run_prefix(run.run_id)}partitions/")
    monkeypatch.setattr(quiet_app.services, "storage", flaky)

    with pytest.raises(ConnectionError):
        plan_run(ExportJob(run.run_id, "replan"), quiet_app.services)
    assert take(quiet_app, JOBS_QUEUE, PartitionJob, run.run_id) == []
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


def test_a_chunk_that_fails_every_attempt_ends_the_run_with_its_rows_reported(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = _new_run(quiet_app, "poison", "redeliver/poison.csv", 150)
    monkeypatch.setattr("shared.adapters.services.app_services", lambda: quiet_app.services)
    good, bad = plan_in_process(quiet_app, run)
    deliver(queue_message(good, 1))
    requests_before = len(quiet_app.sandbox_requests())
    broken = ChunkJob(
        bad.run_id, bad.export_name, bad.chunk_index, bad.blob_names, bad.rows + 1, bad.partitions
    )
    attempts = quiet_app.services.settings.max_dequeue_count
    for attempt in range(1, attempts + 1):
        with pytest.raises(ValueError, match="holds 50 profiles but was planned with 51"):
            deliver(queue_message(broken, attempt))
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
    monkeypatch.setattr("shared.adapters.services.app_services", lambda: quiet_app.services)

    def broken_plan(*args: object) -> None:
        raise ConnectionError("table storage unreachable")

    monkeypatch.setattr("shared.pipeline.plan_export.plan_run", broken_plan)
    attempts = quiet_app.services.settings.max_dequeue_count
    for attempt in range(1, attempts + 1):
        with pytest.raises(ConnectionError):
            plan_export(queue_message(ExportJob(run.run_id, "plandead"), attempt))
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.FAILED
    assert "planning failed after every retry: ConnectionError" in final.message
    assert final.rows_read == final.rows_valid + final.rows_rejected
    assert quiet_app.sandbox_requests() == []


@pytest.mark.parametrize(
    ("step", "words"),
    [
        (
            "split_source",
            "planning failed: split 2 of 2 of the source could not be read after every retry "
            "(ConnectionError: table storage unreachable); nothing was sent",
        ),
        (
            "diff_partition",
            "planning failed: partition 3 of 4 could not be diffed after every retry "
            "(ConnectionError: table storage unreachable)",
        ),
    ],
    ids=["split", "partition"],
)
def test_a_planning_step_that_fails_every_attempt_ends_the_run_naming_its_job(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch, step: str, words: str
) -> None:
    """The planning queue carries every step: the last attempt of a split or partition job
    fails the run with that job's own reason, and only the last."""
    name = step.replace("_", "")
    run, _ = _new_run(quiet_app, name, f"redeliver/{name}.csv", 120)
    job: SplitJob | PartitionJob = (
        SplitJob(run.run_id, name, 1, 2, 4, 100, -1, 3)
        if step == "split_source"
        else PartitionJob(run.run_id, name, 3, 4)
    )
    monkeypatch.setattr("shared.adapters.services.app_services", lambda: quiet_app.services)

    def broken_step(*args: object) -> None:
        raise ConnectionError("table storage unreachable")

    monkeypatch.setattr(f"shared.pipeline.{step}.{step}", broken_step)
    attempts = quiet_app.services.settings.max_dequeue_count
    for attempt in range(1, attempts + 1):
        with pytest.raises(ConnectionError):
            plan_export(queue_message(job, attempt))
        current = quiet_app.services.runs.get(run.run_id)
        assert current is not None and current.is_final == (attempt == attempts)
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.FAILED
    assert final.message.startswith(words), final.message
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


def test_an_attempt_that_finds_its_chunk_recorded_while_taking_it_finalizes_the_run(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another attempt recorded the chunk after this one's first look, then failed to finalize
    (the release's worker delivering a chunk at once, its queued message waiting): this
    attempt, finding the chunk recorded once it could take it, finalizes the run. Here the
    first look answers as before the record: two reads cannot be interleaved at will."""
    run, _ = _new_run(quiet_app, "finlate", "redeliver/finlate.csv", 80)
    (job,) = plan_in_process(quiet_app, run)
    flaky = FlakyStorage(quiet_app.services.storage, report_blob_name(run.run_id))
    monkeypatch.setattr(quiet_app.services, "storage", flaky)
    with pytest.raises(ConnectionError):
        deliver_chunk(job, quiet_app.services)  # delivered and recorded, then finalizing fails
    runs = quiet_app.services.runs
    recorded = runs.chunk_done
    looks: list[int] = []

    def first_look_before_the_record(run_id: str, chunk_index: int) -> bool:
        looks.append(chunk_index)
        return len(looks) > 1 and recorded(run_id, chunk_index)

    monkeypatch.setattr(runs, "chunk_done", first_look_before_the_record)
    sent = len(quiet_app.sandbox_requests())
    deliver_chunk(job, quiet_app.services)

    assert len(looks) > 1 and len(quiet_app.sandbox_requests()) == sent
    final = runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert final.profiles_accepted == 80


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
    # The failed attempt let go of the chunk (its lease): the retry need not wait for it, and
    # would give up at once here if it had to.
    saved = quiet_app.services.runs.saved_progress(job.run_id, job.chunk_index).progress
    assert (saved.holder, saved.batches_done) == ("", 2)
    monkeypatch.setattr(f"{LEASE}.HOLD_WAIT_SECONDS", 0.0)

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


# --- the chunk's lease: two deliveries of one chunk at once send it once -----------------------


def _one_chunk(app: App, name: str, rows: int) -> tuple[Run, ChunkJob, Any]:
    """A run of `rows` profiles planned as one chunk; its segment sample."""
    run, sample = _new_run(app, name, f"redeliver/{name}.csv", rows, chunk_size=rows)
    (job,) = plan_in_process(app, run)
    return run, job, sample


class GatedBraze:
    """The real client behind gates: an attempt's nth request (by the name of the attempt's
    thread) waits until its gate opens, as a slow Braze or a starved thread would keep a batch
    in flight. Requests run on threads of their own, as the real client's do, so the attempt
    waiting for them keeps its heartbeat."""

    max_in_flight = 1
    latency_seconds = None

    def __init__(self, real: Any, gates: dict[tuple[str, int], threading.Event]) -> None:
        self._real, self._gates = real, gates
        self._submitted: Counter[str] = Counter()
        self.sent_by: list[str] = []  # the attempt that sent each request, in order
        self._pool = ThreadPoolExecutor(max_workers=4)

    def submit(self, objects: Any) -> Future[TrackOutcome]:
        sender = threading.current_thread().name
        self._submitted[sender] += 1
        gate = self._gates.get((sender, self._submitted[sender]))
        return self._pool.submit(self._track, objects, sender, gate)

    def _track(self, objects: Any, sender: str, gate: threading.Event | None) -> TrackOutcome:
        if gate is not None:
            assert gate.wait(timeout=120), "the test never opened the gate"
        self.sent_by.append(sender)
        outcome: TrackOutcome = self._real.track(objects)
        return outcome


def _gated(
    app: App, monkeypatch: pytest.MonkeyPatch, gates: dict[tuple[str, int], threading.Event]
) -> GatedBraze:
    real = app.services.braze(app.services.definitions().connection("sandbox"))
    gated = GatedBraze(real, gates)
    monkeypatch.setattr(app.services, "braze", lambda _: gated)
    return gated


def _in_thread(name: str, job: ChunkJob, app: App) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            deliver_chunk(job, app.services)
        except BaseException as error:  # handed to the test's thread
            errors.append(error)

    thread = threading.Thread(target=attempt, name=name)
    thread.start()
    return thread, errors


def _holder(app: App, job: ChunkJob) -> str:
    return app.services.runs.saved_progress(job.run_id, job.chunk_index).progress.holder


def test_a_duplicate_delivery_waits_for_the_attempt_under_way_and_sends_nothing(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run, job, sample = _one_chunk(quiet_app, "leasedup", 400)
    monkeypatch.setattr(f"{LEASE}.LEASE_CHECK_SECONDS", 0.05)
    gate = threading.Event()
    gated = _gated(quiet_app, monkeypatch, {("first", 1): gate})
    caplog.set_level(logging.INFO, logger=LEASE)

    first, first_errors = _in_thread("first", job, quiet_app)
    wait_for(lambda: _holder(quiet_app, job), "the first attempt to hold the chunk")
    second, second_errors = _in_thread("second", job, quiet_app)  # the duplicate message
    wait_for(lambda: "waiting for it" in caplog.text, "the duplicate to wait")
    gate.set()
    first.join(timeout=120)
    second.join(timeout=120)

    assert first_errors == second_errors == []
    assert gated.sent_by == ["first"] * 6  # 400 profiles in batches of 75, each sent once
    sent = [o["external_id"] for body in quiet_app.sandbox_requests() for o in body["attributes"]]
    assert len(sent) == len(set(sent)) == 400
    assert "was recorded by the attempt it waited for" in caplog.text
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert (final.profiles_accepted, final.requests_sent) == (400, 6)
    assert set(quiet_app.braze_users()) == set(sample.expected)


def test_the_holder_saves_while_it_waits_for_an_answer(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, job, _ = _one_chunk(quiet_app, "leasebeat", 150)
    monkeypatch.setattr(f"{LEASE}.HEARTBEAT_SECONDS", 0.01)
    gate = threading.Event()
    _gated(quiet_app, monkeypatch, {("holder", 1): gate})
    runs = quiet_app.services.runs

    attempt, errors = _in_thread("holder", job, quiet_app)
    claimed = wait_for(
        lambda: (
            (saved := runs.saved_progress(job.run_id, job.chunk_index)).progress.holder and saved
        ),
        "the attempt to hold the chunk",
    )
    # No answer has come (the first batch waits at the gate), yet the lease is saved again.
    wait_for(
        lambda: runs.saved_progress(job.run_id, job.chunk_index).etag != claimed.etag,
        "a heartbeat while the first batch is unanswered",
    )
    assert runs.saved_progress(job.run_id, job.chunk_index).progress.batches_done == 0
    gate.set()
    attempt.join(timeout=120)
    assert errors == []
    assert runs.get(run.run_id).profiles_accepted == 150  # type: ignore[union-attr]


def _killed_holder(app: App, job: ChunkJob, batches_done: int) -> None:
    """The progress a worker killed mid-chunk leaves: its batches, and itself as holder."""
    runs = app.services.runs
    saved = runs.saved_progress(job.run_id, job.chunk_index)
    progress = replace(saved.progress, holder="killed-worker", batches_done=batches_done)
    progress.batch_size, progress.requests, progress.accepted = 75, batches_done, 75 * batches_done
    assert runs.save_progress(job.run_id, job.chunk_index, progress, saved.etag)


def test_a_chunk_held_by_an_attempt_still_saving_is_not_sent_and_its_message_is_retried(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, job, _ = _one_chunk(quiet_app, "leaseheld", 400)
    _killed_holder(quiet_app, job, 0)
    monkeypatch.setattr(f"{LEASE}.HOLD_WAIT_SECONDS", 0.0)  # the holder saved just now
    monkeypatch.setattr("shared.adapters.services.app_services", lambda: quiet_app.services)
    with pytest.raises(ChunkHeld, match="still being delivered by another attempt"):
        deliver(queue_message(job, 1))
    # Even on its last attempt the duplicate reports no row as failed: the holder records them.
    with pytest.raises(ChunkHeld):
        deliver(queue_message(job, quiet_app.services.settings.max_dequeue_count))
    assert quiet_app.sandbox_requests() == []
    assert _holder(quiet_app, job) == "killed-worker"
    assert not quiet_app.services.runs.chunk_done(run.run_id, job.chunk_index)
    assert quiet_app.services.runs.get(run.run_id).status == Status.DELIVERING  # type: ignore[union-attr]


def test_a_silent_holder_is_taken_over_and_the_chunk_resumes_after_its_saved_batches(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, job, sample = _one_chunk(quiet_app, "leasetakeover", 400)
    items = read_chunk(quiet_app.services, job.blob_names)
    first_two = [json.loads(obj)["external_id"] for _, _, obj in items[:150]]
    _killed_holder(quiet_app, job, 2)  # its first two batches were answered and saved
    monkeypatch.setattr(f"{LEASE}.LEASE_SECONDS", 0.0)  # silent for the whole lease
    deliver_chunk(job, quiet_app.services)

    sent = [o["external_id"] for body in quiet_app.sandbox_requests() for o in body["attributes"]]
    assert len(sent) == 250 and not set(sent) & set(first_two)  # batches 3 to 6 only
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert (final.profiles_accepted, final.requests_sent) == (400, 6)
    assert set(sent) | set(first_two) == set(sample.expected)


def test_a_holder_whose_lease_was_taken_stops_sending(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, job, _ = _one_chunk(quiet_app, "leasestolen", 750)
    runs = quiet_app.services.runs
    monkeypatch.setattr(f"{LEASE}.PROGRESS_SAVE_SECONDS", 0.0)  # a save after every answer
    monkeypatch.setattr(f"{LEASE}.HEARTBEAT_SECONDS", 3600.0)  # alive, but silent
    monkeypatch.setattr(f"{LEASE}.STOP_CHECK_SECONDS", 3600.0)  # only the lease can stop it
    lost = threading.Event()  # the slow holder knows its lease was taken
    save = _Ledger._save

    def watched_save(ledger: _Ledger, progress: Any) -> None:
        save(ledger, progress)
        if ledger.lost:
            lost.set()

    monkeypatch.setattr(_Ledger, "_save", watched_save)
    answer_late = threading.Event()
    # The slow holder's second batch waits until the thief has taken over; its third (if it
    # gets that far) until the slow holder's save after the second found the lease taken.
    gated = _gated(quiet_app, monkeypatch, {("slow", 2): answer_late, ("slow", 3): lost})

    slow, slow_errors = _in_thread("slow", job, quiet_app)
    wait_for(
        lambda: runs.saved_progress(job.run_id, job.chunk_index).progress.batches_done == 1,
        "the first batch's answer to be saved",
    )
    monkeypatch.setattr(f"{LEASE}.LEASE_SECONDS", 0.0)  # the slow holder looks gone
    thief, thief_errors = _in_thread("thief", job, quiet_app)
    thief.join(timeout=120)
    answer_late.set()
    slow.join(timeout=120)

    assert thief_errors == []
    # It stops, and its message comes back later (to find the chunk recorded).
    assert [type(e) for e in slow_errors] == [ChunkHeld]
    assert gated.sent_by.count("thief") == 9  # 750 profiles: batches 2 to 10
    # The slow holder's batch in flight went out, then it stopped at its first refused save:
    # at most the batch it had queued meanwhile went too, not the chunk's remaining eight.
    assert lost.is_set()
    assert 2 <= gated.sent_by.count("slow") <= 3
    final = runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert final.profiles_accepted == 750


def test_an_attempt_whose_own_save_is_refused_when_sent_again_keeps_the_chunk(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save applied whose answer was lost is sent again by the storage client and refused
    (the entry changed since the ETag it names): the attempt reads the entry back, finds
    itself holding it and goes on, instead of waiting for a holder that is itself."""
    run, job, sample = _one_chunk(quiet_app, "leaseretry", 450)
    _killed_holder(quiet_app, job, 0)
    _let_go(quiet_app, job)  # an earlier attempt failed and let go: taking it is an update
    monkeypatch.setattr(f"{LEASE}.HOLD_WAIT_SECONDS", 0.0)  # waiting would give up at once
    runs = quiet_app.services.runs
    save, calls = runs.save_progress, []

    def answer_lost_once(*args: Any) -> str | None:
        calls.append(args)
        etag = save(*args)
        return None if len(calls) == 1 else etag  # applied, but answered as refused

    monkeypatch.setattr(runs, "save_progress", answer_lost_once)
    deliver_chunk(job, quiet_app.services)

    final = runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert (final.profiles_accepted, final.requests_sent) == (450, 6)
    assert set(quiet_app.braze_users()) == set(sample.expected)


def _let_go(app: App, job: ChunkJob) -> None:
    runs = app.services.runs
    saved = runs.saved_progress(job.run_id, job.chunk_index)
    assert runs.save_progress(
        job.run_id, job.chunk_index, replace(saved.progress, holder=""), saved.etag
    )


def test_a_poisoned_duplicate_does_not_report_the_rows_of_a_chunk_another_attempt_holds(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, job, _ = _one_chunk(quiet_app, "leasepoison", 400)
    runs = quiet_app.services.runs
    _killed_holder(quiet_app, job, 2)  # an attempt that saved just now: alive
    fail_chunk(job, ConnectionError("table storage unreachable"), quiet_app.services)
    assert not runs.chunk_done(run.run_id, job.chunk_index)
    assert _holder(quiet_app, job) == "killed-worker"

    monkeypatch.setattr(f"{LEASE}.LEASE_SECONDS", 0.0)  # now silent: the rest is reported
    fail_chunk(job, ConnectionError("table storage unreachable"), quiet_app.services)
    final = runs.get(run.run_id)
    assert final is not None and final.status == Status.PARTIALLY_SUCCEEDED
    assert (final.profiles_accepted, final.profiles_rejected_by_braze) == (150, 250)
    assert _holder(quiet_app, job).startswith("failing-")
