"""A split job's range read as raw records (`raw_records`): the records the snapshot holds byte
for byte are filed by their raw digest without being parsed; the others are parsed together,
one reader per block, and carry their raw digest to the snapshot for the next run.

Used for the byte ranges of a plain CSV or JSON Lines file and of a CDM folder's partition
files (read with the CSV settings its model gives each), whenever a source is split by more
than one job; a gzip file (whatever its name) and a source split inline are read as rows.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import chain, pairwise
from typing import IO, TYPE_CHECKING, Literal

from shared.adapters.services import Services
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
from shared.core.source_files import (
    GZIP_MAGIC,
    MAX_RECORD_BYTES,
    LineStream,
    RecordReader,
    SourceError,
    open_lines,
    row_order,
    row_part,
)
from shared.pipeline.run_files import matched_record_type, splits_blob_name
from shared.pipeline.run_source import Row, cdm_entity, index_applies, read_span, source_format

if TYPE_CHECKING:
    import numpy as np


def reads_raw(run: Run, export: Export, job: SplitJob) -> bool:
    """Whether the job's range is a byte range of a CSV or JSON Lines file, or of a CDM
    partition file (a compressed one, told by its bytes, is read as rows: see `raw_rows`)."""
    if job.splits <= 1:
        return False
    return source_format(run, export) == "cdm" or job.end >= 0


@dataclass(frozen=True, slots=True)
class RawRange:
    """Where a split job's records are and how they read: a byte range of a plain file or of a
    CDM partition file (`part`, its index in the folder, orders its rows across it)."""

    container: str
    path: str
    start: int
    length: int | None  # to the file's end when None
    first_line: int
    fmt: Literal["csv", "jsonl"]
    columns: list[str] | None  # a CSV record's fields
    headed: bool  # the range starts with the header row: checked, then skipped
    headerless: bool  # the file has no header row: its columns come from a CDM model
    delimiter: str = ","
    quoting: bool = True
    part: int | None = None
    file: str | None = None  # a CDM partition file, as rows name it
    keep: list[str] | None = None  # the columns a row's values hold (`RecordReader`)

    def seed(self, run: Run) -> int:
        """What turns these bytes into a profile, besides the code and the mapping: a CDM file's
        delimiter and quoting too (a different dialect reads other values from them)."""
        dialect = self.fmt if self.part is None else f"cdm {self.delimiter!r} {self.quoting}"
        return raw_digest_seed(run.code_version, run.mapping_fingerprint, dialect, self.columns)

    def reader(self, lines: LineStream) -> RecordReader:
        """A reader of the range's records, with the problem messages the rows path gives."""
        delimiter, quoting, keep = self.delimiter, self.quoting, self.keep
        if self.headerless:
            return RecordReader(
                lines, "csv", columns=self.columns, delimiter=delimiter, quoting=quoting, keep=keep
            )
        return RecordReader(
            lines, self.fmt, header=self.columns, delimiter=delimiter, quoting=quoting, keep=keep
        )

    @property
    def order_base(self) -> int:
        """A record's order is this plus its line (`row_order`)."""
        return row_order(self.part, 0)


def raw_range(run: Run, export: Export, job: SplitJob, services: Services) -> RawRange:
    """The job's range: its bytes of the file, or of a CDM partition file."""
    fmt = source_format(run, export)
    if fmt == "cdm":
        whole = _partition_file(run, export, job.file_index, services)
        headed = whole.headed and job.start == 0
        return replace(
            whole, start=job.start, length=job.length, first_line=job.first_line, headed=headed
        )
    container, _, path = run.source.partition("/")
    header = planned_header(run, fmt, services)
    headed = job.split == 0 and fmt == "csv"
    keep = export.mapping.columns()
    return RawRange(
        container,
        path,
        job.start,
        job.length,
        job.first_line,
        fmt,
        header,
        headed,
        False,
        keep=keep,
    )


def _partition_file(run: Run, export: Export, part: int, services: Services) -> RawRange:
    """Partition file `part` of the run's CDM folder, as the plan recorded the folder."""
    entity, files = cdm_entity(run, export, services, record_files=False)
    partition, settings = entity.partitions[part], entity.partitions[part].csv
    return RawRange(
        partition.container,
        partition.blob,
        0,
        None,
        1,
        "csv",
        list(entity.columns),
        headed=settings.column_headers,
        headerless=not settings.column_headers,
        delimiter=settings.delimiter,
        quoting=settings.quoting,
        part=part,
        file=files[part],
        keep=export.mapping.columns(),
    )


