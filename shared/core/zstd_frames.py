"""Zstandard frames as the app writes its working files and snapshot partitions: the level and
the checksum decided once, and a frame read back as it comes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

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


def frames_content(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The content of each frame `chunks` (a download's pieces) hold one after another, once
    its checksum passed (a file written a block at a time, a frame a block: a block's worth
    held at most); FrameError for a damaged frame, bytes after one that start no frame, or a
    last frame cut short."""
    decompressor = zstandard.ZstdDecompressor()
    unpacker = None
    content: list[bytes] = []  # the frame's so far: its checksum is at its end
    head = b""  # the start of the next frame, until its magic number can be checked
    for data in chunks:
        while data:
            if unpacker is None:
                head += data
                if len(head) < len(MAGIC):
                    break
                if not head.startswith(MAGIC):
                    raise FrameError("followed by bytes that start no frame")
                unpacker, data, head = decompressor.decompressobj(), head, b""
            try:
                content.append(unpacker.decompress(data))
            except zstandard.ZstdError as error:
                raise FrameError(f"damaged ({error})") from None
            data = b""
            if unpacker.eof:
                if frame := b"".join(content):
                    yield frame
                content.clear()
                data, unpacker = unpacker.unused_data, None
    if head and not MAGIC.startswith(head):
        raise FrameError("followed by bytes that start no frame")
    if unpacker is not None or head:
        raise FrameError("cut short")
