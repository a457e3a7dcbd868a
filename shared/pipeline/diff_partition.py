"""Planning a run, step three: diff each partition of the segment against the export's snapshot.

A partition holds the rows whose customer id hashes to it, so duplicates meet in one partition
(the first valid row wins) and the previous snapshot's entries for the same ids are read from
the matching snapshot partition. A job diffs one partition, or a few of a delta's one after
another (`split_source.partitions_per_job`); memory is bounded by a job's pieces and two
snapshot partitions (the next one loads while one is diffed), whatever the segment size.
Rows are validated here, and only those the snapshot does not show unchanged (their digest,
`fingerprints.row_digest`, differs from the one it remembers): a delta run validates, builds
and fingerprints only what changed. The rows the split filed by their raw digest (the bytes of
a row the snapshot holds) are taken in bulk: their snapshot entries are found all at once and
copied, and only the rows in doubt among them (a repeated row, an id another row names, a
digest the snapshot lacks) go row by row with the rest (`_take_in_bulk`).

Outputs, all in the run's folder:
- chunk blobs of what to send (`order <TAB> data points <TAB> object`), not queued yet;
- this run's snapshot partition as it will be if Braze accepts everything sent (in the snapshots
  container, not current yet);
- the fallbacks: for each profile sent, the snapshot entry it had before (or null), which
  finalization puts back for the profiles Braze rejected, in the partitions where it did;
- the rows rejected by validation and the duplicates, in source order, with their reasons.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, KeysView, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from shared.adapters.services import Services
from shared.adapters.snapshot_store import SnapshotPartWriter
from shared.adapters.storage import BlobLineWriter, forget_traceback
from shared.core import jsonlines
from shared.core.braze_objects import (
    braze_attributes,
    clearable_attributes,
    membership_value,
    removal,
)
from shared.core.definitions import Definitions, Export
from shared.core.fingerprints import (
    Fingerprints,
    data_points,
    delta,
    fingerprint,
    fingerprints,
)
from shared.core.jsonlines import dumpb, loads
from shared.core.messages import ChunkJob, PartitionJob
from shared.core.partitioning import partition_of
from shared.core.report import REMOVAL_ORDER, row_position
from shared.core.resource_names import CHUNKS_QUEUE, JOBS_QUEUE, RUNS_CONTAINER
from shared.core.runs import PartitionResult, Run
from shared.core.snapshot_partition import SnapshotPartition, snapshot_line
from shared.core.source_files import SourceError
from shared.core.validation import Profile, record_validator, usable_customer_id
from shared.pipeline.finalize import finish_early, sent_so_far
from shared.pipeline.raw_source import Rereader
from shared.pipeline.release import maybe_release, partition_chunk_job
from shared.pipeline.run_files import (
    MATCHED_MARK,
    PieceRow,
    batches,
    chunk_blob_name,
    encoded_chunk_line,
    mapped_values,
    matched_records,
    matched_rows,
    packed_frame,
    partition_files_loader,
    partition_pieces,
    partition_rejected_name,
    piece_sections,
    read_rows,
    rejected_entry_text,
    rejection_line,
    snapshot_fallbacks_name,
    write_chunk,
)
from shared.pipeline.run_source import code_digest, piece_lines, source_format

if TYPE_CHECKING:
    import numpy as np

    # The profiles taken in bulk: their entries in the previous snapshot partition (indexes),
    # copied as they are. Their customer ids are not made into a list (2-3 ms a delta's
    # partition of 31,250, measured alone in a slow hour): only the array cap check may need
    # them, and only beside another export's snapshot.
    _Taken = Sequence[int] | np.ndarray

log = logging.getLogger(__name__)

ARRAY_CAP_EXAMPLES = 5


def diff_partition(job: PartitionJob, services: Services, attempt: int = 1) -> ChunkJob | None:
    """Diff the job's partitions, recording each as it is done; the last partition of the run
    releases it. When that release queued a single chunk job (a delta's few changes, a small
    segment), the job, for the caller to deliver at once (`deliver_at_once`).

    A job of several partitions that fails queues those it has not recorded again, a job each,
    and ends: each then has its own retries, as when every job took one (else a run would
    fail once any of its four partitions failed five times in all). So does such a job
    delivered again (`attempt` > 1): an earlier attempt did not finish, most likely because its
    host stopped or was killed (out of memory, the function's timeout), which raises nothing
    here and may have been one partition's doing: it must not use up the others' attempts."""
    run = services.runs.get(job.run_id)
    if run is None or run.is_final:
        log.warning("run %s is missing or finished; dropping %s", job.run_id, job.label)
        return None
    if job.count > 1 and attempt > 1:
        what = f"{job.label} delivered again (attempt {attempt}): an earlier one did not finish"
        if _queue_one_by_one(job, what, services):
            return None
        return _release(run, services)
    # The run is read once: a job of several goes on with its partitions should another job end
    # the run meanwhile (wasted work, no harm: nothing is sent before the release).
    try:
        with contextlib.closing(diffed_partitions(run, job, services)) as diffed:
            for partition, result in diffed:
                recorded = None
                if result is not None and services.runs.record_partition(run.run_id, result):
                    recorded = result
                if run.delivers_while_diffing:
                    _queue_delivery(run, partition, recorded, services)
    except Exception as error:
        if job.count == 1:
            raise
        what = f"diffing {job.label} failed ({type(error).__name__}: {error})"
        # The log line is formatted before the traceback is let go of: nothing it holds (a
        # snapshot partition) need outlive the error, which is handled here.
        left = _queue_one_by_one(job, what, services, error)
        forget_traceback(error)
        if left:
            return None
    return _release(run, services)


def _release(run: Run, services: Services) -> ChunkJob | None:
    queued = maybe_release(run.run_id, run.partitions, services)
    return queued[0] if queued and len(queued) == 1 else None


def _queue_one_by_one(
    job: PartitionJob, what: str, services: Services, error: Exception | None = None
) -> bool:
    """Queue the job's partitions not recorded yet as jobs of one partition each (none when the
    run has ended meanwhile); False when every one is recorded (the failure came after the last
    was), for the caller to go on to the release. `what` happened, for the log."""
    run = services.runs.get(job.run_id)
    left = _unrecorded(job, services)
    if left and run is not None and not run.is_final:
        jobs = [replace(job, partition=partition, count=1).to_json() for partition in left]
        services.storage.send_messages(JOBS_QUEUE, jobs)
        outcome = f"partitions {left} queued again, a job each"
    else:
        outcome = "all recorded" if not left else "the run has ended: nothing queued again"
    log.warning("run %s: %s; %s", job.run_id, what, outcome, exc_info=error)
    return bool(left)


def _unrecorded(job: PartitionJob, services: Services) -> list[int]:
    """The job's partitions without a recorded result (one range query, however many)."""
    recorded = services.runs.partitions_recorded(job.run_id, job.partition, job.numbers[-1])
    return [partition for partition in job.numbers if partition not in recorded]


