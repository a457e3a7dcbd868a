"""How many byte ranges the plan cuts each of a source's data files into: the whole source's
one file, or the partition files of a CDM folder."""

from __future__ import annotations

import pytest

from shared.pipeline.run_source import _range_counts

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("sizes", "indexed", "counts"),
    [
        ([100 * MIB], False, [13]),  # a file alone: over a range, in ranges of about one
        ([9 * MIB], False, [2]),
        ([9 * MIB], True, [2]),  # a delta's file alone: two at least, split inline otherwise
        ([8 * MIB], False, [1]),
        ([9 * MIB] * 10, False, [1] * 10),  # a folder's files are jobs already
        ([13 * MIB, 11 * MIB, 0], False, [2, 1, 1]),  # cut from 1.5 ranges; 0: gzip, uncut
        ([50 * MIB, 50 * MIB], True, [2, 2]),  # a delta's ranges are three times as large
        ([1000 * MIB] * 4, False, [16] * 4),  # MAX_SPLITS jobs more than the files at most
        ([100 * MIB] * 80, False, [1] * 80),
        ([1 * MIB] * 99 + [5000 * MIB], False, [1] * 99 + [39]),  # a large file among many
    ],
)
def test_how_many_ranges_each_data_file_is_cut_into(
    sizes: list[int], indexed: bool, counts: list[int]
) -> None:
    assert _range_counts(sizes, 8 * MIB, indexed) == counts
