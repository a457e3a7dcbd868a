"""Streaming readers: RFC 4180 quoting, BOM, gzip, JSON Lines, and errors that say where."""

import gzip
import json

import pytest

from shared.core.source_files import RecordReader, SourceError, open_lines, record_starts

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
    assert records[1].problem == "has 2 fields but the header has 3"
    assert records[1].values == {"field 1": "2", "field 2": "b@example.com"}
    assert records[2].values["Note"] == "Zoë 🎉 naïve"


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
    assert "is not valid JSON" in (records[1].problem or "")
    assert records[2].problem == "is not a JSON object"


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
    with pytest.raises(SourceError, match=r"more than once: \['a'\]"):
        _read(b"a,b,a\n1,2,3\n")


def test_missing_mapped_column_lists_the_header() -> None:
    reader = RecordReader(open_lines([b"CustomerId,Mail\n1,x\n"]), "csv")
    with pytest.raises(SourceError, match=r"\['Email'\] not in the CSV header.*'Mail'"):
        reader.require_columns(["CustomerId", "Email"])


def test_huge_field_is_read_whole() -> None:
    big = "x" * 2_000_000
    _, records = _read(f"id,note\n1,{big}\n".encode())
    assert len(records[0].values["note"]) == 2_000_000


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
    assert records[1].problem == "has 3 fields but 2 are expected"
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
    reader = RecordReader(lines, "csv", header=["Id", "Note"], first_line=start.line)
    records = list(reader)
    assert [(r.line, r.values["Id"]) for r in records] == [
        (4, "2"),
        (5, "3"),
        (8, "4"),
        (9, "5"),
        (11, "6"),
    ]
    assert records[-2].values["Note"] == '"\n"'
