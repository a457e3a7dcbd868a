"""Snapshot partitions in the formats earlier versions wrote, for tests that read them."""

from __future__ import annotations

import json

from shared.core.snapshot_partition import MAGIC, SnapshotPartition


def version_1(partition: SnapshotPartition) -> bytes:
    """The partition as the version before wrote it: the ids as they are, then the numbers
    profile after profile, uncompressed."""
    ids = "\n".join(partition.ids).encode()
    header = {"version": 1, "profiles": len(partition.ids), "columns": partition.columns}
    header["ids_bytes"] = len(ids)
    numbers = partition.numbers.astype(">u8").tobytes()
    return b"".join([MAGIC, json.dumps(header).encode(), b"\n", ids, numbers])
