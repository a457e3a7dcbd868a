"""Snapshots: per export and connection, what Braze accepted, partitioned by customer id hash.

Layout in the snapshots container:
    <export>/<connection>/current.json             which run's snapshot is current, and its shape
    <export>/<connection>/<run id>/part-NNNN.jsonl  its profiles' entries (`snapshot_partition`)
    <export>/<connection>/<run id>/part-NNNN.raw    the raw digests of its rows (`record_index`)

A run writes its snapshot beside the current one and then switches `current.json`, so a crash
half-way through leaves the previous snapshot in force: the next run diffs against it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import TYPE_CHECKING

from shared.adapters.storage import BlobNotFound, Storage
from shared.core import jsonlines
from shared.core.partitioning import old_partitions_for, partition_of
from shared.core.record_index import RecordIndex
from shared.core.resource_names import SNAPSHOTS_CONTAINER
from shared.core.snapshot_partition import (
    EntryPacker,
    SnapshotFormatError,
    SnapshotPartition,
    assemble,
    checked_entry,
    merged,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Manifest:
    """The current snapshot of an export on a connection."""

    run_id: str
    partitions: int
    mapping: str
    profiles: int
    written_at: str
    # The run's source version when Braze took everything it sent (else empty): a later run of
    # the same version has nothing to send.
    source_version: str = ""
    # The code that planned the run (`Run.code_version`), which seeds the raw digests its rows
    # gave the index (entries carried over unchanged may hold older ones): a run on other code
    # finds none of its rows there (empty: written before it was kept, so unknown).
    code_version: str = ""


def _prefix(export: str, connection: str) -> str:
    return f"{export}/{connection}/"


def _part_name(export: str, connection: str, run_id: str, partition: int) -> str:
    # The name of the text format: an earlier version that finds this one's partition there
    # fails on its first byte (nothing sent), rather than take a missing one for an empty one.
    return f"{_prefix(export, connection)}{run_id}/part-{partition:04d}.jsonl"


def _index_name(export: str, connection: str, run_id: str, partition: int) -> str:
    return f"{_prefix(export, connection)}{run_id}/part-{partition:04d}.raw"


class SnapshotPartWriter:
    """Writes a snapshot partition (`snapshot_partition`), and beside it the raw digests of its
    entries (the index a split looks records up in). Entries come one at a time (`add`, or
    `write` for a text entry) or as copies of a partition read (`copy`); nothing is visible
    until `close`, which writes the partition and then the index, so a crash in between leaves
    an index the diff does not trust blindly (it checks each entry)."""

    def __init__(
        self, storage: Storage, name: str, index_name: str, columns: Sequence[str] = ()
    ) -> None:
        self._storage, self._name, self._index_name = storage, name, index_name
        self._packer = EntryPacker(columns)
        self._copies: list[tuple[SnapshotPartition, np.ndarray]] = []
        # One entry (`EntryPacker.add`), called as it is: once per profile sent or kept.
        self.add: Callable[[str, str, Mapping[str, str], str], None] = self._packer.add

    @property
    def profiles(self) -> int:
        """The entries added and copied: the partition's profiles once closed."""
        return len(self._packer.ids) + sum(len(taken) for _, taken in self._copies)

    def write(self, line: str) -> None:
        """One entry as text (`snapshot_line`), as read from storage."""
        self.add(*checked_entry(line))

    def copy(self, partition: SnapshotPartition, taken: Sequence[int] | np.ndarray) -> None:
        """Entries of a partition read, as they are (`taken`: their indexes)."""
        import numpy as np

        taken = np.asarray(taken, dtype=np.int64)
        if len(taken):
            self._copies.append((partition, taken))

    def close(self) -> None:
        partition = assemble(self._packer, self._copies)
        self._storage.write_bytes(
            SNAPSHOTS_CONTAINER, self._name, partition.to_blob(), "application/octet-stream"
        )
        raws = partition.raws
        self._storage.write_bytes(
            SNAPSHOTS_CONTAINER,
            self._index_name,
            raws[raws != 0].astype(">u8").tobytes(),
            "application/octet-stream",
        )


def read_partition(blob: bytes, name: str) -> SnapshotPartition:
    """A stored snapshot partition; a damaged one raises SnapshotFormatError naming the blob."""
    try:
        return SnapshotPartition.from_blob(blob)
    except ValueError as error:  # a SnapshotFormatError, or text that is not UTF-8
        raise SnapshotFormatError(f"snapshot partition '{name}': {error}") from error


