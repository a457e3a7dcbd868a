"""A snapshot partition in columns: what is written reads back entry for entry (messy ids,
unknown digests, absent attributes, columns added on the way, copies from partitions of
other columns), stored compressed a column after another; the version before's partitions and
earlier text formats are read, a damaged partition is refused with a reason, and lookups by raw
digest find the right entry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zstandard

from shared.core.snapshot_partition import (
    MAGIC,
    EntryPacker,
    SnapshotFormatError,
    SnapshotPartition,
    assemble,
    merged,
    parse_snapshot_line,
)
from tests.snapshot_formats import version_1

MESSY_IDS = [
    json.dumps("Zoë 李 🎉", ensure_ascii=False),
    json.dumps('tab\there, "quoted", comma'),
    json.dumps("line\nbreak and \u2028 separator", ensure_ascii=False),
    json.dumps("\ufeffbom", ensure_ascii=False),
    "12345",
    json.dumps("x" * 5_000),
]
PRINTS = {"email": "00112233445566ff", "first_name": "8899aabbccddeeff", "segments": "0" * 15 + "1"}


def _packed(
    entries: list[tuple[str, str, dict[str, str], str]], columns: list[str] | None = None
) -> SnapshotPartition:
    packer = EntryPacker(columns or [])
    for entry in entries:
        packer.add(*entry)
    return assemble(packer, [])


def _entries(partition: SnapshotPartition) -> list[tuple[str, str, dict[str, str], str]]:
    return [
        (partition.ids[at], partition.digest(at), partition.prints(at), partition.raw(at))
        for at in range(len(partition))
    ]


def test_entries_with_messy_ids_read_back_as_written() -> None:
    entries = [
        (id_json, f"{n + 1:016x}", {**PRINTS, "note": f"{n + 7:016x}"}, f"{n + 100:016x}")
        for n, id_json in enumerate(MESSY_IDS)
    ]
    entries.append(('"no digests"', "", {"email": "00000000000000aa"}, ""))  # unknown: empty
    blob = _packed(entries, ["email", "first_name"]).to_blob()
    assert blob.startswith(MAGIC)
    with pytest.raises(UnicodeDecodeError):  # what an earlier version does with it: it fails
        blob.decode()
    read = SnapshotPartition.from_blob(blob)
    assert _entries(read) == entries
    assert read.columns == ["email", "first_name", "segments", "note"]
    assert read.position['"no digests"'] == len(entries) - 1
    id_json, digest, prints_json, raw = parse_snapshot_line(read.line(0))
    assert (id_json, digest, json.loads(prints_json), raw) == entries[0]


def test_a_column_added_after_entries_were_packed_leaves_them_without_it() -> None:
    """An entry kept from a snapshot of an earlier mapping names an attribute the others lack."""
    entries = [
        ('"a"', "0" * 15 + "a", {"email": "1" * 16}, "2" * 16),
        ('"b"', "0" * 15 + "b", {"email": "3" * 16, "old_attribute": "4" * 16}, ""),
        ('"c"', "0" * 15 + "c", {}, "5" * 16),
    ]
    read = SnapshotPartition.from_blob(_packed(entries, ["email"]).to_blob())
    assert _entries(read) == entries and read.columns == ["email", "old_attribute"]


def test_copies_from_partitions_of_other_columns_keep_their_entries() -> None:
    first = _packed([('"a"', "1" * 16, {"email": "a" * 16, "x": "b" * 16}, "c" * 16)])
    second = _packed(
        [
            ('"b"', "2" * 16, {"y": "d" * 16}, ""),
            ('"c"', "3" * 16, {"email": "e" * 16}, "f" * 16),
        ]
    )
    packer = EntryPacker(["email"])
    packer.add('"new"', "", {"email": "9" * 16}, "8" * 16)
    written = assemble(packer, [(second, np.array([1, 0])), (first, np.array([0]))])
    read = SnapshotPartition.from_blob(written.to_blob())
    assert _entries(read) == [
        ('"new"', "", {"email": "9" * 16}, "8" * 16),
        ('"c"', "3" * 16, {"email": "e" * 16}, "f" * 16),
        ('"b"', "2" * 16, {"y": "d" * 16}, ""),
        ('"a"', "1" * 16, {"email": "a" * 16, "x": "b" * 16}, "c" * 16),
    ]
    both = merged([first, second])
    assert both.ids == ['"a"', '"b"', '"c"'] and both.prints(1) == {"y": "d" * 16}
    assert both.select(np.array([False, True, False])).ids == ['"b"']


def test_an_empty_partition_reads_back_empty() -> None:
    read = SnapshotPartition.from_blob(_packed([]).to_blob())
    assert len(read) == 0 and read.find(np.array([1], np.uint64)).tolist() == [-1]
    assert len(SnapshotPartition.from_blob(b"")) == 0  # a text partition with no lines


def test_text_partitions_of_earlier_versions_are_read() -> None:
    """Four fields (with raw digests), three (before them), `[id, fingerprints]` (before row
    digests); blank lines skipped; a digest that is not 16 hex digits is unknown."""
    lines = [
        '"four"\t0123456789abcdef\t{"email":"00000000000000ff"}\tfedcba9876543210',
        "",
        '"three"\t0123456789abcdef\t{"email":"00000000000000ee"}',
        json.dumps(["bracket", {"email": "00000000000000dd"}]),
        '"short"\tabc123\t{}\tABCDEF0123456789',  # upper case and short digests: unknown
    ]
    read = SnapshotPartition.from_blob("\n".join(lines).encode())
    assert _entries(read) == [
        ('"four"', "0123456789abcdef", {"email": "00000000000000ff"}, "fedcba9876543210"),
        ('"three"', "0123456789abcdef", {"email": "00000000000000ee"}, ""),
        ('"bracket"', "", {"email": "00000000000000dd"}, ""),
        ('"short"', "", {}, ""),
    ]


def test_partitions_the_version_before_wrote_are_read() -> None:
    entries = [
        (id_json, f"{n + 1:016x}", {**PRINTS, "note": f"{n + 7:016x}"}, f"{n + 100:016x}")
        for n, id_json in enumerate(MESSY_IDS)
    ]
    written = _packed(entries, ["email", "first_name"])
    read = SnapshotPartition.from_blob(version_1(written))
    assert _entries(read) == entries and read.columns == written.columns
    assert len(SnapshotPartition.from_blob(version_1(_packed([])))) == 0
    with pytest.raises(SnapshotFormatError, match="cut short or altered"):
        SnapshotPartition.from_blob(version_1(written)[:-3])


def test_ids_and_numbers_are_stored_compressed_a_column_after_another() -> None:
    """A column of one value (the segment's membership) shrinks to almost nothing; digests
    do not shrink."""
    count = 2_000
    rng = np.random.default_rng(5)
    digests = [f"{value:016x}" for value in rng.integers(1, 2**63, size=2 * count).tolist()]
    entries = [
        (f'"customer-{n:06d}"', digests[2 * n], {"segments": "0" * 15 + "1"}, digests[2 * n + 1])
        for n in range(count)
    ]
    written = _packed(entries)
    blob = written.to_blob()
    header = json.loads(blob[len(MAGIC) : blob.index(b"\n", len(MAGIC))])
    frames = blob[blob.index(b"\n", len(MAGIC)) + 1 :]
    ids_frame, numbers_frame = frames[: header["ids_bytes"]], frames[header["ids_bytes"] :]
    unpack = zstandard.ZstdDecompressor().decompress
    assert unpack(ids_frame) == "\n".join(written.ids).encode()
    columns = np.frombuffer(unpack(numbers_frame), ">u8").reshape(3, count)
    assert columns[0].tolist() == [int(d, 16) for d in digests[::2]]  # the row digests first
    assert set(columns[2].tolist()) == {1}
    assert len(numbers_frame) < 18 * count  # 24 bytes a profile as they are
    assert _entries(SnapshotPartition.from_blob(blob)) == entries


def test_a_damaged_partition_is_refused_with_what_is_wrong() -> None:
    blob = _packed([('"a"', "1" * 16, {"email": "2" * 16}, "3" * 16)]).to_blob()
    with pytest.raises(SnapshotFormatError, match="the numbers of a snapshot partition are cut"):
        SnapshotPartition.from_blob(blob[:-3])
    with pytest.raises(SnapshotFormatError, match=r"numbers .* followed by other bytes"):
        SnapshotPartition.from_blob(blob + b"more")
    flipped = bytearray(blob)
    flipped[-6] ^= 0x01  # inside the numbers, which fail their checksum
    with pytest.raises(SnapshotFormatError, match="the numbers of a snapshot partition are dam"):
        SnapshotPartition.from_blob(bytes(flipped))
    ids_at = blob.index(b"\n", len(MAGIC)) + 1
    for at in (ids_at + 5, ids_at + 8):  # the frame's declared size; its content
        flipped = bytearray(blob)
        flipped[at] ^= 0x40
        with pytest.raises(SnapshotFormatError, match="the ids of a snapshot partition"):
            SnapshotPartition.from_blob(bytes(flipped))
    with pytest.raises(SnapshotFormatError, match="header"):
        SnapshotPartition.from_blob(MAGIC + b"{not json\n")
    newer = blob.replace(b'"version": 2', b'"version": 3')
    with pytest.raises(SnapshotFormatError, match="newer version"):
        SnapshotPartition.from_blob(newer)
    # The bad values, each after a good entry: the fourth holds four values' digits, a whole
    # entry more (three values here); the fifth, hex digits but for one character; then values
    # short and long that add up to as many digits as good ones (the first pair in digits, the
    # second in bytes), 16 characters of which two are spaces, and 16 digits and spaces.
    bad = [
        [("not hex", {})],
        [("", {"email": "f" * 15})],
        [("1" * 17, {})],
        [("1" * 64, {})],
        [("1" * 15 + "z", {})],
        [("1" * 15, {}), ("4" * 17, {})],
        [("1" * 14, {}), ("4" * 18, {})],
        [("111111  11111111", {})],
        [("", {"email": "2" * 16 + "  "})],
    ]
    for entries in bad:
        packer = EntryPacker(["email"])
        packer.add('"fine"', "1" * 16, {"email": "2" * 16}, "3" * 16)
        for n, (digest, prints) in enumerate(entries):
            packer.add(f'"{n}"', digest, prints, "")
        with pytest.raises(SnapshotFormatError, match="16 hex digits"):
            assemble(packer, [])
    packer = EntryPacker(["email"])  # a bad value packed before a column was added
    packer.add('"a"', "1" * 15, {}, "")
    packer.add('"b"', "", {"email": "2" * 16, "new": "3" * 16}, "")
    with pytest.raises(SnapshotFormatError, match="16 hex digits"):
        assemble(packer, [])


def test_entries_packed_between_columns_added_keep_their_values_in_every_column() -> None:
    """Three stretches of entries (two columns added on the way), assembled with a copy that
    brings one more column: every entry keeps what it had and lacks the rest."""
    other = _packed([('"z"', "9" * 16, {"copied": "8" * 16}, "")])
    packer = EntryPacker(["email"])
    entries = [
        ('"a"', "1" * 16, {"email": "a" * 16}, "2" * 16),
        ('"b"', "", {}, ""),
        ('"c"', "3" * 16, {"email": "b" * 16, "x": "c" * 16}, ""),
        ('"d"', "4" * 16, {"x": "d" * 16}, "5" * 16),
        ('"e"', "", {"y": "e" * 16, "email": "f" * 16}, "6" * 16),
    ]
    for entry in entries:
        packer.add(*entry)
    written = assemble(packer, [(other, np.array([0]))])
    assert written.columns == ["email", "x", "y", "copied"]
    assert _entries(written) == [*entries, ('"z"', "9" * 16, {"copied": "8" * 16}, "")]
    assert _entries(SnapshotPartition.from_blob(written.to_blob())) == _entries(written)


def test_raw_digests_are_found_and_unknown_ones_never_match() -> None:
    entries = [
        ('"a"', "", {}, "00000000000000ff"),
        ('"b"', "", {}, ""),  # unknown: 0, which no lookup may find
        ('"c"', "", {}, "ffffffffffffffff"),
        ('"d"', "", {}, "0123456789abcdef"),
    ]
    read = SnapshotPartition.from_blob(_packed(entries).to_blob())
    wanted = np.array([0xFF, 0xFFFF_FFFF_FFFF_FFFF, 0x0123456789ABCDEF, 0, 7], np.uint64)
    assert read.find(wanted).tolist() == [0, 2, 3, -1, -1]


def test_raw_digests_asked_in_any_order_and_more_than_once_find_their_entries() -> None:
    """The lookup sorts what it is asked for (`search_sorted`): each answer must still go
    back to its question, whatever the order, repeats and digests past the largest known."""
    rng = np.random.default_rng(3)
    raws = [int(r) for r in rng.integers(1, 2**62, 1_000, dtype=np.uint64)]
    entries = [(f'"c-{n}"', "", {}, f"{raw:016x}") for n, raw in enumerate(raws)]
    read = SnapshotPartition.from_blob(_packed(entries).to_blob())
    asked = [*raws, *raws[:50], 2**63, 2**64 - 1, 5, *(raws[n] + 1 for n in range(20))]
    order = rng.permutation(len(asked))
    wanted = np.array([asked[n] for n in order], np.uint64)
    at = {raw: n for n, raw in enumerate(raws)}
    assert read.find(wanted).tolist() == [at.get(asked[n], -1) for n in order]
