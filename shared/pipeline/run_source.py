"""The run's source, opened and checked, cut into ranges for parallel split jobs, and read as
positioned rows.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from hashlib import blake2b
from pathlib import Path
from typing import Any

from shared.adapters.services import Services
from shared.adapters.storage import Storage, read_ahead
from shared.core.cdm import CdmEntity, parse_model, read_entity, read_partition_range
from shared.core.definitions import Export, SourceFormat, format_of
from shared.core.fingerprints import row_digest_seed
from shared.core.messages import SplitJob
from shared.core.partitioning import partition_count
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import Run
from shared.core.source_files import (
    GZIP_MAGIC,
    RecordProblem,
    RecordReader,
    RecordStart,
    SourceError,
    open_lines,
    record_starts,
    row_order,
)
from shared.pipeline.run_files import PieceLines, source_files_blob_name, splits_blob_name

MAX_SPLITS = 64  # parallel split jobs per run


# Not frozen: one is made per row, and a frozen dataclass costs four times as much to create.
@dataclass(slots=True)
class Row:
    """A source record with its position: `order` sorts rows across CDM partitions."""

    order: int
    line: int
    file: str | None
    values: dict[str, Any]
    problem: RecordProblem | None
    raw: str = ""  # the digest of the record's bytes (`raw_records`), when known


@dataclass
class _Source:
    """The run's source: its format, size (to choose the partition count and the ranges),
    CSV header, and its rows, streamed."""

    fmt: SourceFormat
    size: int
    compressed: bool
    header: list[str] | None
    rows: Iterator[Row]


def source_format(run: Run, export: Export) -> SourceFormat:
    container, _, path = run.source.partition("/")
    same_file = container == export.source.container and path == export.source.path
    return export.source.resolved_format() if same_file else format_of(path)


def piece_lines(run: Run, export: Export) -> PieceLines:
    """How the run's rows are written into pieces: by the split, and by a diff that reads a row
    again, so both give it one digest."""
    seed = row_digest_seed(run.code_version, run.mapping_fingerprint)
    return PieceLines(seed, sort_keys=source_format(run, export) == "jsonl")


def open_source(
    run: Run,
    export: Export,
    services: Services,
    files: list[DataFile],
    entity: CdmEntity | None,
    head: bytes,
) -> _Source:
    """Open the run's source (its `data_files`, and a CDM folder's entity, as the plan read
    them) and check the mapped columns exist before anything is written.

    `head`: the first bytes of a plain file, when the plan has read them already
    (`record_start_scan`); the header is then taken from them, and the rows are downloaded
    only if read (a file cut into ranges has its rows read by the split jobs); empty when not."""
    storage = services.storage
    fmt = source_format(run, export)
    container, _, path = run.source.partition("/")
    size = sum(file.size for file in files)
    compressed = any(file.compressed for file in files)
    keep = export.mapping.columns()
    if entity is not None:  # its columns are checked already
        names = [file.name for file in files]
        rows = _cdm_rows(entity, names, range(len(names)), services, keep)
        return _Source(fmt, size, compressed, None, rows)
    header = _header_record(head, fmt) if head else None
    if header is None:
        reader = RecordReader(open_lines(storage.read_chunks(container, path)), fmt, keep=keep)
        rows = _file_rows(reader)
    else:  # read from the bytes at hand: a download of the file's first piece (up to 32 MiB) saved
        reader = RecordReader(open_lines([header]), fmt)
        rows = _rows_when_read(storage, container, path, fmt, keep)
    reader.require_columns(keep)
    return _Source(fmt, size, compressed, reader.columns, rows)


def _header_record(head: bytes, fmt: SourceFormat) -> bytes | None:
    """The first record of a CSV file's first bytes, its header (nothing for JSON Lines, which
    has none); None when it does not end within them."""
    if fmt != "csv":
        return b""
    starts = record_starts([head], [0], quoted=True)
    return head[: starts[0].offset] if starts else None


def _rows_when_read(
    storage: Storage, container: str, path: str, fmt: SourceFormat, keep: list[str]
) -> Iterator[Row]:
    lines = open_lines(storage.read_chunks(container, path))
    yield from _file_rows(RecordReader(lines, fmt, keep=keep))


def _file_rows(reader: RecordReader) -> Iterator[Row]:
    for record in reader:
        yield Row(record.line, record.line, None, record.values, record.problem)


def cdm_entity(
    run: Run, export: Export, services: Services, *, record_files: bool
) -> tuple[CdmEntity, list[str]]:
    """The model's entity, checked; the plan records its partition files, which row positions
    index into (a split job reads them back)."""
    storage = services.storage
    container, _, path = run.source.partition("/")
    model = parse_model(storage.read_bytes(container, path), source=run.source)
    entity = model.entity(export.source.entity)
    entity.require_columns(export.mapping.columns())
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
    entity: CdmEntity, files: list[str], parts: range, services: Services, keep: list[str]
) -> Iterator[Row]:
    """The records of the entity's partitions `parts`, positioned across the whole folder."""
    chosen = replace(entity, partitions=tuple(entity.partitions[p] for p in parts))
    index = {p.blob: i for i, p in enumerate(entity.partitions)}
    for record in read_entity(chosen, services.storage.read_chunks, keep):
        part = index[record.partition]
        order = row_order(part, record.line)
        yield Row(order, record.line, files[part], record.values, record.problem)


