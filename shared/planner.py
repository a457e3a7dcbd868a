"""Planning a run, step one: stream the segment, validate it, split it by customer id.

Valid rows go to one of `partitions` blobs by a hash of the customer id, so an id lands in the
same partition in every run; each partition is then diffed against the previous snapshot on its
own (shared/partitions.py), in parallel across queue workers, with memory bounded by one
partition. Nothing reaches Braze before every partition is diffed and the safety valves pass.

A large plain file is cut into byte ranges at record boundaries (a CDM folder into its files),
each split by its own job, in parallel: each writes its piece of every partition, and the last
one to finish queues the partition diffs.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from hashlib import blake2b
from pathlib import Path
from typing import Any

from shared.cdm import CdmEntity, parse_model, read_entity
from shared.config import PARTITIONS_QUEUE, RUNS_CONTAINER, SPLITS_QUEUE, ConfigurationError
from shared.definitions import (
    Connection,
    DefinitionsError,
    Export,
    SourceFormat,
    UnknownExport,
    format_of,
)
from shared.diff import fingerprint, mapping_fingerprint, partition_count, partition_of
from shared.layout import (
    partition_piece_name,
    plan_rejected_name,
    source_files_blob_name,
    splits_blob_name,
)
from shared.mapping import braze_attributes
from shared.messages import ExportJob, PartitionJob, SplitJob
from shared.pieces import kept_line, valid_line
from shared.profiles import (
    RecordReader,
    RecordStart,
    SourceError,
    open_lines,
    record_starts,
    row_order,
)
from shared.reporting import finish_early
from shared.runs import Run, RunConflict, SplitResult, Status, utcnow
from shared.services import Services
from shared.snapshots import Manifest
from shared.storage import BlobLineWriter, BlobNotFound, Storage
from shared.validation import Profile, usable_customer_id, validate_record

log = logging.getLogger(__name__)

PROGRESS_EVERY = 100_000  # rows between progress updates of the run while splitting
MAX_SPLITS = 64  # parallel split jobs per run


def plan_run(job: ExportJob, services: Services) -> None:
    """Plan one run: check the source, then split it (inline, or as parallel split jobs).

    Safe to run again after a crash: ranges and partitions are deterministic, overwritten.
    """
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
    if run.splits > 1:  # split jobs planned; an attempt died while queueing them
        _queue_splits(run, services)
        return
    run.status, run.planning_started_at = Status.PLANNING, utcnow()
    services.runs.update(run)
    try:
        definitions = services.definitions()
        export = definitions.export(run.export_name)
        connection = definitions.connection(export.connection)
        manifest = _compare_with_snapshot(run, export, connection, services)
        if run.teardown:  # empty partitions: everyone in the snapshot leaves
            _finish_split(run, max(run.previous_partitions, 1), [], services)
            return
        run.source_version = _source_version(run, export, connection, services)
        if _same_as_snapshot(run, manifest):
            assert manifest is not None
            run.unchanged_since, run.profiles_unchanged = manifest.run_id, manifest.profiles
            message = (
                f"nothing to send: the source and the export's definition are as they were "
                f"for run {manifest.run_id}, and Braze took everything that run sent; start "
                "with a full refresh to read the source anyway"
            )
            finish_early(run, services, message=message)
            return
        source = _open_source(run, export, services)
        partitions = partition_count(source.size, source.compressed)
        ranges = _split_ranges(run, source, services)
    except _PLANNING_ERRORS as error:
        finish_early(run, services, message=_clip(f"planning failed: {error}"), failed=True)
        return
    if len(ranges) > 1:
        _plan_splits(run, ranges, partitions, source.header, services)
        return
    run.splits = 1
    services.runs.update(run)
    whole = SplitJob(run.run_id, run.export_name, 0, 1, partitions, 0, -1, 1)
    _split_and_record(run, export, whole, source.rows, services)


_PLANNING_ERRORS = (SourceError, BlobNotFound, DefinitionsError, ConfigurationError, UnknownExport)


def split_source(job: SplitJob, services: Services) -> None:
    """One split job: validate and partition one byte range (or one CDM file) of the source."""
    run = services.runs.get(job.run_id)
    if run is None or run.is_final:
        log.warning("run %s is missing or finished; dropping split %d", job.run_id, job.split)
        return
    if services.runs.split_done(run.run_id, job.split):
        _maybe_finish_split(run.run_id, services, repeated=True)
        return
    try:
        export = services.definitions().export(run.export_name)
        rows = _range_rows(run, export, job, services)
    except _PLANNING_ERRORS as error:
        _fail_split(run, job, SplitResult(job.split), error, services)
        return
    _split_and_record(run, export, job, rows, services)


def _split_and_record(
    run: Run, export: Export, job: SplitJob, rows: Iterator[_Row], services: Services
) -> None:
    result = SplitResult(job.split)
    try:
        _split(run, export, job, rows, result, services)
    except _PLANNING_ERRORS as error:
        _fail_split(run, job, result, error, services)
        return
    services.runs.record_split(run.run_id, result)
    _maybe_finish_split(run.run_id, services, repeated=False)


def _fail_split(
    run: Run, job: SplitJob, result: SplitResult, error: Exception, services: Services
) -> None:
    """A whole-file problem in one range fails the run; what was read so far is counted."""
    services.runs.record_split(run.run_id, result)
    _sum_splits(run, services.runs.split_results(run.run_id))
    where = f" (split {job.split + 1} of {job.splits})" if job.splits > 1 else ""
    finish_early(run, services, message=_clip(f"planning failed{where}: {error}"), failed=True)


def _maybe_finish_split(run_id: str, services: Services, *, repeated: bool) -> None:
    """When every split is recorded, sum them into the run and queue the partition diffs.

    Several splits may finish at once: the ETag-guarded update lets one of them go on. A
    repeated split job (its worker died after recording) queues the partitions again, in case
    the one that went on died before queueing them; a partition diffed twice is recorded once.
    """
    run = services.runs.get(run_id)
    if run is None or run.status != Status.PLANNING:
        return
    if run.partitions:
        if repeated:
            _queue_partitions(run, services)
        return
    results = services.runs.split_results(run_id)
    if len(results) < run.splits:
        return
    _finish_split(run, results[0].partitions, results, services)


def _finish_split(
    run: Run, partitions: int, results: list[SplitResult], services: Services
) -> None:
    _sum_splits(run, results)
    run.partitions, run.split_finished_at = partitions, utcnow()
    try:
        services.runs.update(run, if_unchanged=True)
    except RunConflict:
        return  # another split finished at the same time and goes on
    _queue_partitions(run, services)
    log.info("run %s: %d rows read, %d partitions queued", run.run_id, run.rows_read, partitions)


def _sum_splits(run: Run, results: list[SplitResult]) -> None:
    run.rows_read = sum(r.rows_read for r in results)
    run.rows_rejected = sum(r.rows_rejected for r in results)
    run.rows_unidentified = sum(r.unidentified for r in results)
    reasons: Counter[str] = Counter()
    for result in results:
        reasons.update(result.reasons)
    run.rejections = run.validation_rejections = dict(reasons)


def _queue_partitions(run: Run, services: Services) -> None:
    """One diff job per partition; a repeated one finds its partition done and does nothing."""
    jobs = (
        PartitionJob(run.run_id, run.export_name, partition, run.partitions)
        for partition in range(run.partitions)
    )
    services.storage.send_messages(PARTITIONS_QUEUE, (job.to_json() for job in jobs))


def _plan_splits(
    run: Run,
    ranges: list[tuple[int, int, int]],
    partitions: int,
    header: list[str] | None,
    services: Services,
) -> None:
    """Record the ranges (and the CSV header the later ranges lack), then queue a split job
    per range."""
    jobs = [
        SplitJob(run.run_id, run.export_name, index, len(ranges), partitions, *bounds)
        for index, bounds in enumerate(ranges)
    ]
    plan = {"header": header, "jobs": [job.to_json() for job in jobs]}
    services.storage.write_bytes(
        RUNS_CONTAINER, splits_blob_name(run.run_id), json.dumps(plan), "application/json"
    )
    run.splits = len(jobs)
    services.runs.update(run)
    _queue_splits(run, services)
    log.info("run %s: source cut into %d ranges, split in parallel", run.run_id, len(jobs))


def _queue_splits(run: Run, services: Services) -> None:
    plan = json.loads(services.storage.read_bytes(RUNS_CONTAINER, splits_blob_name(run.run_id)))
    services.storage.send_messages(SPLITS_QUEUE, plan["jobs"])


def _compare_with_snapshot(
    run: Run, export: Export, connection: Connection, services: Services
) -> Manifest | None:
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
    return manifest


def _source_version(run: Run, export: Export, connection: Connection, services: Services) -> str:
    """What this run would read and how: each source file's ETag (it changes with every write;
    for a CDM folder, the model and every partition file), the export's whole definition, the
    endpoint and this app's code. Any difference makes a run read the source."""
    storage = services.storage
    container, _, path = run.source.partition("/")
    files = [run.source]
    if _source_format(run, export) == "cdm":
        model = parse_model(storage.read_bytes(container, path), source=run.source)
        partitions = model.entity(export.source.entity).partitions
        files += [f"{p.container}/{p.blob}" for p in partitions]
    basis = {
        "app": _code_digest(),
        "files": [[name, storage.etag(*name.split("/", 1))] for name in files],
        "export": export.model_dump(mode="json"),
        "endpoint": connection.rest_endpoint,
    }
    return fingerprint(basis)


