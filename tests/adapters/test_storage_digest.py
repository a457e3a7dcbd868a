"""`Storage.digest` on Azurite: a source of several download pieces is hashed whole and in order
while the next piece downloads, and the scan that looks at it on the way sees the same bytes."""

from __future__ import annotations

import random
from collections.abc import Iterable

from xxhash import xxh3_128_hexdigest

from devtools.processes import Azurite
from shared.adapters.settings import StorageSettings
from shared.adapters.storage import DOWNLOAD_PIECE_BYTES, Storage

# The SDK's first request takes 32 MiB, handed out in pieces; then a request per piece of
# `DOWNLOAD_PIECE_BYTES` (8 MiB; the SDK's default is 4): six pieces, the last one short.
PIECES_MIB = 41


def _stored(azurite: Azurite, name: str) -> tuple[Storage, bytes]:
    storage = Storage(StorageSettings(connection_string=azurite.connection_string))
    storage.ensure_resources()
    data = random.Random(11).randbytes(PIECES_MIB * 2**20 + 123)
    storage.write_bytes("export-runs", name, data, "application/octet-stream")
    return storage, data


def test_a_source_of_several_pieces_is_digested_whole_and_scanned_in_order(
    azurite: Azurite,
) -> None:
    storage, data = _stored(azurite, "digest/whole.bin")
    seen: list[bytes] = []

    def scan(pieces: Iterable[bytes]) -> None:
        seen.extend(pieces)

    digest, etag = storage.digest("export-runs", "digest/whole.bin", scan)
    assert digest == xxh3_128_hexdigest(data)
    assert b"".join(seen) == data
    assert [len(piece) for piece in seen] == [DOWNLOAD_PIECE_BYTES] * 5 + [2**20 + 123]
    assert etag == storage.etag("export-runs", "digest/whole.bin")


def test_a_scan_that_stops_early_still_gets_the_whole_files_digest(azurite: Azurite) -> None:
    storage, data = _stored(azurite, "digest/early.bin")

    def first_piece_only(pieces: Iterable[bytes]) -> None:
        next(iter(pieces))

    digest, _ = storage.digest("export-runs", "digest/early.bin", first_piece_only)
    assert digest == xxh3_128_hexdigest(data)
