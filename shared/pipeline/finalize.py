"""Finalizing a run, exactly once: sum the chunks, merge rejected rows, commit the snapshot,
write the report.

Any worker that finishes the last piece of work may call `maybe_finalize`; an ETag-guarded
claim on the run entity lets exactly one of them do it, even when the last chunks finish together.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import IO, Any

from shared.adapters.services import Services
from shared.adapters.snapshot_store import Manifest, SnapshotPartWriter, read_partition
from shared.adapters.storage import IO_THREADS, BlobNotFound
from shared.adapters.telemetry import metrics
from shared.core import jsonlines
from shared.core.messages import ANY_PARTITION
from shared.core.partitioning import partition_of
from shared.core.report import RejectionExamples, build_report, final_status, run_ended, summary
from shared.core.report_markdown import report_markdown
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import (
    ChunkResult,
    PartitionResult,
    Run,
    RunConflict,
    Status,
    rejection_reasons,
    sum_diffs,
    utcnow,
    valid_rows,
)
from shared.core.snapshot_partition import (
    SnapshotEntry,
    SnapshotPartition,
    checked_entry,
    parse_snapshot_line,
    snapshot_line,
)
from shared.core.source_files import open_lines
from shared.pipeline.run_files import (
    DamagedRunFile,
    carried_rejected_name,
    diffed_snapshot_name,
    json_lines,
    legacy_pending_snapshot_name,
    rejected_blob_name,
    rejected_entry_text,
    report_blob_name,
    snapshot_fallbacks_name,
    summary_blob_name,
    unpacked_stream,
)
from shared.pipeline.start import start_pending

log = logging.getLogger(__name__)

CLAIM_LEASE = timedelta(minutes=10)


def finish_early(
    run: Run, services: Services, *, message: str, failed: bool = False, stopped_by: str = ""
) -> None:
    """End a run that sends nothing (more): planning failed, a safety valve held it, or a dry
    run is done. The report and rejected rows are written as for any run.

    The first to end a run says why. Two jobs failing at once (a storage outage poisons
    several) each end it, and the later write of an older copy turned a finalized run back
    into a planning one, to be finalized again: the run is now written only over the copy
    read, and a run found ended (its chunk total set) or finalized is left as it is. Any other
    change is read again and this end applied to it."""
    while run.chunks_total is None:
        run.planning_failed = run.planning_failed or failed
        run.stopped_by, run.message = stopped_by, _clip(message)
        run.chunks_total = _chunks_under_way(run, services) if run.delivers_while_diffing else 0
        if run.planning_failed:
            _count_unfinished_planning(run, services)
        try:
            services.runs.update(run, if_unchanged=True)
        except RunConflict:
            current = services.runs.get(run.run_id)
            if current is None or current.is_final:
                return
            run = current
    maybe_finalize(run.run_id, services)  # found ended too: finalizing is claimed, asked twice


def sent_so_far(run: Run, services: Services) -> str:
    """What Braze got from a run that ends before its release, for the run's message."""
    diffed = services.runs.partitions_diffed(run.run_id)
    if not run.delivers_while_diffing or not diffed:
        return "nothing was sent"
    return (
        f"the {diffed} partition(s) diffed before that go to Braze (the report counts them); a "
        "failed first export keeps no snapshot, so the next run sends everyone again"
    )


def _chunks_under_way(run: Run, services: Services) -> int:
    """A run that delivers while diffing and ends before its release: each partition diffed so
    far queued its job, which is delivered and recorded as usual. Every other partition is
    recorded as abandoned, which a diff finishing now cannot then record over (so it queues
    nothing), and its job as empty; the run finalizes once the queued jobs are recorded, and
    plans (and reports) what those send."""
    for partition in range(run.partitions):
        services.runs.record_partition(run.run_id, PartitionResult(partition, abandoned=True))
    # Read back rather than trusted from the inserts: one whose answer was lost, or an earlier
    # attempt of this job, recorded a partition abandoned without its empty job.
    results = services.runs.partition_results(run.run_id)
    for result in results:
        if result.abandoned:
            empty = ChunkResult(chunk_index=result.partition, rows=0, partitions=[result.partition])
            services.runs.record_chunk(run.run_id, empty)
    sum_diffs(run, [r for r in results if not r.abandoned])
    return run.partitions


