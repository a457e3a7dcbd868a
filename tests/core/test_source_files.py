"""Streaming readers: RFC 4180 quoting, BOM, gzip, JSON Lines, errors that say where, and the
cap on a record's size, which holds in bounded memory."""

import gzip
import itertools
import json
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from shared.core.source_files import (
    MAX_RECORD_BYTES,
    RecordProblem,
    RecordReader,
    SourceError,
    SourceRecord,
    open_lines,
    record_starts,
)

MESSY_CSV = (
    "\ufeffCustomerId, Email ,Note\r\n"
    '1,a@example.com,"comma, ""quotes"" and\r\nnewline"\r\n'
    "\r\n"
    "2,b@example.com\r\n"
    "3,c@example.com,Zoë 🎉 naïve\r\n"
).encode()


def _read(data: bytes, fmt: str = "csv", piece: int = 0) -> tuple[list[str] | None, list]:
    chunks = [data[i : i + piece] for i in range(0, len(data), piece)] if piece else [data]
    reader = RecordReader(open_lines(chunks), fmt)  # type: ignore[arg-type]
    return reader.columns, list(reader)


@pytest.mark.parametrize("piece", [0, 1, 7])
def test_csv_quoting_bom_blank_lines_and_short_rows(piece: int) -> None:
    columns, records = _read(MESSY_CSV, piece=piece)
    assert columns == ["CustomerId", "Email", "Note"]
    assert [r.line for r in records] == [2, 5, 6]
    assert records[0].values["Note"] == 'comma, "quotes" and\r\nnewline'
    assert records[0].problem is None
    assert records[1].problem == RecordProblem("malformed_row", "has 2 fields but the header has 3")
    assert records[1].values == {"field 1": "2", "field 2": "b@example.com"}
    assert records[2].values["Note"] == "Zoë 🎉 naïve"


@pytest.mark.parametrize(
    ("keep", "kept"),
    [
        (["Note", "CustomerId", "Absent"], ["CustomerId", "Note"]),  # the header's order
        (["Email"], ["Email"]),
        (["Absent"], []),
    ],
)
def test_kept_columns_are_all_a_records_values_hold(keep: list[str], kept: list[str]) -> None:
    """A wide file's other columns are parsed but not kept; a malformed row keeps every field
    (which column is which is unknown), and lines and problems are as without `keep`."""
    reader = RecordReader(open_lines([MESSY_CSV]), "csv", keep=keep)
    records = list(reader)
    assert reader.columns == ["CustomerId", "Email", "Note"]  # the header is still the header
    assert [r.line for r in records] == [2, 5, 6]
    assert [list(records[i].values) for i in (0, 2)] == [kept, kept]
    whole = {"CustomerId": "3", "Email": "c@example.com", "Note": "Zoë 🎉 naïve"}
    assert records[2].values == {column: whole[column] for column in kept}
    assert records[1].values == {"field 1": "2", "field 2": "b@example.com"}
    assert records[1].problem == RecordProblem("malformed_row", "has 2 fields but the header has 3")


def test_kept_columns_of_a_headerless_range_and_json_lines_read_whole() -> None:
    lines = open_lines([b"1;Bob;x\n"])
    reader = RecordReader(lines, "csv", columns=["id", "name", "other"], delimiter=";", keep=["id"])
    assert [r.values for r in reader] == [{"id": "1"}]
    jsonl = RecordReader(open_lines([b'{"id": 1, "other": 2}\n']), "jsonl", keep=["id"])
    assert [r.values for r in jsonl] == [{"id": 1, "other": 2}]  # `mapped_values` trims these


def test_gzip_is_detected_by_content() -> None:
    _, records = _read(gzip.compress(MESSY_CSV), piece=100)
    assert [r.values.get("CustomerId") for r in records] == ["1", None, "3"]


def test_jsonl_records_and_bad_lines() -> None:
    data = b'{"id": 1, "n": "\\u00e9"}\n\n  \nnot json\n[1, 2]\n{"id": "x"}\r\n'
    columns, records = _read(data, "jsonl")
    assert columns is None
    assert [(r.line, r.problem is None) for r in records] == [
        (1, True), (4, False), (5, False), (6, True)
    ]  # fmt: skip
    assert records[0].values == {"id": 1, "n": "é"}
    assert records[1].problem and records[1].problem.message.startswith("is not valid JSON")
    assert records[2].problem == RecordProblem("malformed_row", "is not a JSON object")


def test_invalid_utf8_names_the_line() -> None:
    with pytest.raises(SourceError, match="line 3 is not valid UTF-8"):
        _read("id\n1\ncaf\xe9\n".encode("latin-1"))


