"""`Storage.size_and_start` on Azurite: a blob's whole size and its first bytes in one request,
for blobs shorter than the bytes asked for and for an empty one (which has no range to read)."""

from __future__ import annotations

import gzip

import pytest

from devtools.processes import Azurite
from shared.adapters.settings import StorageSettings
from shared.adapters.storage import BlobNotFound, Storage


@pytest.fixture
def storage(azurite: Azurite) -> Storage:
    storage = Storage(StorageSettings(connection_string=azurite.connection_string))
    storage.ensure_resources()
    return storage


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"C",
        gzip.compress("CustomerId,Email\ncust-1,zoë@example.com\n".encode() * 5_000),
        '\ufeffCustomerId,Note\n1,"a, b"\n'.encode() * 200_000,  # a BOM; over 4 MiB
    ],
    ids=["empty", "shorter-than-asked", "gzip", "large"],
)
def test_gives_the_whole_size_and_the_first_bytes(storage: Storage, data: bytes) -> None:
    storage.write_bytes("export-runs", "start/blob.csv", data, "application/octet-stream")
    assert storage.size_and_start("export-runs", "start/blob.csv", 2) == (len(data), data[:2])


def test_a_missing_blob_is_named(storage: Storage) -> None:
    with pytest.raises(BlobNotFound, match=r"start/missing\.csv"):
        storage.size_and_start("export-runs", "start/missing.csv", 2)