def _count_unfinished_planning(run: Run, services: Services) -> None:
    """Planning failed: the rows of the partitions diffed so far are valid or rejected as their
    diffs found, the splits' rejected rows (unusable ids, unreadable rows) are rejected, and
    every other row read was never validated, so it is counted as neither."""
    splits = services.runs.split_results(run.run_id)
    diffed = services.runs.partition_results(run.run_id)
    if splits:  # else the plan failed before the source was read: nothing to count
        run.rows_read = sum(s.rows_read for s in splits)
        run.rows_rejected = sum(s.rows_rejected for s in splits) + sum(
            p.rejected + p.duplicates for p in diffed
        )
        reasons = [s.reasons for s in splits]
        run.validation_rejections = run.rejections = rejection_reasons(reasons, diffed)
    run.rows_valid = valid_rows(diffed)
    run.rows_not_validated = max(0, run.rows_read - run.rows_rejected - run.rows_valid)


def _clip(message: str, limit: int = 2000) -> str:
    """Run messages live in a table property (64 KiB); a wide CSV header must not overflow it."""
    return message if len(message) <= limit else message[:limit] + "…"


def maybe_finalize(run_id: str, services: Services) -> bool:
    """Finalize the run if all chunks are done and nobody else has; True for the one that did."""
    store = services.runs
    run = store.get(run_id)
    if run is None or run.is_final or run.chunks_total is None:
        return False
    now = utcnow()
    if run.finalize_claimed_at and now - run.finalize_claimed_at < CLAIM_LEASE:
        return False  # someone is finalizing; after the lease, a crashed finalizer is replaced
    # Every chunk asks after it is recorded; counting keys keeps that cheap until the last one.
    if store.chunks_recorded(run_id) < run.chunks_total:
        return False
    results = store.chunk_results(run_id)
    if not set(range(run.chunks_total)) <= {r.chunk_index for r in results}:
        return False
    run.finalize_claimed_at = now  # the ETag-guarded write below is what makes it a claim
    try:
        store.update(run, if_unchanged=True)
    except RunConflict:
        return False
    try:
        _finalize(run, results, services)
    except Exception:
        # Give the claim back, so the queue's retry of this message can finalize the run.
        claimed = store.get(run_id)
        if claimed is not None and not claimed.is_final:
            claimed.finalize_claimed_at = None
            with contextlib.suppress(RunConflict):
                store.update(claimed, if_unchanged=True)
        raise
    start_pending(services, run.export_name)
    return True


def _finalize(run: Run, results: list[ChunkResult], services: Services) -> None:
    """Sum the chunks into the run. After a replay, the rows Braze still rejects are those of
    the latest round: each round re-sends every row the previous one left rejected."""
    latest = [r for r in results if r.round == run.replay_round]
    run.profiles_accepted = sum(r.accepted for r in results)
    # Rows a failed chunk could not list were never replayed: they stay rejected.
    run.profiles_rejected_by_braze = sum(r.rejected for r in latest) + sum(
        r.unlisted for r in results if r.round < run.replay_round
    )
    run.requests_sent = sum(r.requests for r in results)
    run.data_points_used = sum(r.data_points for r in results)
    tally = Counter(run.validation_rejections)
    for result in latest:
        tally.update(result.rejections)
    run.rejections = dict(tally)
    run.rejected_blob = rejected_blob_name(run.run_id)
    run.report_blob = report_blob_name(run.run_id)
    run.summary_blob = summary_blob_name(run.run_id)
    partitions = services.runs.partition_results(run.run_id)
    examples = _merge_rejected(run, partitions, latest, services)
    run.status = final_status(run)
    delivered = run.profiles_accepted + run.profiles_rejected_by_braze
    if delivered != run.objects_planned and run.chunks_total:
        run.status = Status.FAILED
        run.message = (
            f"counts do not add up: {run.objects_planned} profiles planned to be sent but "
            f"{delivered} accounted for by delivery; this is a bug, please report it with this "
            "run's id"
        )
    elif not run.message:
        run.message = summary(run, latest, sum(r.unlisted for r in results))
    superseded: list[str] = []
    if run.partitions and not (run.planning_failed or run.stopped_by or run.dry_run):
        superseded = _commit_snapshot(run, partitions, latest, results, services)
    elif run.partitions:
        services.snapshots.discard(run.export_name, run.connection, run.run_id)
    run.finished_at = utcnow()
    report = build_report(run, partitions, examples)
    services.storage.write_bytes(
        RUNS_CONTAINER, run.report_blob, json.dumps(report, indent=2), "application/json"
    )
    services.storage.write_bytes(
        RUNS_CONTAINER, run.summary_blob, report_markdown(report), "text/markdown; charset=utf-8"
    )
    services.runs.update(run, if_unchanged=True)  # a finalizer that outlived its lease loses
    log.log(*run_ended(run))
    _delete_superseded(run, superseded, services)
    if (recorder := metrics()) is not None:
        recorder.run_ended(
            run.export_name,
            run.status,
            (run.finished_at - run.created_at).total_seconds(),
            run.profiles_accepted,
            {"validation": run.rows_rejected, "braze": run.profiles_rejected_by_braze},
        )


