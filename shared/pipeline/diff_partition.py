"""Planning a run, step three: diff one partition of the segment against the export's snapshot.

A partition holds the rows whose customer id hashes to it, so duplicates meet in one partition
(the first valid row wins) and the previous snapshot's entries for the same ids are read from
the matching snapshot partition. Memory is bounded by one partition, whatever the segment size.

Outputs, all in the run's folder:
- chunk blobs of what to send (`order <TAB> data points <TAB> object`), not queued yet;
- the pending snapshot: per profile the fingerprints Braze will hold if it accepts what is sent,
  with the previous ones to fall back on if it does not;
- this run's snapshot partition as it will be if Braze accepts everything sent (in the snapshots
  container, not current yet): finalization then rewrites only partitions with rejections;
- the duplicate rows, rejected with their reason.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from typing import Any, NamedTuple

from shared.adapters.services import Services
from shared.adapters.storage import BlobLineWriter
from shared.core import jsonlines
from shared.core.braze_objects import clearable_attributes, encode_object, removal
from shared.core.definitions import Definitions, Export
from shared.core.fingerprints import Fingerprints, data_points, delta
from shared.core.jsonlines import loads
from shared.core.messages import PartitionJob
from shared.core.report import REMOVAL_ORDER, row_position
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import PartitionResult, Run
from shared.pipeline.finalize import finish_early
from shared.pipeline.release import maybe_release
from shared.pipeline.run_files import (
    PieceRow,
    batches,
    chunk_blob_name,
    duplicates_blob_name,
    encoded_chunk_line,
    partition_files_loader,
    partition_piece_name,
    pending_snapshot_name,
    read_rows,
    write_chunk,
)

log = logging.getLogger(__name__)

ARRAY_CAP_EXAMPLES = 5


def diff_partition(job: PartitionJob, services: Services) -> None:
    """Diff one partition and record what it found; the last partition releases the run."""
    run = services.runs.get(job.run_id)
    if run is None or run.is_final:
        log.warning(
            "run %s is missing or finished; dropping partition %d", job.run_id, job.partition
        )
        return
    if not services.runs.partition_done(run.run_id, job.partition):
        definitions = services.definitions()
        result = _diff(run, definitions, job, services)
        services.runs.record_partition(run.run_id, result)
    maybe_release(run.run_id, services)


def fail_partition(job: PartitionJob, error: BaseException, services: Services) -> None:
    """The partition job is being poisoned: nothing was sent yet, so the run fails cleanly."""
    run = services.runs.get(job.run_id)
    if run is None or run.is_final:
        return
    message = (
        f"planning failed: partition {job.partition} of {job.partitions} could not be diffed "
        f"after every retry ({type(error).__name__}: {error}); nothing was sent"
    )
    finish_early(run, services, message=message, failed=True)


def _segment_rows(run: Run, partition: int, services: Services) -> Iterator[PieceRow]:
    """The partition's rows in source order: its pieces in split order (none for a teardown:
    everyone in the snapshot leaves). A piece is a fraction of a partition, read whole."""
    if not run.teardown:
        names = [partition_piece_name(run.run_id, partition, s) for s in range(run.splits)]
        for piece in services.storage.read_many(RUNS_CONTAINER, names):
            yield from read_rows(piece.decode())


class _Members(NamedTuple):
    """Who is in the segment in this partition: the first valid row per customer id (in source
    order), and the ids whose only rows were rejected for another field than the id."""

    profiles: dict[str, PieceRow]
    kept: set[str]


class _SnapshotLines(NamedTuple):
    """The pending snapshot and this run's snapshot partition, written side by side (see the
    module docstring): `[id, prints]` is final; `[id, new, old]` falls back to old if Braze
    rejects what was sent."""

    pending: BlobLineWriter
    snapshot: BlobLineWriter

    def keep(self, line: str) -> None:
        """A profile whose entry stands whatever Braze does."""
        self.pending.write(line)
        self.snapshot.write(line)

    def sent(self, id_json: str, prints_json: str | None, previous_json: str) -> None:
        """A profile sent with `prints_json` (None: its membership removed)."""
        self.pending.write(
            f"[{id_json},{'null' if prints_json is None else prints_json},{previous_json}]"
        )
        if prints_json is not None:
            self.snapshot.write(f"[{id_json},{prints_json}]")


def _diff(
    run: Run, definitions: Definitions, job: PartitionJob, services: Services
) -> PartitionResult:
    """Members, previous snapshot, comparison, removals, then the chunk blobs to send."""
    export = definitions.export(run.export_name)
    counts = PartitionResult(job.partition)  # filled in by each phase
    members = _collect_members(run, job, services, counts)
    old = _previous_profiles(run, export, job, services)
    lines = _SnapshotLines(
        services.storage.line_writer(
            RUNS_CONTAINER, pending_snapshot_name(run.run_id, job.partition)
        ),
        services.snapshots.part_writer(export.name, run.connection, run.run_id, job.partition),
    )
    sends = _compare(run, export, members, old, lines, counts)
    sends += _removals(run, export, job, members, old, lines, counts)
    chunks = batches(sends, export.chunk_size)
    services.storage.in_parallel(
        [
            lines.pending.close,
            lines.snapshot.close,
            *(
                partial(write_chunk, services, chunk_blob_name(run.run_id, job.partition, i), chunk)
                for i, chunk in enumerate(chunks)
            ),
        ]
    )
    chunk_rows = [len(chunk) for chunk in chunks]
    examples = _array_cap_check(run, export, definitions, members.profiles, job, services, counts)
    if examples:  # the ids go to the run's report (a private blob), never to the logs
        log.warning(
            "run %s partition %d: %d profiles would pass the array cap of %s; the report "
            "lists examples",
            run.run_id,
            job.partition,
            counts.array_cap_warnings,
            export.membership_attribute,
        )
    counts.array_cap_examples, counts.chunk_rows = examples, chunk_rows
    counts.snapshot_profiles = lines.snapshot.lines
    if counts.duplicates:
        counts.rejected_blob = duplicates_blob_name(run.run_id, job.partition)
    return counts


def _collect_members(
    run: Run, job: PartitionJob, services: Services, counts: PartitionResult
) -> _Members:
    """Read the partition's rows; a later valid row for an id already seen is a duplicate,
    rejected with its reason."""
    members = _Members({}, set())
    duplicates = services.storage.line_writer(
        RUNS_CONTAINER, duplicates_blob_name(run.run_id, job.partition)
    )
    files = partition_files_loader(services, run.run_id)
    for row in _segment_rows(run, job.partition, services):
        order, customer_id, _, _, _, obj_json = row
        if not obj_json:
            members.kept.add(customer_id)
        elif customer_id in members.profiles:
            counts.duplicates += 1
            duplicates.write(_duplicate_entry(order, customer_id, loads(obj_json), files))
        else:
            members.profiles[customer_id] = row
    duplicates.close()
    return members


def _previous_profiles(
    run: Run, export: Export, job: PartitionJob, services: Services
) -> dict[str, Fingerprints]:
    """What the snapshot the run diffs against holds for this partition's ids."""
    if not run.previous_snapshot:
        return {}
    snapshot = (run.previous_snapshot, run.previous_partitions)
    return dict(
        services.snapshots.profiles(
            export.name, run.connection, snapshot, job.partition, job.partitions
        )
    )


