"""Runs whose work stopped: found on the scheduler's tick, ended with the reason, replayable.

The queues redeliver a message whose worker died, and the claims on releasing and finalizing
expire, so most losses heal themselves; the sweep first gives those a nudge. A run that still
shows no progress for `EXPORT_STALL_MINUTES` (a message deleted or lost, a poison handler that
never ran) is ended: its unfinished chunks are reported row by row as delivery_failed, so the
run says what happened and `replay` can send them once the cause is fixed.
"""

from __future__ import annotations

import logging
from datetime import datetime

from shared.adapters.services import Services
from shared.core.messages import ANY_PARTITION, ChunkJob
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import Run, Status
from shared.pipeline.deliver_chunk import fail_chunk
from shared.pipeline.finalize import finish_early, maybe_finalize, sent_so_far
from shared.pipeline.release import chunk_jobs, maybe_release
from shared.pipeline.run_files import replay_chunk_prefix

log = logging.getLogger(__name__)


class Stalled(Exception):
    """Why a chunk's rows were not delivered: its work stopped and never resumed."""


def sweep_stalled(services: Services, now: datetime) -> dict[str, str]:
    """Check each export's active run; returns what was done per run id."""
    outcomes: dict[str, str] = {}
    for export in services.definitions().exports:
        run_id = services.runs.latest_run_id(export.name)
        run = services.runs.get(run_id) if run_id else None
        if run is None or run.is_final:
            continue
        try:
            outcome = check_run(services, run, now)
        except Exception as error:  # one broken run must not stop the sweep for the others
            log.exception("stalled-run sweep: checking run %s failed", run.run_id)
            outcome = f"check failed: {type(error).__name__}: {error}"
        if outcome:
            outcomes[run.run_id] = outcome
    return outcomes


def check_run(services: Services, run: Run, now: datetime) -> str | None:
    """Nudge a run whose release or finalization was abandoned; end it if it stalled."""
    if run.status == Status.PLANNING:
        maybe_release(run.run_id, run.partitions, services)
    maybe_finalize(run.run_id, services)
    current = services.runs.get(run.run_id)
    if current is None or current.is_final:
        return "finished"
    last = services.runs.last_activity(run.run_id) or current.created_at
    if now - last < services.settings.stall_after:
        return None
    since = f"no progress since {last:%Y-%m-%d %H:%M:%S}Z"
    # A run delivering while diffing that ended in planning waits for its queued jobs (it has
    # its chunk total): those that stall end as delivery_failed, as after a release.
    if current.status != Status.DELIVERING and current.chunks_total is None:
        done = services.runs.partitions_diffed(run.run_id)
        message = (
            f"stalled while {current.status}: {since} ({done} of {current.partitions} "
            f"partitions diffed); {sent_so_far(current, services)}; start the export again"
        )
        log.error("run %s %s", run.run_id, message)
        finish_early(current, services, message=message, failed=True)
        return "stalled in planning"
    missing = _unfinished_chunks(services, current)
    error = Stalled(f"{since}; the worker holding it was lost")
    for job in missing:
        fail_chunk(job, error, services)
    log.error("run %s stalled: %d chunk(s) ended as delivery_failed", run.run_id, len(missing))
    return f"stalled: {len(missing)} chunk(s) ended"


def _unfinished_chunks(services: Services, run: Run) -> list[ChunkJob]:
    done = {r.chunk_index for r in services.runs.chunk_results(run.run_id)}
    jobs = chunk_jobs(run, services.runs.partition_results(run.run_id))
    if run.replay_round:
        prefix = replay_chunk_prefix(run.run_id, run.replay_round)
        container = services.storage.container(RUNS_CONTAINER)
        names = sorted(blob.name for blob in container.list_blobs(name_starts_with=prefix))
        first = (run.chunks_total or 0) - len(names)
        jobs = [j for j in jobs if j.chunk_index < first] + [
            ChunkJob(run.run_id, run.export_name, first + i, [name], 0, [ANY_PARTITION])
            for i, name in enumerate(names)
        ]
    return [job for job in jobs if job.chunk_index not in done]
