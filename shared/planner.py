"""Planning a run, step one: stream the segment, validate it, split it by customer id.

Valid rows go to one of `partitions` blobs by a hash of the customer id, so an id lands in the
same partition in every run; each partition is then diffed against the previous snapshot on its
own (shared/partitions.py), in parallel across queue workers, with memory bounded by one
partition. Nothing reaches Braze before every partition is diffed and the safety valves pass.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.cdm import parse_model, read_entity
from shared.config import PARTITIONS_QUEUE, RUNS_CONTAINER, ConfigurationError
from shared.definitions import (
    Connection,
    DefinitionsError,
    Export,
    SourceFormat,
    UnknownExport,
    format_of,
)
from shared.diff import mapping_fingerprint, partition_count, partition_of
from shared.layout import partition_blob_name, rejected_prefix, source_files_blob_name
from shared.mapping import braze_attributes
from shared.messages import ExportJob, PartitionJob
from shared.profiles import RecordReader, SourceError, open_lines, row_order
from shared.reporting import finish_early
from shared.runs import Run, Status, utcnow
from shared.services import Services
from shared.storage import BlobLineWriter, BlobNotFound
from shared.validation import Profile, usable_customer_id, validate_record

log = logging.getLogger(__name__)

PROGRESS_EVERY = 100_000  # rows between progress updates of the run while splitting


@dataclass
class _Tally:
    rows_read: int = 0
    rows_rejected: int = 0
    unidentified: int = 0  # malformed rows: whose they are cannot be told
    reasons: Counter[str] = field(default_factory=Counter)


def plan_run(job: ExportJob, services: Services) -> None:
    """Plan one run. Safe to run again after a crash: partitions are deterministic, overwritten."""
    run = services.runs.get(job.run_id)
    if run is None:
        log.error("run %s does not exist; dropping its planning job", job.run_id)
        return
    if run.status not in (Status.QUEUED, Status.PLANNING):
        log.info("run %s is already %s; nothing to plan", run.run_id, run.status)
        return
    if run.partitions:  # split already; an attempt died while queueing the partitions
        _queue_partitions(run, services)
        return
    run.status, run.planning_started_at = Status.PLANNING, utcnow()
    services.runs.update(run)
    tally = _Tally()
    try:
        definitions = services.definitions()
        export = definitions.export(run.export_name)
        connection = definitions.connection(export.connection)
        _compare_with_snapshot(run, export, connection, services)
        partitions = _split(run, export, services, tally)
    except (
        SourceError,
        BlobNotFound,
        DefinitionsError,
        ConfigurationError,
        UnknownExport,
    ) as error:
        _record_tally(run, tally)
        finish_early(run, services, message=_clip(f"planning failed: {error}"), failed=True)
        return
    _record_tally(run, tally)
    run.partitions = partitions
    services.runs.update(run)
    _queue_partitions(run, services)
    log.info("run %s: %d rows read, %d partitions queued", run.run_id, tally.rows_read, partitions)


def _queue_partitions(run: Run, services: Services) -> None:
    """One diff job per partition; a repeated one finds its partition done and does nothing."""
    queue = services.storage.queue(PARTITIONS_QUEUE)
    for partition in range(run.partitions):
        job = PartitionJob(run.run_id, run.export_name, partition, run.partitions)
        queue.send_message(job.to_json())


def _record_tally(run: Run, tally: _Tally) -> None:
    run.rows_read, run.rows_rejected = tally.rows_read, tally.rows_rejected
    run.rows_unidentified = tally.unidentified
    run.rejections = run.validation_rejections = dict(tally.reasons)


def _compare_with_snapshot(
    run: Run, export: Export, connection: Connection, services: Services
) -> None:
    """Fix, once per run, which snapshot it diffs against and whether it sends everything."""
    manifest = services.snapshots.current(export.name, connection.name)
    run.mapping_fingerprint = mapping_fingerprint(export, connection)
    if manifest is not None:
        run.previous_snapshot = manifest.run_id
        run.previous_partitions = manifest.partitions
        run.previous_profiles = manifest.profiles
    if run.teardown:
        run.full_refresh_reason = ""
    elif run.full_refresh:
        run.full_refresh_reason = "a full refresh was requested"
    elif manifest is None:
        run.full_refresh_reason = "first run of this export on this connection"
    elif manifest.mapping != run.mapping_fingerprint:
        run.full_refresh_reason = (
            "the mapping, segment or membership encoding changed since the last snapshot"
        )


@dataclass(frozen=True, slots=True)
class _Row:
    """A source record with its position: `order` sorts rows across CDM partitions."""

    order: int
    line: int
    file: str | None
    values: dict[str, Any]
    problem: str | None


@dataclass
class _Source:
    """The run's source: its size (to choose the partition count) and its rows, streamed."""

    size: int
    compressed: bool
    rows: Iterator[_Row]