def _compare(
    run: Run,
    export: Export,
    members: _Members,
    old: dict[str, Fingerprints],
    lines: _SnapshotLines,
    counts: PartitionResult,
) -> list[str]:
    """Each member against the snapshot: the chunk lines to send, and the snapshot lines
    written as it goes.

    A new profile (most of a first export) is sent whole from the piece's encodings, without
    decoding anything; an unchanged one costs a comparison of fingerprints.
    """
    full = bool(run.full_refresh_reason)
    clearable = clearable_attributes(export)
    sends: list[str] = []
    for order, customer_id, id_json, points, prints_json, obj_json in members.profiles.values():
        previous = old.get(customer_id)
        if previous is None:
            counts.new += 1
            counts.objects += 1
            counts.data_points += points
            sends.append(encoded_chunk_line(order, points, obj_json))
            lines.sent(id_json, prints_json, "null")
            continue
        prints = loads(prints_json)
        if prints == previous and not full:  # same attributes, same values: nothing to clear
            counts.unchanged += 1
            lines.keep(f"[{id_json},{prints_json}]")
            continue
        obj = loads(obj_json)
        change = delta(obj, previous, clearable, False, prints)
        if change is None:
            counts.unchanged += 1
        else:
            counts.changed += 1
        body = delta(obj, previous, clearable, True) if full else change
        if body is None:
            lines.keep(jsonlines.dumps([customer_id, previous]))
            continue
        sends.append(_send_line(order, body, counts))
        lines.sent(id_json, prints_json, jsonlines.dumps(previous))
    return sends


