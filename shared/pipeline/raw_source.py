"""A split job's range read as raw records (`raw_records`): the records the snapshot holds byte
for byte are filed by their raw digest without being parsed; the others are parsed, a stretch
of consecutive ones at a time, and carry their raw digest to the snapshot for the next run.

Used for the byte ranges of a plain CSV or JSON Lines file (a large one, split in parallel);
a gzip file, a CDM folder and a file small enough to split inline are read as rows throughout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import IO, TYPE_CHECKING

from shared.adapters.services import Services
from shared.adapters.storage import read_ahead
from shared.core.definitions import Export, SourceFormat
from shared.core.messages import SplitJob
from shared.core.raw_records import (
    RawBlock,
    RawPathUnsafe,
    digest_records,
    raw_blocks,
    raw_digest_seed,
)
from shared.core.record_index import RecordIndex
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import Run, SplitResult
from shared.core.source_files import MAX_RECORD_BYTES, RecordReader, SourceError, open_lines
from shared.pipeline.run_files import matched_record_type, splits_blob_name
from shared.pipeline.run_source import Row, index_applies, source_format

if TYPE_CHECKING:
    import numpy as np


def reads_raw(run: Run, export: Export, job: SplitJob) -> bool:
    """Whether the job's range is a byte range of a plain CSV or JSON Lines file."""
    return (
        job.splits > 1
        and job.end >= 0
        and source_format(run, export) in ("csv", "jsonl")
        and not run.source.endswith(".gz")
    )


def record_index(run: Run, export: Export, job: SplitJob, services: Services) -> RecordIndex | None:
    """The previous snapshot's raw digests, when its rows may be taken as they are
    (`index_applies`)."""
    if not index_applies(run, job.partitions):
        return None
    snapshot = (run.previous_snapshot, run.previous_partitions)
    return services.snapshots.record_index(export.name, run.connection, snapshot)


def planned_header(run: Run, fmt: SourceFormat, services: Services) -> list[str] | None:
    """The CSV header the plan read (a later range does not hold it)."""
    if fmt != "csv":
        return None
    plan = json.loads(services.storage.read_bytes(RUNS_CONTAINER, splits_blob_name(run.run_id)))
    header: list[str] = plan["header"]
    return header


def raw_rows(
    run: Run,
    export: Export,
    job: SplitJob,
    index: RecordIndex | None,
    matched: list[IO[bytes]],
    tally: SplitResult,
    services: Services,
    progress: Callable[[], None],
) -> Iterator[Row]:
    """Write the range's records the index holds to their partition's matched records
    (`matched`, `run_files`), and yield the others as rows, each with its raw digest. Raises
    RawPathUnsafe when the range must be read as rows instead (nothing of this attempt is kept
    then)."""
    fmt = source_format(run, export)
    header = planned_header(run, fmt, services)
    seed = raw_digest_seed(run.code_version, run.mapping_fingerprint, fmt, header)
    container, _, path = run.source.partition("/")
    chunks = read_ahead(
        services.storage.read_chunks(container, path, job.start, job.end - job.start)
    )
    blocks = raw_blocks(
        chunks,
        offset=job.start,
        first_line=job.first_line,
        quoted=fmt == "csv",
        limit=MAX_RECORD_BYTES,
    )
    header_ahead = job.split == 0 and fmt == "csv"
    for block in blocks:
        if header_ahead and block.lines:
            _skip_header(block, header)
            header_ahead = False
        digests = digest_records(block, seed)
        if index is None:
            yield from _parsed(block, 0, len(digests), digests, fmt, header)
        else:
            found = index.partitions(digests)
            yield from _filed_or_parsed(block, digests, found, fmt, header, matched, tally)
        progress()