def _cdm_range_rows(
    entity: CdmEntity, files: list[str], job: SplitJob, services: Services, keep: list[str]
) -> Iterator[Row]:
    """The records of a split job's range of a CDM partition file, positioned across the
    whole folder."""
    partition, part = entity.partitions[job.file_index], job.file_index
    chunks = read_span(services.storage, partition.container, partition.blob, job.start, job.length)
    records = read_partition_range(
        entity, partition, chunks, first_line=job.first_line, at_start=job.start == 0, keep=keep
    )
    try:
        for record in records:
            order = row_order(part, record.line)
            yield Row(order, record.line, files[part], record.values, record.problem)
    except SourceError as error:
        raise SourceError(f"{partition.blob}: {error}") from None


def read_span(
    storage: Storage, container: str, path: str, start: int, length: int | None
) -> Iterator[bytes]:
    """A file's bytes from `start` on, `length` of them or to its end (None), the next piece
    downloading while one is read; a whole file is read without a range (an empty file refuses
    any)."""
    span = () if start == 0 and length is None else (start, length)
    return read_ahead(storage.read_chunks(container, path, *span))


@dataclass(frozen=True, slots=True)
class DataFile:
    """A file of the run's source that holds rows (the file itself, or one of a CDM folder's
    partition files, in order), and where to cut it for parallel split jobs (`targets`, byte
    offsets: the first record boundary past each starts a range, see `record_starts`)."""

    name: str  # container/blob
    size: int
    quoted: bool  # its quotes may hold line breaks
    targets: list[int]
    compressed: bool  # gzip, told by its first bytes whatever its name: never cut


