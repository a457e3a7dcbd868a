"""Raw records: a byte range cut into records without parsing, as the csv module would read
them, however the download cuts it into chunks; and the index that finds a record's
partition by its digest."""

from __future__ import annotations

import csv
import io
import random
from hashlib import blake2b

import pytest

from shared.core import raw_records
from shared.core.raw_records import RawPathUnsafe, digest_records, raw_blocks, raw_digest_seed
from shared.core.record_index import RecordIndex

MESSY_CSV = (
    "CustomerId,Email,Note\r\n"
    'a-1,a@example.com,"says ""hi"", twice"\r\n'
    "\r\n"
    'a-2,b@example.com,"multi\nline, with comma\n\n"\n'
    "a-3,c@example.com,Zoë 李 🎉\n"
    "\n"
    'a-4,d@example.com,"""quoted"" start\r\nand a CRLF inside"\n'
    "a-5,e@example.com,\n"
).encode()


def _chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _records(
    data: bytes, size: int, *, quoted: bool = True, json_lines: bool = False, limit: int = 1 << 20
):
    found = []
    for block in raw_blocks(
        _chunked(data, size),
        offset=100,
        first_line=7,
        quoted=quoted,
        json_lines=json_lines,
        limit=limit,
    ):
        for line, start, end in zip(block.lines, block.starts, block.ends, strict=True):
            found.append((line, block.offset + start, block.data[start:end]))
    return found


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64, 10_000])
def test_records_are_the_csv_modules_records_whatever_the_chunks(size: int) -> None:
    records = _records(MESSY_CSV, size)
    parsed = list(csv.reader(io.StringIO(MESSY_CSV.decode(), newline="")))
    each = [list(csv.reader(io.StringIO(r.decode(), newline=""))) for _, _, r in records]
    assert all(len(rows) == 1 for rows in each)  # a record is one row, whole
    assert [rows[0] for rows in each] == [row for row in parsed if row]
    # Lines count from the range's first line; offsets are in the file (the range starts at 100).
    assert [line for line, _, _ in records] == [7, 8, 10, 14, 16, 18]
    for _, offset, record in records:
        assert MESSY_CSV[offset - 100 : offset - 100 + len(record)] == record