def diffed_partitions(
    run: Run, job: PartitionJob, services: Services
) -> Iterator[tuple[int, PartitionResult | None]]:
    """Each partition of the job with what its diff found, None for one recorded already (by
    an earlier attempt). The pieces of all of them are read at once (one range of each split's
    blob) while the first one's snapshot partition loads, and the next one's loads while this
    one is diffed: I/O and CPU overlap, within a job as between the jobs of two workers."""
    todo = _unrecorded(job, services)
    yield from ((partition, None) for partition in job.numbers if partition not in todo)
    if not todo:
        return
    definitions = services.definitions()
    export = definitions.export(run.export_name)
    one = [replace(job, partition=partition, count=1) for partition in todo]

    def load(partition_job: PartitionJob) -> Future[SnapshotPartition]:
        context = contextvars.copy_context()  # its log lines name the run, as this thread's
        return ahead.submit(context.run, _previous_partition, run, export, partition_job, services)

    with ThreadPoolExecutor(1, thread_name_prefix="diff-ahead") as ahead:
        fetched = ahead.submit(contextvars.copy_context().run, _pieces, run, todo, services)
        previous = _previous_partition(run, export, one[0], services)
        pieces = fetched.result()
        for at, partition_job in enumerate(one):
            following = load(one[at + 1]) if at + 1 < len(one) else None
            partition = partition_job.partition
            yield (
                partition,
                _diff(run, definitions, partition_job, services, previous, pieces.pop(partition)),
            )
            if following is not None:
                previous = following.result()


