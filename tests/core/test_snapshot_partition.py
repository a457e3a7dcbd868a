"""A snapshot partition read in bulk: its lines, ids and raw digests, and lookups by digest,
for messy ids and lines without a raw digest."""

from __future__ import annotations

import numpy as np

from shared.core.snapshot_partition import SnapshotPartition


def _line(id_json: str, raw: str) -> str:
    return f'{id_json}\tabc123\t{{"email":"0011223344556677"}}\t{raw}'


def test_lines_ids_and_raw_digests_are_found_for_messy_ids() -> None:
    lines = [
        _line('"Zoë 李 🎉"', "00000000000000ff"),
        _line('"tab\\there, \\"quoted\\""', ""),  # no raw digest known
        _line('"\\ufeffbom"', "ffffffffffffffff"),
        _line("12345", "0123456789abcdef"),
        _line('"short raw"', "abc"),
    ]
    partition = SnapshotPartition(("\n".join(lines) + "\n").encode())
    assert partition.lines == lines
    assert partition.ids == [
        '"Zoë 李 🎉"',
        '"tab\\there, \\"quoted\\""',
        '"\\ufeffbom"',
        "12345",
        '"short raw"',
    ]
    assert partition.position['"\\ufeffbom"'] == 2
    wanted = np.array([0xFF, 0xFFFF_FFFF_FFFF_FFFF, 0x0123456789ABCDEF, 0xABC, 0, 7], np.uint64)
    assert partition.find(wanted).tolist() == [0, 2, 3, -1, -1, -1]
    assert partition.raws[3] == 0x0123456789ABCDEF


def test_a_last_line_without_a_line_break_and_an_empty_partition() -> None:
    partition = SnapshotPartition(_line('"a"', "000000000000000a").encode())
    assert partition.ids == ['"a"'] and partition.find(np.array([10], np.uint64)).tolist() == [0]
    empty = SnapshotPartition(b"")
    assert len(empty) == 0 and empty.find(np.array([10], np.uint64)).tolist() == [-1]


def test_upper_case_or_stray_digits_are_no_raw_digest() -> None:
    partition = SnapshotPartition(
        "\n".join([_line('"a"', "00000000000000FF"), _line('"b"', "00000000000000fg")]).encode()
    )
    assert partition.find(np.array([0xFF], np.uint64)).tolist() == [-1]


def test_a_line_shorter_than_a_digest_has_none() -> None:
    partition = SnapshotPartition(b'"1"\t\t{}\t')
    assert partition.ids == ['"1"'] and partition.find(np.array([1], np.uint64)).tolist() == [-1]
