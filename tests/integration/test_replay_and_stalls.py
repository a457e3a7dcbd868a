"""Replaying failed deliveries and ending stalled runs, driven in process on Azurite and the
Braze sandbox, so each step (a lost message, a worker that never comes back) is deterministic."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import requests

from devtools.sample import make_segment
from shared.core.messages import ExportJob, PartitionJob
from shared.core.partitioning import partition_of
from shared.core.resource_names import JOBS_QUEUE, RUNS_CONTAINER
from shared.core.runs import Run, Status, utcnow
from shared.entrypoints import http_api as api
from shared.pipeline import finalize
from shared.pipeline.deliver_chunk import deliver_chunk, fail_chunk
from shared.pipeline.diff_partition import diff_partition, fail_partition
from shared.pipeline.plan_export import plan_run
from shared.pipeline.replay import NotReplayable, replay_run
from shared.pipeline.run_files import report_blob_name, summary_blob_name
from shared.pipeline.stall_sweep import check_run, sweep_stalled
from shared.pipeline.start import start_run
from tests.integration.conftest import (
    BLOCKLISTED,
    App,
    OneAtATime,
    chunk_jobs,
    export_definition,
    plan_in_process,
    released_whole,
    run_in_process,
    split_in_process,
    take,
)


def _start(app: App, name: str, rows: int, **overrides: Any) -> tuple[Run, Any]:
    sample = make_segment(rows, invalid_every=1000, id_prefix=name)
    app.upload(f"replay/{name}.csv", sample.data)
    app.define(
        [export_definition(name, f"replay/{name}.csv", "R", **{"chunk_size": 100, **overrides})]
    )
    run = start_run(app.services, name, "test").run
    take(app, JOBS_QUEUE, ExportJob, run.run_id)
    return run, sample


def _replay_in_process(app: App, run_id: str) -> Run:
    replay_run(app.services, run_id)
    for job in chunk_jobs(app, run_id):
        deliver_chunk(job, app.services)
    final = app.services.runs.get(run_id)
    assert final is not None and final.is_final
    return final


def _adds_up(run: Run) -> None:
    assert run.rows_read == run.rows_valid + run.rows_rejected
    assert run.objects_planned == run.profiles_accepted + run.profiles_rejected_by_braze


def test_rows_braze_rejected_are_replayed_after_the_fix_and_the_counts_stay_true(
    quiet_app: App,
) -> None:
    rows = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note\n"
    rows += "".join(f"ok-{n},ok{n}@example.com,Ann,{n},true,1990-01-01,\n" for n in range(5))
    rows += f"{BLOCKLISTED},blocked@example.com,Bob,2,false,1990-01-02,\n"
    quiet_app.upload("replay/blocked.csv", rows.encode())
    quiet_app.define([export_definition("blocked", "replay/blocked.csv", "R")])
    first = run_in_process(quiet_app, "blocked")
    assert (first.status, first.profiles_rejected_by_braze) == (Status.PARTIALLY_SUCCEEDED, 1)
    with pytest.raises(NotReplayable, match="still delivering"):
        active = quiet_app.services.runs.get(first.run_id)
        assert active is not None
        active.status = Status.DELIVERING
        quiet_app.services.runs.update(active)
        try:
            replay_run(quiet_app.services, first.run_id)
        finally:
            active.status = first.status
            quiet_app.services.runs.update(active)

    quiet_app.set_sandbox_limits(blocklist=[])
    try:
        quiet_app.mark_sandbox_requests()
        final = _replay_in_process(quiet_app, first.run_id)
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    sent = [o["external_id"] for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert sent == [BLOCKLISTED]
    assert (final.status, final.replay_round) == (Status.SUCCEEDED, 1)
    assert (final.profiles_accepted, final.profiles_rejected_by_braze) == (6, 0)
    _adds_up(final)
    assert quiet_app.rejected(final) == []
    assert final.rejections == {}
    # The snapshot took the replayed profile in: the next run has nothing to send.
    assert run_in_process(quiet_app, "blocked").objects_planned == 0
    with pytest.raises(NotReplayable, match="not the latest run"):
        replay_run(quiet_app.services, first.run_id)


def test_a_poisoned_chunk_is_named_reported_row_by_row_and_replayable(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, sample = _start(quiet_app, "poisoned", 250)
    jobs = plan_in_process(quiet_app, run)
    deliver_chunk(jobs[0], quiet_app.services)
    deliver_chunk(jobs[2], quiet_app.services)
    # Listed a few rows at a time, as a 100,000-profile job's are 5,000 at a time.
    monkeypatch.setattr("shared.pipeline.deliver_chunk.FAILED_ROWS_PER_WRITE", 7)
    fail_chunk(jobs[1], ConnectionError("Braze kept failing"), quiet_app.services)

    ended = quiet_app.services.runs.get(run.run_id)
    assert ended is not None and ended.status == Status.PARTIALLY_SUCCEEDED
    assert "chunk 1" in ended.message and "Braze kept failing" in ended.message
    failed = quiet_app.rejected(ended)
    assert len(failed) == 100 and {r["codes"][0] for r in failed} == {"delivery_failed"}
    assert all(r["object"]["external_id"] == r["customer_id"] for r in failed)
    assert [r["line"] for r in failed] == sorted(r["line"] for r in failed)  # source order
    assert len({r["customer_id"] for r in failed}) == 100  # every row once
    _adds_up(ended)

    final = _replay_in_process(quiet_app, run.run_id)
    assert final.status == Status.SUCCEEDED and final.profiles_accepted == 250
    _adds_up(final)
    assert set(quiet_app.braze_users()) == set(sample.expected)


def test_a_run_whose_chunk_was_lost_is_ended_as_stalled_and_replayable(quiet_app: App) -> None:
    run, sample = _start(quiet_app, "stalled", 200)
    jobs = plan_in_process(quiet_app, run)
    deliver_chunk(jobs[0], quiet_app.services)  # jobs[1]'s worker was lost with its message
    services = quiet_app.services
    active = services.runs.get(run.run_id)
    assert active is not None
    stall = services.settings.stall_after

    assert check_run(services, active, utcnow() + stall - timedelta(minutes=1)) is None
    assert services.runs.get(run.run_id).status == Status.DELIVERING  # type: ignore[union-attr]
    assert sweep_stalled(services, utcnow() + stall + timedelta(minutes=1)) == {
        run.run_id: "stalled: 1 chunk(s) ended"
    }

    ended = services.runs.get(run.run_id)
    assert ended is not None and ended.status == Status.PARTIALLY_SUCCEEDED
    assert "chunk 1" in ended.message and "no progress since" in ended.message
    lost = quiet_app.rejected(ended)
    assert len(lost) == 100 and all("worker holding it was lost" in r["reasons"][0] for r in lost)
    _adds_up(ended)

    final = _replay_in_process(quiet_app, run.run_id)
    assert final.status == Status.SUCCEEDED and final.profiles_accepted == 200
    assert set(quiet_app.braze_users()) == set(sample.expected)


def test_a_run_stalled_in_planning_fails_with_nothing_sent(quiet_app: App) -> None:
    run, _ = _start(quiet_app, "planstall", 50)
    services = quiet_app.services
    future = utcnow() + services.settings.stall_after + timedelta(minutes=1)
    assert check_run(services, services.runs.get(run.run_id), future) == "stalled in planning"  # type: ignore[arg-type]
    ended = services.runs.get(run.run_id)
    assert ended is not None and ended.status == Status.FAILED
    assert "stalled while queued" in ended.message and "nothing was sent" in ended.message
    assert quiet_app.sandbox_requests() == []
    # The export is free again.
    assert start_run(services, "planstall", "test").created


def test_an_abandoned_finalization_is_taken_over_by_the_sweep(quiet_app: App) -> None:
    run, _ = _start(quiet_app, "orphan", 80)
    (job,) = plan_in_process(quiet_app, run)
    services = quiet_app.services
    claimed = services.runs.get(run.run_id)
    assert claimed is not None
    claimed.finalize_claimed_at = utcnow()
    services.runs.update(claimed)  # a finalizer claimed it, then its instance vanished
    deliver_chunk(job, services)
    assert services.runs.get(run.run_id).status == Status.DELIVERING  # type: ignore[union-attr]

    stale = services.runs.get(run.run_id)
    assert stale is not None
    stale.finalize_claimed_at = utcnow() - timedelta(minutes=11)
    services.runs.update(stale)
    assert check_run(services, stale, utcnow()) == "finished"
    final = services.runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED


def test_the_replay_route_answers_like_the_rest_of_the_api(quiet_app: App) -> None:
    run, _ = _start(quiet_app, "routed", 30)
    for job in plan_in_process(quiet_app, run):
        deliver_chunk(job, quiet_app.services)
    assert api.replay(quiet_app.services, "bad id!", headers={}).status == 400
    assert api.replay(quiet_app.services, "routed-nope", headers={}).status == 404
    conflict = api.replay(quiet_app.services, run.run_id, headers={})
    assert conflict.status == 409 and conflict.body["error"] == "not_replayable"
    assert "no rejected deliveries" in conflict.body["message"]


def test_a_failed_chunk_that_cannot_list_its_rows_keeps_its_partition_out_of_the_snapshot(
    quiet_app: App,
) -> None:
    run, sample = _start(quiet_app, "unlisted", 150)
    jobs = plan_in_process(quiet_app, run)
    services = quiet_app.services
    deliver_chunk(jobs[0], services)
    services.storage.container(RUNS_CONTAINER).delete_blob(jobs[1].blob_names[0])
    fail_chunk(jobs[1], OSError("chunk blob lost"), services)

    ended = services.runs.get(run.run_id)
    assert ended is not None and ended.status == Status.PARTIALLY_SUCCEEDED
    assert (ended.profiles_accepted, ended.profiles_rejected_by_braze) == (100, 50)
    _adds_up(ended)
    # Which 50 were lost is unknown, so the next run sends the whole partition again.
    again = run_in_process(quiet_app, "unlisted")
    assert again.profiles_new == 150 and again.status == Status.SUCCEEDED
    assert set(quiet_app.braze_users()) == set(sample.expected)


HEAD = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note\n"


def test_a_chunk_rejected_in_every_one_of_hundreds_of_batches_still_records(
    quiet_app: App,
) -> None:
    """The record of a chunk stays small however many batches have rejected rows."""
    ids = [f"bl-{n:04d}" for n in range(600)]
    rows = "".join(f"{i},x{n}@example.com,Ann,{n},true,1990-01-01,x\n" for n, i in enumerate(ids))
    quiet_app.upload("replay/limit.csv", (HEAD + rows).encode())
    quiet_app.define(
        [export_definition("limit", "replay/limit.csv", "Seg", chunk_size=600)],
        objects_per_request=1,
    )
    run = start_run(quiet_app.services, "limit", "test").run
    take(quiet_app, JOBS_QUEUE, ExportJob, run.run_id)
    (job,) = plan_in_process(quiet_app, run)
    quiet_app.set_sandbox_limits(blocklist=ids)
    try:
        deliver_chunk(job, quiet_app.services)
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.FAILED  # Braze took none of them
    assert (final.profiles_rejected_by_braze, final.requests_sent) == (600, 600)
    rejected = quiet_app.rejected(final)
    assert [r["customer_id"] for r in rejected] == ids
    assert {r["codes"][0] for r in rejected} == {"BLACKLISTED_EXTERNAL_USER_ID"}


def test_a_worker_stops_sending_once_its_run_was_ended_meanwhile(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that waited through a long silence while the sweep ended its run sends at
    most the batch it was already sending, and records nothing."""
    run, _ = _start(quiet_app, "zombie", 300, chunk_size=300)
    (job,) = plan_in_process(quiet_app, run)
    services = quiet_app.services
    real = services.braze(services.definitions().connection("sandbox"))
    calls: list[int] = []

    class SlowBraze(OneAtATime):
        def track(self, objects: Any) -> Any:
            calls.append(len(objects))
            if len(calls) == 2:  # a long wait inside this call: the sweep ends the run
                later = utcnow() + services.settings.stall_after + timedelta(minutes=1)
                assert check_run(services, services.runs.get(run.run_id), later)  # type: ignore[arg-type]
            return real.track(objects)

    monkeypatch.setattr(services, "braze", lambda _: SlowBraze())
    # Look before every batch.
    monkeypatch.setattr("shared.pipeline.deliver_chunk.STOP_CHECK_SECONDS", 0.0)
    # The silence is the worker's too: it saved nothing for longer than its chunk's lease (a
    # holder that saved within it is alive, and the sweep leaves its chunk to it).
    monkeypatch.setattr("shared.pipeline.deliver_chunk.LEASE_SECONDS", 0.0)
    quiet_app.mark_sandbox_requests()
    deliver_chunk(job, services)
    assert len(quiet_app.sandbox_requests()) == 2  # the first, and the one already under way
    ended = services.runs.get(run.run_id)
    assert ended is not None and ended.is_final and "no progress since" in ended.message
    _adds_up(ended)  # rows not known to be accepted are reported as delivery_failed