def data_files(
    run: Run, export: Export, services: Services
) -> tuple[list[DataFile], CdmEntity | None]:
    """The source's data files, each cut into ranges of about `EXPORT_SPLIT_MIB`, or of
    `INDEXED_RANGE_FACTOR` times that when the previous snapshot's index applies
    (`_range_counts`); a gzip file, told by its first bytes (read with its size, in one
    request), is not cut (one reader). For a CDM folder also its entity,
    checked, whose partition files the plan records (`cdm_entity`): the ranges, the rows the
    plan reads and those the split jobs read are all of that one reading of the model."""
    storage = services.storage
    fmt = source_format(run, export)
    entity = None
    if fmt == "cdm":
        entity, names = cdm_entity(run, export, services, record_files=True)
        files = [(name, p.csv.quoting) for name, p in zip(names, entity.partitions, strict=True)]
    else:
        files = [(run.source, fmt == "csv")]
    heads = storage.in_parallel(
        functools.partial(storage.size_and_start, *name.split("/", 1), len(GZIP_MAGIC))
        for name, _ in files
    )
    sizes = [size for size, _ in heads]
    gzip = [start == GZIP_MAGIC for _, start in heads]
    indexed = index_applies(run, partition_count(sum(sizes), any(gzip)))
    cuttable = [0 if packed else size for size, packed in zip(sizes, gzip, strict=True)]
    counts = _range_counts(cuttable, services.settings.split_bytes, indexed)
    cut = [
        DataFile(name, size, quoted, [size * k // count for k in range(1, count)], packed)
        for (name, quoted), size, count, packed in zip(files, sizes, counts, gzip, strict=True)
    ]
    return cut, entity


def _range_counts(sizes: list[int], split_bytes: int, indexed: bool) -> list[int]:
    """How many ranges to cut each data file into (a size of 0: one, uncut).

    A file alone (the whole source) is cut once it is over `split_bytes`, and then in two at
    least (a source of one range is split inline, without the index), in `MAX_SPLITS` at most.
    A CDM folder's partition files are split jobs already, so one is cut where it holds one and
    a half ranges or more (ten files of 9 MB make ten jobs, not twenty: each range is a piece
    more for every diff to read), and a large folder in larger ranges, into `MAX_SPLITS` jobs
    more than its files at most (so a large file among many small ones is still cut)."""
    range_bytes = split_bytes * (INDEXED_RANGE_FACTOR if indexed else 1)
    if len(sizes) == 1:
        (size,) = sizes
        if size <= split_bytes:
            return [1]
        return [min(MAX_SPLITS, max(2, math.ceil(size / range_bytes)))]
    limit = len(sizes) + MAX_SPLITS
    while True:
        counts = [max(1, math.floor(size / range_bytes + 0.5)) for size in sizes]
        if sum(counts) <= limit:
            return counts
        range_bytes *= 2


# A split files the rows the snapshot's index holds without parsing them: a delta's row costs
# it about a third of a new row's CPU (2.3-3.0 against 6.6-7.5 µs at 1M). Its ranges are as
# much larger, so a job does about the work of a first export's, and each diff reads as many
# fewer pieces (a storage request costs Azurite and the client 4-5 ms of CPU whatever its size).
INDEXED_RANGE_FACTOR = 3

# A split job holds the whole index (8 bytes a profile, sorted in place): past this many
# profiles its rows are parsed as before, so a split's memory stays bounded.
INDEX_MAX_PROFILES = 8_000_000


def index_applies(run: Run, partitions: int) -> bool:
    """Whether the run's splits may file rows by the previous snapshot's index (`raw_source`):
    same code (running the run, and planned the snapshot's run: the code seeds the raw digests
    the snapshot's rows gave its index, so after a deployment the index holds none of the rows),
    same partitioning, no full refresh (which validates and sends every row), and a snapshot
    small enough to hold."""
    return bool(
        run.previous_snapshot
        and run.previous_partitions == partitions
        and not run.full_refresh_reason
        and run.code_version == code_digest()
        and run.previous_code_version == run.code_version
        and run.previous_profiles <= INDEX_MAX_PROFILES
    )


HEAD_BYTES = 1 << 20  # the first bytes of a file the plan scans, kept for its header


def record_start_scan(
    file: DataFile, found: list[RecordStart], head: bytearray | None
) -> Callable[[Iterable[bytes]], None]:
    """A pass over a data file's bytes that finds the record boundaries at its targets: one
    pass that counts quotes (CSV) and newlines, with no parsing; given to the read that digests
    the file, so the file is not read again for it. Its first `HEAD_BYTES` go to `head`
    (`open_source` reads a plain file's header from them). A gzip file has no targets
    (`data_files` tells it by its first bytes), so it is never scanned."""

    def kept(blocks: Iterable[bytes]) -> Iterator[bytes]:
        for block in blocks:
            if head is not None and len(head) < HEAD_BYTES:
                head.extend(block[: HEAD_BYTES - len(head)])
            yield block

    def scan(blocks: Iterable[bytes]) -> None:
        found.extend(record_starts(kept(blocks), file.targets, quoted=file.quoted))

    return scan


# A split job's range: (start, end, first line, CDM partition file or -1), as `SplitJob` has it.
SplitRange = tuple[int, int, int, int]


def split_ranges(source: _Source, starts: list[list[RecordStart]]) -> list[SplitRange]:
    """How to cut the source for parallel split jobs, at the record starts found in each data
    file (none: one range; a plain file of one range is split inline). A CDM partition file's
    last range ends at its end (-1); a plain file's, at its size."""
    cdm, ranges = source.fmt == "cdm", []
    for index, found in enumerate(starts):
        bounds = [RecordStart(0, 1), *found]
        ends = [start.offset for start in found] + [-1 if cdm else source.size]
        file_index = index if cdm else -1
        ranges += [(b.offset, end, b.line, file_index) for b, end in zip(bounds, ends, strict=True)]
    return ranges


def range_rows(run: Run, export: Export, job: SplitJob, services: Services) -> Iterator[Row]:
    """The records of one split job's range: its bytes of the file, or of a CDM file."""
    fmt = source_format(run, export)
    keep = export.mapping.columns()
    if fmt == "cdm":
        entity, files = cdm_entity(run, export, services, record_files=False)
        return _cdm_range_rows(entity, files, job, services, keep)
    container, _, path = run.source.partition("/")
    chunks = read_span(services.storage, container, path, job.start, job.length)
    lines = open_lines(chunks, first_line=job.first_line)
    if job.split == 0:  # the range that holds the header
        return _file_rows(RecordReader(lines, fmt, keep=keep))
    plan = json.loads(services.storage.read_bytes(RUNS_CONTAINER, splits_blob_name(run.run_id)))
    columns = plan["header"] if fmt == "csv" else None
    return _file_rows(RecordReader(lines, fmt, header=columns, keep=keep))


@functools.cache
def code_digest() -> str:
    """A digest of this package's code: a deployment that changes how rows are read, validated,
    mapped or compared gives every source a new version, and every row a new digest (a version
    number may not be bumped)."""
    digest = blake2b(digest_size=8)
    package = Path(__file__).resolve().parents[1]  # shared/
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
