"""The host's share of every invocation, whatever the trigger: log it, run it, write its outputs.

Each invocation gets the host's `Executing 'Functions.<name>' (Reason=..., Id=...)` and
`Executed ... (Succeeded|Failed ...)` lines, with the user's traceback on failure. Queue output
bindings are written only after the function succeeded, as the host flushes them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import devhost
from devhost.hostconfig import MessageEncoding
from devhost.invocation import HostedFunction, Worker
from devhost.queues import QueueStorage, encode_message

_HOST_CODE = tuple(
    str(Path(module.__file__).parent) for module in (devhost, concurrent.futures, asyncio)
)

logger = logging.getLogger(__name__)

Waiter = Callable[[Future[Any]], None]


@dataclass(frozen=True)
class Execution:
    """How an invocation ended: output values by binding name (`$return` too), or the error."""

    invocation_id: uuid.UUID
    values: Mapping[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None


class FunctionRunner:
    """Runs invocations on the worker and writes their queue outputs, logging like the host."""

    def __init__(self, worker: Worker, storage: QueueStorage, encoding: MessageEncoding) -> None:
        self._worker = worker
        self._storage = storage
        self._encoding = encoding

    def run(
        self,
        function: HostedFunction,
        bind_trigger: Callable[[], Any],
        reason: str,
        *,
        wait: Waiter | None = None,
        failure_detail: str = "",
    ) -> Execution:
        """Bind the trigger value, invoke `function` and wait for it with `wait`.

        A trigger value that cannot be bound (a blob gone, a bad connection) fails the
        invocation like a function error, as in the host. A queue listener's `wait` renews
        its message lease meanwhile.
        """
        invocation_id = uuid.uuid4()
        logger.info(
            "Executing 'Functions.%s' (Reason='%s', Id=%s)", function.name, reason, invocation_id
        )
        started = time.monotonic()
        values: Mapping[str, Any] = {}
        try:
            future = self._worker.invoke(function, bind_trigger())
        except Exception as binding_error:
            error: BaseException | None = binding_error
        else:
            (wait or _wait_for)(future)
            error = future.exception()
            if error is None:
                values = future.result()
                try:
                    self._send_outputs(function, values)
                except Exception as output_error:
                    error = output_error
        duration_ms = round((time.monotonic() - started) * 1000)
        if error is None:
            logger.info(
                "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
                function.name,
                invocation_id,
                duration_ms,
            )
            return Execution(invocation_id, values)
        logger.error(
            "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)%s",
            function.name,
            invocation_id,
            duration_ms,
            failure_detail,
            exc_info=(type(error), error, _from_user_code(error.__traceback__)),
        )
        return Execution(invocation_id, error=error)

    def _send_outputs(self, function: HostedFunction, values: Mapping[str, Any]) -> None:
        for output in function.outputs:
            queue = self._storage.queue(output.connection, output.queue_name)
            for content in _output_messages(output.arg_name, values.get(output.arg_name)):
                self._storage.add_message(queue, encode_message(content, self._encoding))


def _wait_for(future: Future[Any]) -> None:
    concurrent.futures.wait([future])


def _output_messages(arg_name: str, value: Any) -> Iterable[str | bytes]:
    """Messages from an output binding value, as the worker accepts them for a queue."""
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return value
    raise TypeError(
        f"output binding '{arg_name}' got {type(value).__name__}; devhost sends str, bytes "
        "or a list of str to a queue"
    )


def _from_user_code(traceback: TracebackType | None) -> TracebackType | None:
    """A traceback without the leading host and thread-pool frames, so the user's code leads."""
    while (
        traceback is not None
        and traceback.tb_next is not None
        and traceback.tb_frame.f_code.co_filename.startswith(_HOST_CODE)
    ):
        traceback = traceback.tb_next
    return traceback


class BackgroundLoop:
    """A listener that runs one daemon thread until told to stop, then can be waited for."""

    def __init__(self, thread_name: str) -> None:
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def stop_receiving(self) -> None:
        self._stopping.set()

    def wait_drained(self, deadline: float) -> bool:
        """Wait for the thread (and the invocation it runs, if any) until `deadline`."""
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()
