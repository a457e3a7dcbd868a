"""What every queue trigger does with a failure: raise it so that the host retries the message,
and on the last attempt first end the run saying why, before the message goes to the poison
queue (a run whose message is poisoned must not stay active for ever)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:  # not imported at indexing: see functions/__init__.py
    from shared.adapters.services import Services


@contextmanager
def failing_the_run_on_last_attempt(
    msg: func.QueueMessage, services: "Services", fail: Callable[[BaseException], None]
) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        if (msg.dequeue_count or 1) >= services.settings.max_dequeue_count:
            fail(error)
        raise
