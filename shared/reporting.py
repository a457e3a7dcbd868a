"""Finalizing a run, exactly once: sum the chunks, merge rejected rows, write the report.

Any worker that finishes the last piece of work may call `maybe_finalize`; an ETag-guarded
claim on the run entity lets exactly one of them do it, even when the last chunks finish together.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from shared.config import RUNS_CONTAINER
from shared.profiles import open_lines
from shared.runs import ChunkResult, Run, RunConflict, Status, utcnow
from shared.services import Services
from shared.triggers import start_pending

log = logging.getLogger(__name__)


CLAIM_LEASE = timedelta(minutes=10)


def rejected_prefix(run_id: str) -> str:
    return f"runs/{run_id}/rejected/"


def partitions_blob_name(run_id: str) -> str:
    """The CDM partition files of a run, in order (row positions index into it)."""
    return f"runs/{run_id}/partitions.json"


def report_blob_name(run_id: str) -> str:
    return f"runs/{run_id}/report.json"


def rejected_blob_name(run_id: str) -> str:
    return f"runs/{run_id}/rejected.jsonl"


def maybe_finalize(run_id: str, services: Services) -> bool:
    """Finalize the run if all chunks are done and nobody else has; True for the one that did."""
    store = services.runs
    run = store.get(run_id)
    if run is None or run.is_final or run.chunks_total is None:
        return False
    now = utcnow()
    if run.finalize_claimed_at and now - run.finalize_claimed_at < CLAIM_LEASE:
        return False  # someone is finalizing; after the lease, a crashed finalizer is replaced
    results = store.chunk_results(run_id)
    if not set(range(run.chunks_total)) <= {r.chunk_index for r in results}:
        return False
    run.finalize_claim, run.finalize_claimed_at = uuid.uuid4().hex, now
    try:
        store.update(run, if_unchanged=True)
    except RunConflict:
        return False
    try:
        _finalize(run, results, services)
    except Exception:
        # Give the claim back, so the queue's retry of this message can finalize the run.
        claimed = store.get(run_id)
        if claimed is not None and not claimed.is_final:
            claimed.finalize_claim, claimed.finalize_claimed_at = "", None
            with contextlib.suppress(RunConflict):
                store.update(claimed, if_unchanged=True)
        raise
    start_pending(services, run.export_name)
    return True


def final_status(run: Run) -> Status:
    """failed: planning failed or nothing got through; partially: some rejected; else succeeded."""
    rejected = run.rows_rejected + run.profiles_rejected_by_braze
    if run.planning_failed or (run.profiles_accepted == 0 and rejected > 0):
        return Status.FAILED
    return Status.PARTIALLY_SUCCEEDED if rejected else Status.SUCCEEDED


def _finalize(run: Run, results: list[ChunkResult], services: Services) -> None:
    run.profiles_accepted = sum(r.accepted for r in results)
    run.profiles_rejected_by_braze = sum(r.rejected for r in results)
    run.requests_sent = sum(r.requests for r in results)
    tally = Counter(run.rejections)
    for result in results:
        tally.update(result.rejections)
    run.rejections = dict(tally)
    run.rejected_blob = rejected_blob_name(run.run_id)
    run.report_blob = report_blob_name(run.run_id)
    planned_rejections = _merge_rejected(run.run_id, results, services)
    if run.planning_failed:
        # Attempts before the failure may have queued more than the last one recorded.
        run.rows_valid = sum(r.rows for r in results)
        run.rows_rejected = planned_rejections
        run.rows_read = run.rows_valid + run.rows_rejected
    run.status = final_status(run)
    if not run.message:
        run.message = _summary(run)
    delivered = run.profiles_accepted + run.profiles_rejected_by_braze
    if delivered != run.rows_valid:
        run.status = Status.FAILED
        run.message = (
            f"counts do not add up: {run.rows_valid} valid profiles planned but {delivered} "
            "accounted for by delivery; this is a bug, please report it with this run's id"
        )
    run.finished_at = utcnow()
    services.storage.write_bytes(
        RUNS_CONTAINER, run.report_blob, json.dumps(build_report(run), indent=2), "application/json"
    )
    services.runs.update(run, if_unchanged=True)  # a finalizer that outlived its lease loses
    log.info("run %s finished: %s (%s)", run.run_id, run.status, run.message)


def _summary(run: Run) -> str:
    rejected = run.rows_rejected + run.profiles_rejected_by_braze
    return (
        f"{run.profiles_accepted} of {run.rows_read} rows accepted by Braze; "
        f"{run.rows_rejected} rejected by validation, {run.profiles_rejected_by_braze} by Braze"
        if rejected
        else f"all {run.profiles_accepted} profiles accepted by Braze"
    )


def build_report(run: Run) -> dict[str, Any]:
    """The run report: counts that add up, timings and throughput, and why rows were rejected."""
    seconds = (
        (run.finished_at - run.created_at).total_seconds()
        if run.finished_at and run.created_at
        else None
    )
    planning = (
        (run.planning_finished_at - run.planning_started_at).total_seconds()
        if run.planning_finished_at and run.planning_started_at
        else None
    )
    return {
        "run_id": run.run_id,
        "export": run.export_name,
        "segment": run.segment,
        "connection": run.connection,
        "source": run.source,
        "trigger": run.trigger,
        "status": run.status,
        "message": run.message,
        "counts": {
            "rows_read": run.rows_read,
            "rows_valid": run.rows_valid,
            "rows_rejected_by_validation": run.rows_rejected,
            "profiles_accepted_by_braze": run.profiles_accepted,
            "profiles_rejected_by_braze": run.profiles_rejected_by_braze,
            "requests_sent": run.requests_sent,
            "chunks": run.chunks_total,
        },
        "rejections_by_reason": dict(sorted(run.rejections.items(), key=lambda kv: -kv[1])),
        "timings": {
            "created_at": run.created_at.isoformat(),
            "planning_started_at": _iso(run.planning_started_at),
            "planning_finished_at": _iso(run.planning_finished_at),
            "finished_at": _iso(run.finished_at),
            "planning_seconds": planning,
            "total_seconds": seconds,
            "profiles_per_second": round(run.rows_valid / seconds, 1) if seconds else None,
        },
        "blobs": {
            "container": RUNS_CONTAINER,
            "report": run.report_blob,
            "rejected_rows": run.rejected_blob,
        },
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def _merge_rejected(run_id: str, results: list[ChunkResult], services: Services) -> int:
    """Merge the planner's and each recorded chunk's rejected rows, ordered by source line.

    Only the files the records name are merged: a blob left by an attempt that crashed before
    recording its chunk must not contradict the counts. Each part is already in line order,
    so a streaming k-way merge keeps memory flat. Returns how many were rejected by validation.
    """
    storage = services.storage
    plan = rejected_prefix(run_id) + "plan.jsonl"
    parts = [plan] if storage.exists(RUNS_CONTAINER, plan) else []
    parts += [r.rejected_blob for r in results if r.rejected_blob]
    streams = [_entries(services, name) for name in parts]
    writer = storage.line_writer(RUNS_CONTAINER, rejected_blob_name(run_id))
    by_validation = 0
    for _, stage, text in heapq.merge(*streams, key=lambda item: item[0]):
        writer.write(text)
        by_validation += stage == "validation"
    writer.close()
    return by_validation


def _entries(services: Services, name: str) -> Iterator[tuple[int, str, str]]:
    for text in open_lines(services.storage.read_chunks(RUNS_CONTAINER, name)):
        text = text.rstrip("\n")
        if text:
            entry = json.loads(text)
            yield entry.get("order", entry["line"]), entry["stage"], text
