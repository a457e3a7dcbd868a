"""Queue triggers that plan a run: check and cut the source, split each range, diff each
partition."""

import azure.functions as func

from functions.last_attempt import failing_the_run_on_last_attempt
from shared.adapters.services import app_services
from shared.adapters.telemetry import job_context
from shared.core.messages import ExportJob, PartitionJob, SplitJob
from shared.core.resource_names import (
    JOBS_QUEUE,
    PARTITIONS_QUEUE,
    SPLITS_QUEUE,
    STORAGE_CONNECTION,
)
from shared.pipeline.diff_partition import diff_partition, fail_partition
from shared.pipeline.plan_export import fail_planning, plan_run
from shared.pipeline.split_source import fail_split, split_source

bp = func.Blueprint()


@bp.function_name("plan_export")
@bp.queue_trigger(arg_name="msg", queue_name=JOBS_QUEUE, connection=STORAGE_CONNECTION)
def plan_export(msg: func.QueueMessage) -> None:
    """Plan one run. Failures raise so the host retries; the last attempt also ends the run."""
    services = app_services()
    job = ExportJob.from_json(msg.get_body())
    with (
        job_context(job),
        failing_the_run_on_last_attempt(
            msg, services, lambda error: fail_planning(job.run_id, error, services)
        ),
    ):
        plan_run(job, services)


@bp.function_name("split_source")
@bp.queue_trigger(arg_name="msg", queue_name=SPLITS_QUEUE, connection=STORAGE_CONNECTION)
def split_source_job(msg: func.QueueMessage) -> None:
    """Split one range of the source. Failures raise so the host retries; the last attempt
    fails the run (nothing was sent)."""
    services = app_services()
    job = SplitJob.from_json(msg.get_body())
    with (
        job_context(job),
        failing_the_run_on_last_attempt(
            msg, services, lambda error: fail_split(job, error, services)
        ),
    ):
        split_source(job, services)


@bp.function_name("diff_partition")
@bp.queue_trigger(arg_name="msg", queue_name=PARTITIONS_QUEUE, connection=STORAGE_CONNECTION)
def diff_partition_job(msg: func.QueueMessage) -> None:
    """Diff one partition. Failures raise so the host retries; the last attempt fails the run."""
    services = app_services()
    job = PartitionJob.from_json(msg.get_body())
    with (
        job_context(job),
        failing_the_run_on_last_attempt(
            msg, services, lambda error: fail_partition(job, error, services)
        ),
    ):
        diff_partition(job, services)
