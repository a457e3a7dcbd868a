"""The Storage Queues extension's listener: fetch, lease, invoke, then delete, retry or poison.

Mirrors `QueueListener` and `QueueProcessor` of Microsoft.Azure.WebJobs.Extensions.Storage.Queues:
messages are received in batches with a 10-minute lease that is renewed at half-time while the
function runs; a failure makes the message visible again after `visibilityTimeout`, and once
`DequeueCount` reaches `maxDequeueCount` it is copied to a poison queue (`<queue>-poison` for a
queue trigger) and deleted. The same listener serves the host's internal blob-trigger queue,
with another message handler.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import azure.functions as func
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.queue import ExponentialRetry, QueueClient, QueueMessage, QueueServiceClient

from devhost.hostconfig import MIN_POLLING_INTERVAL, MessageEncoding, QueueOptions
from devhost.invocation import QueueFunction, TriggerValue
from devhost.settings import storage_connection_string

if TYPE_CHECKING:
    from devhost.execution import FunctionRunner, Waiter

DEFAULT_MESSAGE_LEASE = timedelta(minutes=10)
POISON_QUEUE_SUFFIX = "-poison"
MAX_QUEUE_NAME_LENGTH = 63

logger = logging.getLogger(__name__)


class MessageDecodingError(Exception):
    """A message is not valid base64 although the host expects base64."""


def poison_queue_name(queue_name: str) -> str | None:
    """`<queue>-poison`, unless the queue is a poison queue itself or the name would be too long."""
    if queue_name.endswith(POISON_QUEUE_SUFFIX):
        return None
    candidate = queue_name + POISON_QUEUE_SUFFIX
    return candidate if len(candidate) <= MAX_QUEUE_NAME_LENGTH else None


def encode_message(content: str | bytes, encoding: MessageEncoding) -> str:
    """The text stored in the queue for a message body, as the host's queue client writes it."""
    if encoding is MessageEncoding.BASE64:
        data = content.encode() if isinstance(content, str) else content
        return base64.b64encode(data).decode("ascii")
    return content if isinstance(content, str) else content.decode()


def decode_message(text: str, encoding: MessageEncoding) -> bytes:
    """The body of a stored message; base64 is decoded strictly, as .NET does (spaces allowed)."""
    if encoding is MessageEncoding.NONE:
        return text.encode()
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise MessageDecodingError(str(error)) from None


class RandomizedBackoff:
    """The extension's idle back-off: random exponential growth from 100 ms, reset on work."""

    RANDOMIZATION = 0.2

    def __init__(self, maximum: timedelta, minimum: timedelta = MIN_POLLING_INTERVAL) -> None:
        self._minimum = minimum
        self._maximum = maximum
        self._current = timedelta(0)
        self._exponent = 0

    def next_delay(self, found_messages: bool) -> timedelta:
        if found_messages:
            self._current, self._exponent = self._minimum, 1
        elif self._current != self._maximum:
            backoff = self._minimum
            if self._exponent > 0:
                factor = random.uniform(1 - self.RANDOMIZATION, 1 + self.RANDOMIZATION)
                backoff += self._minimum * factor * 2 ** (self._exponent - 1)
            if backoff < self._maximum:
                self._current = backoff
                self._exponent += 1
            else:
                self._current = self._maximum
        return self._current


class QueueStorage:
    """Queue clients by connection, and the host's wake-up of listeners when it enqueues."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._settings = settings
        self._services: dict[str, QueueServiceClient] = {}
        self._listeners: dict[str, list[Callable[[], None]]] = {}

    def queue(self, connection: str, queue_name: str) -> QueueClient:
        """A client for `queue_name` in the account that app setting `connection` points to."""
        connection_string = storage_connection_string(connection, self._settings)
        if connection_string not in self._services:
            # Short retries, so a stopped Azurite shows up in seconds rather than minutes.
            retry = ExponentialRetry(
                initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1
            )
            self._services[connection_string] = QueueServiceClient.from_connection_string(
                connection_string, retry_policy=retry
            )
        return self._services[connection_string].get_queue_client(queue_name)

    def create_if_missing(self, queue: QueueClient) -> None:
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()

    def add_message(self, queue: QueueClient, text: str) -> None:
        """Enqueue stored text, creating the queue first if needed, and wake its listeners."""
        try:
            queue.send_message(text)
        except ResourceNotFoundError:
            self.create_if_missing(queue)
            queue.send_message(text)
        for wake in self._listeners.get(queue.url, []):
            wake()

    def on_message_added(self, queue: QueueClient, wake: Callable[[], None]) -> None:
        self._listeners.setdefault(queue.url, []).append(wake)

    def close(self) -> None:
        for service in self._services.values():
            service.close()


@dataclass
class _Lease:
    """A received message's id and current pop receipt, which each visibility update replaces."""

    message_id: str
    pop_receipt: str