@functools.cache
def _code_digest() -> str:
    """A digest of this package's code: a deployment that changes how rows are read, validated,
    mapped or compared gives every source a new version (a version number may not be bumped)."""
    digest = blake2b(digest_size=8)
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.relative_to(Path(__file__).parent).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _same_as_snapshot(run: Run, manifest: Manifest | None) -> bool:
    """Nothing to send: the snapshot was made from this very source version and Braze took
    all of it (a snapshot with rejections has no version, so its rows are sent again). A dry
    run and a full refresh always read the source."""
    return (
        manifest is not None
        and bool(manifest.source_version)
        and manifest.source_version == run.source_version
        and not run.full_refresh_reason
        and not run.dry_run
    )


# Not frozen: one is made per row, and a frozen dataclass costs four times as much to create.
@dataclass(slots=True)
class _Row:
    """A source record with its position: `order` sorts rows across CDM partitions."""

    order: int
    line: int
    file: str | None
    values: dict[str, Any]
    problem: str | None


@dataclass
class _Source:
    """The run's source: its format, size (to choose the partition count and the ranges),
    CSV header, CDM file count, and its rows, streamed."""

    fmt: SourceFormat
    size: int
    compressed: bool
    header: list[str] | None
    files: int
    rows: Iterator[_Row]


