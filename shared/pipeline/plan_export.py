"""Planning a run, step one: check the source against the snapshot, then split it inline or cut it
into ranges for parallel split jobs.

Valid rows go to one of `partitions` pieces by a hash of the customer id, so an id lands in the
same partition in every run; each partition is then diffed against the previous snapshot on its
own (diff_partition; a delta's four to a job, one after another), in parallel across queue
workers, with memory bounded by a job's partitions, not by the segment.
Nothing reaches Braze before every partition is diffed and the safety valves pass.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from shared.adapters.services import Services
from shared.adapters.snapshot_store import Manifest
from shared.adapters.storage import IO_THREADS, BlobNotFound, Storage
from shared.core.definitions import Connection, Export
from shared.core.fingerprints import fingerprint, mapping_fingerprint
from shared.core.messages import ExportJob, SplitJob
from shared.core.partitioning import partition_count
from shared.core.resource_names import JOBS_QUEUE, RUNS_CONTAINER
from shared.core.runs import Run, Status, utcnow
from shared.core.source_files import RecordStart
from shared.pipeline.finalize import finish_early
from shared.pipeline.run_files import carried_rejected_name, rejected_blob_name, splits_blob_name
from shared.pipeline.run_source import (
    DataFile,
    SplitRange,
    code_digest,
    data_files,
    open_source,
    record_start_scan,
    source_format,
    split_ranges,
)
from shared.pipeline.split_source import (
    PLANNING_ERRORS,
    finish_split,
    queue_partitions,
    split_and_record,
)

log = logging.getLogger(__name__)


def plan_run(job: ExportJob, services: Services) -> None:
    """Plan one run: check the source, then split it (inline, or as parallel split jobs).

    Safe to run again after a crash: ranges and partitions are deterministic, overwritten.
    """
    run = services.runs.get(job.run_id)
    if run is None:
        log.error("run %s does not exist; dropping its planning job", job.run_id)
        return
    if run.status not in (Status.QUEUED, Status.PLANNING):
        log.info("run %s is already %s; nothing to plan", run.run_id, run.status)
        return
    if run.partitions:  # split already; an attempt died while queueing the partitions
        queue_partitions(run, services)
        return
    if run.splits > 1:  # split jobs planned; an attempt died while queueing them
        _queue_splits(run, services)
        return
    run.status, run.planning_started_at = Status.PLANNING, utcnow()
    run.code_version = code_digest()
    services.runs.update(run)
    try:
        definitions = services.definitions()
        export = definitions.export(run.export_name)
        connection = definitions.connection(export.connection)
        manifest = _compare_with_snapshot(run, export, connection, services)
        if run.teardown:  # empty partitions: everyone in the snapshot leaves
            finish_split(run, max(run.previous_partitions, 1), [], services)
            return
        run.unchanged_since = ""  # an earlier attempt may have decided otherwise
        # The source's version is read before its rows: a write in between is then seen by
        # the ETag check at the end, and the run does not vouch for bytes it did not send.
        files, entity = data_files(run, export, services)
        starts = [list[RecordStart]() for _ in files]  # filled by the scans
        head = bytearray()  # a plain file's first bytes, for its header
        scans = [
            record_start_scan(file, found, None if entity else head) if file.targets else None
            for file, found in zip(files, starts, strict=True)
        ]
        if not run.dry_run:  # a dry run commits no snapshot, so it needs no version
            run.source_version, run.source_etags = _source_version(
                run, export, connection, services, files, scans
            )
        else:
            for file, scan in zip(files, scans, strict=True):
                if scan is not None:
                    scan(services.storage.read_chunks(*file.name.split("/", 1)))
        previous = _same_as_snapshot(run, manifest, services)
        if previous is not None and _carry_rejected(run, previous, services):
            _carry_forward(run, previous, services)
            return
        source = open_source(run, export, services, files, entity, bytes(head))
        partitions = partition_count(source.size, source.compressed)
        ranges = split_ranges(source, starts)
    except PLANNING_ERRORS as error:
        finish_early(run, services, message=f"planning failed: {error}", failed=True)
        return
    if len(ranges) > 1:
        _plan_splits(run, ranges, partitions, source.header, services)
        return
    run.splits = 1
    services.runs.update(run)
    whole = SplitJob(run.run_id, run.export_name, 0, 1, partitions, 0, -1, 1)
    split_and_record(run, export, whole, source.rows, services)


def _plan_splits(
    run: Run,
    ranges: list[SplitRange],
    partitions: int,
    header: list[str] | None,
    services: Services,
) -> None:
    """Record the ranges (and the CSV header the later ranges lack), then queue a split job
    per range."""
    jobs = [
        SplitJob(run.run_id, run.export_name, index, len(ranges), partitions, *bounds)
        for index, bounds in enumerate(ranges)
    ]
    plan = {"header": header, "jobs": [job.to_json() for job in jobs]}
    services.storage.write_bytes(
        RUNS_CONTAINER, splits_blob_name(run.run_id), json.dumps(plan), "application/json"
    )
    run.splits = len(jobs)
    services.runs.update(run)
    _queue_splits(run, services)
    log.info("run %s: source cut into %d ranges, split in parallel", run.run_id, len(jobs))


def _queue_splits(run: Run, services: Services) -> None:
    plan = json.loads(services.storage.read_bytes(RUNS_CONTAINER, splits_blob_name(run.run_id)))
    services.storage.send_messages(JOBS_QUEUE, plan["jobs"])


def _compare_with_snapshot(
    run: Run, export: Export, connection: Connection, services: Services
) -> Manifest | None:
    """Fix, once per run, which snapshot it diffs against and whether it sends everything."""
    manifest = services.snapshots.current(export.name, connection.name)
    run.mapping_fingerprint = mapping_fingerprint(export, connection)
    if manifest is not None:
        run.previous_snapshot = manifest.run_id
        run.previous_partitions = manifest.partitions
        run.previous_profiles = manifest.profiles
        run.previous_code_version = manifest.code_version
    if run.teardown:
        run.full_refresh_reason = ""
    elif run.full_refresh:
        run.full_refresh_reason = "a full refresh was requested"
    elif manifest is None:
        run.full_refresh_reason = "first run of this export on this connection"
    elif manifest.mapping != run.mapping_fingerprint:
        run.full_refresh_reason = (
            "the mapping, segment or membership encoding changed since the last snapshot"
        )
    return manifest


def _source_version(
    run: Run,
    export: Export,
    connection: Connection,
    services: Services,
    files: list[DataFile],
    scans: list[Scan | None],
) -> tuple[str, str]:
    """What this run would read and how: a digest of each source file's bytes (for a CDM
    folder, the model and every partition file), the export's whole definition, the endpoint
    and this app's code. Any difference makes a run read the source. Also the ETags of the
    bytes digested (JSON), so that finalizing can tell whether a file was written again while
    the run read it.

    Digests, not ETags: Customer Insights and most export tools write the whole segment again
    on every refresh, so an unchanged segment gets a new ETag each time. Reading the bytes once
    costs a fraction of a second per 100 MB, against the parsing, validation and diff saved;
    each data file's scan looks at its bytes on the same read (to find where to cut it)."""
    names = [file.name for file in files]
    if source_format(run, export) == "cdm":  # the model, then its partition files
        names, scans = [run.source, *names], [None, *scans]
    read = _digests(names, services.storage, scans)
    basis = {
        "app": code_digest(),
        "files": [[name, digest] for name, (digest, _) in zip(names, read, strict=True)],
        "export": export.model_dump(mode="json"),
        "endpoint": connection.rest_endpoint,
    }
    etags = [[name, etag] for name, (_, etag) in zip(names, read, strict=True)]
    return fingerprint(basis), json.dumps(etags)


