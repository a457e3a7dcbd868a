"""Queue trigger: deliver one chunk of a run to Braze."""

import azure.functions as func

from functions.last_attempt import failing_the_run_on_last_attempt
from shared.adapters.telemetry import job_context
from shared.core.messages import ChunkJob
from shared.core.resource_names import CHUNKS_QUEUE, STORAGE_CONNECTION

bp = func.Blueprint()


@bp.function_name("deliver_chunk")
@bp.queue_trigger(arg_name="msg", queue_name=CHUNKS_QUEUE, connection=STORAGE_CONNECTION)
def deliver(msg: func.QueueMessage) -> None:
    """Deliver one chunk. Braze outages raise so the host retries the message later; on the
    last attempt its rows are reported as failed before the message goes to the poison queue."""
    from shared.adapters.services import app_services
    from shared.pipeline.deliver_chunk import deliver_chunk, fail_chunk

    services = app_services()
    job = ChunkJob.from_json(msg.get_body())
    with (
        job_context(job),
        failing_the_run_on_last_attempt(msg, services, lambda e: fail_chunk(job, e, services)),
    ):
        deliver_chunk(job, services)