def record_index(run: Run, export: Export, job: SplitJob, services: Services) -> RecordIndex | None:
    """The previous snapshot's raw digests, when its rows may be taken as they are
    (`index_applies`)."""
    if not index_applies(run, job.partitions):
        return None
    snapshot = (run.previous_snapshot, run.previous_partitions)
    return services.snapshots.record_index(export.name, run.connection, snapshot)


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
    where = raw_range(run, export, job, services)
    seed = where.seed(run)
    chunks = read_span(services.storage, where.container, where.path, where.start, where.length)
    first = next(chunks, b"")
    if where.start == 0 and first.startswith(GZIP_MAGIC):  # whatever the file's name
        raise RawPathUnsafe("a compressed file is read as rows")
    chunks = chain([first], chunks)
    blocks = raw_blocks(
        chunks,
        offset=where.start,
        first_line=where.first_line,
        quoted=where.fmt == "csv" and where.quoting,
        json_lines=where.fmt == "jsonl",
        limit=MAX_RECORD_BYTES,
    )
    header_ahead = where.headed
    for block in blocks:
        if header_ahead and len(block.lines):
            _skip_header(block, where)
            header_ahead = False
        digests = digest_records(block, seed)
        if index is None:
            yield from _parsed(block, 0, len(digests), digests, where)
        else:
            found = index.partitions(digests)
            yield from _filed_or_parsed(block, digests, found, where, matched, tally)
        progress()
    if header_ahead:  # the rows path says what is wrong with a file without its header row
        raise RawPathUnsafe("the range has no header row")


def _filed_or_parsed(
    block: RawBlock,
    digests: list[bytes],
    found: np.ndarray,
    where: RawRange,
    matched: list[IO[bytes]],
    tally: SplitResult,
) -> Iterator[Row]:
    """Write the block's records the index found to their partition's matched records, all at
    once, and yield the others parsed, all together (`_gathered`). The records carry their
    order: the diff puts them back in source order where that matters."""
    import numpy as np

    count = len(digests)
    if not count:
        return
    hits = np.flatnonzero(found >= 0)
    if len(hits):
        starts = block.starts[hits]
        records = np.empty(len(hits), matched_record_type())
        records["order"] = block.lines[hits] + where.order_base
        records["offset"] = starts + block.offset
        records["length"] = block.ends[hits] - starts
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
        tally.rows_matched += len(hits)
    yield from _gathered(block, np.flatnonzero(found < 0), digests, where)


def _gathered(
    block: RawBlock, indexes: np.ndarray, digests: list[bytes], where: RawRange
) -> Iterator[Row]:
    """The block's records at `indexes` (in order), parsed by one reader: their bytes one
    after another, each ended by a line break. A delta's changed records are mostly alone
    between unchanged ones: parsing them, mostly setting up a reader for each stretch, took
    about a quarter of a delta split's CPU; joined, the split takes 11-15% less CPU.
    Each parsed record must start where one of them does (its first line in the joined text,
    counted from their line breaks), else the raw cut disagrees with the parser and the range
    is read as rows; rows keep their lines in the file. The joined text is numbered from the
    first record's line, so only a record on the file's first line loses a byte order mark,
    as when it is read as rows (elsewhere, a U+FEFF is part of the record's first value)."""
    if not len(indexes):
        return
    data, picked = block.data, indexes.tolist()
    # The records gathered, in order: `lines[at]` is the first line of the one at `picked[at]`.
    starts, ends = block.starts[indexes].tolist(), block.ends[indexes].tolist()
    lines = block.lines[indexes].tolist()
    records = [data[start:end] for start, end in zip(starts, ends, strict=True)]
    firsts = [lines[0]]  # each record's first line in the joined text
    for record in records[:-1]:
        firsts.append(firsts[-1] + record.count(b"\n") + 1)
    expected = dict(zip(firsts, range(len(picked)), strict=True))  # -> which one gathered
    reader = where.reader(open_lines([b"\n".join(records) + b"\n"], first_line=firsts[0]))
    order_base, file = where.order_base, where.file
    try:
        for record in reader:
            at = expected.pop(record.line, -1)
            if at < 0:
                inside = bisect_right(firsts, record.line) - 1
                raise RawPathUnsafe(
                    "the parser read a record where the raw cut found none, in the record "
                    f"on line {lines[inside]}"
                )
            yield Row(
                order_base + lines[at],
                lines[at],
                file,
                record.values,
                record.problem,
                digests[picked[at]].hex(),
            )
    except SourceError as error:
        raise RawPathUnsafe(str(error)) from None
    if expected:
        raise RawPathUnsafe(f"the parser read no record at line {lines[min(expected.values())]}")


