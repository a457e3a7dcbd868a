"""Zstandard frames as the app writes its working files and snapshot partitions: the level and
the checksum decided once, and a frame read back as it comes."""

from __future__ import annotations

import zstandard

MAGIC = b"\x28\xb5\x2f\xfd"


class FrameError(ValueError):
    """A frame that fails its checksum or its decoding, or is cut short."""


def compressor() -> zstandard.ZstdCompressor:
    """Level 1 (every byte written is read again soon, so compressing must cost less than the
    bytes it saves) with the content's checksum, so a flipped byte cannot pass. Not to be
    shared between threads."""
    return zstandard.ZstdCompressor(level=1, write_checksum=True)


def frame_content(data: bytes) -> tuple[bytes, bytes]:
    """What the frame at the start of `data` holds, and the bytes after it; decoded as it comes,
    so the size in its header, which the checksum does not cover, is not trusted to allocate."""
    unpacker = zstandard.ZstdDecompressor().decompressobj()
    try:
        content = unpacker.decompress(data)
    except zstandard.ZstdError as error:
        raise FrameError(f"damaged ({error})") from None
    if not unpacker.eof:
        raise FrameError("cut short")
    return content, unpacker.unused_data
