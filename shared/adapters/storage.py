"""Azure Storage access: blobs, queues and tables through one lazily built set of clients.

Locally a connection string (Azurite); in Azure the function app's managed identity and the
service URIs, the same settings the Functions host uses for `AzureWebJobsStorage`.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import sys
import threading
import traceback
import uuid
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar
from urllib.request import getproxies

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableServiceClient
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient
from azure.storage.blob import ExponentialRetry as BlobRetry
from azure.storage.queue import ExponentialRetry as QueueRetry
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)
from xxhash import xxh3_128

from shared.adapters.settings import StorageSettings
from shared.core.resource_names import (
    CHUNKS_QUEUE,
    JOBS_QUEUE,
    RATE_TABLE,
    RUNS_CONTAINER,
    RUNS_TABLE,
    SNAPSHOTS_CONTAINER,
)

BLOCK_BYTES = 16 * 1024 * 1024  # a line writer's block (the service allows 4,000 MiB)
APPEND_BLOCK_BYTES = 1024 * 1024  # well under the 4 MiB an append may carry
IO_THREADS = 8  # under the SDK's 10 pooled connections per client, so each is kept
# A download's pieces after its first (the SDK's first request takes up to 32 MiB): the SDK's
# 4 MiB made the plan's read of a source a request per 4 MiB, each sliced out of what is left
# of the first piece by copying the rest, and Azurite hashes (and reads twice) every range of
# 4 MiB or less. Reading the benchmark's 82 MB source: 0.28-0.51 s, 0.21-0.61 of Azurite's
# CPU-seconds and 0.10-0.19 of this process's, against 0.18-0.20, 0.19-0.22 and 0.08-0.10.
DOWNLOAD_PIECE_BYTES = 8 * 1024 * 1024
T = TypeVar("T")


def forget_traceback(error: BaseException) -> None:
    """Drop the traceback of an error handled as an answer ("not found", "written first"), and
    of the errors the SDK raised on the way to it (an Azure error also keeps the one it was
    raised in handling). The SDK's frames in it hold the error itself, a cycle that only the
    cyclic collector frees, and each frame holds its caller's: a lookup that missed inside a
    delivery job kept the job's whole chunk alive after the job ended (50,000 objects a chunk).

    An error the caller's callers are still handling (the lookup ran in an `except` or a
    `finally`) is only let go of, never cleared: it may be raised again, with its traceback."""
    running: set[int] = set()
    frame = sys._getframe(1).f_back  # the callers of the frame that handles `error`
    while frame is not None:
        running.add(id(frame))
        frame = frame.f_back
    seen: set[int] = set()
    left: list[BaseException] = [error]
    while left:
        current = left.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        links = ["__cause__", "__context__"]
        if isinstance(current, AzureError):
            links += ["exc_value", "inner_exception"]
            _clear(current.exc_traceback)
            current.exc_traceback = None
        _clear(current.__traceback__)
        current.__traceback__ = None
        for link in links:
            linked = getattr(current, link, None)
            if not isinstance(linked, BaseException):
                continue
            if _in_flight(linked, running):
                setattr(current, link, None)
            else:
                left.append(linked)


def _in_flight(error: BaseException, running: set[int]) -> bool:
    """Whether the error's traceback passes through a frame still running: one being handled."""
    tb = error.__traceback__
    while tb is not None:
        if id(tb.tb_frame) in running:
            return True
        tb = tb.tb_next
    return False


def _clear(tb: TracebackType | None) -> None:
    if tb is not None:
        traceback.clear_frames(tb)  # the SDK's locals hold other errors


# The storage SDK's default waits 18 s (± 3) before its first retry (15 plus 3 to the first
# power): one request Azurite dropped under load stalled a diff for 16-18 s (two runs of
# twenty in the benchmark). Waits of 2, 4, 8, 16 and 32 s (± 1) give a blip a quick second
# try and a throttled account a minute.
STORAGE_RETRY = {
    "initial_backoff": 0,
    "increment_base": 2,
    "retry_total": 5,
    "random_jitter_range": 1,
}


class BlobNotFound(Exception):
    """A blob the exporter needs is missing; the message names it."""


def _not_found(container: str, name: str, missing: ResourceNotFoundError) -> BlobNotFound:
    forget_traceback(missing)  # the caller may handle BlobNotFound as an answer
    return BlobNotFound(f"blob '{name}' not found in container '{container}'")


