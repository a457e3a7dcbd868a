"""Replaying a finished run's failed deliveries once the operator has fixed the cause.

Every row Braze rejected and every row of a poisoned (or stalled) chunk is in the run's
rejected rows with the exact object that was to be sent. A replay re-opens the run, sends those
objects again as a new round of chunks and finalizes it again: the rows accepted now move from
"rejected by Braze" to "accepted", so the run's counts stay true, and the snapshot takes them in.
"""

from __future__ import annotations

import logging

from shared.adapters.services import Services
from shared.core.messages import ANY_PARTITION, ChunkJob
from shared.core.resource_names import CHUNKS_QUEUE
from shared.core.runs import Run, RunConflict, Status
from shared.pipeline.run_files import chunk_line, json_lines, replay_chunk_name, write_chunk

log = logging.getLogger(__name__)

REPLAYABLE_STAGES = {"braze", "delivery"}


class NotReplayable(Exception):
    """The run cannot be replayed now; the message says why and what to do."""


def replay_run(services: Services, run_id: str) -> Run:
    """Queue the run's rejected deliveries again; returns the re-opened run.

    Raises NotReplayable when the run is unknown, still active, not the export's latest run
    (a newer run already re-sent what this one could not), or has nothing to replay.
    """
    run = _replayable_run(services, run_id)
    round_ = run.replay_round + 1
    jobs = _write_replay_chunks(services, run, round_)
    if not jobs:
        raise NotReplayable(f"run {run_id} has no rejected deliveries to replay")
    _reopen(services, run, round_, jobs)
    services.storage.send_messages(CHUNKS_QUEUE, (job.to_json() for job in jobs))
    rows = sum(job.rows for job in jobs)
    log.info("run %s: replay round %d queued %d profiles", run_id, round_, rows)
    return run


def _replayable_run(services: Services, run_id: str) -> Run:
    run = services.runs.get(run_id)
    if run is None:
        raise LookupError(f"no run '{run_id}'")
    if not run.is_final:
        raise NotReplayable(f"run {run_id} is still {run.status}; replay it once it has ended")
    if run.dry_run or run.stopped_by or run.planning_failed:
        raise NotReplayable(f"run {run_id} sent nothing ({run.status}); start a new run instead")
    latest = services.runs.latest_run_id(run.export_name)
    if latest != run_id:
        raise NotReplayable(
            f"run {run_id} is not the latest run of export '{run.export_name}' ({latest} is); "
            "the newer run already re-sent every profile Braze had not accepted"
        )
    return run


def _write_replay_chunks(services: Services, run: Run, round_: int) -> list[ChunkJob]:
    """Chunk blobs of the run's rejected deliveries, numbered after the run's own chunks."""
    chunk_size = services.definitions().export(run.export_name).chunk_size
    jobs: list[ChunkJob] = []
    part: list[bytes] = []

    def flush() -> None:
        name = replay_chunk_name(run.run_id, round_, len(jobs))
        write_chunk(services, name, part)
        chunk_index = (run.chunks_total or 0) + len(jobs)
        jobs.append(
            ChunkJob(run.run_id, run.export_name, chunk_index, [name], len(part), [ANY_PARTITION])
        )
        part.clear()

    for entry in json_lines(services, run.rejected_blob):
        obj = entry.get("object")
        if entry["stage"] in REPLAYABLE_STAGES and isinstance(obj, dict):
            part.append(chunk_line(entry["order"], obj))
            if len(part) == chunk_size:
                flush()
    if part:
        flush()
    return jobs


def _reopen(services: Services, run: Run, round_: int, jobs: list[ChunkJob]) -> None:
    """Make the run active again with the replay's chunks; of two replays at once, one wins."""
    run.replay_round = round_
    run.chunks_total = (run.chunks_total or 0) + len(jobs)
    run.status, run.finished_at, run.message = Status.DELIVERING, None, ""
    run.finalize_claimed_at = None
    try:
        services.runs.update(run, if_unchanged=True)
    except RunConflict:
        raise NotReplayable(f"run {run.run_id} changed while the replay was prepared") from None
