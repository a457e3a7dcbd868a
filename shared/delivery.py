"""Delivering one chunk: batch its profiles into /users/track requests and account for each row."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from shared.braze_client import TrackOutcome
from shared.config import RUNS_CONTAINER
from shared.messages import ChunkJob
from shared.profiles import open_lines, row_part
from shared.reporting import maybe_finalize, partitions_blob_name, rejected_prefix
from shared.runs import ChunkResult
from shared.services import Services

log = logging.getLogger(__name__)


def batches(items: list[tuple[int, str]], size: int) -> list[list[tuple[int, str]]]:
    """Fixed batches of at most `size`: the same chunk always yields the same batches."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def read_chunk(services: Services, blob_name: str) -> list[tuple[int, str]]:
    """(row order, serialized attributes object) pairs from a chunk blob."""
    items = []
    for text in open_lines(services.storage.read_chunks(RUNS_CONTAINER, blob_name)):
        line, _, obj = text.rstrip("\n").partition("\t")
        if obj:
            items.append((int(line), obj))
    return items


def deliver_chunk(job: ChunkJob, services: Services) -> None:
    """Send one chunk to Braze and record its outcome; a redelivered, finished chunk is skipped."""
    run = services.runs.get(job.run_id)
    if run is None or run.is_final:
        log.warning("run %s is missing or finished; dropping chunk %d", job.run_id, job.chunk_index)
        return
    if services.runs.chunk_done(job.run_id, job.chunk_index):
        log.info("run %s chunk %d was already delivered", job.run_id, job.chunk_index)
        maybe_finalize(job.run_id, services)
        return
    connection = services.definitions().connection(run.connection)
    client = services.braze(connection)
    items = read_chunk(services, job.blob_name)
    if len(items) != job.rows:
        raise ValueError(
            f"chunk {job.blob_name} holds {len(items)} profiles but was planned with {job.rows}"
        )
    accepted = requests = 0
    reasons: Counter[str] = Counter()
    rejected_lines: list[str] = []
    for batch in batches(items, connection.objects_per_request):
        outcome = client.track([obj for _, obj in batch])
        requests += 1
        rejections = rejected_rows(batch, outcome, lambda: _files(services, job.run_id))
        accepted += len(batch) - len(rejections)
        reasons.update(r["codes"][0] for r in rejections)
        rejected_lines.extend(json.dumps(r, ensure_ascii=False) for r in rejections)
    rejected_blob = ""
    if rejected_lines:
        rejected_blob = _rejected_blob_name(job)
        services.storage.write_bytes(
            RUNS_CONTAINER, rejected_blob, "\n".join(rejected_lines) + "\n", "application/x-ndjson"
        )
    result = ChunkResult(
        chunk_index=job.chunk_index,
        rows=len(items),
        accepted=accepted,
        rejected=len(rejected_lines),
        requests=requests,
        rejected_blob=rejected_blob,
        rejections=dict(reasons),
    )
    services.runs.record_chunk(job.run_id, result)
    maybe_finalize(job.run_id, services)


def fail_chunk(job: ChunkJob, error: BaseException, services: Services) -> None:
    """The chunk is being poisoned: report every row of it, so none goes unaccounted for.

    Without per-batch progress the rows are all reported as failed, though Braze may have
    accepted some batches before the failure; re-sending them is harmless (attributes are set,
    membership is added, nothing is counted twice in Braze).
    """
    run = services.runs.get(job.run_id)
    if run is None or run.is_final or services.runs.chunk_done(job.run_id, job.chunk_index):
        return
    reason = f"delivery failed after every retry: {type(error).__name__}: {error}"[:1000]
    try:
        items = read_chunk(services, job.blob_name)
    except Exception:
        log.exception("run %s chunk %d: its blob is unreadable too", job.run_id, job.chunk_index)
        items = None
    blob = ""
    if items is not None:
        entries = [
            {
                **_position(order, lambda: _files(services, job.run_id)),
                "customer_id": json.loads(obj).get("external_id"),
                "stage": "delivery",
                "codes": ["delivery_failed"],
                "reasons": [reason],
                "object": json.loads(obj),
            }
            for order, obj in items
        ]
        blob = _rejected_blob_name(job)
        services.storage.write_bytes(
            RUNS_CONTAINER,
            blob,
            "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries),
            "application/x-ndjson",
        )
    rows = len(items) if items is not None else job.rows  # counted even when not itemized
    result = ChunkResult(
        chunk_index=job.chunk_index,
        rows=rows,
        accepted=0,
        rejected=rows,
        requests=0,
        rejected_blob=blob,
        rejections={"delivery_failed": rows},
    )
    services.runs.record_chunk(job.run_id, result)
    maybe_finalize(job.run_id, services)


def rejected_rows(
    batch: list[tuple[int, str]], outcome: TrackOutcome, files: Callable[[], list[str]]
) -> list[dict[str, Any]]:
    """Map Braze's answer back to source rows: `errors[].index` is the position in the batch."""
    rejected = []
    for index, (order, obj_json) in enumerate(batch):
        error = outcome.object_errors.get(index)
        if error is None and outcome.failure is None:
            continue
        obj = json.loads(obj_json)
        rejected.append(
            {
                **_position(order, files),
                "customer_id": obj.get("external_id"),
                "stage": "braze",
                "codes": [error or f"http_{outcome.status}"],
                "reasons": [
                    f"Braze rejected the profile: {error}" if error else str(outcome.failure)
                ],
                "object": obj,
            }
        )
    return rejected


def _position(order: int, files: Callable[[], list[str]]) -> dict[str, Any]:
    """Where a row came from: its line, and its partition file for a CDM source."""
    part, line = row_part(order)
    position: dict[str, Any] = {"order": order, "line": line}
    if part is not None:
        position["file"] = files()[part]
    return position


def _files(services: Services, run_id: str) -> list[str]:
    return json.loads(services.storage.read_bytes(RUNS_CONTAINER, partitions_blob_name(run_id)))


def _rejected_blob_name(job: ChunkJob) -> str:
    """One name per attempt: a losing attempt's file is never the one the record points to."""
    return f"{rejected_prefix(job.run_id)}chunk-{job.chunk_index:06d}-{uuid.uuid4().hex[:8]}.jsonl"