def test_unterminated_quote_names_the_line() -> None:
    with pytest.raises(
        SourceError, match=r"record starting at line 3: unexpected end of data .a quote is opened"
    ):
        _read(b'id,x\n1,ok\n2,"never closed\n3,x\n')


def test_truncated_gzip_is_an_error_not_a_short_file() -> None:
    with pytest.raises(SourceError, match="cannot be decompressed"):
        _read(gzip.compress(MESSY_CSV * 50)[:-20])


def test_empty_csv_and_duplicate_header() -> None:
    with pytest.raises(SourceError, match="empty"):
        _read(b"")
    with pytest.raises(SourceError, match=r"1 column\(s\) more than once: \['a'\]"):
        _read(b"a,b,a\n1,2,3\n")
    # A data row where the header should be: its values are not quoted.
    with pytest.raises(SourceError, match=r"more than once; is the header row missing") as error:
        _read(b"jane@example.com,x,jane@example.com\n1,2,3\n")
    assert "jane" not in str(error.value)


def test_missing_mapped_column_quotes_no_header_value() -> None:
    reader = RecordReader(open_lines([b"CustomerId,Mail\n1,x\n"]), "csv")
    with pytest.raises(SourceError, match=r"\['Email'\] not in the CSV header \(2 columns"):
        reader.require_columns(["CustomerId", "Email"])
    headerless = RecordReader(open_lines([b"c-1001,ann@example.com,Emil\n"]), "csv")
    with pytest.raises(SourceError, match="is the header row missing") as error:
        headerless.require_columns(["CustomerId", "Email"])
    assert not {"ann@example.com", "c-1001", "Emil"} & set(
        str(error.value).replace("'", " ").split()
    )


def test_stream_is_not_read_ahead_of_need() -> None:
    """The reader pulls input lazily: taking one record consumes only the first piece."""
    consumed = []

    def pieces():
        for number in range(1000):
            consumed.append(number)
            yield json.dumps({"id": number}).encode() + b"\n" * 2000

    reader = iter(RecordReader(open_lines(pieces()), "jsonl"))
    assert next(reader).values == {"id": 0}
    assert len(consumed) < 200


def test_headerless_csv_with_given_columns_delimiter_and_no_quoting() -> None:
    """Columns described elsewhere (CDM): no header row, a chosen delimiter, literal quotes."""
    lines = open_lines([b'1;"Bob" Smith\n\n2;x;y\n3;a,b\n'])
    reader = RecordReader(lines, "csv", columns=["id", "name"], delimiter=";", quoting=False)
    assert reader.columns == ["id", "name"]
    records = list(reader)
    assert [r.line for r in records] == [1, 3, 4]
    assert records[0].values == {"id": "1", "name": '"Bob" Smith'}
    assert records[1].problem == RecordProblem("malformed_row", "has 3 fields but 2 are expected")
    assert records[2].values == {"id": "3", "name": "a,b"}


def test_header_is_split_on_the_given_delimiter() -> None:
    reader = RecordReader(open_lines([b'id\tname\n1\t"a\tb"\n']), "csv", delimiter="\t")
    assert reader.columns == ["id", "name"]
    assert [r.values for r in reader] == [{"id": "1", "name": "a\tb"}]


def _starts_by_brute_force(data: bytes, quoted: bool) -> list[int]:
    """Every offset just after a newline that is outside quotes, found byte by byte."""
    starts, inside = [], False
    for offset, byte in enumerate(data):
        if quoted and byte == ord('"'):
            inside = not inside
        elif byte == ord("\n") and not inside and offset + 1 < len(data):
            starts.append(offset + 1)
    return starts


RANGED_CSV = (
    '\ufeffId,Note\r\n1,"multi\nline, with ""quotes"""\r\n2,plain\n3,"🎉\n\n"\n'
    '4,"a,b"\n5,"""\n"""\n6,last'
).encode()


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize(
    ("data", "quoted"), [(RANGED_CSV, True), (b'{"a": "x\\"y"}\n{}\n[1]\n{"b": 2}', False)]
)
def test_record_starts_find_the_next_record_outside_quotes(
    data: bytes, quoted: bool, block: int
) -> None:
    truth = _starts_by_brute_force(data, quoted)
    blocks = [data[i : i + block] for i in range(0, len(data), block)]
    targets = list(range(0, len(data), 3))
    starts = record_starts(blocks, targets, quoted=quoted)
    expected = sorted({next(s for s in truth if s >= t) for t in targets if truth[-1] >= t})
    assert [s.offset for s in starts] == expected
    assert [s.line for s in starts] == [data[: s.offset].count(b"\n") + 1 for s in starts]