def _source_format(run: Run, export: Export) -> SourceFormat:
    container, _, path = run.source.partition("/")
    same_file = container == export.source.container and path == export.source.path
    return export.source.resolved_format() if same_file else format_of(path)


def _open_source(run: Run, export: Export, services: Services) -> _Source:
    """Open the run's source and check the mapped columns exist before anything is written."""
    storage = services.storage
    fmt = _source_format(run, export)
    container, _, path = run.source.partition("/")
    if fmt == "cdm":
        entity, files = _cdm_entity(run, export, services, record_files=True)
        rows = _cdm_rows(entity, files, range(len(files)), services)
        size = sum(storage.size(*name.split("/", 1)) for name in files)
        compressed = any(name.endswith(".gz") for name in files)
        return _Source(fmt, size, compressed, None, len(files), rows)
    reader = RecordReader(open_lines(storage.read_chunks(container, path)), fmt)
    reader.require_columns(_needed_columns(export))
    size, compressed = storage.size(container, path), path.endswith(".gz")
    return _Source(fmt, size, compressed, reader.columns, 1, _file_rows(reader))


def _needed_columns(export: Export) -> list[str]:
    mapping = export.mapping
    return [mapping.customer_id, mapping.email, *(a.column for a in mapping.attributes)]


def _file_rows(reader: RecordReader) -> Iterator[_Row]:
    for record in reader:
        yield _Row(record.line, record.line, None, record.values, record.problem)