def _queue_delivery(
    run: Run, partition: int, recorded: PartitionResult | None, services: Services
) -> None:
    """Send the partition to Braze now, not at the release (`delivers_while_diffing`): the
    job whose result was recorded queues it; a repeated job only if that one died before it
    did, and never for a partition abandoned when the run ended in planning."""
    if recorded is None:
        recorded = services.runs.partition_result(run.run_id, partition)
        if recorded is None or recorded.delivery_queued or recorded.abandoned:
            return
    services.storage.send_messages(CHUNKS_QUEUE, [partition_chunk_job(run, recorded).to_json()])
    services.runs.mark_delivery_queued(run.run_id, partition)


def fail_partition(job: PartitionJob, error: BaseException, services: Services) -> None:
    """The partition job is being poisoned: the run fails, and sends nothing (more)."""
    run = services.runs.get(job.run_id)
    if run is None or run.is_final:
        return
    # A job of several gets here only when queueing its partitions one by one failed too.
    message = (
        f"planning failed: {job.label} of {job.partitions} could not be diffed after every retry "
        f"({type(error).__name__}: {error}); {sent_so_far(run, services)}"
    )
    finish_early(run, services, message=message, failed=True)


def _pieces(run: Run, partitions: list[int], services: Services) -> dict[int, list[bytes]]:
    """Each partition's pieces in split order (none for a teardown: everyone in the snapshot
    leaves). A piece is a fraction of a partition, read whole."""
    if run.teardown:
        return {partition: [] for partition in partitions}
    return partition_pieces(services, run, partitions)


def _segment_rows(pieces: list[bytes]) -> Iterator[PieceRow]:
    """The partition's rows in source order, the matched records among them as rows; each
    piece is let go once read (it empties `pieces`)."""
    pieces.reverse()
    while pieces:
        text, matched = piece_sections(pieces.pop())
        if not matched:  # numpy only for a delta's pieces
            yield from read_rows(text)
            continue
        filed = matched_rows(matched_records(matched))
        yield from heapq.merge(read_rows(text), filed, key=itemgetter(0))


def _take_in_bulk(
    partition: SnapshotPartition, pieces: list[bytes]
) -> tuple[list[PieceRow], _Previous, _Taken] | None:
    """The matched records whose snapshot entry stands as it is, found all at once; what is
    left for the row by row path (the text rows and the matched records in doubt, in source
    order, and the snapshot entries not taken); None when a piece holds matched rows as text
    (written by an earlier version: their ids are unknown until looked up one by one), or when
    the snapshot partition holds an id twice or a blank one (the row by row path keeps one
    entry per id).

    A record is in doubt when the snapshot lacks its digest, when another record has the same
    digest (a repeated row: the first counts, the next is a duplicate), or when a text row
    names the customer id of its entry (the row first in the file counts): the row by row path
    settles these as it settles any row."""
    import numpy as np

    if (
        not len(partition)
        or len(partition.position) != len(partition)  # an id twice
        or "" in partition.position  # a blank id
    ):
        return None
    sections = [piece_sections(piece) for piece in pieces]
    text_rows = [row for text, _ in sections for row in read_rows(text)]
    if any(not id_json for _, id_json, *_ in text_rows):
        return None
    records = matched_records(b"".join(matched for _, matched in sections))
    found = partition.find(records["raw"].astype(np.uint64))
    lines, seen = np.unique(found[found >= 0], return_counts=True)
    doubt = lines[seen > 1].tolist()
    named = (partition.position.get(id_json) for _, id_json, *_ in text_rows)
    doubt += [line for line in named if line is not None]
    in_doubt = (found < 0) | np.isin(found, doubt)
    taken = np.sort(found[~in_doubt])
    rows = list(heapq.merge(text_rows, matched_rows(records[in_doubt]), key=itemgetter(0)))
    left = np.ones(len(partition), dtype=bool)
    left[taken] = False
    old = _Previous(partition, {partition.ids[q]: q for q in np.flatnonzero(left).tolist()})
    return rows, old, taken


