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


def test_a_snapshot_holding_an_id_twice_is_not_taken_in_bulk() -> None:
    """The row by row path keeps one line per id; taken in bulk, the other line of the id
    would be taken for a customer who left."""
    line = '"dup"\tabc\t{}\t00000000000000aa'
    twice = SnapshotPartition(f"{line}\n{line[:-2]}bb\n".encode())
    records = np.zeros(1, matched_record_type())
    records["raw"] = 0xAA
    piece = MATCHED_MARK + records.tobytes()
    assert diff_partition._take_in_bulk(twice, [piece]) is None
    once = SnapshotPartition(f"{line}\n".encode())
    taken = diff_partition._take_in_bulk(once, [piece])
    assert taken is not None and taken[2].lines == [line]


def test_a_snapshot_with_a_blank_line_is_not_taken_in_bulk() -> None:
    """The row by row path skips a blank line; taken in bulk it would be an id of its own."""
    line = '"x"\tabc\t{}\t00000000000000aa'
    records = np.zeros(1, matched_record_type())
    records["raw"] = 0xAA
    piece = MATCHED_MARK + records.tobytes()
    assert diff_partition._take_in_bulk(SnapshotPartition(f"{line}\n\n".encode()), [piece]) is None
