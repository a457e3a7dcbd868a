"""Streaming readers for segment files: CSV (RFC 4180) and JSON Lines, optionally gzip.

Input is consumed as a byte stream and decoded incrementally, and no record over
`MAX_RECORD_BYTES` is ever held whole, so a file of any size, however hostile, is read in
bounded memory. Every record keeps the line it started on, for the rejected-rows report.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

# The most a record (a JSON Lines line, or a CSV row over all its lines) may have. Braze
# attributes are small (a string at most 255 characters), so a longer record is broken or
# hostile; the cap keeps memory bounded whatever a file holds: the rest of such a record is
# skipped in pieces, and it is rejected as `row_too_long`.
MAX_RECORD_BYTES = 1024 * 1024
MAX_RECORD_TEXT = f"{MAX_RECORD_BYTES / 2**20:g} MiB ({MAX_RECORD_BYTES:,} bytes)"
SKIP_PIECE_BYTES = 64 * 1024
GZIP_MAGIC = b"\x1f\x8b"

MALFORMED_ROW = "malformed_row"
ROW_TOO_LONG = "row_too_long"

ROWS_PER_PART = 10**9


def row_order(part: int | None, line: int) -> int:
    """A sortable position across a CDM folder's partitions; the line itself for one file."""
    return line if part is None else (part + 1) * ROWS_PER_PART + line


def row_part(order: int) -> tuple[int | None, int]:
    """(partition index or None, line) from a row's order."""
    if order < ROWS_PER_PART:
        return None, order
    return order // ROWS_PER_PART - 1, order % ROWS_PER_PART


@dataclass(frozen=True, slots=True)
class RecordStart:
    """Where a record begins in a file: its byte offset and its (1-based) physical line."""

    offset: int
    line: int


def record_starts(
    blocks: Iterable[bytes], targets: Sequence[int], *, quoted: bool
) -> list[RecordStart]:
    """The first record start at or after each target offset (ascending), for splitting a file
    into byte ranges that parse on their own.

    A record starts after a newline that is outside quotes. In RFC 4180 CSV a quote inside a
    field is doubled, so a newline is outside quotes exactly when the quotes before it are even
    in number; counting them needs one pass over the bytes (at C speed) but no parsing. JSON
    Lines (`quoted=False`) start a record after every newline. A target past the last record
    start gets none: fewer ranges are returned than asked for.
    """
    starts: list[RecordStart] = []
    wanted = iter(targets)
    target = next(wanted, None)
    base = quotes = lines = 0  # offset of `block`; quotes and newlines before it
    for block in blocks:
        position = 0
        while target is not None and target < base + len(block):
            position = max(position, target - base)
            newline = block.find(b"\n", position)
            if newline < 0:
                break
            inside = quoted and (quotes + block.count(b'"', 0, newline)) % 2 == 1
            position = newline + 1
            if inside:
                continue
            start = RecordStart(base + newline + 1, lines + block.count(b"\n", 0, newline) + 2)
            starts.append(start)
            target = next(wanted, None)
            while target is not None and target < start.offset:
                target = next(wanted, None)
        if quoted:
            quotes += block.count(b'"')
        lines += block.count(b"\n")
        base += len(block)
    return [start for start in starts if start.offset < base]


class SourceError(Exception):
    """The source as a whole cannot be read (bad encoding, missing column): the run fails."""


@dataclass(frozen=True, slots=True)
class RecordProblem:
    """Why a record cannot be read at all: its rejection code, and a message that follows
    "row"."""

    code: str
    message: str


# Not frozen: one is made per row, and a frozen dataclass costs four times as much to create.
@dataclass(slots=True)
class SourceRecord:
    """One record: its values by column, or the structural problem that makes it unusable."""

    line: int
    values: dict[str, Any]
    problem: RecordProblem | None = None