def _cdm_entity(
    run: Run, export: Export, services: Services, *, record_files: bool
) -> tuple[CdmEntity, list[str]]:
    """The model's entity, checked; the plan records its partition files, which row positions
    index into (a split job reads them back)."""
    storage = services.storage
    container, _, path = run.source.partition("/")
    model = parse_model(storage.read_bytes(container, path), source=run.source)
    entity = model.entity(export.source.entity)
    entity.require_columns(_needed_columns(export))
    files = [f"{p.container}/{p.blob}" for p in entity.partitions]
    if len({p.blob for p in entity.partitions}) < len(entity.partitions):
        raise SourceError(
            f"{run.source}: two partitions have the same blob path in different containers; "
            "this exporter needs partition paths to be unique"
        )
    recorded = source_files_blob_name(run.run_id)
    if record_files:
        storage.write_bytes(RUNS_CONTAINER, recorded, json.dumps(files), "application/json")
    elif files != json.loads(storage.read_bytes(RUNS_CONTAINER, recorded)):
        raise SourceError(f"{run.source} changed while the run was being planned")
    return entity, files


def _cdm_rows(
    entity: CdmEntity, files: list[str], parts: range, services: Services
) -> Iterator[_Row]:
    """The records of the entity's partitions `parts`, positioned across the whole folder."""
    chosen = replace(entity, partitions=tuple(entity.partitions[p] for p in parts))
    index = {p.blob: i for i, p in enumerate(entity.partitions)}
    for record in read_entity(chosen, services.storage.read_chunks):
        part = index[record.partition]
        order = row_order(part, record.line)
        yield _Row(order, record.line, files[part], record.values, record.problem)