def test_a_replay_after_a_chunk_that_could_not_list_its_rows_keeps_them_owed(
    quiet_app: App,
) -> None:
    rows = HEAD + f"{BLOCKLISTED},blocked@example.com,Bob,2,false,1990-01-02,\n"
    rows += "".join(f"u-{n:03d},u{n}@example.com,Ann,{n},true,1990-01-01,\n" for n in range(150))
    quiet_app.upload("replay/unlisted2.csv", rows.encode())
    quiet_app.define([export_definition("unl2", "replay/unlisted2.csv", "R", chunk_size=100)])
    services = quiet_app.services
    run = start_run(services, "unl2", "test").run
    take(quiet_app, JOBS_QUEUE, ExportJob, run.run_id)
    first, second = plan_in_process(quiet_app, run)
    deliver_chunk(first, services)  # holds the blocklisted row
    services.storage.container(RUNS_CONTAINER).delete_blob(second.blob_names[0])
    fail_chunk(second, OSError("chunk blob lost"), services)

    quiet_app.set_sandbox_limits(blocklist=[])
    try:
        final = _replay_in_process(quiet_app, run.run_id)
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    _adds_up(final)
    assert (final.profiles_accepted, final.profiles_rejected_by_braze) == (100, 51)
    assert "cannot be listed or replayed" in final.message
    again = run_in_process(quiet_app, "unl2")  # the partition is owed: all of it again
    assert again.profiles_new == 151 and len(quiet_app.braze_users()) == 151