def _removals(
    run: Run,
    export: Export,
    job: PartitionJob,
    members: _Members,
    old: dict[str, Fingerprints],
    lines: _SnapshotLines,
    counts: PartitionResult,
) -> list[str]:
    """Who left the segment: the snapshot's ids that no row names. A row that could not be
    read may be any member's: while there are such rows, nobody is taken for having left (a
    stray comma must not remove a customer from the segment)."""
    hold_removals = run.rows_unidentified > 0 and not run.teardown
    sends: list[str] = []
    for customer_id, previous in old.items():
        if customer_id in members.profiles:
            continue
        if customer_id in members.kept or hold_removals:
            counts.removals_held += customer_id not in members.kept
            lines.keep(jsonlines.dumps([customer_id, previous]))
            continue
        counts.removed += 1
        order = REMOVAL_ORDER + (job.partition << 32) + counts.removed
        sends.append(_send_line(order, removal(customer_id, export, previous), counts))
        lines.sent(jsonlines.dumps(customer_id), None, jsonlines.dumps(previous))
    return sends


def _send_line(order: int, body: dict[str, Any], counts: PartitionResult) -> str:
    points = data_points(body)
    counts.objects += 1
    counts.data_points += points
    return encoded_chunk_line(order, points, encode_object(body))


def _duplicate_entry(order: int, customer_id: str, obj: dict[str, Any], files: Any) -> str:
    entry = {
        **row_position(order, files),
        "customer_id": customer_id,
        "stage": "validation",
        "codes": ["duplicate_customer_id"],
        "reasons": [
            f"duplicate customer id {customer_id!r}: an earlier row with this id was kept "
            "(the first valid row for an id wins)"
        ],
        "object": obj,
    }
    return json.dumps(entry, ensure_ascii=False)


def _array_cap_check(
    run: Run,
    export: Export,
    definitions: Definitions,
    profiles: dict[str, PieceRow],
    job: PartitionJob,
    services: Services,
    counts: PartitionResult,
) -> list[str]:
    """Count members whose membership array would pass Braze's element cap.

    Other exports to the same connection and array attribute add their own segment names;
    their snapshots (partitioned by the same hash) tell who holds which. Braze silently drops
    an update that would pass the cap, so the report warns before that happens.
    """
    if export.membership != "array" or not profiles:
        return []
    cap = definitions.connection(export.connection).array_element_cap
    held: dict[str, set[str]] = defaultdict(set)
    for other in definitions.exports:
        if (
            other.name == export.name
            or other.connection != export.connection
            or other.membership != "array"
            or other.membership_attribute != export.membership_attribute
            or other.segment == export.segment
        ):
            continue
        manifest = services.snapshots.current(other.name, other.connection)
        if manifest is None:
            continue
        snapshot = (manifest.run_id, manifest.partitions)
        for customer_id, _ in services.snapshots.profiles(
            other.name, other.connection, snapshot, job.partition, job.partitions
        ):
            if customer_id in profiles:
                held[customer_id].add(other.segment)
    over = [customer_id for customer_id, segments in held.items() if len(segments) + 1 > cap]
    counts.array_cap_warnings = len(over)
    return over[:ARRAY_CAP_EXAMPLES]
