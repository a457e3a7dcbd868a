"""Planning a run, step two: read one range of the source and file its rows by partition."""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from shared.adapters.services import Services
from shared.adapters.settings import ConfigurationError
from shared.adapters.storage import BlobLineWriter, BlobNotFound
from shared.core.definitions import DefinitionsError, Export, UnknownExport
from shared.core.messages import PartitionJob, SplitJob
from shared.core.partitioning import partition_of
from shared.core.raw_records import RawPathUnsafe
from shared.core.resource_names import JOBS_QUEUE, RUNS_CONTAINER
from shared.core.runs import Run, RunConflict, SplitResult, Status, utcnow
from shared.core.source_files import SourceError
from shared.core.validation import usable_customer_id, validate_record
from shared.pipeline.finalize import finish_early
from shared.pipeline.raw_source import raw_rows, reads_raw, record_index
from shared.pipeline.release import delivers_while_diffing
from shared.pipeline.run_files import (
    PACKED_MATCHED_MARK,
    mapped_values,
    packer,
    plan_rejected_name,
    rejection_line,
    split_pieces_name,
)
from shared.pipeline.run_source import Row, piece_lines, range_rows

log = logging.getLogger(__name__)

PROGRESS_EVERY = 100_000  # rows between progress updates of the run while splitting

PLANNING_ERRORS = (SourceError, BlobNotFound, DefinitionsError, ConfigurationError, UnknownExport)


def split_source(job: SplitJob, services: Services) -> None:
    """One split job: read one byte range of the source file (or of a CDM partition file) and
    file its rows by partition."""
    run = services.runs.get(job.run_id)
    if run is None or run.is_final:
        log.warning("run %s is missing or finished; dropping split %d", job.run_id, job.split)
        return
    if services.runs.split_done(run.run_id, job.split):
        _maybe_finish_split(run.run_id, services, repeated=True)
        return
    try:
        export = services.definitions().export(run.export_name)
        if reads_raw(run, export, job) and _split_raw(run, export, job, services):
            return
        rows = range_rows(run, export, job, services)
    except PLANNING_ERRORS as error:
        _fail_split(run, job, SplitResult(job.split), error, services)
        return
    split_and_record(run, export, job, rows, services)


def split_and_record(
    run: Run, export: Export, job: SplitJob, rows: Iterator[Row], services: Services
) -> None:
    result = SplitResult(job.split)
    try:
        _split(run, export, job, lambda matched, tally: rows, result, services)
    except PLANNING_ERRORS as error:
        _fail_split(run, job, result, error, services)
        return
    services.runs.record_split(run.run_id, result)
    _maybe_finish_split(run.run_id, services, repeated=False)


def _split_raw(run: Run, export: Export, job: SplitJob, services: Services) -> bool:
    """Split the range as raw records (`raw_source`); False when it must be read as rows."""
    result = SplitResult(job.split)
    index = record_index(run, export, job, services)

    def read(matched: list[IO[bytes]], tally: SplitResult) -> Iterator[Row]:
        saved = [0]

        def progress() -> None:
            if tally.rows_read - saved[0] >= PROGRESS_EVERY:
                saved[0] = tally.rows_read
                services.runs.save_split_progress(run.run_id, job.split, tally.rows_read)

        return raw_rows(run, export, job, index, matched, tally, services, progress)

    try:
        _split(run, export, job, read, result, services)
    except RawPathUnsafe as reason:
        log.info("run %s split %d: read as rows (%s)", run.run_id, job.split, reason)
        return False
    except PLANNING_ERRORS as error:
        _fail_split(run, job, result, error, services)
        return True
    services.runs.record_split(run.run_id, result)
    _maybe_finish_split(run.run_id, services, repeated=False)
    return True


def _fail_split(
    run: Run, job: SplitJob, result: SplitResult, error: Exception, services: Services
) -> None:
    """A whole-file problem in one range fails the run; what was read so far is counted."""
    services.runs.record_split(run.run_id, result)
    _sum_splits(run, services.runs.split_results(run.run_id))
    where = f" (split {job.split + 1} of {job.splits})" if job.splits > 1 else ""
    finish_early(run, services, message=f"planning failed{where}: {error}", failed=True)


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
            queue_partitions(run, services)
        return
    if services.runs.splits_recorded(run_id) < run.splits:
        return
    results = services.runs.split_results(run_id)
    finish_split(run, results[0].partitions, results, services)


