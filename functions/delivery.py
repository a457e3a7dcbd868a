"""Queue trigger: deliver one chunk of a run to Braze."""

import azure.functions as func

from shared.config import CHUNKS_QUEUE, STORAGE_CONNECTION
from shared.delivery import deliver_chunk
from shared.messages import ChunkJob
from shared.services import app_services

bp = func.Blueprint()


@bp.function_name("deliver_chunk")
@bp.queue_trigger(arg_name="msg", queue_name=CHUNKS_QUEUE, connection=STORAGE_CONNECTION)
def deliver(msg: func.QueueMessage) -> None:
    """Deliver one chunk. Braze outages raise, so the host retries the message later."""
    deliver_chunk(ChunkJob.from_json(msg.get_body()), app_services())
