"""Planning a run, step three: diff one partition of the segment against the export's snapshot.

A partition holds the rows whose customer id hashes to it, so duplicates meet in one partition
(the first valid row wins) and the previous snapshot's entries for the same ids are read from
the matching snapshot partition. Memory is bounded by one partition, whatever the segment size.
Rows are validated here, and only those the snapshot does not show unchanged (their digest,
`fingerprints.row_digest`, differs from the one it remembers): a delta run validates, builds
and fingerprints only what changed.

Outputs, all in the run's folder:
- chunk blobs of what to send (`order <TAB> data points <TAB> object`), not queued yet;
- this run's snapshot partition as it will be if Braze accepts everything sent (in the snapshots
  container, not current yet);
- the fallbacks: for each profile sent, the snapshot entry it had before (or null), which
  finalization puts back for the profiles Braze rejected, in the partitions where it did;
- the rows rejected by validation and the duplicates, in source order, with their reasons.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from typing import Any, NamedTuple

from shared.adapters.services import Services
from shared.adapters.snapshot_store import snapshot_line
from shared.adapters.storage import BlobLineWriter
from shared.core import jsonlines
from shared.core.braze_objects import (
    braze_attributes,
    clearable_attributes,
    encode_object,
    removal,
)
from shared.core.definitions import Definitions, Export
from shared.core.fingerprints import data_points, delta, fingerprints
from shared.core.jsonlines import loads
from shared.core.messages import PartitionJob
from shared.core.report import REMOVAL_ORDER, row_position
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import PartitionResult, Run
from shared.core.validation import Profile, record_validator
from shared.pipeline.finalize import finish_early
from shared.pipeline.release import maybe_release
from shared.pipeline.run_files import (
    PieceRow,
    batches,
    chunk_blob_name,
    encoded_chunk_line,
    partition_files_loader,
    partition_piece_name,
    partition_rejected_name,
    read_rows,
    rejection_line,
    snapshot_fallbacks_name,
    write_chunk,
)
from shared.pipeline.run_source import code_digest, source_format

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


# A customer in the segment: (order, row digest, object) of the row that counts; the object is
# None when the row is the one the snapshot remembers, so the profile is unchanged and was not
# built again. A plain tuple: one is made per row, and a named one costs a third more here.
_Member = tuple[int, str, dict[str, Any] | None]


class _Members(NamedTuple):
    """Who is in the segment in this partition, by customer id as JSON: the first valid row per
    id (in source order), and the ids whose only rows were rejected for another field than the
    id."""

    profiles: dict[str, _Member]
    kept: set[str]


# The previous snapshot's profiles of the partition: customer id as JSON -> (row digest,
# fingerprints as JSON).
_Previous = dict[str, tuple[str, str]]


class _SnapshotLines(NamedTuple):
    """This run's snapshot partition and its fallbacks, written side by side (see the module
    docstring)."""

    fallbacks: BlobLineWriter
    snapshot: BlobLineWriter

    def keep(self, id_json: str, digest: str, prints_json: str) -> None:
        """A profile whose entry stands whatever Braze does."""
        self.snapshot.write(snapshot_line(id_json, digest, prints_json))

    def sent(
        self, id_json: str, digest: str, prints_json: str | None, previous: tuple[str, str] | None
    ) -> None:
        """A profile sent with `prints_json` (None: its membership removed)."""
        self.fallbacks.write(snapshot_line(id_json, *(previous or ("", "null"))))
        if prints_json is not None:
            self.snapshot.write(snapshot_line(id_json, digest, prints_json))


def _diff(
    run: Run, definitions: Definitions, job: PartitionJob, services: Services
) -> PartitionResult:
    """Previous snapshot, members, comparison, removals, then the chunk blobs to send."""
    export = definitions.export(run.export_name)
    counts = PartitionResult(job.partition)  # filled in by each phase
    old = _previous_profiles(run, export, job, services)
    members = _collect_members(run, export, job, old, services, counts)
    lines = _SnapshotLines(
        services.storage.line_writer(
            RUNS_CONTAINER, snapshot_fallbacks_name(run.run_id, job.partition)
        ),
        services.snapshots.part_writer(export.name, run.connection, run.run_id, job.partition),
    )
    sends = _compare(run, export, members, old, lines, counts)
    sends += _removals(run, export, job, members, old, lines, counts)
    chunks = batches(sends, export.chunk_size)
    services.storage.in_parallel(
        [
            lines.fallbacks.close,
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
    return counts


def _collect_members(
    run: Run,
    export: Export,
    job: PartitionJob,
    old: _Previous,
    services: Services,
    counts: PartitionResult,
) -> _Members:
    """Read the partition's rows in source order and validate those that need it.

    A row whose digest is the one the snapshot remembers for its id is the row Braze already
    holds: valid, unchanged, not validated again (unless the run sends everything anyway). Any
    other row is validated: a rejected one is listed with every reason; a later valid row for an
    id already seen is a duplicate, rejected with its reason.
    """
    members = _Members({}, set())
    mapping = export.mapping
    validate = record_validator(mapping)
    same_code = run.code_version == code_digest()  # else the digests may not mean the same
    trust_digests = same_code and not run.full_refresh_reason
    rejected = services.storage.line_writer(
        RUNS_CONTAINER, partition_rejected_name(run.run_id, job.partition)
    )
    files = partition_files_loader(services, run.run_id)
    # A CSV row's values (CDM's too) are strings: only JSON Lines records can hold numbers.
    read_values = loads if source_format(run, export) == "jsonl" else jsonlines.loads_strings
    for order, id_json, digest, values_json in _segment_rows(run, job.partition, services):
        if id_json not in members.profiles and trust_digests:
            previous = old.get(id_json)
            if previous is not None and previous[0] == digest:
                members.profiles[id_json] = (order, digest, None)
                continue
        values = read_values(values_json)
        result = validate(values)
        if not isinstance(result, Profile):
            counts.rejected += 1
            for problem in result:
                counts.reasons[problem.code] = counts.reasons.get(problem.code, 0) + 1
            problems = [(p.code, p.message) for p in result]
            position = row_position(order, files)
            rejected.write(
                rejection_line(position, values.get(mapping.customer_id), problems, values)
            )
            members.kept.add(id_json)
        elif id_json in members.profiles:
            counts.duplicates += 1
            obj = braze_attributes(result, export)
            rejected.write(_duplicate_entry(order, result.customer_id, obj, files))
        else:
            obj = braze_attributes(result, export)
            members.profiles[id_json] = (order, digest if same_code else "", obj)
    rejected.close()
    if rejected.lines:
        counts.rejected_blob = partition_rejected_name(run.run_id, job.partition)
    return members


def _previous_profiles(
    run: Run, export: Export, job: PartitionJob, services: Services
) -> _Previous:
    """What the snapshot the run diffs against holds for this partition's ids."""
    if not run.previous_snapshot:
        return {}
    snapshot = (run.previous_snapshot, run.previous_partitions)
    return {
        id_json: (digest, prints_json)
        for id_json, digest, prints_json in services.snapshots.entries(
            export.name, run.connection, snapshot, job.partition, job.partitions
        )
    }