# A customer in the segment: (order, row digest, object, raw digest) of the row that counts;
# the object is None when the row is the one the snapshot remembers, so the profile is
# unchanged and was not built again. A plain tuple: one is made per row, and a named one costs
# a third more here.
_Member = tuple[int, str, dict[str, Any] | None, str]


class _Members(NamedTuple):
    """Who is in the segment in this partition, by customer id as JSON: the first valid row per
    id (in source order), and the ids whose only rows were rejected for another field than the
    id. The profiles taken in bulk (`_Taken`) are members too, and not in `profiles`. The rows
    rejected on the way are uploaded with the diff's other outputs (`rejected`)."""

    profiles: dict[str, _Member]
    kept: set[str]
    rejected: BlobLineWriter


class _Previous(NamedTuple):
    """The previous snapshot's entries of the partition left for the row by row path: customer
    id as JSON -> its entry in `partition`, read only for a profile whose row changed."""

    partition: SnapshotPartition
    at: dict[str, int]


class _SnapshotLines(NamedTuple):
    """This run's snapshot partition and its fallbacks, written side by side (see the module
    docstring); `previous`: the partition the entries copied come from."""

    fallbacks: BlobLineWriter
    snapshot: SnapshotPartWriter
    previous: SnapshotPartition
    copies: list[int]

    def keep(self, id_json: str, digest: str, prints: Fingerprints, raw: str) -> None:
        """A profile whose entry stands whatever Braze does."""
        self.snapshot.add(id_json, digest, prints, raw)

    def copy(self, previous: int) -> None:
        """A profile whose previous entry stands as it is, whatever Braze does."""
        self.copies.append(previous)

    def sent(
        self,
        id_json: str,
        member: tuple[str, Fingerprints | None, str],
        previous: int | None,
    ) -> None:
        """A profile sent as `member` (row digest, fingerprints, raw digest; None fingerprints:
        its membership removed); `previous` is its previous entry, if any."""
        if previous is None:
            self.fallbacks.write(snapshot_line(id_json, "", "null"))
        else:
            self.fallbacks.write(self.previous.line(previous))
        digest, prints, raw = member
        if prints is not None:
            self.snapshot.add(id_json, digest, prints, raw)

    def close_snapshot(self) -> None:
        self.snapshot.copy(self.previous, self.copies)
        self.snapshot.close()


def _diff(
    run: Run,
    definitions: Definitions,
    job: PartitionJob,
    services: Services,
    previous: SnapshotPartition,
    pieces: list[bytes],
) -> PartitionResult:
    """Members, comparison with the previous snapshot's partition, removals, then the chunk
    blobs to send, for one partition (`job.partition`) and its pieces."""
    export = definitions.export(run.export_name)
    in_bulk = _members_in_bulk(run, export, job, previous, pieces, services)
    if in_bulk is None:
        counts = PartitionResult(job.partition)  # filled in by each phase
        old = _Previous(previous, previous.position)
        members = _collect_members(run, export, job, old, _segment_rows(pieces), services, counts)
        taken: _Taken = ()
    else:
        counts, members, old, taken = in_bulk
    del pieces
    # The attributes a profile's entry fingerprints, in the order `braze_attributes` sets them.
    columns = ["email", *(a.attribute for a in export.mapping.attributes)]
    columns.append(export.membership_attribute)
    lines = _SnapshotLines(
        services.storage.line_writer(
            RUNS_CONTAINER,
            snapshot_fallbacks_name(run.run_id, job.partition),
            packed_frame,
            "application/zstd",
        ),
        services.snapshots.part_writer(
            export.name,
            run.connection,
            run.run_id,
            job.partition,
            columns,
        ),
        previous,
        [],
    )
    lines.snapshot.copy(previous, taken)
    counts.unchanged += len(taken)
    sends = _compare(run, export, members, old, lines, counts)
    sends += _removals(run, export, job, members, old, lines, counts)
    chunks = batches(sends, export.chunk_size)
    services.storage.in_parallel(
        [
            lines.fallbacks.close,
            lines.close_snapshot,
            *([members.rejected.close] if members.rejected.lines else []),
            *(
                partial(write_chunk, services, chunk_blob_name(run.run_id, job.partition, i), chunk)
                for i, chunk in enumerate(chunks)
            ),
        ]
    )
    chunk_rows = [len(chunk) for chunk in chunks]
    examples = _array_cap_check(
        run, export, definitions, members.profiles.keys(), previous, taken, job, services, counts
    )
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
    counts.snapshot_profiles = lines.snapshot.profiles
    return counts