def test_counts_add_up_when_a_partition_job_is_poisoned(quiet_app: App) -> None:
    run, _ = _start(quiet_app, "partdead", 10)
    plan_run(ExportJob(run.run_id, run.export_name), quiet_app.services)
    (job,) = take(quiet_app, JOBS_QUEUE, PartitionJob, run.run_id)
    fail_partition(job, TimeoutError("kept timing out"), quiet_app.services)
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.FAILED
    assert "partition 0 of 1" in final.message and "nothing was sent" in final.message
    # Its only partition was never diffed: no row was validated, so none is counted valid.
    assert (final.rows_read, final.rows_valid, final.rows_not_validated) == (10, 0, 10)
    assert quiet_app.sandbox_requests() == []


def test_a_failed_planning_counts_the_rows_no_diff_validated_as_neither_valid_nor_rejected(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the partitions are diffed, then one is poisoned: their rows count as valid or
    rejected as the diffs found, the split's rejected row as rejected, and the rows of the
    partitions never diffed as not validated (the report says so)."""
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 1024)
    released_whole(monkeypatch)
    ids = [f'pf-{n:03d}, "q"' if n % 7 == 0 else f"pf-{n:03d}" for n in range(120)]
    rows = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note\n"
    for n, customer in enumerate(ids):
        email = "not an email" if n % 10 == 0 else f"p{n}@example.com"
        quoted = customer.replace('"', '""')
        rows += f'"{quoted}",{email},Zoë 🎉,{n},true,1990-01-01,"line\nbreak, comma"\n'
    rows += ",blank@example.com,Ann,1,true,1990-01-01,\n"  # no id: rejected by the split
    rows += "pf-001,dup@example.com,Ann,1,true,1990-01-01,\n"  # a duplicate of pf-001
    quiet_app.upload("replay/planfail.csv", rows.encode())
    quiet_app.define([export_definition("planfail", "replay/planfail.csv", "R")])
    services = quiet_app.services
    run = start_run(services, "planfail", "test").run
    take(quiet_app, JOBS_QUEUE, ExportJob, run.run_id)
    split_in_process(quiet_app, run)
    jobs = sorted(take(quiet_app, JOBS_QUEUE, PartitionJob, run.run_id), key=_partition)
    assert len(jobs) >= 4
    diffed = jobs[: len(jobs) // 2]
    for job in diffed:
        diff_partition(job, services)
    fail_partition(jobs[-1], TimeoutError("kept timing out"), services)

    done = {job.partition for job in diffed}
    seen = [n for n, customer in enumerate(ids) if partition_of(customer, len(jobs)) in done]
    valid = [n for n in seen if n % 10]
    duplicate = int(partition_of("pf-001", len(jobs)) in done)
    rejected = 1 + (len(seen) - len(valid)) + duplicate
    final = services.runs.get(run.run_id)
    assert final is not None and final.status == Status.FAILED
    assert (final.rows_read, final.rows_valid, final.rows_rejected) == (122, len(valid), rejected)
    assert final.rows_not_validated == 122 - len(valid) - rejected > 0
    report = json.loads(services.storage.read_bytes(RUNS_CONTAINER, report_blob_name(run.run_id)))
    assert report["counts"]["rows_not_validated"] == final.rows_not_validated
    summary = services.storage.read_bytes(RUNS_CONTAINER, summary_blob_name(run.run_id)).decode()
    assert f"| Not validated (planning failed first) | {final.rows_not_validated} |" in summary
    assert quiet_app.sandbox_requests() == []


def _partition(job: PartitionJob) -> int:
    return job.partition


def test_a_wrong_key_costs_one_request_not_one_per_batch_and_its_rows_replay(
    quiet_app: App,
) -> None:
    """A key Braze refuses would be refused for every batch: the first is sent (and sent again
    with the key read anew), the rest of the minute's batches are not, and every row is
    reported with the reason and replayed once the key is fixed."""
    ids = [f"wk-{n:03d}" for n in range(300)]
    notes = ['"says ""hi"", twice"', '"multi\nline"', "Zoë 🎉", ""]
    rows = "".join(
        f"{i},x{n}@example.com,Ann,{n},true,1990-01-01,{notes[n % 4]}\n" for n, i in enumerate(ids)
    )
    quiet_app.upload("replay/wrong-key.csv", (HEAD + rows).encode())
    definition = export_definition("wrongkey", "replay/wrong-key.csv", "Seg", chunk_size=300)
    wrong = App(
        {**quiet_app.env, "BRAZE_SECRET_NOT_THE_KEY": "not-the-key"},
        quiet_app.definitions_path,
        quiet_app.sandbox,
    )
    wrong.define([definition], objects_per_request=1, max_in_flight=1, api_key_secret="not-the-key")
    refused_before = _refused_requests(quiet_app)
    first = run_in_process(wrong, "wrongkey")
    # The first batch, and again after reading the key anew; nothing more within the minute.
    assert _refused_requests(quiet_app) - refused_before == 2
    assert first.status == Status.FAILED
    assert (first.profiles_rejected_by_braze, first.requests_sent) == (300, 1)
    _adds_up(first)
    rejected = quiet_app.rejected(first)
    assert [r["customer_id"] for r in rejected] == ids
    assert {r["codes"][0] for r in rejected} == {"http_401"}
    assert rejected[0]["reasons"][0].startswith("Braze refused the request (HTTP 401)")
    assert all(
        r["reasons"][0].startswith("not sent: Braze refused this connection less than a minute")
        for r in rejected[1:]
    )
    assert rejected[1]["object"]["note"] == "multi\nline"

    quiet_app.define([definition], objects_per_request=1, max_in_flight=1)  # the key fixed
    quiet_app.mark_sandbox_requests()
    final = _replay_in_process(quiet_app, first.run_id)
    assert (final.status, final.profiles_accepted, final.profiles_rejected_by_braze) == (
        Status.SUCCEEDED,
        300,
        0,
    )
    sent = [o["external_id"] for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert sent == ids
    assert quiet_app.braze_users()["wk-002"]["note"] == "Zoë 🎉"


def _refused_requests(app: App) -> int:
    """The /users/track requests the sandbox answered with 401 since it started."""
    response = requests.get(f"{app.sandbox.url}/_sandbox/stats", timeout=10)
    response.raise_for_status()
    return int(response.json()["responses_by_status"].get("401", 0))


def test_finalize_reads_each_chunks_rejected_rows_once_however_many_partitions_it_covers(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery job covers several partitions (a replay's, all of them): the ids Braze
    rejected are filed by partition in one reading, not read again for each partition, and
    every one, however odd, is kept out of the snapshot, so the next run sends it again."""
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 4096)
    released_whole(monkeypatch)
    ids = [f"fin-{n:03d}" for n in range(200)]
    ids[7] = 'fin "7", 🎉\u2028x'  # quotes, a comma, an emoji and a line separator
    blocked = [*ids[::10], ids[7]]
    quoted = ['"' + i.replace('"', '""') + '"' for i in ids]
    rows = "".join(f"{i},x{n}@example.com,Ann,{n},true,1990-01-01,\n" for n, i in enumerate(quoted))
    quiet_app.upload("replay/once.csv", (HEAD + rows).encode())
    quiet_app.define([export_definition("once", "replay/once.csv", "Seg", chunk_size=1000)])
    reads: list[int] = []
    real = finalize.chunk_rejections

    def counted(services: Any, result: Any) -> Any:
        reads.append(result.chunk_index)
        return real(services, result)

    monkeypatch.setattr(finalize, "chunk_rejections", counted)
    quiet_app.set_sandbox_limits(blocklist=blocked)
    try:
        first = run_in_process(quiet_app, "once")
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    assert first.partitions == 4 and first.chunks_total == 1  # one job, every partition
    assert reads == [0, 0]  # the snapshot's commit and the rejected rows' report, once each
    assert sorted(r["customer_id"] for r in quiet_app.rejected(first)) == sorted(blocked)

    quiet_app.mark_sandbox_requests()
    second = run_in_process(quiet_app, "once")
    sent = [o["external_id"] for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert sorted(sent) == sorted(blocked)
    assert (second.status, second.profiles_accepted) == (Status.SUCCEEDED, len(blocked))
