"""Streaming readers for segment files: CSV (RFC 4180) and JSON Lines, optionally gzip.

Input is consumed as a byte stream and decoded incrementally, so a file of any size is read in
constant memory. Every record keeps the line it started on, for the rejected-rows report.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

MAX_FIELD_BYTES = 16 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"

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


# Not frozen: one is made per row, and a frozen dataclass costs four times as much to create.
@dataclass(slots=True)
class SourceRecord:
    """One record: its values by column, or the structural problem that makes it unusable."""

    line: int
    values: dict[str, Any]
    problem: str | None = None


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


def open_lines(chunks: Iterable[bytes], first_line: int = 1) -> Iterator[str]:
    """Decode a byte stream line by line as UTF-8, dropping a BOM and un-gzipping gzip input.

    Decoding each physical line on its own (UTF-8 never splits a character across a newline
    byte) lets an encoding error name its exact line; `first_line` numbers a byte range that
    starts further into the file.
    """
    raw = io.BufferedReader(_ChunkStream(chunks), buffer_size=1024 * 1024)
    binary: BinaryIO = raw
    if raw.peek(2)[:2] == GZIP_MAGIC:
        binary = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
    number = first_line - 1
    while True:
        try:
            line = binary.readline()
        except (OSError, EOFError) as error:
            raise SourceError(
                f"the file cannot be decompressed after line {number}: {error}"
            ) from None
        if not line:
            return
        number += 1
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SourceError(
                f"line {number} is not valid UTF-8 (byte {error.start + 1} of the line: "
                f"{error.reason}); re-save the file as UTF-8"
            ) from None
        yield text.removeprefix("\ufeff") if number == 1 else text


class RecordReader:
    """Reads records from decoded text; `columns` is known before the first record is read.

    CSV options exist for files described elsewhere (a CDM model.json): `columns` names the
    fields of a header-less file, `delimiter` replaces the comma and `quoting=False` makes
    quote characters ordinary text (CDM's QuoteStyle.None). JSON Lines ignores them. A byte
    range cut from a larger file passes the file's `header` and the `first_line` it starts on,
    so its records keep the line numbers they have in the file.
    """

    def __init__(
        self,
        lines: Iterator[str],
        fmt: Literal["csv", "jsonl"],
        *,
        columns: Sequence[str] | None = None,
        delimiter: str = ",",
        quoting: bool = True,
        first_line: int = 1,
        header: Sequence[str] | None = None,
    ) -> None:
        self._lines = lines
        self._format = fmt
        self.columns: list[str] | None = list(header) if header is not None else None
        self._headerless = columns is not None
        self._line_offset = first_line - 1
        if fmt == "csv":
            csv.field_size_limit(MAX_FIELD_BYTES)
            quote_style = csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE
            self._csv = csv.reader(lines, strict=True, delimiter=delimiter, quoting=quote_style)
            if header is not None:  # a byte range after the header: its columns are known
                return
            if columns is not None:
                self.columns = list(columns)
                return
            header = self._next_csv_row()
            if header is None:
                raise SourceError("the file is empty: a CSV segment needs a header row")
            self.columns = [name.strip() for name in header]
            dupes = sorted({c for c in self.columns if self.columns.count(c) > 1 and c})
            if dupes:
                raise SourceError(f"the header names these columns more than once: {dupes}")

    def require_columns(self, needed: Iterable[str]) -> None:
        """Fail before anything is sent when a mapped column is not in the CSV header."""
        if self.columns is None:
            return
        missing = [c for c in needed if c not in self.columns]
        if missing:
            raise SourceError(
                f"mapped column(s) {missing} not in the CSV header; the header has {self.columns}"
            )

    def __iter__(self) -> Iterator[SourceRecord]:
        return self._csv_records() if self._format == "csv" else self._jsonl_records()

    def _next_csv_row(self, start: int = 1) -> list[str] | None:
        try:
            return next(self._csv, None)
        except csv.Error as error:
            hint = " (a quote is opened and never closed)" if "end of data" in str(error) else ""
            raise SourceError(
                f"CSV syntax error in the record starting at line {start}: {error}{hint}"
            ) from None

    def _csv_records(self) -> Iterator[SourceRecord]:
        assert self.columns is not None
        width = len(self.columns)
        while True:
            start = self._csv.line_num + 1 + self._line_offset
            row = self._next_csv_row(start)
            if row is None:
                return
            if not row:
                continue
            if len(row) != width:
                values = {f"field {i + 1}": v for i, v in enumerate(row)}
                expected = f"the header has {width}"
                if self._headerless:
                    expected = f"{width} are expected"
                problem = f"has {len(row)} fields but {expected}"
                yield SourceRecord(start, values, problem)
                continue
            yield SourceRecord(start, dict(zip(self.columns, row, strict=True)))

    def _jsonl_records(self) -> Iterator[SourceRecord]:
        for number, line in enumerate(self._lines, start=self._line_offset + 1):
            stripped = line.strip()
            if not stripped:
                continue
            try:
                value = json.loads(stripped)
            except ValueError as error:
                yield SourceRecord(number, {"raw": stripped}, f"is not valid JSON: {error}")
                continue
            if not isinstance(value, dict):
                yield SourceRecord(number, {"raw": stripped}, "is not a JSON object")
                continue
            if "\\u" in stripped and _has_lone_surrogate(stripped):
                problem = "has a \\u escape that is not a valid character (a lone surrogate)"
                yield SourceRecord(number, {"raw": stripped}, problem)
                continue
            yield SourceRecord(number, value)


def _has_lone_surrogate(text: str) -> bool:
    """JSON allows "\\ud800", but it is no character and cannot be sent to Braze as UTF-8."""
    try:
        json.dumps(json.loads(text), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