class Storage:
    """The storage account, with clients created on first use and shared by all threads."""

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._containers: dict[str, ContainerClient] = {}
        self._queues: dict[str, QueueClient] = {}
        self._lock = threading.Lock()

    @cached_property
    def _credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=self._settings.client_id)

    @cached_property
    def _transport(self) -> dict[str, Any]:
        """How the clients' HTTP transport treats the environment, decided once."""
        return transport_settings()

    @cached_property
    def blobs(self) -> BlobServiceClient:
        if self._settings.connection_string:
            return BlobServiceClient.from_connection_string(
                self._settings.connection_string,
                retry_policy=BlobRetry(**STORAGE_RETRY),
                max_chunk_get_size=DOWNLOAD_PIECE_BYTES,
                **self._transport,
            )
        return BlobServiceClient(
            self._settings.blob_service_uri or "",
            credential=self._credential,
            retry_policy=BlobRetry(**STORAGE_RETRY),
            max_chunk_get_size=DOWNLOAD_PIECE_BYTES,
            **self._transport,
        )

    @cached_property
    def _queue_service(self) -> QueueServiceClient:
        if self._settings.connection_string:
            return QueueServiceClient.from_connection_string(
                self._settings.connection_string,
                retry_policy=QueueRetry(**STORAGE_RETRY),
                **self._transport,
            )
        return QueueServiceClient(
            self._settings.queue_service_uri or "",
            credential=self._credential,
            retry_policy=QueueRetry(**STORAGE_RETRY),
            **self._transport,
        )

    @cached_property
    def _table_service(self) -> TableServiceClient:
        if self._settings.connection_string:
            return TableServiceClient.from_connection_string(
                self._settings.connection_string, **self._transport
            )
        return TableServiceClient(
            endpoint=self._settings.table_service_uri or "",
            credential=self._credential,
            **self._transport,
        )

    def container(self, name: str) -> ContainerClient:
        """The container's client, made once: making one builds a pipeline of policies, which
        costs about a tenth of a blob call, and a run makes thousands of calls."""
        client = self._containers.get(name)
        if client is None:
            client = self._containers.setdefault(name, self.blobs.get_container_client(name))
        return client

    def queue(self, name: str) -> QueueClient:
        """A queue client speaking base64, the Functions host's default message encoding."""
        with self._lock:
            if name not in self._queues:
                self._queues[name] = self._queue_service.get_queue_client(
                    name,
                    message_encode_policy=TextBase64EncodePolicy(),
                    message_decode_policy=TextBase64DecodePolicy(),
                )
            return self._queues[name]

    def send_messages(self, queue_name: str, texts: Iterable[str]) -> None:
        """Queue many messages, several at a time: a run's hundreds of chunk jobs one after
        another would take seconds of round trips. Raises if any send failed (after the rest
        were tried); a repeated message is harmless, since every stage is idempotent."""
        queue = self.queue(queue_name)
        self.in_parallel(lambda text=text: queue.send_message(text) for text in texts)

    @staticmethod
    def in_parallel(calls: Iterable[Callable[[], T]]) -> list[T]:
        """Run storage calls several at a time, so a stage's uploads overlap each other and the
        service's work; their results in order, or the first failure once every call has
        finished."""
        with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="storage-io") as pool:
            futures = [pool.submit(contextvars.copy_context().run, call) for call in calls]
        return [future.result() for future in futures]

    def read_many(self, container: str, names: Sequence[str]) -> Iterator[bytes]:
        """Whole blobs, fetched several at a time, yielded in the order named."""
        with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="storage-io") as pool:
            yield from pool.map(lambda name: self.read_bytes(container, name), names)

    def table(self, name: str) -> TableClient:
        return self._table_service.get_table_client(name)

    def ensure_resources(self) -> None:
        """Create the containers, queues and tables if absent (Bicep creates them in Azure)."""
        for container in (RUNS_CONTAINER, SNAPSHOTS_CONTAINER):
            _ignore_exists(lambda c=container: self.blobs.create_container(c))
        for queue in (JOBS_QUEUE, CHUNKS_QUEUE):
            _ignore_exists(lambda q=queue: self._queue_service.create_queue(q))
            _ignore_exists(lambda q=queue: self._queue_service.create_queue(f"{q}-poison"))
        for table in (RUNS_TABLE, RATE_TABLE):
            _ignore_exists(lambda t=table: self._table_service.create_table(t))

    def read_chunks(
        self, container: str, name: str, offset: int | None = None, length: int | None = None
    ) -> Iterator[bytes]:
        """Stream a blob's bytes (or `length` bytes from `offset`) in pieces; raise BlobNotFound
        naming it when absent."""
        try:
            downloader = self.container(container).download_blob(
                name, offset=offset, length=length, max_concurrency=1
            )
        except ResourceNotFoundError as missing:
            raise _not_found(container, name, missing) from None
        return downloader.chunks()

    def read_bytes(
        self, container: str, name: str, offset: int | None = None, length: int | None = None
    ) -> bytes:
        """A blob's bytes (or `length` bytes from `offset`)."""
        return b"".join(self.read_chunks(container, name, offset, length))

    def write_bytes(
        self,
        container: str,
        name: str,
        data: bytes | str | BinaryIO | Iterable[bytes],
        content_type: str,
        *,
        max_concurrency: int = 1,
    ) -> None:
        """Upload a blob whole; `data` may be a stream of pieces (e.g. `read_chunks` of another
        blob, copied without holding it in memory). Up to the SDK's single-upload size (64 MiB)
        in one request, else in blocks, `max_concurrency` at a time."""
        from azure.storage.blob import ContentSettings

        self.container(container).upload_blob(
            name,
            data,
            overwrite=True,
            content_settings=ContentSettings(content_type=content_type),
            max_concurrency=max_concurrency,
        )

    def upload_file(self, container: str, name: str, path: Path, content_type: str) -> None:
        """Upload a local file whole (read into memory up to 64 MiB, else in blocks,
        `IO_THREADS` at a time)."""
        with path.open("rb") as data:
            self.write_bytes(container, name, data, content_type, max_concurrency=IO_THREADS)

    def size(self, container: str, name: str) -> int:
        try:
            return int(self.container(container).get_blob_client(name).get_blob_properties().size)
        except ResourceNotFoundError as missing:
            raise _not_found(container, name, missing) from None

    def size_and_start(self, container: str, name: str, length: int) -> tuple[int, bytes]:
        """The blob's size and its first `length` bytes (fewer if it is shorter), in one
        request: the bytes as stored, so a blob kept with `Content-Encoding: gzip` (which other
        reads get decoded) shows the gzip it is."""
        blob = self.container(container).get_blob_client(name)
        try:
            downloader = blob.download_blob(
                offset=0, length=length, max_concurrency=1, decompress=False
            )
            start = downloader.readall()
            # "bytes 0-1/<size of the blob>": the downloader's own size is the range's
            return int(downloader.properties.content_range.rsplit("/", 1)[1]), start
        except ResourceNotFoundError as missing:
            raise _not_found(container, name, missing) from None
        except HttpResponseError as error:
            if error.status_code != 416:
                raise
        return self.size(container, name), b""  # an empty blob has no range to read

    def digest(
        self,
        container: str,
        name: str,
        scan: Callable[[Iterable[bytes]], object] | None = None,
    ) -> tuple[str, str]:
        """A digest of the blob's bytes, read through once, and the ETag of the bytes read;
        `scan` sees the same bytes on the way (a second look without a second read).

        Unlike the ETag, the digest stays the same when the same bytes are written again (an
        export tool that rewrites an unchanged segment on every refresh); the ETag tells later
        whether anything was written since. XXH3's 128 bits: every run's plan reads its
        whole source, and BLAKE2b took 139 ms of CPU per 64 MiB here against 12; digesting a
        130 MiB blob on Azurite took this process 0.48-0.50 CPU-seconds with BLAKE2b and
        0.21-0.24 with XXH3 (the download's share of the wall time is the same). The digest
        tells versions of the customer's own file apart, which needs no cryptographic hash:
        whoever can write the file decides what is sent anyway."""
        try:
            downloader = self.container(container).download_blob(name, max_concurrency=1)
        except ResourceNotFoundError as missing:
            raise _not_found(container, name, missing) from None
        digest = xxh3_128()

        def pieces() -> Iterator[bytes]:
            # The next piece downloads while this one is hashed and scanned.
            for piece in read_ahead(downloader.chunks()):
                digest.update(piece)
                yield piece

        stream = pieces()
        with contextlib.closing(stream):
            if scan is not None:
                scan(stream)
            for _ in stream:  # what the scan left unread
                pass
        return digest.hexdigest(), str(downloader.properties.etag)

    def etag(self, container: str, name: str) -> str:
        """The blob's version as the service names it: it changes with every write."""
        try:
            return str(self.container(container).get_blob_client(name).get_blob_properties().etag)
        except ResourceNotFoundError as missing:
            raise _not_found(container, name, missing) from None

    def exists(self, container: str, name: str) -> bool:
        try:
            self.container(container).get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError as missing:
            forget_traceback(missing)  # the SDK's own exists() keeps it
            return False
        return True

    def create_append_blob(self, container: str, name: str) -> None:
        from azure.storage.blob import ContentSettings

        self.container(container).get_blob_client(name).create_append_blob(
            content_settings=ContentSettings(content_type="application/x-ndjson")
        )

    def append_block(self, container: str, name: str, text: str, at: int) -> int:
        """Append lines to an append blob that this writer alone writes, `at` its length as
        the writer left it, in blocks under the service's 4 MiB limit; the blob's new length.

        Each block is appended on the condition that the blob ends where it should: the SDK
        sends a block again after a dropped connection, and a repeat of one that had landed
        is then refused (412) instead of writing its lines twice. The blob's length tells a
        landed block from another writer's."""
        blob = self.container(container).get_blob_client(name)
        block = bytearray()
        for line in io.StringIO(text):  # lines end at "\n" only: a value may hold U+2028
            data = line.encode("utf-8")
            if block and len(block) + len(data) > APPEND_BLOCK_BYTES:
                at = _append_at(blob, bytes(block), at)
                block.clear()
            block += data
        if block:
            at = _append_at(blob, bytes(block), at)
        return at

    def line_writer(
        self,
        container: str,
        name: str,
        encode: Callable[[bytes], bytes] | None = None,
        content_type: str = "application/x-ndjson",
    ) -> BlobLineWriter:
        return BlobLineWriter(self.container(container), name, encode, content_type)


