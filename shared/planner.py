"""Planning a run: stream the segment, validate, cut chunks, enqueue them.

Each chunk is enqueued as soon as its blob is written, so Braze delivery overlaps planning and
a 1M-row file starts reaching Braze within seconds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.cdm import parse_model, read_entity
from shared.config import CHUNKS_QUEUE, RUNS_CONTAINER, ConfigurationError
from shared.definitions import DefinitionsError, Export, UnknownExport, format_of
from shared.mapping import braze_attributes, encode_object
from shared.messages import ChunkJob, ExportJob
from shared.profiles import RecordReader, SourceError, open_lines, row_order
from shared.reporting import maybe_finalize, partitions_blob_name, rejected_prefix
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


@dataclass(frozen=True, slots=True)
class _Row:
    """A source record with its position: `order` sorts rows across CDM partitions."""

    order: int
    line: int
    file: str | None
    values: dict[str, Any]
    problem: str | None


def _source_rows(run: Run, export: Export, services: Services) -> Iterator[_Row]:
    """Every record of the run's source, after checking the mapped columns exist."""
    storage = services.storage
    container, _, path = run.source.partition("/")
    same_file = container == export.source.container and path == export.source.path
    fmt = export.source.resolved_format() if same_file else format_of(path)
    mapping = export.mapping
    needed = [mapping.customer_id, mapping.email, *(a.column for a in mapping.attributes)]
    if fmt == "cdm":
        model = parse_model(storage.read_bytes(container, path), source=run.source)
        entity = model.entity(export.source.entity)
        entity.require_columns(needed)
        files = [f"{p.container}/{p.blob}" for p in entity.partitions]
        storage.write_bytes(
            RUNS_CONTAINER, partitions_blob_name(run.run_id), json.dumps(files), "application/json"
        )
        index = {p.blob: i for i, p in enumerate(entity.partitions)}
        if len(index) < len(entity.partitions):
            raise SourceError(
                f"{run.source}: two partitions have the same blob path in different containers; "
                "this exporter needs partition paths to be unique"
            )
        for record in read_entity(entity, storage.read_chunks):
            part = index[record.partition]
            yield _Row(
                row_order(part, record.line),
                record.line,
                files[part],
                record.values,
                record.problem,
            )
        return
    reader = RecordReader(open_lines(storage.read_chunks(container, path)), fmt)
    reader.require_columns(needed)
    for record in reader:
        yield _Row(record.line, record.line, None, record.values, record.problem)


def _plan(run: Run, export: Export, services: Services, tally: _Tally, replanning: bool) -> None:
    storage = services.storage
    rows = _source_rows(run, export, services)
    first = next(rows, None)  # reads the header or model.json: fail before writing anything
    mapping = export.mapping
    rejected = storage.line_writer(RUNS_CONTAINER, rejected_prefix(run.run_id) + "plan.jsonl")
    seen: set[int] = set()
    pending: list[str] = []

    def flush() -> None:
        _emit_chunk(run, tally.chunks, pending, services, replanning)
        tally.chunks += 1
        pending.clear()
        # Progress, and what a poisoned planning job falls back on (see fail_planning).
        # chunks_planned is a high-water mark across attempts: an earlier attempt may have
        # queued further than this one before failing.
        run.rows_read, run.rows_valid = tally.rows_read, tally.rows_valid
        run.chunks_planned = max(run.chunks_planned, tally.chunks)
        services.runs.update(run)

    def finish() -> None:
        if pending:
            flush()
        rejected.close()

    try:
        for row in itertools.chain([first] if first else [], rows):
            tally.rows_read += 1
            if row.problem:
                problems = [("malformed_row", f"row {row.problem}")]
                _reject(rejected, tally, row, None, problems)
                continue
            result = validate_record(row.values, mapping)
            if not isinstance(result, Profile):
                problems = [(p.code, p.message) for p in result]
                _reject(rejected, tally, row, row.values.get(mapping.customer_id), problems)
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
                    rejected, tally, row, result.customer_id, [("duplicate_customer_id", message)]
                )
                continue
            seen.add(digest)
            tally.rows_valid += 1
            pending.append(f"{row.order}\t{encode_object(braze_attributes(result, export))}")
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
    row: _Row,
    customer_id: object,
    problems: list[tuple[str, str]],
) -> None:
    tally.rows_rejected += 1
    tally.reasons.update(code for code, _ in problems)
    entry = {
        "order": row.order,
        "line": row.line,
        **({"file": row.file} if row.file else {}),
        "customer_id": customer_id,
        "stage": "validation",
        "codes": [code for code, _ in problems],
        "reasons": [message for _, message in problems],
        "row": row.values,
    }
    writer.write(json.dumps(entry, ensure_ascii=False, default=str))
