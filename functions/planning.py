"""The queue trigger that plans a run: check and cut the source, split each range, diff each
partition. The three steps share one queue (`JOBS_QUEUE`), so a worker goes from one step to
the next without waiting out an idle listener's back-off."""

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, assert_never

import azure.functions as func

from functions.last_attempt import failing_the_run_on_last_attempt
from shared.adapters.telemetry import job_context
from shared.core.messages import ExportJob, PartitionJob, PlanningJob, SplitJob, planning_job
from shared.core.resource_names import JOBS_QUEUE, STORAGE_CONNECTION

if TYPE_CHECKING:  # the pipeline is imported when a job runs, not at indexing: functions/__init__
    from shared.adapters.services import Services

bp = func.Blueprint()


@bp.function_name("plan_export")
@bp.queue_trigger(arg_name="msg", queue_name=JOBS_QUEUE, connection=STORAGE_CONNECTION)
def plan_export(msg: func.QueueMessage) -> None:
    """One planning step of a run. Failures raise so the host retries; the last attempt also
    ends the run (nothing was sent, or what was is reported)."""
    from shared.adapters.services import app_services

    services = app_services()
    job = planning_job(msg.get_body())
    step, fail = _step(job, services, msg.dequeue_count or 1)
    with job_context(job), failing_the_run_on_last_attempt(msg, services, fail):
        step()


def _step(
    job: PlanningJob, services: "Services", attempt: int
) -> tuple[Callable[[], None], Callable[[BaseException], None]]:
    """The step the job asks for (on its `attempt`-th delivery), and what ends its run when its
    last attempt fails."""
    from shared.pipeline.diff_partition import fail_partition
    from shared.pipeline.plan_export import fail_planning, plan_run
    from shared.pipeline.split_source import fail_split, split_source

    match job:
        case ExportJob():
            return (
                lambda: plan_run(job, services),
                lambda error: fail_planning(job.run_id, error, services),
            )
        case SplitJob():
            return (
                lambda: split_source(job, services),
                lambda error: fail_split(job, error, services),
            )
        case PartitionJob():
            return (
                lambda: _diff(job, services, attempt),
                lambda error: fail_partition(job, error, services),
            )
        case _:
            assert_never(job)


def _diff(job: PartitionJob, services: "Services", attempt: int) -> None:
    """Diff with the cyclic collector paused; a run this diff released as a single chunk job
    is then delivered here and now (`deliver_at_once`), with the collector running again."""
    from shared.pipeline.deliver_chunk import deliver_at_once
    from shared.pipeline.diff_partition import diff_partition

    with cyclic_gc_paused():
        released = diff_partition(job, services, attempt)
    if released is not None:
        with job_context(released):
            deliver_at_once(released, services)


_pause_lock = threading.Lock()
_pauses = 0
_enabled_before = False


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Run a diff job (a partition, or a few of a delta's) without Python's cyclic garbage
    collector.

    A diff keeps an entry or more per profile of its partition until it has compared them all,
    so the collector scanned that growing heap again and again: 11% of a 1M first export's diff
    CPU, measured in one process (raising its thresholds instead saved 5%). A split writes its
    rows out as it goes and the plan mostly hashes bytes: neither gains, so neither pauses.
    Refcounting still frees what the job drops. The setting is the process's: objects left in
    cycles meanwhile, by the diff or by a delivery job beside it, wait until no diff holds the
    pause (a diff job takes a second or two, whatever the segment's size; the storage errors the
    app handles as answers leave none, `storage.forget_traceback`). Pauses are counted, as
    more than one diff may run in a process if the host is set to; a gc.enable() or
    gc.disable() elsewhere would end or outlast one (nothing in the app or its packages calls
    them)."""
    global _pauses, _enabled_before
    with _pause_lock:
        if _pauses == 0:
            _enabled_before = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _enabled_before:
                gc.enable()