def _split_ranges(run: Run, source: _Source, services: Services) -> list[tuple[int, int, int]]:
    """How to cut the source for parallel split jobs: `(start, end, first line)` per range.

    A CDM folder splits by partition file; a plain CSV or JSON Lines file larger than
    `EXPORT_SPLIT_MIB` into byte ranges that start at record boundaries (one pass that counts
    quotes, see `record_starts`); a gzip file is read by one reader. One range: split inline.
    """
    if source.fmt == "cdm":
        return [(0, -1, 1)] * source.files
    split_bytes = services.settings.split_bytes
    if source.compressed or source.size <= split_bytes:
        return [(0, -1, 1)]
    count = min(MAX_SPLITS, math.ceil(source.size / split_bytes))
    targets = [source.size * k // count for k in range(1, count)]
    container, _, path = run.source.partition("/")
    blocks = services.storage.read_chunks(container, path)
    starts = [RecordStart(0, 1), *record_starts(blocks, targets, quoted=source.fmt == "csv")]
    ends = [start.offset for start in starts[1:]] + [source.size]
    return [(start.offset, end, start.line) for start, end in zip(starts, ends, strict=True)]


def _range_rows(run: Run, export: Export, job: SplitJob, services: Services) -> Iterator[_Row]:
    """The records of one split job's range: its CDM file, or its bytes of the file."""
    fmt = _source_format(run, export)
    if fmt == "cdm":
        entity, files = _cdm_entity(run, export, services, record_files=False)
        return _cdm_rows(entity, files, range(job.split, job.split + 1), services)
    container, _, path = run.source.partition("/")
    chunks = services.storage.read_chunks(container, path, job.start, job.end - job.start)
    lines = open_lines(chunks, first_line=job.first_line)
    if job.split == 0:  # the range that holds the header
        return _file_rows(RecordReader(lines, fmt))
    plan = json.loads(services.storage.read_bytes(RUNS_CONTAINER, splits_blob_name(run.run_id)))
    columns = plan["header"] if fmt == "csv" else None
    return _file_rows(RecordReader(lines, fmt, header=columns, first_line=job.first_line))


def _split(
    run: Run,
    export: Export,
    job: SplitJob,
    rows: Iterator[_Row],
    tally: SplitResult,
    services: Services,
) -> None:
    """Validate every row of the range and file it under its customer id's partition.

    Rows go to local temporary files first (bounded memory whatever the partition count), then
    each file is uploaded as this split's piece of the partition (shared/pieces.py); a row
    rejected for another field than its id keeps its place there, so the diff knows the profile
    is still in the segment.
    """
    count = tally.partitions = job.partitions
    mapping = export.mapping
    storage = services.storage
    tally.rejected_blob = plan_rejected_name(run.run_id, job.split)
    rejected = storage.line_writer(RUNS_CONTAINER, tally.rejected_blob)
    with tempfile.TemporaryDirectory(prefix="plan-") as directory:
        paths = [Path(directory, f"{p:04d}.jsonl") for p in range(count)]
        files = [path.open("w", encoding="utf-8") for path in paths]
        try:
            for row in rows:
                tally.rows_read += 1
                if tally.rows_read % PROGRESS_EVERY == 0:
                    # Shows progress, and tells the stalled-run sweep that planning is alive.
                    services.runs.save_split_progress(run.run_id, job.split, tally.rows_read)
                if row.problem:
                    tally.unidentified += 1
                    _reject(rejected, tally, row, None, [("malformed_row", f"row {row.problem}")])
                    continue
                result = validate_record(row.values, mapping)
                if isinstance(result, Profile):
                    customer_id: str | None = result.customer_id
                    line = valid_line(
                        row.order, result.customer_id, braze_attributes(result, export)
                    )
                else:
                    problems = [(p.code, p.message) for p in result]
                    raw_id = row.values.get(mapping.customer_id)
                    _reject(rejected, tally, row, raw_id, problems)
                    customer_id = usable_customer_id(row.values, mapping)
                    line = kept_line(row.order, customer_id) if customer_id is not None else ""
                if customer_id is not None:
                    files[partition_of(customer_id, count)].write(line)
        finally:
            for file in files:
                file.close()
            rejected.close()  # a failed run still reports the rows rejected before the failure
        storage.in_parallel(
            partial(_upload_piece, storage, path, partition_piece_name(run.run_id, p, job.split))
            for p, path in enumerate(paths)
        )


def _upload_piece(storage: Storage, path: Path, name: str) -> None:
    with path.open("rb") as data:
        storage.write_bytes(RUNS_CONTAINER, name, data, "application/x-ndjson")


def fail_split(job: SplitJob, error: BaseException, services: Services) -> None:
    """A split job is being poisoned: the run fails, and nothing was sent."""
    run = services.runs.get(job.run_id)
    if run is None or run.is_final:
        return
    message = (
        f"planning failed: split {job.split + 1} of {job.splits} of the source could not be "
        f"read after every retry ({type(error).__name__}: {error}); nothing was sent"
    )
    _sum_splits(run, services.runs.split_results(run.run_id))
    finish_early(run, services, message=_clip(message), failed=True)


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
    tally: SplitResult,
    row: _Row,
    customer_id: object,
    problems: list[tuple[str, str]],
) -> None:
    tally.rows_rejected += 1
    for code, _ in problems:
        tally.reasons[code] = tally.reasons.get(code, 0) + 1
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
