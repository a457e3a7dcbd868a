"""A piece's bytes as a diff reads them (`run_files.unpacked`): its text rows as one Zstandard
frame, then its matched records as they are; a chunk as one frame; an earlier version's gzip
members and plain bytes."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from shared.pipeline.run_files import (
    MATCHED_MARK,
    DamagedRunFile,
    matched_record_type,
    matched_records,
    packer,
    piece_sections,
    unpacked,
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
def test_text_compressed_then_matched_records_as_they_are(pack: object) -> None:
    piece = pack(TEXT) + MATCHED_MARK + _records()  # type: ignore[operator]
    text, matched = piece_sections(unpacked(piece))
    assert text == TEXT.decode()
    assert matched_records(matched).tolist() == matched_records(_records()).tolist()


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
    for damaged in (whole[:-9], whole[: len(whole) // 2], bytes(flipped)):
        for stored in (damaged, damaged + MATCHED_MARK + _records()):
            with pytest.raises(DamagedRunFile):
                unpacked(stored)