class MessageHandler(Protocol):
    """What a queue listener does with each message it receives."""

    name: str

    def handle(self, message: QueueMessage, body: bytes, wait: Waiter) -> bool:
        """Process one message, waiting for invocations with `wait`; True means completed."""
        ...

    def poison_queue(self, message: QueueMessage) -> QueueClient | None:
        """Where the message goes after its last failed attempt; None keeps it invisible."""
        ...


class QueueListener:
    """Receives messages from one queue and passes them to a handler, with the host's rules."""

    def __init__(
        self,
        handler: MessageHandler,
        *,
        queue: QueueClient,
        storage: QueueStorage,
        options: QueueOptions,
        message_lease: timedelta = DEFAULT_MESSAGE_LEASE,
    ) -> None:
        self._handler = handler
        self._queue = queue
        self._storage = storage
        self._options = options
        self._lease_seconds = max(1, int(message_lease.total_seconds()))
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._in_flight = 0
        self._in_flight_changed = threading.Condition()
        self._host_tasks = ThreadPoolExecutor(
            max_workers=options.max_concurrency, thread_name_prefix=f"devhost-{handler.name}"
        )
        self._poller = threading.Thread(
            target=self._poll, name=f"devhost-poll-{handler.name}", daemon=True
        )

    def start(self) -> None:
        """Create the queue if it is missing, then start polling."""
        self._storage.create_if_missing(self._queue)
        self._storage.on_message_added(self._queue, self._wake.set)
        self._poller.start()

    def stop_receiving(self) -> None:
        self._stopping.set()
        self._wake.set()
        with self._in_flight_changed:
            self._in_flight_changed.notify_all()

    def wait_drained(self, deadline: float) -> bool:
        """Wait for polling to end and in-flight invocations to finish, until `deadline`."""
        if self._poller.is_alive():
            self._poller.join(max(0.0, deadline - time.monotonic()))
        with self._in_flight_changed:
            drained = self._in_flight_changed.wait_for(
                lambda: self._in_flight == 0, max(0.0, deadline - time.monotonic())
            )
        if drained:
            self._host_tasks.shutdown()
        return drained and not self._poller.is_alive()

    def _poll(self) -> None:
        backoff = RandomizedBackoff(self._options.max_polling_interval)
        found_since_last_delay = False
        while not self._stopping.is_set():
            batch = self._receive_batch()
            if batch:
                found_since_last_delay = True
                for message in batch:
                    self._begin(message)
                self._wait_for_new_batch_threshold()
                continue
            delay = backoff.next_delay(found_since_last_delay)
            found_since_last_delay = False
            self._wake.wait(delay.total_seconds())
            self._wake.clear()

    def _receive_batch(self) -> list[QueueMessage]:
        try:
            pages = self._queue.receive_messages(
                messages_per_page=self._options.batch_size, visibility_timeout=self._lease_seconds
            ).by_page()
            return list(next(pages, []))
        except AzureError as error:
            logger.warning("Polling queue '%s' failed: %s", self._queue.queue_name, error)
            return []

    def _wait_for_new_batch_threshold(self) -> None:
        with self._in_flight_changed:
            self._in_flight_changed.wait_for(
                lambda: (
                    self._in_flight <= self._options.new_batch_threshold or self._stopping.is_set()
                )
            )

    def _begin(self, message: QueueMessage) -> None:
        with self._in_flight_changed:
            self._in_flight += 1
        self._host_tasks.submit(self._process, message)

    def _process(self, message: QueueMessage) -> None:
        try:
            self._complete(message, _Lease(message.id, message.pop_receipt))
        except Exception:
            logger.exception(
                "Completing message %s of queue '%s' failed", message.id, self._queue.queue_name
            )
        finally:
            with self._in_flight_changed:
                self._in_flight -= 1
                self._in_flight_changed.notify_all()

    def _complete(self, message: QueueMessage, lease: _Lease) -> None:
        if message.dequeue_count > self._options.max_dequeue_count:
            self._poison(message, lease, self._max_dequeue_count_reached)
            return
        try:
            body = decode_message(message.content, self._options.message_encoding)
        except MessageDecodingError as error:
            reason = f"Message {message.id} is not the base64 messageEncoding expects ({error})"
            self._poison(message, lease, reason)
            return

        completed = self._handler.handle(
            message, body, lambda future: self._wait_keeping_lease(future, lease)
        )
        if completed:
            self._delete(lease)
        elif message.dequeue_count >= self._options.max_dequeue_count:
            self._poison(message, lease, self._max_dequeue_count_reached)
        elif self._handler.poison_queue(message) is not None:
            self._release(lease)

    def _wait_keeping_lease(self, future: Future[Any], lease: _Lease) -> None:
        """Wait for the invocation, renewing the lease each time half of it has passed."""
        renew_after: float | None = self._lease_seconds / 2
        while not wait([future], timeout=renew_after).done:
            if not self._renew(lease):
                renew_after = None

    def _renew(self, lease: _Lease) -> bool:
        """Extend the lease; False once the message is gone or taken, so renewing is pointless."""
        try:
            updated = self._queue.update_message(
                lease.message_id, lease.pop_receipt, visibility_timeout=self._lease_seconds
            )
        except HttpResponseError as error:
            if _message_gone(error):
                logger.warning("Message %s was deleted or taken over meanwhile", lease.message_id)
                return False
            logger.warning("Renewing the lease on message %s failed: %s", lease.message_id, error)
            return True
        lease.pop_receipt = updated.pop_receipt
        logger.debug("Renewed the lease on message %s", lease.message_id)
        return True

    def _release(self, lease: _Lease) -> None:
        """Make a failed message visible again after visibilityTimeout, for a retry."""
        try:
            self._queue.update_message(
                lease.message_id,
                lease.pop_receipt,
                visibility_timeout=int(self._options.visibility_timeout.total_seconds()),
            )
        except HttpResponseError as error:
            if not _message_gone(error):
                raise

    def _delete(self, lease: _Lease) -> None:
        try:
            self._queue.delete_message(lease.message_id, lease.pop_receipt)
        except HttpResponseError as error:
            if not _message_gone(error):
                raise
            logger.debug("Message %s was already deleted or taken over", lease.message_id)

    @property
    def _max_dequeue_count_reached(self) -> str:
        return f"Message has reached MaxDequeueCount of {self._options.max_dequeue_count}"

    def _poison(self, message: QueueMessage, lease: _Lease, reason: str) -> None:
        """Copy the message, as stored, to the poison queue and delete the original.

        A queue without a poison queue (a `-poison` queue itself, or a name too long for the
        suffix) keeps the message invisible until its lease expires, as the extension does,
        rather than retrying it in a tight loop.
        """
        poison_queue = self._handler.poison_queue(message)
        if poison_queue is None:
            logger.warning(
                "%s; queue '%s' has no poison queue, so it stays invisible until its lease expires",
                reason,
                self._queue.queue_name,
            )
            return
        logger.warning("%s. Moving message to queue '%s'.", reason, poison_queue.queue_name)
        self._storage.add_message(poison_queue, message.content)
        self._delete(lease)