def _skip_header(block: RawBlock, where: RawRange) -> None:
    """Drop the range's first record, the header, after checking it names the columns the plan
    read (a header the raw records cut differently from the parser is no header to skip)."""
    text = block.data[int(block.starts[0]) : int(block.ends[0])] + b"\n"
    lines = open_lines([text], first_line=where.first_line)
    try:
        reader = RecordReader(lines, "csv", delimiter=where.delimiter, quoting=where.quoting)
        more = next(iter(reader), None)  # the quotes cut the header and a row as one record
    except SourceError as error:
        raise RawPathUnsafe(str(error)) from None
    if block.lines[0] != where.first_line or reader.columns != where.columns or more:
        raise RawPathUnsafe("the first record is not the header the plan read")
    block.lines, block.starts, block.ends = block.lines[1:], block.starts[1:], block.ends[1:]


def _parsed(
    block: RawBlock, start: int, end: int, digests: list[bytes], where: RawRange
) -> Iterator[Row]:
    """Records start to end (exclusive) of the block, parsed together (with the blank lines
    between them, so line numbers hold); each must be one of the raw records, else the raw
    cut disagrees with the parser and the range is read as rows."""
    if start == end:  # a block of blank lines
        return
    text = block.data[int(block.starts[start]) : int(block.ends[end - 1])] + b"\n"
    lines = block.lines[start:end].tolist()
    reader = where.reader(open_lines([text], first_line=lines[0]))
    expected = dict(zip(lines, digests[start:end], strict=True))
    order_base, file = where.order_base, where.file
    try:
        for record in reader:
            line = record.line
            raw = expected.pop(line, None)
            if raw is None:
                raise RawPathUnsafe(f"the parser read a record at line {line}")
            yield Row(order_base + line, line, file, record.values, record.problem, raw.hex())
    except SourceError as error:
        raise RawPathUnsafe(str(error)) from None
    if expected:
        raise RawPathUnsafe(f"the parser read no record at line {min(expected)}")


def planned_header(run: Run, fmt: SourceFormat, services: Services) -> list[str] | None:
    """The CSV header the plan read (a later range does not hold it)."""
    if fmt != "csv":
        return None
    plan = json.loads(services.storage.read_bytes(RUNS_CONTAINER, splits_blob_name(run.run_id)))
    header: list[str] = plan["header"]
    return header


class Rereader:
    """Reads the rows a split filed by their raw digest again, each at `offset:length` in its
    file: the diff needs their values when the snapshot does not hold them as they are. How a
    file reads (its header, a CDM file's settings) is looked up once per file, not per row (a
    diff on other code than the split reads every such row again)."""

    def __init__(self, run: Run, export: Export, services: Services) -> None:
        self.run, self.export, self.services = run, export, services
        self._files: dict[int | None, RawRange] = {}

    def __call__(self, order: int, where: str) -> Row:
        offset, length = (int(part) for part in where.split(":"))
        part, line = row_part(order)
        file = self._files.get(part)
        if file is None:
            file = self._files[part] = self._file(part)
        data = self.services.storage.read_chunks(file.container, file.path, offset, length)
        records = list(file.reader(open_lines([b"".join(data) + b"\n"], first_line=line)))
        if len(records) != 1 or records[0].problem or records[0].line != line:
            raise SourceError(
                f"line {line} of {file.container}/{file.path} no longer holds the record read "
                "from it while planning: the file was written during the run; start the run again"
            )
        return Row(order, line, file.file, records[0].values, None)

    def _file(self, part: int | None) -> RawRange:
        run, export, services = self.run, self.export, self.services
        if part is not None:
            return replace(_partition_file(run, export, part, services), headed=False)
        fmt = source_format(run, export)
        assert fmt != "cdm"  # a CDM folder's rows are ordered by their partition file
        container, _, path = run.source.partition("/")
        header = planned_header(run, fmt, services)
        keep = export.mapping.columns()
        return RawRange(container, path, 0, None, 1, fmt, header, False, False, keep=keep)
