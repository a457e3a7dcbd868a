"""The line writer on Azurite: a blob larger than a block is staged and committed, one that
fits uploaded whole, and with `encode` each block is stored as it makes it (the fallbacks: a
frame a block), read back whole as written, under the content type it was given."""

from __future__ import annotations

import pytest

from devtools.processes import Azurite
from shared.adapters import storage as storage_module
from shared.adapters.settings import StorageSettings
from shared.adapters.storage import Storage
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.zstd_frames import MAGIC, frame_content
from shared.pipeline.run_files import packed_frame, unpacked_stream

LINES = [f'"c-{n:04d} Zoë 🎉"\t\t{{"Note":"says \\"hi\\", twice"}}\t' for n in range(300)]


def _storage(azurite: Azurite) -> Storage:
    storage = Storage(StorageSettings(connection_string=azurite.connection_string))
    storage.ensure_resources()
    return storage


def _text() -> bytes:
    return "".join(f"{line}\n" for line in LINES).encode()


@pytest.mark.parametrize("block", [1 << 20, 2_000], ids=["one-block", "staged-blocks"])
def test_lines_come_back_as_written(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(storage_module, "BLOCK_BYTES", block)
    storage = _storage(azurite)
    writer = storage.line_writer(RUNS_CONTAINER, f"line-writer/plain-{block}.jsonl")
    for line in LINES[:100]:
        writer.write(line)
    writer.write_lines(LINES[100:])
    writer.close()
    assert writer.lines == len(LINES)
    assert storage.read_bytes(RUNS_CONTAINER, f"line-writer/plain-{block}.jsonl") == _text()


@pytest.mark.parametrize("block", [1 << 20, 2_000], ids=["one-frame", "a-frame-a-block"])
def test_encoded_blocks_are_stored_as_encoded(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(storage_module, "BLOCK_BYTES", block)
    storage = _storage(azurite)
    name = f"line-writer/packed-{block}.tsv"
    writer = storage.line_writer(RUNS_CONTAINER, name, packed_frame, "application/zstd")
    for line in LINES:
        writer.write(line)
    writer.close()
    stored = storage.read_bytes(RUNS_CONTAINER, name)
    assert stored.startswith(MAGIC) and len(stored) < len(_text()) / 2
    contents = []
    while stored:  # a frame a block, each block whole lines of at least `block` bytes
        content, stored = frame_content(stored)
        contents.append(content)
    assert b"".join(contents) == _text()
    assert all(c.endswith(b"\n") and len(c) >= block for c in contents[:-1])
    assert len(contents) == (1 if block > len(_text()) else len(_text()) // block + 1)
    assert b"".join(unpacked_stream(storage.read_chunks(RUNS_CONTAINER, name))) == _text()
    properties = storage.container(RUNS_CONTAINER).get_blob_client(name).get_blob_properties()
    assert properties.content_settings.content_type == "application/zstd"
