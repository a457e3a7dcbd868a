"""Partition pieces: the split writes orjson's bytes straight into each row's line, and the diff
must read back exactly the values the standard library would have given."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shared.core import jsonlines
from shared.core.snapshot_partition import SnapshotPartition
from shared.pipeline import diff_partition
from shared.pipeline.run_files import MATCHED_MARK, matched_record_type, piece_line, read_rows

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
    line = piece_line(41, 'cust "7"\t', "0123456789abcdef", values, "fedcba9876543210")
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one row, one line
    ((order, id_json, digest, values_json, raw),) = list(read_rows(line.decode()))
    assert (order, json.loads(id_json), digest) == (41, 'cust "7"\t', "0123456789abcdef")
    assert raw == "fedcba9876543210"
    assert values_json == jsonlines.dumps(values)
    read = jsonlines.loads(values_json)
    expected = json.loads(json.dumps(values))
    assert json.dumps(read, sort_keys=True) == json.dumps(expected, sort_keys=True)


def _matched_piece(raw: int) -> bytes:
    records = np.zeros(1, matched_record_type())
    records["raw"] = raw
    return MATCHED_MARK + records.tobytes()


def test_a_snapshot_holding_an_id_twice_is_not_taken_in_bulk() -> None:
    """The row by row path keeps one entry per id; taken in bulk, the other entry of the id
    would be taken for a customer who left."""
    line = '"dup"\t0123456789abcdef\t{}\t00000000000000aa'
    twice = SnapshotPartition.from_blob(f"{line}\n{line[:-2]}bb\n".encode())
    assert diff_partition._take_in_bulk(twice, [_matched_piece(0xAA)]) is None
    once = SnapshotPartition.from_blob(f"{line}\n".encode())
    taken = diff_partition._take_in_bulk(once, [_matched_piece(0xAA)])
    assert taken is not None and taken[2].ids == ['"dup"'] and list(taken[2].taken) == [0]


def test_a_snapshot_with_a_blank_id_is_not_taken_in_bulk() -> None:
    """A blank line of a text snapshot is skipped on both paths; an entry whose id is blank
    would be taken in bulk for an id of its own, so it goes row by row."""
    line = '"x"\t0123456789abcdef\t{}\t00000000000000aa'
    blank_line = SnapshotPartition.from_blob(f"{line}\n\n".encode())
    taken = diff_partition._take_in_bulk(blank_line, [_matched_piece(0xAA)])
    assert taken is not None and taken[2].ids == ['"x"']
    blank_id = SnapshotPartition.from_blob(f"{line}\n\t\t{{}}\t00000000000000bb\n".encode())
    assert diff_partition._take_in_bulk(blank_id, [_matched_piece(0xAA)]) is None