def test_a_range_after_the_header_keeps_the_files_line_numbers() -> None:
    start = record_starts([RANGED_CSV], [30], quoted=True)[0]
    lines = open_lines([RANGED_CSV[start.offset :]], first_line=start.line)
    reader = RecordReader(lines, "csv", header=["Id", "Note"])
    records = list(reader)
    assert [(r.line, r.values["Id"]) for r in records] == [
        (4, "2"),
        (5, "3"),
        (8, "4"),
        (9, "5"),
        (11, "6"),
    ]
    assert records[-2].values["Note"] == '"\n"'


CAP = MAX_RECORD_BYTES
MIB = 2**20


def _too_long(record: SourceRecord) -> str:
    """The message of a `row_too_long` record (failing on any other)."""
    assert record.problem is not None and record.problem.code == "row_too_long", record
    assert record.values == {}
    return record.problem.message


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_record_of_exactly_the_cap_is_read_whole_and_one_byte_more_is_not(fmt: str) -> None:
    opening, closing = (b"1,", b"\n") if fmt == "csv" else (b'{"id": "1", "note": "', b'"}\n')
    fits = CAP - len(opening) - len(closing)  # the most a note may have, in bytes

    def line(note: int) -> bytes:  # a record whose note has `note` bytes, mostly 2-byte é
        return opening + b"\xc3\xa9" * (note // 2) + b"x" * (note % 2) + closing

    head = b"id,note\n" if fmt == "csv" else b""
    _, records = _read(head + line(fits) + line(fits + 1) + line(7), fmt)

    first = 2 if fmt == "csv" else 1
    assert [r.line for r in records] == [first, first + 1, first + 2]
    assert len(line(fits)) == CAP and records[0].problem is None
    assert len(records[0].values["note"].encode()) == fits
    assert _too_long(records[1]) == (
        f"on line {first + 1} is 1,048,577 bytes long; a record may have at most "
        "1 MiB (1,048,576 bytes)"
    )
    assert records[2].values["note"] == "éééx"


BIG = b"x" * (CAP + 10)
CDM_OPTIONS = {"columns": ["id", "note"], "delimiter": ";", "quoting": False}


def _size_of_lines(data: bytes, first: int, last: int) -> int:
    """The bytes of lines `first` to `last` (1-based) of `data`, their line breaks included."""
    lines = data.split(b"\n")
    return len(b"\n".join(lines[first - 1 : last])) + (last < len(lines))


@pytest.mark.parametrize(
    ("data", "fmt", "options", "span", "good"),
    [
        (b"id,note\n1,a\n2," + BIG + b"\n3,c\n", "csv", {}, (3, 3), (2, 4)),
        # a quoted value over many short lines, each well under the cap
        (b'id,note\n1,a\n2,"' + b'x,""y""\r\n' * 120_000 + b'"\n3,c\n', "csv", {},
         (3, 120_003), (2, 120_004)),
        # a long line whose quoted value (doubled quotes in it) goes on over more lines
        (b'id,note\n1,a\n2,"q ""' + BIG + b'""\n\n,"\n3,c\n', "csv", {}, (3, 5), (2, 6)),
        (b"id,note\n1,a\n3,c\n2," + BIG, "csv", {}, (4, 4), (2, 3)),  # the last line, no line break
        # CDM's QuoteStyle.None: a quote is text, so the record ends with its line
        (b'1;a\n2;"' + BIG + b"\n3;c\n", "csv", CDM_OPTIONS, (2, 2), (1, 3)),
        (b'{"id": "1", "note": "a"}\n{"id": "2", "note": "' + BIG + b'"}\n{"id": "3", "note": "c"}',
         "jsonl", {}, (2, 2), (1, 3)),
    ],
    ids=["csv-line", "csv-quoted-lines", "csv-line-and-lines", "csv-last", "cdm-unquoted", "jsonl"],
)  # fmt: skip
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_a_record_over_the_cap_is_one_problem_and_reading_goes_on(
    data: bytes,
    fmt: str,
    options: dict[str, Any],
    span: tuple[int, int],
    good: tuple[int, int],
    gzipped: bool,
) -> None:
    stored = gzip.compress(data) if gzipped else data
    chunks = [stored[i : i + 100_000] for i in range(0, len(stored), 100_000)]
    records = list(RecordReader(open_lines(chunks), fmt, **options))  # type: ignore[arg-type]

    assert [
        (r.line, r.values.get("id"), r.values.get("note")) for r in records if not r.problem
    ] == [
        (good[0], "1", "a"),
        (good[1], "3", "c"),
    ]
    (rejected,) = [r for r in records if r.problem]
    start, end = span
    where = f"line {start}" if start == end else f"lines {start} to {end}"
    assert rejected.line == start
    assert _too_long(rejected) == (
        f"on {where} is {_size_of_lines(data, start, end):,} bytes long; a record may have at "
        "most 1 MiB (1,048,576 bytes)"
    )


def test_an_over_long_record_whose_quote_never_closes_fails_the_file() -> None:
    with pytest.raises(
        SourceError,
        match=r"record starting at line 3: unexpected end of data \(a quote is opened and never",
    ):
        _read(b'id,note\n1,a\n2,"' + b"x\n" * (CAP // 2) + b"3,c\n")


@pytest.mark.parametrize("header", [b"id," + BIG + b"\n1,a\n", b'id,"' + b"x\n" * CAP])
def test_an_over_long_header_fails_the_file_clearly(header: bytes) -> None:
    with pytest.raises(SourceError, match=r"the header row \(line 1\) is over 1 MiB \(1,048,576"):
        _read(header)


def _stream(*parts: bytes | tuple[bytes, int]) -> Iterator[bytes]:
    """Bytes made as they are read: a (piece, count) part repeats one piece, never joined."""
    for part in parts:
        if isinstance(part, bytes):
            yield part
        else:
            yield from itertools.repeat(*part)


def _gzip(pieces: Iterator[bytes]) -> list[bytes]:
    compressor = zlib.compressobj(wbits=31)  # the gzip format
    out = [compressor.compress(piece) for piece in pieces]
    return [*out, compressor.flush()]


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl"])
def test_a_50_mb_line_is_read_in_bounded_memory(fmt: str) -> None:
    """Reading a source holding one 50 MB line never holds it: the peak of everything Python
    allocates stays far below it (the line is only ever one 1 MiB piece, repeated)."""
    piece = b'a ""q"" \xf0\x9f\x8e\x89,;xy' * (MIB // 16)  # doubled quotes, emoji, delimiters
    assert len(piece) == MIB
    if fmt == "jsonl":
        before, opening, closing, after = (
            b'{"id": "1"}\n',
            b'{"id": "2", "n": "',
            b'"}\n',
            b'{"id": "3"}\n',
        )
    else:
        before, opening, closing, after = b"id,note\n1,a\n", b'2,"', b'"\n', b"3,c\n"
    parts = (before + opening, (piece, 50), closing + after)
    chunks: Iterable[bytes] = _gzip(_stream(*parts)) if fmt == "csv.gz" else _stream(*parts)

    tracemalloc.start()
    try:
        reader = RecordReader(open_lines(chunks), "jsonl" if fmt == "jsonl" else "csv")
        records = list(reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB"
    first = 1 if fmt == "jsonl" else 2
    assert [(r.line, r.values.get("id")) for r in records] == [
        (first, "1"),
        (first + 1, None),
        (first + 2, "3"),
    ]
    size = len(opening) + 50 * MIB + len(closing)
    assert _too_long(records[1]).startswith(f"on line {first + 1} is {size:,} bytes long;")


def _window(chunks: Iterable[bytes], start: int, end: int) -> Iterator[bytes]:
    """Bytes `start` to `end` of a stream, as a ranged blob download gives them."""
    offset = 0
    for chunk in chunks:
        low, high = max(start - offset, 0), min(end - offset, len(chunk))
        if low < high:
            yield chunk[low:high]
        offset += len(chunk)


def test_ranges_cut_inside_a_50_mb_record_read_each_row_once() -> None:
    """Every target inside the record (a quoted value over 50 line breaks) moves to the record
    after it; read range by range, every row comes back once at its line, and the record is
    one problem in the range it starts in."""
    piece = b'a ""q"", \xf0\x9f\x8e\x89;xy' * (MIB // 16)
    piece = piece[:-2] + b"\r\n"
    head, tail = b"id,note\n1,a\n2,b\n3,c\n", b"5,e\n6,f\n7,g\n"
    parts = (head + b'4,"', (piece, 50), b'"\n' + tail)
    size = len(head) + 3 + 50 * MIB + 2 + len(tail)
    after = size - len(tail)  # where the record after the 50 MB one starts
    targets = [10, *range(MIB, size, 3 * MIB)]

    starts = record_starts(_stream(*parts), targets, quoted=True)

    assert [(s.offset, s.line) for s in starts] == [(12, 3), (after, 56)]
    bounds = [(0, 1), *((s.offset, s.line) for s in starts), (size, 0)]
    records = []
    for (start, line), (end, _) in itertools.pairwise(bounds):
        lines = open_lines(_window(_stream(*parts), start, end), first_line=line)
        records += RecordReader(lines, "csv", header=None if start == 0 else ["id", "note"])
    assert [(r.line, r.values.get("id")) for r in records] == [
        (2, "1"),
        (3, "2"),
        (4, "3"),
        (5, None),
        (56, "5"),
        (57, "6"),
        (58, "7"),
    ]
    assert _too_long(records[3]).startswith(f"on lines 5 to 55 is {after - len(head):,} bytes")