def finish_split(run: Run, partitions: int, results: list[SplitResult], services: Services) -> None:
    _sum_splits(run, results)
    run.partitions, run.split_finished_at = partitions, utcnow()
    run.delivers_while_diffing = _delivers_while_diffing(run, _largest(results), services)
    run.partitions_per_job = partitions_per_job(run, results)
    try:
        services.runs.update(run, if_unchanged=True)
    except RunConflict:
        return  # another split finished at the same time and goes on
    queue_partitions(run, services)
    log.info("run %s: %d rows read, %d partitions queued", run.run_id, run.rows_read, partitions)


def _largest(results: list[SplitResult]) -> int | None:
    """The most rows filed under one partition, None if a split did not count them."""
    if not results or any(len(r.partition_rows) != r.partitions for r in results):
        return None
    return max(map(sum, zip(*(r.partition_rows for r in results), strict=True)))


def _delivers_while_diffing(run: Run, largest: int | None, services: Services) -> bool:
    """Fixed once, with the partition count: the diffs of a run that may go to Braze before
    the release queue their own delivery (`release.delivers_while_diffing`)."""
    try:
        definitions = services.definitions()
        export = definitions.export(run.export_name)
        connection = definitions.connection(export.connection)
    except PLANNING_ERRORS:
        return False  # the release fails the run, saying why
    return delivers_while_diffing(run, export, connection, largest, services)


def _sum_splits(run: Run, results: list[SplitResult]) -> None:
    run.rows_read = sum(r.rows_read for r in results)
    run.rows_rejected = sum(r.rows_rejected for r in results)
    run.rows_unidentified = sum(r.unidentified for r in results)
    reasons: Counter[str] = Counter()
    for result in results:
        reasons.update(result.reasons)
    run.rejections = run.validation_rejections = dict(reasons)


# A delta's diff of a partition whose unchanged rows the splits filed by the snapshot's index
# costs a tenth of a first export's or less, so what each job costs whatever its work weighs: the
# message, the run and the pieces' whereabouts read, a range read per split, the release's count
# (about ten storage requests, each about 3.5 ms of CPU between the client and Azurite here,
# 2026-12-07). Such a run's jobs diff this many partitions in a row, reading each split's pieces
# of all of them at once; at 1M, eight jobs for 32 partitions.
DELTA_PARTITIONS_PER_JOB = 4
# The share of a run's rows its splits must have filed by the index for that: a delta of a few
# percent. One where most rows changed diffs as a first export does, a job per partition.
MATCHED_SHARE_FOR_GROUPS = 0.9


def partitions_per_job(run: Run, results: list[SplitResult]) -> int:
    """How many partitions each diff job takes: `DELTA_PARTITIONS_PER_JOB` when the splits filed
    most rows by the snapshot's index (most of the segment's rows, and most of the snapshot's
    profiles: a segment that shrank writes a removal for each profile that left) and nothing is
    sent before the release; else one (a first export sends each partition as soon as it is
    diffed; a teardown writes a removal for every profile)."""
    rows = sum(r.rows_read for r in results)
    matched = sum(r.rows_matched for r in results)
    if run.delivers_while_diffing or run.teardown or not rows:
        return 1
    most = MATCHED_SHARE_FOR_GROUPS * max(rows, run.previous_profiles)
    return DELTA_PARTITIONS_PER_JOB if matched >= most else 1


def queue_partitions(run: Run, services: Services) -> None:
    """The diff jobs, of `run.partitions_per_job` partitions each; a repeated one skips the
    partitions already recorded."""
    per_job = max(1, run.partitions_per_job)
    jobs = (
        PartitionJob(
            run.run_id, run.export_name, first, run.partitions, min(per_job, run.partitions - first)
        )
        for first in range(0, run.partitions, per_job)
    )
    services.storage.send_messages(JOBS_QUEUE, (job.to_json() for job in jobs))