class QueueTriggerHandler:
    """A queue-triggered function: each message invokes it once."""

    def __init__(
        self, function: QueueFunction, *, storage: QueueStorage, runner: FunctionRunner
    ) -> None:
        self.name = function.name
        self._function = function
        self._runner = runner
        poison_name = poison_queue_name(function.queue_name)
        self._poison_queue = (
            storage.queue(function.connection, poison_name) if poison_name else None
        )

    def handle(self, message: QueueMessage, body: bytes, wait: Waiter) -> bool:
        reason = f"New queue message detected on '{self._function.queue_name}'."
        execution = self._runner.run(
            self._function,
            lambda: self._trigger_value(message, body),
            reason,
            wait=wait,
            failure_detail=f" on message {message.id} (dequeue count {message.dequeue_count})",
        )
        return execution.succeeded

    def poison_queue(self, message: QueueMessage) -> QueueClient | None:
        return self._poison_queue

    def invoke_directly(self, text: str) -> None:
        """Admin invoke: the input is the message body, in a message that was never queued."""
        message = QueueMessage(content=text, dequeue_count=0, inserted_on=datetime.now(UTC))
        self._runner.run(
            self._function,
            lambda: self._trigger_value(message, text.encode()),
            "This function was programmatically called via the host APIs.",
        )

    def _trigger_value(self, message: QueueMessage, body: bytes) -> Any:
        if self._function.trigger_value is TriggerValue.BYTES:
            return body
        text = body.decode("utf-8", errors="replace")
        if self._function.trigger_value is TriggerValue.TEXT:
            return text
        return func.queue.QueueMessage(
            id=message.id,
            body=body if self._function.binary else text,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )


def _message_gone(error: HttpResponseError) -> bool:
    """The message was deleted, or another receiver holds it (its pop receipt changed)."""
    return isinstance(error, ResourceNotFoundError) or error.error_code == "PopReceiptMismatch"