def _commit_snapshot(
    run: Run,
    partitions: list[PartitionResult],
    results: list[ChunkResult],
    every_round: list[ChunkResult],
    services: Services,
) -> list[str]:
    """Make what Braze now holds the export's snapshot, one partition at a time; the
    folders of the snapshots it supersedes, for `_delete_superseded`.

    Each diff wrote its partition as it will be if Braze accepts everything sent; only the
    partitions where Braze rejected something (in any round) are rewritten, with the entries
    the diff's fallbacks hold for the rejected profiles: a profile Braze rejected keeps its
    previous entry (or stays out), so the next run sends it again. Rejected ids are loaded per
    partition, so memory stays bounded.
    """
    written = {p.partition: p.snapshot_profiles for p in partitions}
    touched = {p for r in every_round if r.rejected for p in r.partitions}
    # A chunk that failed with an unreadable blob could not list its rows, in this round or an
    # earlier one: trust nothing sent in its partitions (in all of them, for a replay's chunk),
    # so the next run sends them again.
    unlisted = {p for r in every_round if r.unlisted for p in r.partitions}
    with tempfile.TemporaryDirectory(prefix="finalize-") as directory:
        rejected_ids = _rejected_ids_by_partition(
            run.partitions, results, Path(directory), services
        )
        profiles = 0
        for partition in range(run.partitions):
            untrusted = bool(unlisted & {partition, ANY_PARTITION})
            if not (untrusted or touched & {partition, ANY_PARTITION}):
                profiles += written[partition]  # Braze took everything: the diff's part stands
                continue
            profiles += _commit_partition(
                run, partition, rejected_ids(partition), untrusted, written, services
            )
    # A run vouches for its source version when Braze took everything it sent: a later run of
    # the same version then has nothing to send, and reports this run's rejected rows again
    # (validating the same rows with the same code rejects the same ones). After a rejection
    # by Braze (in any round), a held removal or an array-cap warning (it depends on other
    # exports too), or when a source file was written while the run read it, the next run
    # reads the source again.
    settled = (
        run.status in (Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED)
        and not (touched or unlisted or run.removals_held or run.profiles_rejected_by_braze)
        and not run.array_cap_warnings
        and _source_unchanged(run, services)
    )
    manifest = Manifest(
        run.run_id,
        run.partitions,
        run.mapping_fingerprint,
        profiles,
        utcnow().isoformat(),
        source_version=run.source_version if settled else "",
        code_version=run.code_version,
    )
    run.snapshot_profiles = profiles
    return services.snapshots.make_current(run.export_name, run.connection, manifest)


def _delete_superseded(run: Run, folders: list[str], services: Services) -> None:
    """The snapshots the run's replaced, deleted once the run is recorded: the run is over
    sooner, and a failure here changes nothing (the next run that commits deletes them)."""
    try:
        services.snapshots.delete_folders(folders)
    except Exception as error:
        log.warning(
            "run %s: %d superseded snapshots were not deleted, or not wholly (%s: %s); the "
            "next run of the export that commits a snapshot deletes them",
            run.run_id,
            len(folders),
            type(error).__name__,
            error,
        )


