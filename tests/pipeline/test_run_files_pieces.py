"""Partition pieces: the split writes orjson's bytes straight into each row's line, and the diff
must read back exactly the values the standard library would have given."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shared.core import jsonlines
from shared.core.fingerprints import row_digest, row_digest_seed
from shared.core.snapshot_partition import SnapshotPartition
from shared.pipeline import diff_partition, finalize
from shared.pipeline.run_files import (
    MATCHED_MARK,
    PieceLines,
    matched_record_type,
    read_rows,
    rejection_line,
)

SEED = row_digest_seed("code", "mapping")
MESSY_ROWS = [
    {"CustomerId": "c-1", "Note": 'says "hi", twice\nand\ttabs', "Name": "Zoë 李 🎉"},
    {"CustomerId": "c-2", "Blank": "", "BOM": "\ufeffstart", "Sep": "\u2028\u2029"},
    {"id": 7, "big": 2**70, "neg": -(2**63), "float": 0.1, "tiny": 1e-7, "flag": True},
    {"id": "x", "nested": {"b": [1, None, "two"], "a": {}}, "none": None},
    {"id": "n", "nan": math.nan, "inf": -math.inf},
]


@pytest.mark.parametrize("values", MESSY_ROWS)
def test_a_piece_row_reads_back_as_the_standard_library_writes_and_reads_it(
    values: dict[str, object],
) -> None:
    line = PieceLines(SEED).line(41, 'cust "7"\t', values, "fedcba9876543210")
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one row, one line
    ((order, id_json, digest, values_json, raw),) = list(read_rows(line.decode()))
    assert (order, json.loads(id_json)) == (41, 'cust "7"\t')
    assert digest == row_digest(values_json.encode(), SEED)
    assert raw == "fedcba9876543210"
    assert values_json == jsonlines.dumps(values)
    read = jsonlines.loads(values_json)
    expected = json.loads(json.dumps(values))
    assert json.dumps(read, sort_keys=True) == json.dumps(expected, sort_keys=True)


def _matched_piece(raw: int) -> bytes:
    records = np.zeros(1, matched_record_type())
    records["raw"] = raw
    return MATCHED_MARK + records.tobytes()


def _digest(values: dict[str, object], seed: int = SEED, sort_keys: bool = False) -> str:
    line = PieceLines(seed, sort_keys).line(1, "c-1", values)
    ((_, _, digest, _, _),) = list(read_rows(line.decode()))
    return digest


def test_a_row_digest_tells_values_apart_and_follows_the_code_and_the_mapping() -> None:
    """The diff skips validating a row whose digest is the snapshot's: values that differ in
    any way (kind, NaN or null, a column's name, one character, a quote that moves across a
    field's end) must not share one, and another code or mapping must give every row a new one,
    so rows are validated again. The digest is of the bytes the piece carries."""
    rows: list[dict[str, object]] = [
        {"Id": "c-1", "Email": "a@example.com", "Name": "Zoë 🎉"},
        {"Id": "c-1", "Email": "a@example.com", "Name": "Zoe 🎉"},
        {"Id": "c-1", "Email": "a@example.com", "Name": None},
        {"Id": "c-1", "Email": "a@example.com", "Name": math.nan},
        {"Id": "c-1", "Email": "a@example.com", "Name": math.inf},
        {"Id": "c-1", "Email": "a@example.com", "Name": ""},
        {"Id": "c-1", "Email": "a@example.com", "Name": 1},
        {"Id": "c-1", "Email": "a@example.com", "Name": "1"},
        {"Id": "c-1", "Email": "a@example.com", "Name": 2**70},
        {"Id": "c-1", "Email": "a@example.com", "name": 1},
        {"Id": "c-1", "Email": "a@example.com"},
        {"Id": 'c-1", "Email": "a', "Email": "x"},
        {"Id": "c-1", "Email": 'a", "Email": "x'},
        {"Id": "c-1", "Email": "a@example.com", "Name": "\ufeffZoë"},
    ]
    digests = [_digest(row) for row in rows]
    assert len(set(digests)) == len(rows)
    assert all(len(d) == 16 and int(d, 16) >= 0 for d in digests)  # 64 bits in hex
    assert [_digest(dict(row)) for row in rows] == digests  # the same values: the same digest
    for other in (row_digest_seed("other code", "mapping"), row_digest_seed("code", "other")):
        assert not {_digest(row, other) for row in rows} & set(digests)


@pytest.mark.parametrize("values", [*MESSY_ROWS, {"id": "s", "lone": "\ud800 surrogate"}])
def test_a_rejected_row_reads_back_as_the_standard_library_writes_it(
    values: dict[str, object],
) -> None:
    """A rejected row's line is written by orjson where it writes what the standard library
    reads back; what orjson refuses (a lone surrogate, an integer past 64 bits) or would change
    (NaN and the infinities, which it writes as null) takes the standard library's path."""
    problems = [("email_invalid", "email (column 'Email') has no @: 'a\"b'")]
    line = rejection_line({"line": 7, "file": "a,b.csv"}, values.get("id"), problems, values)
    assert "\n" not in line  # one line of the rejected rows' JSON Lines
    standard = json.dumps(
        {
            "line": 7,
            "file": "a,b.csv",
            "customer_id": values.get("id"),
            "stage": "validation",
            "codes": ["email_invalid"],
            "reasons": [problems[0][1]],
            "row": values,
        },
        ensure_ascii=False,
    )
    # Compared as the standard library writes what it reads (NaN is not equal to itself).
    assert json.dumps(json.loads(line)) == json.dumps(json.loads(standard))


def test_a_rejected_row_holding_what_json_cannot_write_is_written_as_text() -> None:
    """The standard library's path writes what is not JSON as its text, compact as the rest."""
    line = rejection_line({"line": 3}, "c-1", [("x", "y")], {"Odd": frozenset({"a"})})
    assert ", " not in line and ": " not in line
    assert json.loads(line)["row"] == {"Odd": str(frozenset({"a"}))}


def test_the_rejected_rows_merged_are_read_as_the_standard_library_reads_them() -> None:
    """Finalizing reads each part's lines with orjson where it reads them exactly: a line of
    the standard library's (NaN, a lone surrogate, a long integer) is read as it would be."""
    texts = [
        '{"line": 2, "row": {"Name": "Zoë 李 🎉", "Note": "says \\"hi\\",\\nbye"}}',
        '{"line": 3, "row": {"Points": NaN, "Big": 123456789012345678901234567890}}',
        '{"order": 9, "line": 4, "row": {"Lone": "\\ud800"}}',
    ]
    entries = list(finalize._entries([("\n".join(texts) + "\n").encode()]))
    assert [(order, text) for order, text, _ in entries] == [
        (2, texts[0]),
        (3, texts[1]),
        (9, texts[2]),
    ]
    for (*_, entry), expected in zip(entries, texts, strict=True):
        assert json.dumps(entry) == json.dumps(json.loads(expected))  # NaN is not equal to itself


def test_a_json_lines_row_keeps_its_digest_whatever_its_keys_order() -> None:
    """A JSON Lines writer may order a record's keys differently from run to run: its digest is
    of the values with their keys sorted (nested ones too), while its piece keeps the record's
    order, so a rejected row is reported as read. A CSV's values keep the header's order, which
    is the same for every row of a file, and are hashed as the piece carries them."""
    row = {"Name": "Zoë", "Id": "c-1", "Nested": {"b": [1, {"y": 2, "x": 1}], "a": None}}
    turned = {"Nested": {"a": None, "b": [1, {"x": 1, "y": 2}]}, "Id": "c-1", "Name": "Zoë"}
    assert _digest(turned, sort_keys=True) == _digest(row, sort_keys=True)
    assert _digest(turned) != _digest(row)
    for sort_keys in (False, True):
        line = PieceLines(SEED, sort_keys).line(1, "c-1", row).decode()
        ((_, _, _, values_json, _),) = list(read_rows(line))
        assert list(jsonlines.loads(values_json)) == ["Name", "Id", "Nested"]  # as read


def test_a_snapshot_holding_an_id_twice_is_not_taken_in_bulk() -> None:
    """The row by row path keeps one entry per id; taken in bulk, the other entry of the id
    would be taken for a customer who left."""
    line = '"dup"\t0123456789abcdef\t{}\t00000000000000aa'
    twice = SnapshotPartition.from_blob(f"{line}\n{line[:-2]}bb\n".encode())
    assert diff_partition._take_in_bulk(twice, [_matched_piece(0xAA)]) is None
    once = SnapshotPartition.from_blob(f"{line}\n".encode())
    taken = diff_partition._take_in_bulk(once, [_matched_piece(0xAA)])
    assert taken is not None and [once.ids[at] for at in taken[2]] == ['"dup"']
    assert list(taken[2]) == [0]


def test_a_snapshot_with_a_blank_id_is_not_taken_in_bulk() -> None:
    """A blank line of a text snapshot is skipped on both paths; an entry whose id is blank
    would be taken in bulk for an id of its own, so it goes row by row."""
    line = '"x"\t0123456789abcdef\t{}\t00000000000000aa'
    blank_line = SnapshotPartition.from_blob(f"{line}\n\n".encode())
    taken = diff_partition._take_in_bulk(blank_line, [_matched_piece(0xAA)])
    assert taken is not None and [blank_line.ids[at] for at in taken[2]] == ['"x"']
    blank_id = SnapshotPartition.from_blob(f"{line}\n\t\t{{}}\t00000000000000bb\n".encode())
    assert diff_partition._take_in_bulk(blank_id, [_matched_piece(0xAA)]) is None