Scan = Callable[[Iterable[bytes]], None]


def _digests(files: list[str], storage: Storage, scans: list[Scan | None]) -> list[tuple[str, str]]:
    """Each file's digest and ETag, several read at once: a CDM folder may hold many large
    files. Each scan sees its file's bytes."""
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="source-digest") as pool:
        return list(
            pool.map(lambda name, look: storage.digest(*name.split("/", 1), look), files, scans)
        )


def _same_as_snapshot(run: Run, manifest: Manifest | None, services: Services) -> Run | None:
    """The run that made the snapshot when this one has nothing to read: the snapshot was made
    from this very source version and Braze took all it sent (else the manifest has no
    version, and rows are sent again). A dry run and a full refresh always read the source."""
    if (
        manifest is None
        or not manifest.source_version
        or manifest.source_version != run.source_version
        or run.full_refresh_reason
        or run.dry_run
    ):
        return None
    return services.runs.get(manifest.run_id)


def _carry_rejected(run: Run, previous: Run, services: Services) -> bool:
    """Copy the previous run's rejected rows into this run's folder, so that this run's report
    stands on its own (the retention rule may delete the other run's files); False when they
    are gone already, and the source must be read again."""
    storage = services.storage
    try:
        rows = storage.read_chunks(RUNS_CONTAINER, rejected_blob_name(previous.run_id))
        storage.write_bytes(
            RUNS_CONTAINER, carried_rejected_name(run.run_id), rows, "application/x-ndjson"
        )
    except BlobNotFound:
        log.info(
            "run %s: run %s's rejected rows are gone; reading the source",
            run.run_id,
            previous.run_id,
        )
        return False
    return True


def _carry_forward(run: Run, previous: Run, services: Services) -> None:
    """End a run whose source and definition are those of the snapshot's run: validating the
    same rows with the same code gives the same result, so that run's row counts and rejected
    rows (by validation, duplicates included) are this run's too, and nothing is sent."""
    run.unchanged_since, run.profiles_unchanged = previous.run_id, previous.rows_valid
    run.rows_read, run.rows_valid = previous.rows_read, previous.rows_valid
    run.rows_rejected, run.rows_unidentified = previous.rows_rejected, previous.rows_unidentified
    run.validation_rejections = run.rejections = dict(previous.validation_rejections)
    rejected = (
        f"; its {previous.rows_rejected} rejected rows are still in the source and are "
        "reported again"
        if previous.rows_rejected
        else ""
    )
    message = (
        f"nothing to send: the source and the export's definition are as they were for run "
        f"{previous.run_id}, and Braze took everything that run sent{rejected}; start with a "
        "full refresh to read the source anyway"
    )
    finish_early(run, services, message=message)


def fail_planning(run_id: str, error: BaseException, services: Services) -> None:
    """The planning job is being poisoned: the run fails, and nothing was sent."""
    run = services.runs.get(run_id)
    if run is None or run.is_final:
        return
    message = f"planning failed after every retry: {type(error).__name__}: {error}"
    finish_early(run, services, message=message, failed=True)
