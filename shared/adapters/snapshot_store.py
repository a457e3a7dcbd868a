"""Snapshots: per export and connection, what Braze accepted, partitioned by customer id hash.

Layout in the snapshots container:
    <export>/<connection>/current.json             which run's snapshot is current, and its shape
    <export>/<connection>/<run id>/part-NNNN.jsonl  one profile per line (`snapshot_line`)

A run writes its snapshot beside the current one and then switches `current.json`, so a crash
half-way through leaves the previous snapshot in force: the next run diffs against it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields

from shared.adapters.storage import BlobLineWriter, BlobNotFound, Storage
from shared.core import jsonlines
from shared.core.partitioning import old_partitions_for, partition_of
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


# A profile of a snapshot: (customer id as JSON, row digest, fingerprints as JSON). The digest
# is of the source row the fingerprints came from (`fingerprints.row_digest`; empty when
# unknown); the diff compares texts, and parses the fingerprints only of a profile whose row
# changed.
SnapshotEntry = tuple[str, str, str]


def snapshot_line(id_json: str, digest: str, prints_json: str) -> str:
    """`customer id <TAB> row digest <TAB> fingerprints`; JSON escapes every tab in a value."""
    return f"{id_json}\t{digest}\t{prints_json}"


def parse_snapshot_line(line: str) -> SnapshotEntry:
    if line.startswith("["):  # written before row digests: `[customer id, fingerprints]`
        customer_id, prints = jsonlines.loads(line)
        return jsonlines.dumps(customer_id), "", jsonlines.dumps(prints)
    id_json, digest, prints_json = line.split("\t")
    return id_json, digest, prints_json


def _prefix(export: str, connection: str) -> str:
    return f"{export}/{connection}/"


def _part_name(export: str, connection: str, run_id: str, partition: int) -> str:
    return f"{_prefix(export, connection)}{run_id}/part-{partition:04d}.jsonl"


class SnapshotStore:
    """Reads and writes snapshots; one active run per export makes each export single-writer."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def current(self, export: str, connection: str) -> Manifest | None:
        name = _prefix(export, connection) + "current.json"
        try:
            data = json.loads(self._storage.read_bytes(SNAPSHOTS_CONTAINER, name))
        except BlobNotFound:
            return None
        # A newer version may have added fields: keep what this one knows.
        return Manifest(**{f.name: data[f.name] for f in fields(Manifest) if f.name in data})

    def entries(
        self,
        export: str,
        connection: str,
        snapshot: tuple[str, int],
        partition: int,
        partitions: int,
    ) -> Iterator[SnapshotEntry]:
        """The profiles of snapshot (run id, partition count) in `partition` of `partitions`."""
        run_id, old_count = snapshot
        for old in old_partitions_for(partition, partitions, old_count):
            name = _part_name(export, connection, run_id, old)
            try:  # a snapshot partition is about the size of the partition its diff holds
                text = self._storage.read_bytes(SNAPSHOTS_CONTAINER, name).decode()
            except BlobNotFound:
                continue
            for line in text.split("\n"):
                if line:
                    entry = parse_snapshot_line(line)
                    # An old partition holds ids of several new ones when there were fewer.
                    if (
                        old_count >= partitions
                        or partition_of(jsonlines.loads(entry[0]), partitions) == partition
                    ):
                        yield entry

    def part_writer(
        self, export: str, connection: str, run_id: str, partition: int
    ) -> BlobLineWriter:
        """A writer for one partition of a new (not yet current) snapshot: `snapshot_line`s."""
        return self._storage.line_writer(
            SNAPSHOTS_CONTAINER, _part_name(export, connection, run_id, partition)
        )

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

    def make_current(self, export: str, connection: str, manifest: Manifest) -> None:
        """Switch to the new snapshot, then delete every other one: the one it replaces, and
        any a run left behind that never became current (it crashed or was stopped)."""
        self._storage.write_bytes(
            SNAPSHOTS_CONTAINER,
            _prefix(export, connection) + "current.json",
            json.dumps(asdict(manifest)),
            "application/json",
        )
        container = self._storage.container(SNAPSHOTS_CONTAINER)
        keep = f"{_prefix(export, connection)}{manifest.run_id}/"
        for blob in container.list_blobs(name_starts_with=_prefix(export, connection)):
            if "/" in blob.name.removeprefix(
                _prefix(export, connection)
            ) and not blob.name.startswith(keep):
                container.delete_blob(blob.name)

    def discard(self, export: str, connection: str, run_id: str) -> None:
        """Delete the snapshot a run wrote but will not make current (dry run, stopped, failed)."""
        container = self._storage.container(SNAPSHOTS_CONTAINER)
        for blob in container.list_blobs(
            name_starts_with=f"{_prefix(export, connection)}{run_id}/"
        ):
            container.delete_blob(blob.name)
        log.info("deleted snapshot %s of %s on %s", run_id, export, connection)