@pytest.mark.parametrize("block", [1, 5, 64])
def test_a_long_download_piece_is_cut_in_blocks_with_the_same_records(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download's first piece may be 32 MiB: it is cut into blocks (4 MiB, here a few
    bytes), whatever the records, and gives what small pieces give."""
    expected = _records(MESSY_CSV, 10_000)
    monkeypatch.setattr(raw_records, "BLOCK_BYTES", block)
    assert _records(MESSY_CSV, len(MESSY_CSV)) == expected


def test_a_range_without_a_final_line_break_ends_with_its_last_record() -> None:
    assert _records(b"x,1\ny,2", 3)[-1] == (8, 104, b"y,2")


def test_a_quote_never_closed_is_unsafe() -> None:
    with pytest.raises(RawPathUnsafe, match="never closed"):
        _records(b'x,1\ny,"2\nz,3\n', 4)


def test_a_record_over_the_cap_is_unsafe_before_it_is_held_whole() -> None:
    with pytest.raises(RawPathUnsafe, match="over the cap"):
        _records(b"x,1\n" + b"y" * 100 + b"\n", 8, limit=50)
    with pytest.raises(RawPathUnsafe, match="over the cap"):  # no line break in sight
        _records(b"x,1\n" + b"y" * 100, 8, limit=50)
    with pytest.raises(RawPathUnsafe, match="over the cap"):  # inside quotes
        _records(b'x,"1\n' + b"y\n" * 60 + b'"\n', 8, limit=50)


def test_json_lines_records_are_lines_and_quotes_mean_nothing() -> None:
    data = b'{"a": "x\\"y"}\n  \n{"a": "\\"\\""}\n'
    assert [r for _, _, r in _records(data, 5, quoted=False, json_lines=True)] == [
        b'{"a": "x\\"y"}',
        b'{"a": "\\"\\""}',
    ]


@pytest.mark.parametrize("seed", range(5))
def test_random_messy_csv_cuts_as_the_csv_module_reads_it(seed: int) -> None:
    """Fields with quotes, commas, CR, LF, CRLF, spaces, accents and emoji, blank lines and
    lines of spaces between rows, cut into random chunks: the same records as csv.reader."""
    rnd = random.Random(seed)
    pieces = ['"', ",", "\n", "\r\n", "\r", " ", "x", "Zoë", "🎉", '""', "a,b"]
    out = io.StringIO()
    # CRLF rows: with LF rows the csv module leaves a field holding a bare CR unquoted, and
    # reads that CR back as a row's end (such a file is caught where its records are parsed).
    writer = csv.writer(out, lineterminator="\r\n")
    for _ in range(300):
        writer.writerow(["".join(rnd.choices(pieces, k=rnd.randint(0, 6))) for _ in range(3)])
        if rnd.random() < 0.1:
            out.write(rnd.choice(["\n", "\r\n"]))
    data = out.getvalue().encode()
    expected = [row for row in csv.reader(io.StringIO(data.decode(), newline="")) if row]
    records = _records(data, rnd.randint(1, 700))
    assert [next(csv.reader(io.StringIO(r.decode(), newline=""))) for _, _, r in records] == (
        expected
    )


def test_json_lines_of_spaces_are_no_records_whatever_the_spaces() -> None:
    data = b'{"a":1}\n\t\x0b\x0c \r\n\r\n\n {"a":2}\n'
    assert _records(data, 3, quoted=False, json_lines=True) == [
        (7, 100, b'{"a":1}'),
        (11, 117, b' {"a":2}'),
    ]


@pytest.mark.parametrize("size", [1, 4, 64])
def test_unquoted_csv_records_are_lines_where_quotes_are_text_and_spaces_a_record(
    size: int,
) -> None:
    """A CDM file written with QuoteStyle.None: a quote is text (it opens nothing), and a line
    of spaces is a record as the csv module reads it (a row with too few fields), not a blank
    line as in JSON Lines; a blank line is none."""
    data = b'a;5" screen;x\r\n   \r\n\r\nb;"open;y\nc;z";w\n'
    records = _records(data, size, quoted=False)
    rows = csv.reader(io.StringIO(data.decode(), newline=""), delimiter=";", quoting=csv.QUOTE_NONE)
    assert [r for _, _, r in records] == [b'a;5" screen;x\r', b"   \r", b'b;"open;y', b'c;z";w']
    assert [line for line, _, _ in records] == [7, 8, 10, 11]
    assert [row for row in rows if row] == [
        next(csv.reader([r.decode()], delimiter=";", quoting=csv.QUOTE_NONE)) for _, _, r in records
    ]


def test_digests_are_seeded_by_what_makes_bytes_a_profile() -> None:
    (block,) = raw_blocks([b"x,1\n"], offset=0, first_line=2, quoted=True, limit=100)
    base = digest_records(block, raw_digest_seed("code", "mapping", "csv", ["a", "b"]))
    for seed in (
        raw_digest_seed("other code", "mapping", "csv", ["a", "b"]),
        raw_digest_seed("code", "other mapping", "csv", ["a", "b"]),
        raw_digest_seed("code", "mapping", "jsonl", ["a", "b"]),
        raw_digest_seed("code", "mapping", "csv", ["b", "a"]),
    ):
        assert digest_records(block, seed) != base
    assert digest_records(block, raw_digest_seed("code", "mapping", "csv", ["a", "b"])) == base


def test_the_index_finds_each_digests_partition() -> None:
    digests = [blake2b(str(n).encode(), digest_size=8).digest() for n in range(1_000)]
    index = RecordIndex([b"".join(digests[p::255]) for p in range(255)])
    assert len(index) == 1_000
    strangers = [blake2b(f"x{n}".encode(), digest_size=8).digest() for n in range(100)]
    found = index.partitions(digests + strangers).tolist()
    assert found[:1_000] == [n % 255 for n in range(1_000)]
    assert found[1_000:] == [-1] * 100
    assert RecordIndex([b"", b""]).partitions(digests[:2]).tolist() == [-1, -1]