def _members_in_bulk(
    run: Run,
    export: Export,
    job: PartitionJob,
    previous: SnapshotPartition,
    pieces: list[bytes],
    services: Services,
) -> tuple[PartitionResult, _Members, _Previous, _Taken] | None:
    """The counts, members and snapshot entries left with the matched records taken in bulk
    (`_take_in_bulk`); None when the partition must go row by row: no matched records, digests
    this run cannot trust, a snapshot `_take_in_bulk` leaves alone, or a row read again that
    names a customer whose entry was taken in bulk (an index that disagrees with its snapshot:
    row by row, the first of the two rows counts and the other is a duplicate)."""
    if (
        run.previous_partitions != job.partitions  # the index files rows by old partition
        or not _trusts_digests(run)
        or not any(MATCHED_MARK in p for p in pieces)
    ):
        return None
    taken = _take_in_bulk(previous, pieces)
    if taken is None:
        return None
    rows, old, in_bulk = taken
    counts = PartitionResult(job.partition)
    members = _collect_members(run, export, job, old, rows, services, counts)
    # An id of the snapshot not left for the row by row path is one taken in bulk (its ids are
    # unique: `_take_in_bulk` takes none from a snapshot holding an id twice): only the few
    # members found row by row are looked up.
    position, left = previous.position, old.at
    if any(id_json in position and id_json not in left for id_json in members.profiles):
        return None
    return counts, members, old, in_bulk


def _collect_members(
    run: Run,
    export: Export,
    job: PartitionJob,
    old: _Previous,
    rows: Iterable[PieceRow],
    services: Services,
    counts: PartitionResult,
) -> _Members:
    """Read the partition's rows in source order and validate those that need it.

    A row whose digest is the one the snapshot remembers for its id is the row Braze already
    holds: valid, unchanged, not validated again (unless the run sends everything anyway). Any
    other row is validated: a rejected one is listed with every reason; a later valid row for an
    id already seen is a duplicate, rejected with its reason.

    A row the split filed by its raw digest is the snapshot's entry with that digest, taken as
    it is; a digest the snapshot does not hold (an index a crash left stale), a repeated row or
    a run on other code reads the row from the source again and takes the way of any other.
    """
    rejected = services.storage.line_writer(
        RUNS_CONTAINER, partition_rejected_name(run.run_id, job.partition)
    )
    members = _Members({}, set(), rejected)
    reread = Rereader(run, export, services)
    mapping = export.mapping
    validate = record_validator(mapping)
    attributes = braze_attributes(export)
    same_code = run.code_version == code_digest()  # else the digests may not mean the same
    trust_digests = _trusts_digests(run)
    files = partition_files_loader(services, run.run_id)
    # A CSV row's values (CDM's too) are strings: only JSON Lines records can hold numbers.
    read_values = loads if source_format(run, export) == "jsonl" else jsonlines.loads_strings
    raw_ids: dict[str, str] | None = None  # raw digest -> customer id as JSON, when needed
    for row in rows:
        order, id_json, digest, values_json, raw = row
        if not id_json:  # filed by its raw digest
            if raw_ids is None:
                raw_ids = _raw_ids(old)
            id_json = raw_ids.get(raw, "")
            if id_json and trust_digests and id_json not in members.profiles:
                members.profiles[id_json] = (order, "", None, raw)
                continue
            order, id_json, digest, values_json, raw = _reread(run, export, job, row, reread)
        if id_json not in members.profiles and trust_digests:
            previous = old.at.get(id_json)
            if previous is not None and old.partition.digest(previous) == digest:
                members.profiles[id_json] = (order, digest, None, raw)
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
            obj = attributes(result)
            rejected.write(_duplicate_entry(order, result.customer_id, obj, files))
        else:
            obj = attributes(result)
            if same_code:
                members.profiles[id_json] = (order, digest, obj, raw)
            else:
                members.profiles[id_json] = (order, "", obj, "")
    if rejected.lines:
        counts.rejected_blob = partition_rejected_name(run.run_id, job.partition)
    return members


