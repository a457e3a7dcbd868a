"""A piece's bytes as a diff reads them (`run_files.unpacked`): its text rows as one Zstandard
frame, then its matched records as another; a chunk as one frame; an earlier version's gzip
members, matched records as they are and plain bytes."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from shared.pipeline.run_files import (
    MATCHED_MARK,
    PACKED_MATCHED_MARK,
    DamagedRunFile,
    matched_record_type,
    matched_records,
    packer,
    piece_sections,
    unpacked,
    unpacked_chunk,
)

TEXT = '3\t"c-Zoë 🎉"\t0123456789abcdef\t{"Note":"says \\"hi\\", twice\\nand\\ttabs"}\t\n'.encode()


def _frame(data: bytes) -> bytes:
    frame = packer()
    return frame.compress(data) + frame.flush()


def _records() -> bytes:
    import numpy as np

    records = np.zeros(3, matched_record_type())
    records["order"], records["offset"], records["length"] = [1, 2, 4], [0, 80, 160], 80
    records["raw"] = [0xFFFF_FFFF_FFFF_FFFF, 0, 0x0A00_0A00]  # newlines and NULs inside
    return records.tobytes()


def test_the_frame_is_zstandard_with_its_checksum() -> None:
    """Operators' tools open it (`zstd -dc`), and a flipped byte cannot pass unseen."""
    frame = _frame(TEXT)
    header = zstandard.get_frame_parameters(frame)
    assert frame[:4] == b"\x28\xb5\x2f\xfd" and header.has_checksum
    assert zstandard.ZstdDecompressor().decompressobj().decompress(frame) == TEXT


@pytest.mark.parametrize("pack", [_frame, gzip.compress], ids=["zstandard", "earlier-gzip"])
@pytest.mark.parametrize("records_packed", [True, False], ids=["records-packed", "earlier-plain"])
def test_text_compressed_then_matched_records(pack: object, records_packed: bool) -> None:
    records = (
        PACKED_MATCHED_MARK + _frame(_records()) if records_packed else MATCHED_MARK + _records()
    )
    text, matched = piece_sections(unpacked(pack(TEXT) + records))  # type: ignore[operator]
    assert text == TEXT.decode()
    assert matched_records(matched).tolist() == matched_records(_records()).tolist()


def test_matched_records_alone_are_read_packed_or_as_they_are() -> None:
    for stored in (PACKED_MATCHED_MARK + _frame(_records()), MATCHED_MARK + _records()):
        text, matched = piece_sections(unpacked(stored))
        assert text == "" and matched == _records()


def test_matched_records_packed_are_smaller() -> None:
    """Orders, offsets and lengths shrink; the digests do not."""
    import numpy as np

    records = np.zeros(5_000, matched_record_type())
    records["order"] = np.arange(5_000) * 32
    records["offset"], records["length"] = records["order"] * 90, 90
    records["raw"] = np.random.default_rng(2).integers(1, 2**63, size=5_000)
    assert len(_frame(records.tobytes())) < 16 * len(records)  # 32 bytes a record as they are


@pytest.mark.parametrize(
    "plain",
    [MATCHED_MARK + _records(), TEXT, b""],
    ids=["matched-records-only", "earlier-version-text", "empty"],
)
def test_bytes_without_a_frame_are_read_as_they_are(plain: bytes) -> None:
    assert unpacked(plain) == plain


@pytest.mark.parametrize("pack", [_frame, gzip.compress], ids=["zstandard", "earlier-gzip"])
def test_a_cut_or_damaged_frame_is_refused(pack: object) -> None:
    """Alone (a chunk's) or with matched records behind it (a piece's)."""
    whole = pack(TEXT * 50)  # type: ignore[operator]
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0x01
    records = PACKED_MATCHED_MARK + _frame(_records())
    for damaged in (whole[:-9], whole[: len(whole) // 2], bytes(flipped)):
        for stored in (damaged, damaged + MATCHED_MARK + _records(), damaged + records):
            with pytest.raises(DamagedRunFile):
                unpacked(stored)


def test_bytes_after_the_text_frame_must_be_matched_records() -> None:
    """Anything else there (or records that do not come to whole ones) is damage, not text."""
    for after in (b"junk", MATCHED_MARK + _records()[:-3], b"\x02" + _frame(_records())):
        with pytest.raises(DamagedRunFile):
            unpacked(_frame(TEXT) + after)


def test_a_chunk_is_its_frame_and_nothing_after_it() -> None:
    chunk = _frame(TEXT)
    assert unpacked_chunk(chunk) == TEXT and unpacked_chunk(TEXT) == TEXT
    assert unpacked_chunk(gzip.compress(TEXT)) == TEXT  # as the version before wrote it
    for stored in (chunk + b"x", chunk + MATCHED_MARK + _records(), chunk[:-2]):
        with pytest.raises(DamagedRunFile):
            unpacked_chunk(stored)


def test_damaged_packed_records_are_refused() -> None:
    """Cut, flipped, not a frame, or with bytes after them: nothing is taken from them."""
    records = _frame(_records() * 40)
    flipped = bytearray(records)
    flipped[len(records) // 2] ^= 0x01
    for damaged in (records[:-5], bytes(flipped), _records(), records + b"more"):
        for stored in (_frame(TEXT) + PACKED_MATCHED_MARK + damaged, PACKED_MATCHED_MARK + damaged):
            with pytest.raises(DamagedRunFile):
                unpacked(stored)