def _compare(
    run: Run,
    export: Export,
    members: _Members,
    old: _Previous,
    lines: _SnapshotLines,
    counts: PartitionResult,
) -> list[str]:
    """Each member against the snapshot: the chunk lines to send, and the snapshot lines
    written as it goes. A profile whose row is the one the snapshot remembers costs a copied
    line; a new one is fingerprinted and sent whole; a changed one sends what changed."""
    full = bool(run.full_refresh_reason)
    clearable = clearable_attributes(export)
    dumps = jsonlines.dumps
    sends: list[str] = []
    for id_json, (order, digest, obj) in members.profiles.items():
        previous = old.get(id_json)
        if obj is None:  # the row the snapshot remembers: Braze holds this profile already
            assert previous is not None
            counts.unchanged += 1
            lines.keep(id_json, digest, previous[1])
            continue
        prints = fingerprints(obj)  # one per attribute Braze bills: their count is the points
        prints_json = dumps(prints)
        if previous is None:
            counts.new += 1
            counts.objects += 1
            counts.data_points += len(prints)
            sends.append(encoded_chunk_line(order, len(prints), encode_object(obj)))
            lines.sent(id_json, digest, prints_json, None)
            continue
        old_prints = loads(previous[1])
        if prints == old_prints and not full:  # same attributes, same values: nothing to clear
            counts.unchanged += 1
            lines.keep(id_json, digest, prints_json)
            continue
        change = delta(obj, old_prints, clearable, False, prints)
        if change is None:
            counts.unchanged += 1
        else:
            counts.changed += 1
        body = delta(obj, old_prints, clearable, True) if full else change
        if body is None:  # Braze keeps what it has, which is what this row makes
            lines.keep(id_json, digest, previous[1])
            continue
        sends.append(_send_line(order, body, counts))
        lines.sent(id_json, digest, prints_json, previous)
    return sends


def _removals(
    run: Run,
    export: Export,
    job: PartitionJob,
    members: _Members,
    old: _Previous,
    lines: _SnapshotLines,
    counts: PartitionResult,
) -> list[str]:
    """Who left the segment: the snapshot's ids that no row names. A row that could not be
    read may be any member's: while there are such rows, nobody is taken for having left (a
    stray comma must not remove a customer from the segment)."""
    hold_removals = run.rows_unidentified > 0 and not run.teardown
    sends: list[str] = []
    for id_json, previous in old.items():
        if id_json in members.profiles:
            continue
        if id_json in members.kept or hold_removals:
            counts.removals_held += id_json not in members.kept
            lines.keep(id_json, *previous)
            continue
        counts.removed += 1
        order = REMOVAL_ORDER + (job.partition << 32) + counts.removed
        body = removal(loads(id_json), export, loads(previous[1]))
        sends.append(_send_line(order, body, counts))
        lines.sent(id_json, "", None, previous)
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
    profiles: dict[str, _Member],
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
        for id_json, _, _ in services.snapshots.entries(
            other.name, other.connection, snapshot, job.partition, job.partitions
        ):
            if id_json in profiles:
                held[id_json].add(other.segment)
    over = [id_json for id_json, segments in held.items() if len(segments) + 1 > cap]
    counts.array_cap_warnings = len(over)
    return [loads(id_json) for id_json in over[:ARRAY_CAP_EXAMPLES]]