def _reread(
    run: Run, export: Export, job: PartitionJob, row: PieceRow, reread: Rereader
) -> PieceRow:
    """A row filed by its raw digest, read from the source and made a piece row like any other
    (rare: see `_collect_members`). Its id must belong here: a digest the index held for
    another partition (two rows' digests alike in their top 56 bits) fails the run before
    anything is sent, rather than file a profile where its snapshot entry is not."""
    order, _, _, where, raw = row
    source_row = reread(order, where)
    mapping = export.mapping
    values = mapped_values(source_row.values, frozenset(mapping.columns()))
    customer_id = usable_customer_id(values, mapping)
    line = f"line {source_row.line} of {source_row.file or run.source}"
    if customer_id is None:  # the split took it for a row the snapshot holds, so it is one
        raise SourceError(
            f"{line} no longer holds the record read from it while planning: the file was "
            "written during the run; start the run again"
        )
    if partition_of(customer_id, job.partitions) != job.partition:
        raise SourceError(
            f"{line} was filed by a digest that another row shares; start a full refresh, "
            "which files every row by its customer id"
        )
    return next(read_rows(piece_lines(run, export).line(order, customer_id, values, raw).decode()))


def _trusts_digests(run: Run) -> bool:
    """Whether a digest the snapshot remembers means what it meant to this run: the same code
    wrote it, and the run is no full refresh."""
    return run.code_version == code_digest() and not run.full_refresh_reason


def _previous_partition(
    run: Run, export: Export, job: PartitionJob, services: Services
) -> SnapshotPartition:
    """What the snapshot the run diffs against holds for this partition's ids."""
    if not run.previous_snapshot:
        return SnapshotPartition.empty()
    snapshot = (run.previous_snapshot, run.previous_partitions)
    return services.snapshots.previous_partition(
        export.name, run.connection, snapshot, job.partition, job.partitions
    )


def _raw_ids(old: _Previous) -> dict[str, str]:
    """Raw digest -> customer id as JSON, for the snapshot's entries that have one."""
    found = {old.partition.raw(at): id_json for id_json, at in old.at.items()}
    found.pop("", None)
    return found