def _source_format(run: Run, export: Export) -> SourceFormat:
    container, _, path = run.source.partition("/")
    same_file = container == export.source.container and path == export.source.path
    return export.source.resolved_format() if same_file else format_of(path)


def _open_source(run: Run, export: Export, services: Services) -> _Source:
    """Open the run's source and check the mapped columns exist before anything is written."""
    storage = services.storage
    fmt = _source_format(run, export)
    rows = _source_rows(run, export, fmt, services)
    first = next(rows, None)  # reads the header or model.json: fail before writing anything
    if fmt == "cdm":
        files = json.loads(storage.read_bytes(RUNS_CONTAINER, source_files_blob_name(run.run_id)))
        size = sum(storage.size(*name.split("/", 1)) for name in files)
        compressed = any(name.endswith(".gz") for name in files)
    else:
        container, _, path = run.source.partition("/")
        size, compressed = storage.size(container, path), path.endswith(".gz")
    return _Source(size, compressed, itertools.chain([first] if first else [], rows))


def _source_rows(run: Run, export: Export, fmt: SourceFormat, services: Services) -> Iterator[_Row]:
    """Every record of the run's source, after checking the mapped columns exist."""
    storage = services.storage
    container, _, path = run.source.partition("/")
    mapping = export.mapping
    needed = [mapping.customer_id, mapping.email, *(a.column for a in mapping.attributes)]
    if fmt == "cdm":
        model = parse_model(storage.read_bytes(container, path), source=run.source)
        entity = model.entity(export.source.entity)
        entity.require_columns(needed)
        files = [f"{p.container}/{p.blob}" for p in entity.partitions]
        storage.write_bytes(
            RUNS_CONTAINER,
            source_files_blob_name(run.run_id),
            json.dumps(files),
            "application/json",
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


def _split(run: Run, export: Export, services: Services, tally: _Tally) -> int:
    """Validate every row and file it under its customer id's partition; returns the count.

    Rows go to local temporary files first (bounded memory whatever the partition count), then
    each file is uploaded. A partition line is `[order, customer id, object]`; a row rejected
    for another field than its id keeps its place as `[order, customer id, null]`, so the diff
    knows the profile is still in the segment.
    """
    if run.teardown:
        return max(run.previous_partitions, 1)  # empty partitions: everyone leaves
    source = _open_source(run, export, services)
    count = partition_count(source.size, source.compressed)
    mapping = export.mapping
    storage = services.storage
    rejected = storage.line_writer(RUNS_CONTAINER, rejected_prefix(run.run_id) + "plan.jsonl")
    with tempfile.TemporaryDirectory(prefix="plan-") as directory:
        paths = [Path(directory, f"{p:04d}.jsonl") for p in range(count)]
        files = [path.open("w", encoding="utf-8") for path in paths]
        try:
            for row in source.rows:
                tally.rows_read += 1
                if tally.rows_read % PROGRESS_EVERY == 0:
                    # Shows progress, and tells the stalled-run sweep that planning is alive.
                    run.rows_read = tally.rows_read
                    services.runs.update(run)
                if row.problem:
                    tally.unidentified += 1
                    _reject(rejected, tally, row, None, [("malformed_row", f"row {row.problem}")])
                    continue
                result = validate_record(row.values, mapping)
                if isinstance(result, Profile):
                    customer_id: str | None = result.customer_id
                    obj: dict[str, Any] | None = braze_attributes(result, export)
                else:
                    problems = [(p.code, p.message) for p in result]
                    raw_id = row.values.get(mapping.customer_id)
                    _reject(rejected, tally, row, raw_id, problems)
                    customer_id, obj = usable_customer_id(row.values, mapping), None
                if customer_id is not None:
                    line = json.dumps([row.order, customer_id, obj], ensure_ascii=False)
                    files[partition_of(customer_id, count)].write(line + "\n")
        finally:
            for file in files:
                file.close()
            rejected.close()  # a failed run still reports the rows rejected before the failure
        for partition, path in enumerate(paths):
            with path.open("rb") as data:
                storage.write_bytes(
                    RUNS_CONTAINER,
                    partition_blob_name(run.run_id, partition),
                    data,
                    "application/x-ndjson",
                )
    return count


def fail_planning(run_id: str, error: BaseException, services: Services) -> None:
    """The planning job is being poisoned: the run fails, and nothing was sent."""
    run = services.runs.get(run_id)
    if run is None or run.is_final:
        return
    message = f"planning failed after every retry: {type(error).__name__}: {error}"
    finish_early(run, services, message=_clip(message), failed=True)


def _clip(message: str, limit: int = 2000) -> str:
    """Run messages live in a table property (64 KiB); a wide CSV header must not overflow it."""
    return message if len(message) <= limit else message[:limit] + "…"


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