def _filed_or_parsed(
    block: RawBlock,
    digests: list[bytes],
    found: np.ndarray,
    fmt: SourceFormat,
    header: list[str] | None,
    matched: list[IO[bytes]],
    tally: SplitResult,
) -> Iterator[Row]:
    """Write the block's records the index found to their partition's matched records, all at
    once, and yield the others parsed, a stretch of consecutive ones at a time. The records
    carry their order: the diff puts them back in source order where that matters."""
    import numpy as np

    count = len(digests)
    if not count:
        return
    hits = np.flatnonzero(found >= 0)
    if len(hits):
        starts = np.asarray(block.starts)[hits]
        records = np.empty(len(hits), matched_record_type())
        records["order"] = np.asarray(block.lines)[hits]
        records["offset"] = starts + block.offset
        records["length"] = np.asarray(block.ends)[hits] - starts
        records["raw"] = np.frombuffer(b"".join(digests), ">u8")[hits]
        partitions = found[hits]
        by_partition = np.argsort(partitions, kind="stable")  # source order within each
        records, partitions = records[by_partition], partitions[by_partition]
        cuts = (np.flatnonzero(partitions[1:] != partitions[:-1]) + 1).tolist()
        for start, end in pairwise([0, *cuts, len(hits)]):
            partition = int(partitions[start])
            matched[partition].write(records[start:end].tobytes())
            tally.partition_rows[partition] += end - start
        tally.rows_read += len(hits)
    missing = found < 0
    bounds = [0, *(np.flatnonzero(missing[1:] != missing[:-1]) + 1).tolist(), count]
    for start, end in pairwise(bounds):
        if missing[start]:
            yield from _parsed(block, start, end, digests, fmt, header)


def _skip_header(block: RawBlock, header: list[str] | None) -> None:
    """Drop the range's first record, the header, after checking it is the one the plan read
    (a header the raw records cut differently from the parser is no header to skip)."""
    text = block.data[block.starts[0] : block.ends[0]] + b"\n"
    try:
        columns = RecordReader(open_lines([text]), "csv").columns
    except SourceError as error:
        raise RawPathUnsafe(str(error)) from None
    if block.lines[0] != 1 or columns != header:
        raise RawPathUnsafe("the first record is not the header the plan read")
    del block.lines[0], block.starts[0], block.ends[0]


def _parsed(
    block: RawBlock,
    start: int,
    end: int,
    digests: list[bytes],
    fmt: SourceFormat,
    header: list[str] | None,
) -> Iterator[Row]:
    """Records start to end (exclusive) of the block, parsed together (with the blank lines
    between them, so line numbers hold); each must be one of the raw records, else the raw
    cut disagrees with the parser and the range is read as rows."""
    if start == end:  # a block of blank lines
        return
    text = block.data[block.starts[start] : block.ends[end - 1]] + b"\n"
    reader = RecordReader(open_lines([text], first_line=block.lines[start]), fmt, header=header)
    expected = dict(zip(block.lines[start:end], digests[start:end], strict=True))
    try:
        for record in reader:
            raw = expected.pop(record.line, None)
            if raw is None:
                raise RawPathUnsafe(f"the parser read a record at line {record.line}")
            yield Row(record.line, record.line, None, record.values, record.problem, raw.hex())
    except SourceError as error:
        raise RawPathUnsafe(str(error)) from None
    if expected:
        raise RawPathUnsafe(f"the parser read no record at line {min(expected)}")


def reread(run: Run, export: Export, order: int, where: str, services: Services) -> Row:
    """The row a split filed by its raw digest (at `offset:length` in the file), read and
    parsed again: the diff needs its values when the snapshot does not hold it as it is."""
    fmt = source_format(run, export)
    offset, length = (int(part) for part in where.split(":"))
    container, _, path = run.source.partition("/")
    data = b"".join(services.storage.read_chunks(container, path, offset, length))
    lines = open_lines([data + b"\n"], first_line=order)
    records = list(RecordReader(lines, fmt, header=planned_header(run, fmt, services)))
    if len(records) != 1 or records[0].problem or records[0].line != order:
        raise SourceError(
            f"line {order} of {run.source} no longer holds the record read from it while "
            "planning: the file was written during the run; start the run again"
        )
    record = records[0]
    return Row(order, order, None, record.values, None)