def _source_unchanged(run: Run, services: Services) -> bool:
    """Whether every source file still has the ETag of the bytes the version was computed
    from: then the splits read those very bytes, and the version describes what was sent."""
    if not run.source_etags:
        return False
    files: list[tuple[str, str]] = json.loads(run.source_etags)
    storage = services.storage
    try:  # a CDM folder may name many files: several are asked at once
        with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="source-etags") as pool:
            now = list(pool.map(lambda file: storage.etag(*file[0].split("/", 1)), files))
    except BlobNotFound:
        return False
    return now == [etag for _, etag in files]


def _legacy_committed(pending: Iterator[Any], rejected: set[str], untrusted: bool) -> Iterator[str]:
    """A pending snapshot of the version before row digests: `[id, prints]` stays; `[id, new,
    old]` takes new unless Braze rejected it (null: gone). No digests: those rows are validated
    again next run."""
    for entry in pending:
        customer_id, prints = entry[0], entry[1]
        id_json = jsonlines.dumps(customer_id)
        if len(entry) == 3 and (untrusted or id_json in rejected):
            prints = entry[2]
        if prints is not None:
            yield snapshot_line(id_json, "", jsonlines.dumps(prints))


def _diffed_partition(
    run: Run, partition: int, rewritten: bool, services: Services
) -> SnapshotPartition:
    """The snapshot partition as the diff wrote it. The first rewrite keeps a copy in the run's
    folder, so a later one (after a replay round, or a finalizer that died) starts again from
    what the diff wrote, not from an earlier round's result (a copy an earlier version kept is
    in an earlier format, columns uncompressed or text, which `from_blob` reads too)."""
    storage, copy = services.storage, diffed_snapshot_name(run.run_id, partition)
    if rewritten:
        return read_partition(storage.read_bytes(RUNS_CONTAINER, copy), copy)
    diffed = services.snapshots.partition(
        run.export_name, run.connection, run.run_id, partition, written=True
    )
    storage.write_bytes(RUNS_CONTAINER, copy, diffed.to_blob(), "application/octet-stream")
    return diffed


def _fallbacks(
    lines: Iterable[bytes], rejected: set[str], untrusted: bool
) -> dict[str, SnapshotEntry | None]:
    """The entries to put back: those of the profiles Braze rejected (all sent, untrusted);
    None for a profile that had none (a new one)."""
    entries: dict[str, SnapshotEntry | None] = {}
    for text in open_lines(lines):
        line = text.rstrip("\n")
        id_json, _, prints_json, _ = parse_snapshot_line(line)
        if untrusted or id_json in rejected:
            entries[id_json] = None if prints_json == "null" else checked_entry(line)
    return entries


def _write_committed(
    writer: SnapshotPartWriter,
    written: SnapshotPartition,
    fallbacks: dict[str, SnapshotEntry | None],
) -> None:
    """The partition's entries Braze now holds: what the diff wrote, with the entries of
    rejected profiles put back as they were (gone, if they had none), and the entries of
    profiles whose removal Braze rejected put back."""
    import numpy as np

    kept = np.fromiter((i not in fallbacks for i in written.ids), dtype=bool, count=len(written))
    writer.copy(written, np.flatnonzero(kept))
    for entry in fallbacks.values():
        if entry is not None:
            writer.add(*entry)


def _merge_rejected(
    run: Run,
    partitions: list[PartitionResult],
    results: list[ChunkResult],
    services: Services,
) -> RejectionExamples:
    """Merge the splits', the partitions' and each recorded chunk's rejected rows, ordered by
    source line (profiles leaving the segment last), noting where the first rows of each
    reason are; a run that found its source unchanged reports the rejected rows of the run
    it names.

    Only the files the records name are merged: a blob left by an attempt that crashed before
    recording its chunk must not contradict the counts. Each part is already in order, so a
    streaming k-way merge keeps memory flat.
    """
    storage = services.storage
    run_id = run.run_id
    parts = [s.rejected_blob for s in services.runs.split_results(run_id) if s.rejected_blob]
    if run.unchanged_since:
        parts.append(carried_rejected_name(run_id))
    parts += [p.rejected_blob for p in partitions if p.rejected_blob]
    # Opened all at once, a few at a time: the merge reads the first lines of every part
    # before its first row, and one download after another cost a round trip each (36 parts
    # for a 1M delta: about 0.2 s of its finalizing). Each part holds its first piece either way.
    opened = storage.in_parallel(partial(storage.read_chunks, RUNS_CONTAINER, n) for n in parts)
    streams = [_entries(chunks) for chunks in opened]
    streams += [
        (
            (order, rejected_entry_text(entry), entry)
            for order, entry in chunk_rejections(services, r)
        )
        for r in results
    ]
    examples = RejectionExamples()
    writer = storage.line_writer(RUNS_CONTAINER, rejected_blob_name(run_id))
    for _, text, entry in heapq.merge(*streams, key=lambda item: item[0]):
        examples.add(entry)
        writer.write(text)
    writer.close()
    return examples


