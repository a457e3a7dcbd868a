"""Releasing a run for delivery once every partition is diffed: safety valves, dry run, queue.

Nothing is sent before this point, so a run that would remove too much of the segment or spend
too many data points stops here with nothing sent, and a dry run ends here having written the
exact request bodies it would have sent. The exception is a run no valve can stop whatever its
diffs find (`delivers_while_diffing`): each of its partitions is queued for delivery as soon as
it is diffed, and the release only sums them up.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta

from shared.adapters.braze_client import authorization_header, tracking_body
from shared.adapters.services import Services
from shared.adapters.settings import ConfigurationError
from shared.core.definitions import Connection, Export
from shared.core.messages import ChunkJob
from shared.core.resource_names import CHUNKS_QUEUE, RUNS_CONTAINER
from shared.core.runs import (
    PartitionResult,
    Run,
    RunConflict,
    Status,
    rejection_reasons,
    sum_diffs,
    utcnow,
    valid_rows,
)
from shared.pipeline.finalize import finish_early, maybe_finalize
from shared.pipeline.run_files import batches, chunk_blob_name, dry_run_blob_name, read_chunk

log = logging.getLogger(__name__)

RELEASE_LEASE = timedelta(minutes=5)
MAX_CHUNK_BLOBS = 64  # blobs named by one chunk message (a queue message holds 64 KB)


def maybe_release(run_id: str, partitions: int, services: Services) -> list[ChunkJob] | None:
    """Release the run of `partitions` partitions if every one is diffed and nobody else has:
    for the one that did, the chunk jobs it queued (none when the run ended at the release, or
    each partition queued its own); None for everyone else.

    The partitions are counted before the run is read: every diff job asks, and all but the
    last learn from the count alone that they were not the last (a table read saved a job).
    The release is claimed on the run entity with its ETag, like finalization; a releaser that
    dies mid-way is replaced after the lease, and chunks it queued twice are delivered once.
    """
    store = services.runs
    if not partitions:
        return None
    diffed = store.partitions_diffed(run_id)
    if diffed < partitions:
        return None
    run = store.get(run_id)
    if run is None or run.status != Status.PLANNING or not run.partitions:
        return None
    if run.chunks_total is not None:  # ended in planning (or stopped): nothing to release
        return None
    now = utcnow()
    if run.release_claimed_at and now - run.release_claimed_at < RELEASE_LEASE:
        return None
    if diffed < run.partitions:
        return None
    results = store.partition_results(run_id)
    definitions = services.definitions()
    export = definitions.export(run.export_name)
    connection = definitions.connection(export.connection)
    if run.release_claimed_at is None:
        # Fixed with the first claim: a releaser taking over after the lease must number the
        # jobs as the one before it did, whatever the definition says by then (and a run first
        # claimed by a version that did not group keeps 0: one job per blob).
        run.chunk_size = export.chunk_size
    run.release_claimed_at = now
    try:
        store.update(run, if_unchanged=True)
    except RunConflict:
        return None
    split_reasons = [split.reasons for split in store.split_results(run_id)]
    summarize(run, results, split_reasons, connection.objects_per_request)
    if run.delivers_while_diffing:  # each partition queued its own job once diffed
        _delivering(run, len(results), services)
        return []
    valve = safety_valve(run, export)
    if run.dry_run:
        _write_dry_run(run, results, connection.objects_per_request, services)
        verdict = f"; a real run would stop: {valve[1]}" if valve else ""
        finish_early(run, services, message=_dry_run_summary(run) + verdict)
        return []
    if valve is not None:
        finish_early(run, services, message=valve[1], stopped_by=valve[0])
        return []
    jobs = chunk_jobs(run, results)
    if jobs and (problem := _undeliverable(connection, services)):
        finish_early(run, services, message=problem, failed=True)
        return []
    services.storage.send_messages(CHUNKS_QUEUE, (job.to_json() for job in jobs))
    _delivering(run, len(jobs), services)
    return jobs


def _delivering(run: Run, chunks: int, services: Services) -> None:
    run.chunks_total = run.chunks_planned = chunks
    run.status, run.planning_finished_at = Status.DELIVERING, utcnow()
    services.runs.update(run)
    log.info(
        "run %s released: %d new, %d changed, %d removed, %d unchanged; %d chunks %s",
        run.run_id,
        run.profiles_new,
        run.profiles_changed,
        run.profiles_removed,
        run.profiles_unchanged,
        chunks,
        "queued as diffed" if run.delivers_while_diffing else "queued",
    )
    maybe_finalize(run.run_id, services)  # a run with nothing (more) to send finishes here


def delivers_while_diffing(
    run: Run, export: Export, connection: Connection, largest: int | None, services: Services
) -> bool:
    """Whether each partition may go to Braze as soon as it is diffed, before the others are:
    only when no safety valve can stop the run whatever the diffs find, so that "nothing is
    sent before the valves are checked" still holds. Nobody can leave a segment whose snapshot
    holds nobody (a first export), and a new profile writes at most its email, its mapped
    attributes and its membership, so the rows read bound the data points. Each partition is
    one job, so its chunk blobs must fit one message: `largest`, the most rows filed under one
    partition (the rows read when a split did not count them), bounds them.

    A dry run, a teardown, a run with one partition (nothing to overlap) and a connection that
    cannot be delivered to now wait for the release as before; the release says why."""
    if run.dry_run or run.teardown or run.previous_profiles or run.partitions < 2:
        return False
    if (run.rows_read if largest is None else largest) > export.chunk_size * MAX_CHUNK_BLOBS:
        return False
    most_points = run.rows_read * (2 + len(export.mapping.attributes))
    if most_points > export.max_data_points and not run.override_safety_valves:
        return False
    return _undeliverable(connection, services) is None


def partition_chunk_job(run: Run, result: PartitionResult) -> ChunkJob:
    """A partition's delivery job when the run delivers while diffing: all its chunk blobs,
    numbered by the partition (an empty one too, so the numbers run 0..partitions-1)."""
    names = [
        chunk_blob_name(run.run_id, result.partition, i) for i in range(len(result.chunk_rows))
    ]
    return ChunkJob(
        run.run_id,
        run.export_name,
        result.partition,
        names,
        sum(result.chunk_rows),
        [result.partition],
    )


def summarize(
    run: Run,
    results: list[PartitionResult],
    split_reasons: list[dict[str, int]],
    objects_per_request: int,
) -> None:
    """Sum the partitions into the run, with the rejection reasons of the splits (rows whose
    id was unusable) and of the partitions (validated there); set, never add, so a repeated
    release counts once."""
    sum_diffs(run, results)
    run.requests_planned = sum(
        math.ceil(job.rows / objects_per_request) for job in chunk_jobs(run, results)
    )
    run.rows_valid = valid_rows(results)
    run.rows_rejected = run.rows_read - run.rows_valid
    run.validation_rejections = run.rejections = rejection_reasons(split_reasons, results)


def safety_valve(run: Run, export: Export) -> tuple[str, str] | None:
    """(valve, message) when the run must stop before sending anything; None to go ahead."""
    if run.override_safety_valves:
        return None
    previous = run.previous_profiles
    if not run.teardown and previous and run.profiles_removed / previous > export.max_removed_share:
        share = run.profiles_removed / previous
        return (
            "max_removed_share",
            f"stopped before sending anything: {run.profiles_removed} of the {previous} "
            f"profiles in the last snapshot ({share:.1%}) would leave the segment, more than "
            f"max_removed_share ({export.max_removed_share:.0%}) allows; check the source, then "
            "start the run again with the safety-valve override if the removals are intended",
        )
    if run.data_points_estimated > export.max_data_points:
        return (
            "max_data_points",
            f"stopped before sending anything: the run would write about "
            f"{run.data_points_estimated} Braze data points, more than max_data_points "
            f"({export.max_data_points}) allows; start the run again with the safety-valve "
            "override if that spend is intended",
        )
    return None


def _undeliverable(connection: Connection, services: Services) -> str | None:
    """Why the run cannot be delivered now, or None: an endpoint that may not receive the key,
    a vault outage, a missing secret or a key that cannot go in a request (a line break
    inside) fails the run here, with nothing sent, rather than every chunk half-way through."""
    try:
        services.check_endpoint(connection)
    except ConfigurationError as error:
        return f"nothing was sent: {error}"
    try:
        key = services.secrets.get(connection.api_key_secret)
    except ConfigurationError as error:  # SecretUnavailable too
        return f"the Braze API key could not be read, so nothing was sent: {error}"
    try:
        authorization_header(key)
    except ConfigurationError as error:
        return f"the Braze API key cannot be used, so nothing was sent: {error}"
    return None


def chunk_jobs(run: Run, results: list[PartitionResult]) -> list[ChunkJob]:
    """Every chunk blob of every partition, in partition order, as the run's delivery jobs
    (one job per partition when the run delivers while diffing).

    Consecutive blobs travel in one job while their rows fit the run's chunk size. A delta's
    partitions each hold a few changed profiles: sent apart, each would end in a part-filled
    request and cost a message, a blob read and a progress record of its own. A first export's
    partitions travel about three to a job at the default chunk size: a worker's requests in
    flight drain, and it takes its next message, a third as often as one partition per job.
    """
    if run.delivers_while_diffing:
        return [partition_chunk_job(run, result) for result in results]
    groups: list[list[tuple[str, int, int]]] = []  # per job: (blob, rows, partition)
    for result in results:
        for index, rows in enumerate(result.chunk_rows):
            group = groups[-1] if groups else []
            grouped = sum(count for _, count, _ in group)
            if not group or grouped + rows > run.chunk_size or len(group) == MAX_CHUNK_BLOBS:
                groups.append(group := [])
            group.append(
                (chunk_blob_name(run.run_id, result.partition, index), rows, result.partition)
            )
    return [
        ChunkJob(
            run.run_id,
            run.export_name,
            number,
            [blob for blob, _, _ in group],
            sum(rows for _, rows, _ in group),
            list(dict.fromkeys(partition for _, _, partition in group)),
        )
        for number, group in enumerate(groups)
    ]


def _write_dry_run(
    run: Run, results: list[PartitionResult], objects_per_request: int, services: Services
) -> None:
    """Write each request body exactly as delivery would send it, one per line."""
    writer = services.storage.line_writer(RUNS_CONTAINER, dry_run_blob_name(run.run_id))
    for job in chunk_jobs(run, results):
        for batch in batches(read_chunk(services, job.blob_names), objects_per_request):
            writer.write(tracking_body([obj for _, _, obj in batch]).decode("utf-8"))
    writer.close()
    run.dry_run_blob = dry_run_blob_name(run.run_id)


def _dry_run_summary(run: Run) -> str:
    return (
        f"dry run: would send {run.objects_planned} profiles in {run.requests_planned} requests "
        f"({run.profiles_new} new, {run.profiles_changed} changed, {run.profiles_removed} "
        f"leaving, {run.profiles_unchanged} unchanged), about {run.data_points_estimated} data "
        "points; nothing was sent and the snapshot is unchanged"
    )
