"""Planning a run: stream the segment, validate, cut chunks, enqueue them.

Each chunk is enqueued as soon as its blob is written, so Braze delivery overlaps planning and
a 1M-row file starts reaching Braze within seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from shared.config import CHUNKS_QUEUE, RUNS_CONTAINER, ConfigurationError
from shared.definitions import DefinitionsError, Export, UnknownExport, format_of
from shared.mapping import braze_attributes, encode_object
from shared.messages import ChunkJob, ExportJob
from shared.profiles import RecordReader, SourceError, open_lines
from shared.reporting import maybe_finalize, rejected_prefix
from shared.runs import Run, Status, utcnow
from shared.services import Services
from shared.storage import BlobLineWriter, BlobNotFound
from shared.validation import Profile, validate_record

log = logging.getLogger(__name__)


def chunk_blob_name(run_id: str, index: int) -> str:
    return f"runs/{run_id}/chunks/{index:06d}.tsv"


@dataclass
class _Tally:
    rows_read: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0
    chunks: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def plan_run(job: ExportJob, services: Services) -> None:
    """Plan one run. Safe to run again after a crash: chunks are deterministic and overwritten."""
    run = services.runs.get(job.run_id)
    if run is None:
        log.error("run %s does not exist; dropping its planning job", job.run_id)
        return
    if run.status not in (Status.QUEUED, Status.PLANNING):
        log.info("run %s is already %s; nothing to plan", run.run_id, run.status)
        maybe_finalize(run.run_id, services)  # in case the first attempt died right here
        return
    replanning = run.status == Status.PLANNING
    run.status, run.planning_started_at = Status.PLANNING, utcnow()
    services.runs.update(run)
    tally = _Tally()
    try:
        export = services.definitions().export(job.export_name)
        _plan(run, export, services, tally, replanning)
    except (
        SourceError,
        BlobNotFound,
        DefinitionsError,
        ConfigurationError,
        UnknownExport,
    ) as error:
        run.planning_failed, run.message = True, _clip(f"planning failed: {error}")
        log.error("run %s: %s", run.run_id, run.message)
    run.rows_read, run.rows_valid, run.rows_rejected = (
        tally.rows_read,
        tally.rows_valid,
        tally.rows_rejected,
    )
    run.rejections = dict(tally.reasons)
    run.chunks_planned = run.chunks_total = tally.chunks
    run.planning_finished_at = utcnow()
    run.status = Status.DELIVERING
    services.runs.update(run)
    maybe_finalize(run.run_id, services)


def _plan(run: Run, export: Export, services: Services, tally: _Tally, replanning: bool) -> None:
    storage = services.storage
    container, _, path = run.source.partition("/")
    same_file = container == export.source.container and path == export.source.path
    fmt = export.source.resolved_format() if same_file else format_of(path)
    chunks = storage.read_chunks(container, path)
    reader = RecordReader(open_lines(chunks), fmt)
    mapping = export.mapping
    reader.require_columns(
        [mapping.customer_id, mapping.email, *(a.column for a in mapping.attributes)]
    )
    rejected = storage.line_writer(RUNS_CONTAINER, rejected_prefix(run.run_id) + "plan.jsonl")
    seen: set[int] = set()
    pending: list[str] = []

    def flush() -> None:
        _emit_chunk(run, tally.chunks, pending, services, replanning)
        tally.chunks += 1
        pending.clear()
        # Progress, and what a poisoned planning job falls back on (see fail_planning).
        run.rows_read, run.rows_valid, run.chunks_planned = (
            tally.rows_read,
            tally.rows_valid,
            tally.chunks,
        )
        services.runs.update(run)

    def finish() -> None:
        if pending:
            flush()
        rejected.close()

    try:
        for record in reader:
            tally.rows_read += 1
            if record.problem:
                _reject(
                    rejected,
                    tally,
                    record.line,
                    None,
                    [("malformed_row", f"row {record.problem}")],
                    record.values,
                )
                continue
            result = validate_record(record.values, mapping)
            if not isinstance(result, Profile):
                customer_id = record.values.get(mapping.customer_id)
                problems = [(p.code, p.message) for p in result]
                _reject(rejected, tally, record.line, customer_id, problems, record.values)
                continue
            digest = int.from_bytes(
                hashlib.blake2b(result.customer_id.encode(), digest_size=8).digest()
            )
            if digest in seen:
                message = (
                    f"duplicate customer id {result.customer_id!r}: an earlier row with this id "
                    "was kept (the first valid row for an id wins)"
                )
                _reject(
                    rejected,
                    tally,
                    record.line,
                    result.customer_id,
                    [("duplicate_customer_id", message)],
                    record.values,
                )
                continue
            seen.add(digest)
            tally.rows_valid += 1
            pending.append(f"{record.line}\t{encode_object(braze_attributes(result, export))}")
            if len(pending) >= export.chunk_size:
                flush()
    except SourceError:
        # Rows before the bad spot are delivered and reported; the run then fails saying why.
        # Any other error leaves no partial chunk behind: the queue retries the whole plan.
        finish()
        raise
    finish()


def fail_planning(run_id: str, error: BaseException, services: Services) -> None:
    """The planning job is being poisoned: end the run with what was already queued.

    Chunks enqueued before the failure are still delivered; rows after the last one were
    never read, and the message says so.
    """
    run = services.runs.get(run_id)
    if run is None or run.is_final:
        return
    run.planning_failed = True
    run.message = _clip(
        f"planning failed after every retry: {type(error).__name__}: {error}; "
        f"the {run.rows_valid} profiles in the {run.chunks_planned} chunks queued before that "
        "are delivered, the rest of the source was not read"
    )
    run.rows_read, run.rows_rejected, run.rejections = run.rows_valid, 0, {}
    run.chunks_total = run.chunks_planned
    run.planning_finished_at = utcnow()
    run.status = Status.DELIVERING
    services.runs.update(run)
    maybe_finalize(run_id, services)


def _clip(message: str, limit: int = 2000) -> str:
    """Run messages live in a table property (64 KiB); a wide CSV header must not overflow it."""
    return message if len(message) <= limit else message[:limit] + "…"


def _emit_chunk(
    run: Run, index: int, lines: list[str], services: Services, replanning: bool
) -> None:
    """Write the chunk blob, then enqueue its reference (unless a re-plan finds it delivered)."""
    name = chunk_blob_name(run.run_id, index)
    services.storage.write_bytes(
        RUNS_CONTAINER, name, "\n".join(lines) + "\n", "text/tab-separated-values; charset=utf-8"
    )
    if replanning and services.runs.chunk_done(run.run_id, index):
        return
    job = ChunkJob(run.run_id, run.export_name, index, name, len(lines))
    services.storage.queue(CHUNKS_QUEUE).send_message(job.to_json())


def _reject(
    writer: BlobLineWriter,
    tally: _Tally,
    line: int,
    customer_id: object,
    problems: list[tuple[str, str]],
    values: dict[str, object],
) -> None:
    tally.rows_rejected += 1
    tally.reasons.update(code for code, _ in problems)
    entry = {
        "line": line,
        "customer_id": customer_id,
        "stage": "validation",
        "codes": [code for code, _ in problems],
        "reasons": [message for _, message in problems],
        "row": values,
    }
    writer.write(json.dumps(entry, ensure_ascii=False, default=str))