def _append_at(blob: BlobClient, block: bytes, at: int) -> int:
    """Append `block` at position `at` of `blob` (its BlobClient); the position after it."""
    try:
        blob.append_block(block, appendpos_condition=at)
    except HttpResponseError as refused:
        landed = (
            refused.error_code == "AppendPositionConditionNotMet"
            and blob.get_blob_properties().size == at + len(block)
        )
        if not landed:
            raise
        forget_traceback(refused)
    return at + len(block)


class BlobLineWriter:
    """Writes a large blob line by line in blocks of up to 16 MiB, so memory stays bounded.

    A blob that fits in one block (most do: a partition's files are a few MiB) is uploaded in
    one request at `close()`; staging and committing blocks costs the storage service about
    three times as much per byte. Nothing is visible until `close()`; a writer abandoned by a
    crash leaves no partial blob behind. With `encode`, each block's lines are stored as it
    makes them (a compressed frame of each: the blob is those frames one after another).
    """

    def __init__(
        self,
        container: ContainerClient,
        name: str,
        encode: Callable[[bytes], bytes] | None = None,
        content_type: str = "application/x-ndjson",
    ) -> None:
        self._blob = container.get_blob_client(name)
        self._encode = encode or bytes
        self._content_type = content_type
        self._buffer = bytearray()
        self._blocks: list[str] = []
        self.lines = 0

    def write(self, line: str) -> None:
        self._buffer += line.encode("utf-8")
        self._buffer += b"\n"
        self.lines += 1
        if len(self._buffer) >= BLOCK_BYTES:
            self._stage()

    def write_lines(self, lines: list[str]) -> None:
        """Many lines at once: one join and one encoding for all of them."""
        if not lines:
            return
        self._buffer += "\n".join(lines).encode("utf-8")
        self._buffer += b"\n"
        self.lines += len(lines)
        if len(self._buffer) >= BLOCK_BYTES:
            self._stage()

    def _stage(self) -> None:
        block_id = b64encode(uuid.uuid4().bytes).decode()
        self._blob.stage_block(block_id, self._encode(self._buffer))
        self._blocks.append(block_id)
        self._buffer.clear()

    def close(self) -> None:
        from azure.storage.blob import BlobBlock, ContentSettings

        settings = ContentSettings(content_type=self._content_type)
        if not self._blocks:
            self._blob.upload_blob(
                self._encode(self._buffer), overwrite=True, content_settings=settings
            )
            return
        if self._buffer:
            self._stage()
        self._blob.commit_block_list(
            [BlobBlock(block_id=b) for b in self._blocks], content_settings=settings
        )


def transport_settings() -> dict[str, Any]:
    """The storage clients' transport settings, read from the environment once.

    Trusting the environment, `requests` looks proxies, a `.netrc` and CA bundle variables up
    again on every call: 0.3-0.4 ms of a storage call's 2.3-2.9 ms of client CPU here, where
    the environment names a CA bundle. A proxy the environment names keeps that (`requests`
    applies NO_PROXY per address); a CA bundle alone (`REQUESTS_CA_BUNDLE`, else
    `CURL_CA_BUNDLE`, as `requests` reads them) is passed once, as the bundle to verify
    with. The Braze client never looks."""
    if any(scheme != "no" for scheme in getproxies()):  # NO_PROXY alone names no proxy
        return {"use_env_settings": True}
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return {"use_env_settings": False, **({"connection_verify": bundle} if bundle else {})}


def read_ahead(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` (a download's pieces) with the next one on its way while the caller works on
    this one, so a split's parsing and the storage round trips overlap instead of taking turns."""
    with ThreadPoolExecutor(1, thread_name_prefix="storage-ahead") as pool:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield chunk


def _ignore_exists(create: Any) -> None:
    with contextlib.suppress(ResourceExistsError):
        create()