class _ChunkStream(io.RawIOBase):
    """A readable file over an iterator of byte chunks (e.g. a blob download)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")  # a view, so taking a piece never copies the rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class _RecordTooLong(Exception):
    """The record being read passed its cap; raised from inside the line iterator, so it gets
    out of `csv.reader` mid-record, before the record is held whole."""


class LineStream:
    """A byte stream's lines, decoded as UTF-8 one by one, a BOM dropped and gzip undone.

    Decoding each physical line on its own (UTF-8 never splits a character across a newline
    byte) lets an encoding error name its exact line; `first_line` numbers a byte range that
    starts further into the file. Lines are unbounded (the run's own files) until a
    RecordReader caps its records, so that a hostile file is never held whole. Nothing is read
    before the first line is asked for.
    """

    def __init__(self, chunks: Iterable[bytes], first_line: int = 1) -> None:
        self._chunks = chunks
        self._binary: io.BufferedIOBase | None = None
        self.line = first_line - 1  # the last line read (kept when a record is skipped)
        self.record_start = first_line  # set by the reader before each record it reads
        self._limit = sys.maxsize - 1  # so that `limit + 1` is still a size
        self._multiline = False
        self._overflow = (b"", 0, False)  # what `skip_record` starts from

    def cap_records(self, limit: int, *, multiline: bool) -> None:
        """Cap each record at `limit` bytes, its line breaks included. A record is a line, or
        with `multiline` (quoted CSV) the lines from `record_start` on."""
        self._limit, self._multiline = limit, multiline

    def __iter__(self) -> Iterator[str]:
        """The lines from the next one on; after `_RecordTooLong` a new iterator goes on."""
        return self._lines()

    def _open(self) -> io.BufferedIOBase:
        if self._binary is None:
            raw = io.BufferedReader(_ChunkStream(self._chunks), buffer_size=1024 * 1024)
            self._binary = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == GZIP_MAGIC else raw
        return self._binary

    def _lines(self) -> Iterator[str]:
        readline, limit, multiline = self._open().readline, self._limit, self._multiline
        number, size = self.line, 0
        while True:
            try:
                line = readline(limit + 1)  # a longer line is never read whole
            except (OSError, EOFError) as error:
                raise _undecompressable(number, error) from None
            if not line:
                return
            number += 1
            if multiline and number != self.record_start:
                size += len(line)  # the record goes on: a quoted value holds a line break
            else:
                size = len(line)
            if size > limit:
                self.line = number
                self._overflow = (line, size, multiline and number != self.record_start)
                raise _RecordTooLong
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise SourceError(
                    f"line {number} is not valid UTF-8 (byte {error.start + 1} of the line: "
                    f"{error.reason}); re-save the file as UTF-8"
                ) from None
            yield text.removeprefix("\ufeff") if number == 1 else text

    def skip_record(self) -> tuple[int, int, bool]:
        """Read past the rest of the record that passed the cap, a piece at a time: its last
        line, its size in bytes, and whether the file ended inside its quotes.

        A quoted CSV record ends at the first line break outside quotes. The csv module asks
        for another line of a record only from inside a quoted value, and quotes within one
        come in pairs, so counting quotes from the start of the line that passed the cap finds
        the end (as `record_starts` does) without parsing.
        """
        piece, size, inside = self._overflow
        self._overflow = (b"", 0, False)
        readline, number, quotes = self._open().readline, self.line, int(inside)
        while True:
            if self._multiline:
                quotes += piece.count(b'"')
            if piece.endswith(b"\n"):
                if quotes % 2 == 0:
                    break
                number += 1
            try:
                piece = readline(SKIP_PIECE_BYTES)
            except (OSError, EOFError) as error:
                raise _undecompressable(number, error) from None
            if not piece:
                break
            size += len(piece)
        self.line = number
        return number, size, quotes % 2 == 1


def _undecompressable(line: int, error: Exception) -> SourceError:
    return SourceError(f"the file cannot be decompressed after line {line}: {error}")


def open_lines(chunks: Iterable[bytes], first_line: int = 1) -> LineStream:
    """The lines of a byte stream (a blob download), decoded; see `LineStream`."""
    return LineStream(chunks, first_line)


_HEADERLESS_HINT = "; is the header row missing, or the mapping misspelled?"


def _looks_like_a_column_name(text: str) -> bool:
    """A file without its header row has a customer's values where the names should be:
    messages quote only what cannot be an email, a number or an id."""
    return len(text) <= 64 and "@" not in text and sum(c.isdigit() for c in text) < 3


def _picker(
    columns: list[str], keep: Collection[str] | None
) -> tuple[list[str], Callable[[list[str]], Sequence[str]]]:
    """The columns a record's values hold (in the header's order) and what takes their fields
    from a row of all of them. Made for each reader (a delta's split makes one for each block
    of its range): one pass over the header, each name looked up in a set."""
    wanted = None if keep is None else frozenset(keep)
    at = [i for i, column in enumerate(columns) if wanted is None or column in wanted]
    if len(at) == len(columns):
        return columns, lambda row: row
    if len(at) == 1:
        return [columns[at[0]]], lambda row: (row[at[0]],)
    picked: Callable[[list[str]], Sequence[str]] = itemgetter(*at) if at else lambda row: ()
    return [columns[i] for i in at], picked


class RecordReader:
    """Reads records from decoded lines; `columns` is known before the first record is read.

    CSV options exist for files described elsewhere (a CDM model.json): `columns` names the
    fields of a header-less file, `delimiter` replaces the comma and `quoting=False` makes
    quote characters ordinary text (CDM's QuoteStyle.None). JSON Lines ignores them. A byte
    range cut from a larger file passes the file's `header`, and lines opened at the line it
    starts on, so its records keep the line numbers they have in the file.

    A record over `MAX_RECORD_BYTES` is skipped without being held whole and comes back as a
    `row_too_long` problem; reading goes on after it.

    `keep` limits a CSV record's values to those columns (the header's others are parsed, not
    kept): a Customer Insights profile table has many more columns than an export maps, and
    building each row's dict of all of them cost a first export's split 20-22 µs of CPU per
    row against 17.4 with ten unmapped columns (`stage_bench.py --wide`). A malformed row still
    comes back with all its fields. JSON Lines records are read whole.
    """

    def __init__(
        self,
        lines: LineStream,
        fmt: Literal["csv", "jsonl"],
        *,
        columns: Sequence[str] | None = None,
        delimiter: str = ",",
        quoting: bool = True,
        header: Sequence[str] | None = None,
        keep: Collection[str] | None = None,
    ) -> None:
        self._lines = lines
        self._format = fmt
        self._keep = keep
        self.columns: list[str] | None = list(header) if header is not None else None
        self._headerless = columns is not None
        lines.cap_records(MAX_RECORD_BYTES, multiline=fmt == "csv" and quoting)
        if fmt == "csv":
            csv.field_size_limit(MAX_RECORD_BYTES)
            self._delimiter = delimiter
            self._quoting = csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE
            self._restart_csv()
            if header is not None:  # a byte range after the header: its columns are known
                return
            if columns is not None:
                self.columns = list(columns)
                return
            header = self._read_header()
            if header is None:
                raise SourceError("the file is empty: a CSV segment needs a header row")
            self.columns = [name.strip() for name in header]
            dupes = sorted({c for c in self.columns if self.columns.count(c) > 1 and c})
            if dupes:
                shown = [c for c in dupes if _looks_like_a_column_name(c)]
                raise SourceError(
                    f"the header names {len(dupes)} column(s) more than once"
                    + (f": {shown}" if shown == dupes else "")
                    + _HEADERLESS_HINT * (shown != dupes)
                )

    def require_columns(self, needed: Iterable[str]) -> None:
        """Fail before anything is sent when a mapped column is not in the CSV header."""
        if self.columns is None:
            return
        missing = [c for c in needed if c not in self.columns]
        if missing:
            raise SourceError(
                f"mapped column(s) {missing} not in the CSV header ({len(self.columns)} "
                f"columns, not quoted: they may be a customer's values){_HEADERLESS_HINT}"
            )

    def __iter__(self) -> Iterator[SourceRecord]:
        return self._csv_records() if self._format == "csv" else self._jsonl_records()

    def _restart_csv(self) -> None:
        """A csv reader from the next line on (after a skipped record, its state is unknown)."""
        self._csv = csv.reader(
            self._lines, strict=True, delimiter=self._delimiter, quoting=self._quoting
        )
        self._line_offset = self._lines.line  # lines before the first this reader reads

    def _read_header(self) -> list[str] | None:
        start = self._line_offset + 1
        try:
            return next(self._csv, None)
        except csv.Error as error:
            raise _syntax_error(start, str(error)) from None
        except _RecordTooLong:
            raise SourceError(
                f"the header row (line {start}) is over {MAX_RECORD_TEXT}, the most a record "
                "may have: is this a CSV file, with a line break after its header?"
            ) from None

    def _csv_records(self) -> Iterator[SourceRecord]:
        assert self.columns is not None
        columns, width, lines = self.columns, len(self.columns), self._lines
        rows, offset = self._csv, self._line_offset
        names, picked = _picker(columns, self._keep)
        while True:
            start = lines.record_start = rows.line_num + 1 + offset
            try:
                row = next(rows, None)
            except csv.Error as error:
                raise _syntax_error(start, str(error)) from None
            except _RecordTooLong:
                yield self._skip_too_long(start)
                rows, offset = self._csv, self._line_offset
                continue
            if row is None:
                return
            if not row:
                continue
            if len(row) != width:
                values = {f"field {i + 1}": v for i, v in enumerate(row)}
                expected = f"the header has {width}"
                if self._headerless:
                    expected = f"{width} are expected"
                problem = RecordProblem(MALFORMED_ROW, f"has {len(row)} fields but {expected}")
                yield SourceRecord(start, values, problem)
                continue
            yield SourceRecord(start, dict(zip(names, picked(row), strict=True)))

    def _jsonl_records(self) -> Iterator[SourceRecord]:
        lines = self._lines
        while True:
            try:
                for number, line in enumerate(lines, start=lines.line + 1):
                    stripped = line.strip()
                    if not stripped:
                        continue
                    try:
                        value = json.loads(stripped)
                    except ValueError as error:
                        problem = RecordProblem(MALFORMED_ROW, f"is not valid JSON: {error}")
                        yield SourceRecord(number, {"raw": stripped}, problem)
                        continue
                    if not isinstance(value, dict):
                        problem = RecordProblem(MALFORMED_ROW, "is not a JSON object")
                        yield SourceRecord(number, {"raw": stripped}, problem)
                        continue
                    if "\\u" in stripped and _has_lone_surrogate(stripped):
                        problem = RecordProblem(
                            MALFORMED_ROW,
                            "has a \\u escape that is not a valid character (a lone surrogate)",
                        )
                        yield SourceRecord(number, {"raw": stripped}, problem)
                        continue
                    yield SourceRecord(number, value)
                return
            except _RecordTooLong:
                pass
            yield self._skip_too_long(lines.line)

    def _skip_too_long(self, start: int) -> SourceRecord:
        """The record starting at `start` is over the cap: skip the rest of it, and go on."""
        end, size, unclosed = self._lines.skip_record()
        if unclosed:
            raise _syntax_error(start, "unexpected end of data")
        if self._format == "csv":
            self._restart_csv()
        where = f"line {start}" if end == start else f"lines {start} to {end}"
        message = f"on {where} is {size:,} bytes long; a record may have at most {MAX_RECORD_TEXT}"
        return SourceRecord(start, {}, RecordProblem(ROW_TOO_LONG, message))


def _syntax_error(start: int, reason: str) -> SourceError:
    hint = " (a quote is opened and never closed)" if "end of data" in reason else ""
    return SourceError(f"CSV syntax error in the record starting at line {start}: {reason}{hint}")


def _has_lone_surrogate(text: str) -> bool:
    """JSON allows "\\ud800", but it is no character and cannot be sent to Braze as UTF-8."""
    try:
        json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
