"""Snapshots: per export and connection, what Braze accepted, partitioned by customer id hash.

Layout in the snapshots container:
    <export>/<connection>/current.json             which run's snapshot is current, and its shape
    <export>/<connection>/<run id>/part-NNNN.jsonl  one profile per line (`snapshot_line`)
    <export>/<connection>/<run id>/part-NNNN.raw    the raw digests of its rows (`record_index`)

A run writes its snapshot beside the current one and then switches `current.json`, so a crash
half-way through leaves the previous snapshot in force: the next run diffs against it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from functools import partial

from shared.adapters.storage import BlobLineWriter, BlobNotFound, Storage
from shared.core import jsonlines
from shared.core.partitioning import old_partitions_for, partition_of
from shared.core.record_index import RAW_DIGEST_CHARS, RecordIndex
from shared.core.resource_names import SNAPSHOTS_CONTAINER

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


# A profile of a snapshot: (customer id as JSON, row digest, fingerprints as JSON, raw
# digest). The row digest is of the values the fingerprints came from
# (`fingerprints.row_digest`), the raw digest of the row's bytes (`raw_records`, 16 hex
# digits); either is empty when unknown. The diff compares texts, and parses the fingerprints
# only of a profile whose row changed.
SnapshotEntry = tuple[str, str, str, str]


def snapshot_line(id_json: str, digest: str, prints_json: str, raw: str = "") -> str:
    """`customer id <TAB> row digest <TAB> fingerprints <TAB> raw digest`; JSON escapes every
    tab in a value."""
    return f"{id_json}\t{digest}\t{prints_json}\t{raw}"


def parse_snapshot_line(line: str) -> SnapshotEntry:
    if line.startswith("["):  # written before row digests: `[customer id, fingerprints]`
        customer_id, prints = jsonlines.loads(line)
        return jsonlines.dumps(customer_id), "", jsonlines.dumps(prints), ""
    fields = line.split("\t")
    if len(fields) == 3:  # written before raw digests
        return fields[0], fields[1], fields[2], ""
    id_json, digest, prints_json, raw = fields
    return id_json, digest, prints_json, raw


def _prefix(export: str, connection: str) -> str:
    return f"{export}/{connection}/"


def _part_name(export: str, connection: str, run_id: str, partition: int) -> str:
    return f"{_prefix(export, connection)}{run_id}/part-{partition:04d}.jsonl"


def _index_name(export: str, connection: str, run_id: str, partition: int) -> str:
    return f"{_prefix(export, connection)}{run_id}/part-{partition:04d}.raw"


PENDING_LINES = 8192


class SnapshotPartWriter(BlobLineWriter):
    """Writes a snapshot partition, and beside it the raw digests of its entries (the index a
    split looks records up in); the index is written after the partition, so a crash in
    between leaves an index the diff does not trust blindly (it checks each entry)."""

    def __init__(self, storage: Storage, name: str, index_name: str) -> None:
        super().__init__(storage.container(SNAPSHOTS_CONTAINER), name)
        self._storage, self._index_name = storage, index_name
        self._pending: list[str] = []  # written a few thousand at a time: one join each
        self._raw: list[bytes] = []

    def write(self, line: str) -> None:
        """One `snapshot_line` (whose last field is the raw digest)."""
        self._pending.append(line)
        if len(self._pending) >= PENDING_LINES:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self.write_lines(pending)
        tails = [line[line.rfind("\t") + 1 :] for line in pending]
        self._raw.append(bytes.fromhex("".join(r for r in tails if len(r) == RAW_DIGEST_CHARS)))

    def write_copies(self, lines: list[str], raws: bytes) -> None:
        """Lines of the previous snapshot as they are, and their raw digests (8 bytes each, in
        order: every line has one)."""
        self._flush()
        self.write_lines(lines)
        self._raw.append(raws)

    def close(self) -> None:
        self._flush()
        super().close()
        self._storage.write_bytes(
            SNAPSHOTS_CONTAINER,
            self._index_name,
            b"".join(self._raw),
            "application/octet-stream",
        )


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

    def entry_lines(
        self,
        export: str,
        connection: str,
        snapshot: tuple[str, int],
        partition: int,
        partitions: int,
        *,
        blob: bytes | None = None,
    ) -> dict[str, str]:
        """Customer id as JSON -> `snapshot_line`, per profile of snapshot (run id, partition
        count) in `partition` of `partitions`: the line as written (an earlier format made
        this one), so an unchanged profile's entry is copied, not parsed and written again.
        `blob`: the one old partition's bytes (`part_bytes`), when the caller has read them."""
        run_id, old_count = snapshot
        found: dict[str, str] = {}
        for old in old_partitions_for(partition, partitions, old_count):
            if blob is not None and old_count == partitions:
                text = blob.decode()
            else:  # a snapshot partition is about the size of the partition its diff holds
                text = self.part_bytes(export, connection, run_id, old).decode()
            lines = text.split("\n")
            legacy = lines[0].count("\t") != 3  # an earlier format (a blob holds one)
            for line in lines:
                if not line:
                    continue
                if legacy:
                    line = snapshot_line(*parse_snapshot_line(line))
                id_json = line[: line.find("\t")]
                # An old partition holds ids of several new ones when there were fewer.
                if old_count >= partitions or (
                    partition_of(jsonlines.loads(id_json), partitions) == partition
                ):
                    found[id_json] = line
        return found

    def part_bytes(self, export: str, connection: str, run_id: str, partition: int) -> bytes:
        """One partition of a snapshot as stored (empty when it was never written)."""
        try:
            return self._storage.read_bytes(
                SNAPSHOTS_CONTAINER, _part_name(export, connection, run_id, partition)
            )
        except BlobNotFound:
            return b""

    def part_writer(
        self, export: str, connection: str, run_id: str, partition: int
    ) -> SnapshotPartWriter:
        """A writer for one partition of a new (not yet current) snapshot: `snapshot_line`s."""
        return SnapshotPartWriter(
            self._storage,
            _part_name(export, connection, run_id, partition),
            _index_name(export, connection, run_id, partition),
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

    def part_lines(self, export: str, connection: str, run_id: str, partition: int) -> list[str]:
        """The lines of one partition a run wrote (read whole: about one partition's size)."""
        name = _part_name(export, connection, run_id, partition)
        text = self._storage.read_bytes(SNAPSHOTS_CONTAINER, name).decode()
        return [line for line in text.split("\n") if line]

    def write_partition(
        self, export: str, connection: str, run_id: str, partition: int, lines: Iterable[str]
    ) -> int:
        """Write one partition of a new (not yet current) snapshot from its `snapshot_line`s;
        returns its profile count."""
        writer = self.part_writer(export, connection, run_id, partition)
        for line in lines:
            writer.write(line)
        writer.close()
        return writer.lines

    def make_current(self, export: str, connection: str, manifest: Manifest) -> list[str]:
        """Switch to the new snapshot; the blobs of every other one, to delete once the run is
        recorded (`delete`): the one it replaces, and any a run left behind that
        never became current (it crashed or was stopped). They are listed now, while the run
        is still active, so that no later run's snapshot can be among them."""
        self._storage.write_bytes(
            SNAPSHOTS_CONTAINER,
            _prefix(export, connection) + "current.json",
            json.dumps(asdict(manifest)),
            "application/json",
        )
        container = self._storage.container(SNAPSHOTS_CONTAINER)
        keep = f"{_prefix(export, connection)}{manifest.run_id}/"
        return [
            blob.name
            for blob in container.list_blobs(name_starts_with=_prefix(export, connection))
            if "/" in blob.name.removeprefix(_prefix(export, connection))
            and not blob.name.startswith(keep)
        ]

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