def _compare(
    run: Run,
    export: Export,
    members: _Members,
    old: _Previous,
    lines: _SnapshotLines,
    counts: PartitionResult,
) -> list[bytes]:
    """Each member against the snapshot: the chunk lines to send, and the snapshot entries
    written as it goes. A profile whose row is the one the snapshot remembers costs a copied
    entry; a new one is fingerprinted and sent whole; a changed one sends what changed."""
    full = bool(run.full_refresh_reason)
    clearable = clearable_attributes(export)
    partition = old.partition
    member = membership_value(export, True)  # the object every profile here holds
    shared = (member, fingerprint(member))
    sends: list[bytes] = []
    for id_json, (order, digest, obj, raw) in members.profiles.items():
        previous = old.at.get(id_json)
        if obj is None:  # the row the snapshot remembers: Braze holds this profile already
            assert previous is not None
            counts.unchanged += 1
            if partition.raw(previous) == raw:  # the same bytes, or none known
                lines.copy(previous)
            else:  # the same values in other bytes (a column not mapped changed)
                lines.keep(id_json, digest, partition.prints(previous), raw)
            continue
        # One fingerprint per attribute Braze bills: their count is the data points.
        prints = fingerprints(obj, shared)
        if previous is None:
            counts.new += 1
            counts.objects += 1
            counts.data_points += len(prints)
            sends.append(encoded_chunk_line(order, len(prints), dumpb(obj)))
            lines.sent(id_json, (digest, prints, raw), None)
            continue
        old_prints = partition.prints(previous)
        if prints == old_prints and not full:  # same attributes, same values: nothing to clear
            counts.unchanged += 1
            lines.keep(id_json, digest, prints, raw)
            continue
        change = delta(obj, old_prints, clearable, False, prints)
        if change is None:
            counts.unchanged += 1
        else:
            counts.changed += 1
        body = delta(obj, old_prints, clearable, True) if full else change
        if body is None:  # Braze keeps what it has, which is what this row makes
            lines.keep(id_json, digest, old_prints, raw)
            continue
        sends.append(_send_line(order, body, counts))
        lines.sent(id_json, (digest, prints, raw), previous)
    return sends


def _removals(
    run: Run,
    export: Export,
    job: PartitionJob,
    members: _Members,
    old: _Previous,
    lines: _SnapshotLines,
    counts: PartitionResult,
) -> list[bytes]:
    """Who left the segment: the snapshot's ids that no row names. A row that could not be
    read may be any member's: while there are such rows, nobody is taken for having left (a
    stray comma must not remove a customer from the segment)."""
    hold_removals = run.rows_unidentified > 0 and not run.teardown
    sends: list[bytes] = []
    for id_json, previous in old.at.items():
        if id_json in members.profiles:
            continue
        if id_json in members.kept or hold_removals:
            counts.removals_held += id_json not in members.kept
            lines.copy(previous)
            continue
        counts.removed += 1
        order = REMOVAL_ORDER + (job.partition << 32) + counts.removed
        body = removal(loads(id_json), export, old.partition.prints(previous))
        sends.append(_send_line(order, body, counts))
        lines.sent(id_json, ("", None, ""), previous)
    return sends


def _send_line(order: int, body: dict[str, Any], counts: PartitionResult) -> bytes:
    points = data_points(body)
    counts.objects += 1
    counts.data_points += points
    return encoded_chunk_line(order, points, dumpb(body))


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
    return rejected_entry_text(entry)


def _array_cap_check(
    run: Run,
    export: Export,
    definitions: Definitions,
    by_row: KeysView[str],
    previous: SnapshotPartition,
    in_bulk: _Taken,
    job: PartitionJob,
    services: Services,
    counts: PartitionResult,
) -> list[str]:
    """Count members whose membership array would pass Braze's element cap.

    Other exports to the same connection and array attribute add their own segment names;
    their snapshots (partitioned by the same hash) tell who holds which. Braze silently drops
    an update that would pass the cap, so the report warns before that happens. The members
    found row by row (`by_row`) and those taken in bulk (`in_bulk`: their entries in
    `previous`) are put together only when another export's snapshot is there to compare (a
    set of a delta's whole partition cost about 3 ms a partition).
    """
    if export.membership != "array" or not (by_row or len(in_bulk)):
        return []
    cap = definitions.connection(export.connection).array_element_cap
    held: dict[str, set[str]] = defaultdict(set)
    members: set[str] | None = None
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
        if members is None:
            members = {previous.ids[at] for at in in_bulk}
            members.update(by_row)
        snapshot = (manifest.run_id, manifest.partitions)
        for id_json in services.snapshots.previous_partition(
            other.name, other.connection, snapshot, job.partition, job.partitions
        ).ids:
            if id_json in members:
                held[id_json].add(other.segment)
    over = [id_json for id_json, segments in held.items() if len(segments) + 1 > cap]
    counts.array_cap_warnings = len(over)
    return [loads(id_json) for id_json in over[:ARRAY_CAP_EXAMPLES]]
