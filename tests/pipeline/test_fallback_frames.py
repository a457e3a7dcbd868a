"""The fallbacks a diff writes beside its snapshot partition (`run_files.packed_frame`, a frame
per block the line writer stages) read back as they stream in (`run_files.unpacked_stream`),
however a download cuts them into pieces; an earlier version's plain lines as they are; and
damage refused."""

from __future__ import annotations

import pytest
import zstandard

from shared.pipeline.run_files import DamagedRunFile, packed_frame, unpacked_stream

LINES = [
    '"c-Zoë 🎉"\t\tnull\t\n',
    '"says \\"hi\\", twice\\nand\\ttabs"\t0123456789abcdef\t{"Note":"0a0b0c0d0e0f1011"}\t\n',
    '"\ufeffbom-led"\t\tnull\t\n',
    '"' + "x" * 5000 + '"\t\tnull\t\n',
]
TEXT = "".join(LINES).encode()


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


def _frames(*blocks: bytes) -> bytes:
    return b"".join(packed_frame(block) for block in blocks)


def test_a_block_is_a_frame_with_its_checksum() -> None:
    frame = packed_frame(TEXT)
    assert frame[:4] == b"\x28\xb5\x2f\xfd" and zstandard.get_frame_parameters(frame).has_checksum
    assert zstandard.ZstdDecompressor().decompressobj().decompress(frame) == TEXT
    assert len(frame) < len(TEXT) / 2


@pytest.mark.parametrize("size", [1, 2, 3, 5, 13, 64, 1000, 1 << 20])
def test_frames_one_after_another_are_read_however_the_download_cuts_them(size: int) -> None:
    """Three blocks (one empty: the writer's last block may be) come back as written, a piece
    of the download ending anywhere, inside a frame's magic number too."""
    stored = _frames(TEXT[:100], b"", TEXT[100:])
    assert b"".join(unpacked_stream(_pieces(stored, size))) == TEXT


@pytest.mark.parametrize("size", [1, 3, 1 << 20])
def test_an_earlier_versions_plain_lines_are_read_as_they_are(size: int) -> None:
    assert b"".join(unpacked_stream(_pieces(TEXT, size))) == TEXT


def test_an_empty_blob_holds_nothing() -> None:
    assert b"".join(unpacked_stream([])) == b""
    assert b"".join(unpacked_stream([packed_frame(b"")])) == b""


def _read(data: bytes) -> bytes:
    return b"".join(unpacked_stream(_pieces(data, 7)))


def test_a_flipped_byte_fails_the_checksum() -> None:
    stored = bytearray(_frames(TEXT, TEXT))
    stored[len(stored) - 30] ^= 0x01  # inside the second frame
    with pytest.raises(DamagedRunFile, match="damaged"):
        _read(bytes(stored))


@pytest.mark.parametrize("cut", [1, 3, 8])
def test_a_cut_last_frame_is_refused(cut: int) -> None:
    with pytest.raises(DamagedRunFile, match="cut short"):
        _read(_frames(TEXT, TEXT)[:-cut])


def test_a_blob_cut_inside_the_next_frames_magic_number_is_refused() -> None:
    with pytest.raises(DamagedRunFile, match="cut short"):
        _read(_frames(TEXT) + packed_frame(TEXT)[:2])


@pytest.mark.parametrize("after", [b"x", b"plain text after the frames\n"])
def test_bytes_after_a_frame_that_start_none_are_refused(after: bytes) -> None:
    with pytest.raises(DamagedRunFile, match="start no frame"):
        _read(_frames(TEXT) + after)


@pytest.mark.parametrize("frame", [0, 1], ids=["first-frame", "second-frame"])
def test_nothing_of_a_damaged_frame_comes_out_though_it_spans_pieces(frame: int) -> None:
    """A frame's checksum is at its end: what a download's earlier pieces held of it is held
    back until it passes, so a reader never takes damaged lines for lines (only the frames
    before the damaged one come out)."""
    first, second = packed_frame(TEXT), packed_frame(TEXT[::-1])
    stored = bytearray(first + second)
    stored[(0 if frame == 0 else len(first)) + len(first) // 2] ^= 0x01
    came: list[bytes] = []
    with pytest.raises(DamagedRunFile):
        came.extend(unpacked_stream(_pieces(bytes(stored), 7)))
    assert b"".join(came) == (b"" if frame == 0 else TEXT)