def _commit_partition(
    run: Run,
    partition: int,
    rejected: set[str],
    untrusted: bool,
    written: dict[int, int],
    services: Services,
) -> int:
    """Rewrite one partition of the snapshot where Braze rejected profiles; its profiles."""
    storage = services.storage
    rewritten = storage.exists(RUNS_CONTAINER, diffed_snapshot_name(run.run_id, partition))
    if not (rejected or untrusted or rewritten):
        return written[partition]  # a replay round took this partition's rows in
    fallbacks = snapshot_fallbacks_name(run.run_id, partition)
    snapshots = services.snapshots
    if not storage.exists(RUNS_CONTAINER, fallbacks):
        # diffed by the version before row digests, finalized by this one
        pending = json_lines(services, legacy_pending_snapshot_name(run.run_id, partition))
        lines = _legacy_committed(pending, rejected, untrusted)
        return snapshots.write_partition(
            run.export_name, run.connection, run.run_id, partition, lines
        )
    diffed = _diffed_partition(run, partition, rewritten, services)
    writer = snapshots.part_writer(run.export_name, run.connection, run.run_id, partition)
    try:
        entries = _fallbacks(
            unpacked_stream(storage.read_chunks(RUNS_CONTAINER, fallbacks)), rejected, untrusted
        )
    except DamagedRunFile as error:
        raise DamagedRunFile(f"fallbacks blob {fallbacks}: {error}") from None
    _write_committed(writer, diffed, entries)
    writer.close()
    return writer.profiles


def _rejected_ids_by_partition(
    partitions: int, results: list[ChunkResult], directory: Path, services: Services
) -> Callable[[int], set[str]]:
    """The ids (as JSON) Braze rejected, by partition: each chunk's rejected rows are read once
    and filed in a local file per partition (a chunk covers several partitions, a replay's all
    of them), so memory holds one partition's ids at a time however many were rejected."""
    files: dict[int, IO[str]] = {}
    try:
        for result in results:
            covered = set(result.partitions)
            for _, entry in chunk_rejections(services, result):
                partition = partition_of(entry["customer_id"], partitions)
                if partition in covered or ANY_PARTITION in covered:
                    file = files.get(partition)
                    if file is None:
                        path = directory / f"{partition}.txt"
                        file = files[partition] = path.open("w", **_TEXT)
                    file.write(jsonlines.dumps(entry["customer_id"]) + "\n")
    finally:
        for file in files.values():
            file.close()

    def rejected_ids(partition: int) -> set[str]:
        if partition not in files:
            return set()
        with (directory / f"{partition}.txt").open(**_TEXT) as file:
            return set(file.read().split("\n")[:-1])  # not splitlines: JSON keeps U+2028 as is

    return rejected_ids


_TEXT: dict[str, Any] = {"encoding": "utf-8", "errors": "surrogatepass"}  # ids as JSON text


def chunk_rejections(services: Services, result: ChunkResult) -> Iterator[tuple[int, Any]]:
    """(order, entry) for the rows a chunk's record counts as rejected, in order: each
    attempt's blob holds lines for the batches it recorded, and maybe for one it answered but
    died before recording (those the next attempt sent again, so they are left out)."""
    for name, until in zip(result.rejected_blobs, result.rejected_until, strict=True):
        for entry in json_lines(services, name):
            if entry["batch"] < until:
                yield entry["order"], entry


def _entries(chunks: Iterable[bytes]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    for text in open_lines(chunks):
        text = text.rstrip("\n")
        if text:
            entry = jsonlines.loads(text)  # orjson: several times the standard library's speed
            yield entry.get("order", entry.get("line", 0)), text, entry