class SnapshotStore:
    """Reads and writes snapshots; one active run per export makes each export single-writer."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        # The last index loaded, by (export, connection, run id, partitions): a run's split jobs
        # look rows up in the same one, and a snapshot's index never changes once current.
        self._last_index: tuple[tuple[str, str, str, int], RecordIndex] | None = None

    def current(self, export: str, connection: str) -> Manifest | None:
        name = _prefix(export, connection) + "current.json"
        try:
            data = json.loads(self._storage.read_bytes(SNAPSHOTS_CONTAINER, name))
        except BlobNotFound:
            return None
        # A newer version may have added fields: keep what this one knows.
        return Manifest(**{f.name: data[f.name] for f in fields(Manifest) if f.name in data})

    def partition(
        self, export: str, connection: str, run_id: str, partition: int, *, written: bool = False
    ) -> SnapshotPartition:
        """One partition of a snapshot as stored: empty when there is none (an earlier version
        wrote no blob for a partition without profiles), unless it must be there (`written`:
        then BlobNotFound)."""
        name = _part_name(export, connection, run_id, partition)
        try:
            blob = self._storage.read_bytes(SNAPSHOTS_CONTAINER, name)
        except BlobNotFound:
            if written:
                raise
            return SnapshotPartition.empty()
        return read_partition(blob, name)

    def previous_partition(
        self,
        export: str,
        connection: str,
        snapshot: tuple[str, int],
        partition: int,
        partitions: int,
    ) -> SnapshotPartition:
        """What snapshot (run id, partition count) holds for the ids of `partition` of
        `partitions`: its partition of that number, or, when it has another count, the
        entries of the partitions that held those ids, those ids only."""
        import numpy as np

        run_id, old_count = snapshot
        if old_count == partitions:
            return self.partition(export, connection, run_id, partition)
        parts = []
        for old in old_partitions_for(partition, partitions, old_count):  # one at least
            part = self.partition(export, connection, run_id, old)
            if old_count < partitions:  # an old partition held ids of several new ones
                mine = [
                    partition_of(jsonlines.loads(id_json), partitions) == partition
                    for id_json in part.ids
                ]
                part = part.select(np.array(mine, dtype=bool))
            parts.append(part)
        return merged(parts)

    def part_writer(
        self,
        export: str,
        connection: str,
        run_id: str,
        partition: int,
        columns: Sequence[str] = (),
    ) -> SnapshotPartWriter:
        """A writer for one partition of a new (not yet current) snapshot; `columns`: the
        attributes its entries fingerprint (more are added as entries name them)."""
        return SnapshotPartWriter(
            self._storage,
            _part_name(export, connection, run_id, partition),
            _index_name(export, connection, run_id, partition),
            columns,
        )

    def record_index(
        self, export: str, connection: str, snapshot: tuple[str, int]
    ) -> RecordIndex | None:
        """The raw digests of every profile of snapshot (run id, partition count), or None
        when a partition has none (written before raw digests)."""
        run_id, partitions = snapshot
        key = (export, connection, run_id, partitions)
        last = self._last_index
        if last is not None and last[0] == key:
            return last[1]
        names = [_index_name(export, connection, run_id, p) for p in range(partitions)]
        try:
            index = RecordIndex(list(self._storage.read_many(SNAPSHOTS_CONTAINER, names)))
        except BlobNotFound:
            return None
        self._last_index = (key, index)
        return index

    def write_partition(
        self, export: str, connection: str, run_id: str, partition: int, lines: Iterable[str]
    ) -> int:
        """Write one partition of a new (not yet current) snapshot from text entries
        (`snapshot_line`); returns its profile count."""
        writer = self.part_writer(export, connection, run_id, partition)
        for line in lines:
            writer.write(line)
        writer.close()
        return writer.profiles

    def make_current(self, export: str, connection: str, manifest: Manifest) -> list[str]:
        """Switch to the new snapshot; the folders of every other one, to delete once the run
        is recorded (`delete_folders`): the one it replaces, and any a run left behind that
        never became current (it crashed or was stopped). They are listed now, while the run
        is still active, so that no later run's snapshot can be among them; as folders, not
        blobs: two blobs per partition and snapshot took a 1M run's finalizing 0.13 s to list."""
        self._storage.write_bytes(
            SNAPSHOTS_CONTAINER,
            _prefix(export, connection) + "current.json",
            json.dumps(asdict(manifest)),
            "application/json",
        )
        container = self._storage.container(SNAPSHOTS_CONTAINER)
        keep = f"{_prefix(export, connection)}{manifest.run_id}/"
        listed = container.walk_blobs(name_starts_with=_prefix(export, connection), delimiter="/")
        return [item.name for item in listed if item.name.endswith("/") and item.name != keep]

    def delete_folders(self, folders: Iterable[str]) -> None:
        """Delete every blob of the snapshots in these folders (`make_current`)."""
        container = self._storage.container(SNAPSHOTS_CONTAINER)
        listed = (container.list_blobs(name_starts_with=folder) for folder in folders)
        self.delete(blob.name for blobs in listed for blob in blobs)

    def discard(self, export: str, connection: str, run_id: str) -> None:
        """Delete the snapshot a run wrote but will not make current (dry run, stopped, failed)."""
        container = self._storage.container(SNAPSHOTS_CONTAINER)
        prefix = f"{_prefix(export, connection)}{run_id}/"
        self.delete(blob.name for blob in container.list_blobs(name_starts_with=prefix))
        log.info("deleted snapshot %s of %s on %s", run_id, export, connection)

    def delete(self, names: Iterable[str]) -> None:
        """Delete blobs several at a time: a snapshot is two blobs per partition, and one by
        one their round trips add up to a visible part of a small run's finalization."""
        container = self._storage.container(SNAPSHOTS_CONTAINER)
        self._storage.in_parallel(partial(container.delete_blob, name) for name in list(names))
