"""A piece's bytes as a diff reads them (`run_files.gunzipped`): its text rows gzipped, then
its matched records as they are; a chunk gzipped whole; an earlier version's plain bytes."""

from __future__ import annotations

import zlib

import pytest

from shared.pipeline.run_files import (
    GZIP_WBITS,
    MATCHED_MARK,
    gunzipped,
    matched_record_type,
    matched_records,
    piece_sections,
)

TEXT = '3\t"c-Zoë 🎉"\t0123456789abcdef\t{"Note":"says \\"hi\\", twice\\nand\\ttabs"}\t\n'.encode()


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(1, wbits=GZIP_WBITS)
    return packer.compress(data) + packer.flush()


def _records() -> bytes:
    import numpy as np

    records = np.zeros(3, matched_record_type())
    records["order"], records["offset"], records["length"] = [1, 2, 4], [0, 80, 160], 80
    records["raw"] = [0xFFFF_FFFF_FFFF_FFFF, 0, 0x0A00_0A00]  # newlines and NULs inside
    return records.tobytes()


def test_text_gzipped_then_matched_records_as_they_are() -> None:
    piece = _gzip(TEXT) + MATCHED_MARK + _records()
    text, matched = piece_sections(gunzipped(piece))
    assert text == TEXT.decode()
    assert matched_records(matched).tolist() == matched_records(_records()).tolist()


@pytest.mark.parametrize(
    "plain",
    [MATCHED_MARK + _records(), TEXT, b""],
    ids=["matched-records-only", "earlier-version-text", "empty"],
)
def test_bytes_without_a_gzip_member_are_read_as_they_are(plain: bytes) -> None:
    assert gunzipped(plain) == plain


def test_a_cut_or_damaged_member_is_refused() -> None:
    whole = _gzip(TEXT * 50)
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0x01
    for damaged in (whole[:-9], whole[: len(whole) // 2], bytes(flipped)):
        with pytest.raises(zlib.error):
            gunzipped(damaged + MATCHED_MARK + _records())