def _split(
    run: Run,
    export: Export,
    job: SplitJob,
    read: Callable[[list[IO[bytes]], SplitResult], Iterator[Row]],
    tally: SplitResult,
    services: Services,
) -> None:
    """File every row of the range whose customer id is usable under that id's partition.

    Rows go to local temporary files first (bounded memory whatever the partition count), then
    into one blob of the split's pieces, one per partition (`run_files.split_pieces_name`).
    `read` gives the rows, and may file rows itself as matched records (those the snapshot
    holds byte for byte, `raw_source`); nothing is uploaded when it raises. Validation waits
    for the diff, which skips the rows the snapshot shows unchanged; a row whose id itself is
    unusable cannot be filed by id, so it is validated and rejected here with every reason.
    """
    count = tally.partitions = job.partitions
    filed = tally.partition_rows = [0] * count
    mapping = export.mapping
    mapped = frozenset(mapping.columns())
    # Seeded by the code that planned the run: the diff trusts digests only on the same code.
    line_of = piece_lines(run, export).line
    storage = services.storage
    attempt = uuid.uuid4().hex[:12]  # names this attempt's blobs: its record names them
    rejected_name = plan_rejected_name(run.run_id, job.split, attempt)
    rejected = storage.line_writer(RUNS_CONTAINER, rejected_name)
    with tempfile.TemporaryDirectory(prefix="plan-") as directory:
        paths = [Path(directory, f"{p:04d}.tsv") for p in range(count)]
        matched_paths = [Path(directory, f"{p:04d}.matched") for p in range(count)]
        files = [path.open("wb") for path in paths]
        matched = [path.open("wb") for path in matched_paths]
        abandoned = False
        try:
            for row in read(matched, tally):
                tally.rows_read += 1
                if tally.rows_read % PROGRESS_EVERY == 0:
                    # Shows progress, and tells the stalled-run sweep that planning is alive.
                    services.runs.save_split_progress(run.run_id, job.split, tally.rows_read)
                if row.problem:  # unreadable (or too long to read): it could be anyone's
                    tally.unidentified += 1
                    problem = [(row.problem.code, f"row {row.problem.message}")]
                    _reject(rejected, tally, row, row.values, None, problem)
                    continue
                values = mapped_values(row.values, mapped)
                customer_id = usable_customer_id(values, mapping)
                if customer_id is None:
                    problems = validate_record(values, mapping)
                    assert isinstance(problems, list)  # an unusable id is always a problem
                    reasons = [(p.code, p.message) for p in problems]
                    _reject(rejected, tally, row, values, values.get(mapping.customer_id), reasons)
                    continue
                partition = partition_of(customer_id, count)
                files[partition].write(line_of(row.order, customer_id, values, row.raw))
                filed[partition] += 1
        except RawPathUnsafe:
            abandoned = True  # read again as rows, which reports the range's rejections
            raise
        finally:
            for file in files + matched:
                file.close()
            if rejected.lines and not abandoned:  # a failed run still reports the rows so far
                rejected.close()
                tally.rejected_blob = rejected_name
        joined = Path(directory, "pieces.bin")
        tally.piece_ends = _join_pieces(list(zip(paths, matched_paths, strict=True)), joined)
        tally.pieces_blob = split_pieces_name(run.run_id, job.split, attempt)
        storage.upload_file(RUNS_CONTAINER, tally.pieces_blob, joined, "application/octet-stream")


def _join_pieces(pieces: list[tuple[Path, Path]], joined: Path) -> list[int]:
    """The split's pieces in partition order, in one file (one upload, where a blob per piece
    cost a request each: 32 a split); where each ends. A piece is its text rows as one
    compressed frame (`run_files.packer`: every byte is uploaded and read again by a diff,
    which costs more than compressing it), then its matched records, if any (a delta's
    pieces), as another behind `PACKED_MATCHED_MARK`. Each file is deleted once copied, so the
    disk holds the split's rows about once."""
    ends: list[int] = []
    with joined.open("wb") as out:
        for text, matched in pieces:
            if text.stat().st_size:
                _pack(text, out)
            if matched.stat().st_size:
                out.write(PACKED_MATCHED_MARK)
                _pack(matched, out)
            text.unlink()
            matched.unlink()
            ends.append(out.tell())
    return ends


def _pack(path: Path, out: IO[bytes]) -> None:
    """The file's bytes as one compressed frame (`run_files.packer`), read a block at a time."""
    frame = packer()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(PACK_BYTES), b""):
            out.write(frame.compress(block))
    out.write(frame.flush())


PACK_BYTES = 1 << 20


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
    finish_early(run, services, message=message, failed=True)


def _reject(
    writer: BlobLineWriter,
    tally: SplitResult,
    row: Row,
    values: dict[str, Any],
    customer_id: object,
    problems: list[tuple[str, str]],
) -> None:
    tally.rows_rejected += 1
    for code, _ in problems:
        tally.reasons[code] = tally.reasons.get(code, 0) + 1
    position = {"order": row.order, "line": row.line, **({"file": row.file} if row.file else {})}
    writer.write(rejection_line(position, customer_id, problems, values))
