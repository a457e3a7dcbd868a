"""Blob triggers with `source="EventGrid"`, as the Storage Blobs extension (5.x) serves them.

The host's webhook `/runtime/webhooks/blobs?functionName=Host.Functions.<name>` answers the
Event Grid validation handshake and turns each notified event into a `BlobTriggerMessage`
(function id, container, blob name, ETag) on the host's internal queue
`azure-webjobs-blobtrigger-<host id>`. A shared queue listener runs the function for each
message with the host.json queue rules: retried up to `maxDequeueCount`, then the message goes
to `webjobs-blobtrigger-poison` in the blob's storage account. A blob that is gone by then is
skipped. There is no Event Grid locally, so `BlobWatcher` stands in for one subscription per
function: it lists the container every second and posts a BlobCreated event for each blob
created or overwritten since devhost started.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any
from urllib.parse import unquote, urlsplit

import azure.functions as func
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.functions.blob import BlobConverter
from azure.functions.meta import Datum
from azure.storage.blob import BlobClient, BlobProperties
from azure.storage.queue import QueueClient, QueueMessage

from devhost.blobstore import BlobStorage
from devhost.execution import BackgroundLoop, FunctionRunner, Waiter
from devhost.hostconfig import MessageEncoding
from devhost.indexing import FunctionInfo
from devhost.invocation import (
    FunctionLoadError,
    FunctionNotServed,
    HostedFunction,
    annotation_mismatch,
    is_subclass,
    prepare_outputs,
    resolve_setting,
    trigger_annotation,
)
from devhost.queues import MessageDecodingError, QueueStorage, decode_message, encode_message
from devhost.settings import SettingsError, connection_setting

EVENT_GRID_SOURCE = "EventGrid"
FUNCTION_ID_PREFIX = "Host.Functions."
HOST_BLOB_QUEUE_PREFIX = "azure-webjobs-blobtrigger-"
POISON_QUEUE = "webjobs-blobtrigger-poison"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
BLOB_EXTENSION_SOURCE = "AzureStorageBlobs"
_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]|[^{}]+")
_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SUBJECT = re.compile(r"^/blobServices/default/containers/(?P<container>[^/]+)/blobs/(?P<blob>.+)$")
# Ports of the storage emulator, whose URLs carry the account name as the first path segment.
_EMULATOR_PORTS = range(10000, 10010)

logger = logging.getLogger(__name__)


class BlobPathError(Exception):
    """A blob trigger path the host would refuse."""


@dataclass(frozen=True)
class BlobPath:
    """A trigger path `container/blob-pattern`, where `{name}`s capture parts of blob names."""

    container: str
    blob_pattern: str
    _regex: re.Pattern[str]

    def match(self, container: str, blob_name: str) -> dict[str, str] | None:
        """The binding data (`{name}` values) for a blob, or None if it does not match."""
        if container != self.container:
            return None
        found = self._regex.match(blob_name)
        return None if found is None else found.groupdict()

    def __str__(self) -> str:
        return f"{self.container}/{self.blob_pattern}"


def parse_blob_path(path: str) -> BlobPath:
    """Parse a resolved path like the extension's BlobPathSource and BindingTemplateSource.

    Parameters capture greedily (`.*`, slashes included), literals match exactly, `{{`/`}}`
    are literal braces; the container part must be a plain container name.
    """
    container, slash, blob_pattern = path.partition("/")
    if not slash or not blob_pattern:
        raise BlobPathError(f"blob path '{path}' must be in the format container/blob")
    if not _CONTAINER_NAME.match(container):
        raise BlobPathError(f"'{container}' is not a valid container name")
    pattern = "^"
    names: set[str] = set()
    for token in _TEMPLATE_TOKEN.finditer(blob_pattern):
        text, name = token.group(0), token.group(1)
        if text in ("{{", "}}"):
            pattern += re.escape(text[0])
        elif name is not None:
            if not _PARAMETER_NAME.match(name) or name in names:
                raise BlobPathError(f"blob path '{path}' has an invalid parameter '{{{name}}}'")
            names.add(name)
            pattern += f"(?P<{name}>.*)"
        elif text in ("{", "}"):
            raise BlobPathError(f"blob path '{path}' has an unmatched '{text}'")
        else:
            pattern += re.escape(text)
    return BlobPath(container, blob_pattern, re.compile(pattern + "$", re.DOTALL))


@dataclass(frozen=True)
class BlobFunction(HostedFunction):
    """An Event Grid blob-triggered function ready to be served."""

    path: BlobPath
    connection: str
    connection_setting: str
    sdk_type: type | None

    @property
    def function_id(self) -> str:
        return FUNCTION_ID_PREFIX + self.name


def prepare_blob_function(info: FunctionInfo, settings: Mapping[str, str]) -> BlobFunction:
    """Check an Event Grid blob trigger like the host and worker would before serving it."""
    source = str(info.trigger.get("source") or "LogsAndContainerScan")
    if source != EVENT_GRID_SOURCE:
        raise FunctionNotServed(
            f"blob trigger source '{source}'; only source=EventGrid, the only blob source on "
            "Flex Consumption"
        )
    outputs = prepare_outputs(info, settings)
    annotation = trigger_annotation(info, [output.arg_name for output in outputs])
    sdk_type: type | None = None
    if _is_sdk_type(annotation):
        sdk_type = annotation
    elif annotation in (str, bytes):
        raise FunctionNotServed(f"a blob trigger parameter annotated '{annotation.__name__}'")
    elif annotation is not None and not is_subclass(annotation, func.InputStream):
        raise annotation_mismatch(info, annotation)
    try:
        path = parse_blob_path(resolve_setting(info.name, str(info.trigger["path"]), settings))
        connection = str(info.trigger.get("connection", ""))
        setting_name, _ = connection_setting(connection, settings)
    except (BlobPathError, SettingsError) as error:
        raise FunctionLoadError(info.name, str(error)) from None
    return BlobFunction(
        name=info.name,
        trigger_arg=str(info.trigger["name"]),
        outputs=outputs,
        user_function=info.user_function,
        path=path,
        connection=connection,
        connection_setting=setting_name,
        sdk_type=sdk_type,
    )


@dataclass(frozen=True)
class _ModelBindingData:
    """What the host sends for an SDK-type parameter instead of content (ModelBindingData)."""

    version: str
    source: str
    content_type: str
    content: str


class BlobTriggerQueue:
    """The host's blob-trigger queue: Event Grid events in, function invocations out."""

    name = "blobtrigger"

    def __init__(
        self,
        functions: Sequence[BlobFunction],
        *,
        host_queue: QueueClient,
        queues: QueueStorage,
        blobs: BlobStorage,
        runner: FunctionRunner,
        encoding: MessageEncoding,
    ) -> None:
        self._functions = {function.function_id: function for function in functions}
        self._host_queue = host_queue
        self._queues = queues
        self._blobs = blobs
        self._runner = runner
        self._encoding = encoding
        self._host_poison_queue = queues.queue("", POISON_QUEUE)

    def accept_events(self, function_id: str, events: Sequence[Mapping[str, Any]]) -> None:
        """Queue a trigger message for each BlobCreated event whose blob matches the path.

        The host itself enqueues every event it is sent and counts on the subscription's
        filters; devhost checks the event type and the trigger path here instead, and says so.
        """
        function = self._functions.get(function_id)
        if function is None:
            logger.warning(
                "Event Grid events for '%s' dropped: no EventGrid blob trigger has that id "
                "(use functionName=%s<function name>)",
                function_id,
                FUNCTION_ID_PREFIX,
            )
            return
        for event in events:
            self._accept_event(function, event)

    def _accept_event(self, function: BlobFunction, event: Mapping[str, Any]) -> None:
        event_type = event.get("eventType")
        if event_type != BLOB_CREATED:
            logger.info(
                "Ignoring Event Grid event of type '%s' for '%s'", event_type, function.name
            )
            return
        data = event.get("data") or {}
        container, blob_name = _blob_of(data.get("url"), event.get("subject"))
        if function.path.match(container, blob_name) is None:
            logger.info(
                "Ignoring blob '%s/%s': it does not match the path '%s' of '%s'",
                container,
                blob_name,
                function.path,
                function.name,
            )
            return
        message = {
            "Type": "BlobTrigger",
            "FunctionId": function.function_id,
            "BlobType": str(data.get("blobType") or "BlockBlob"),
            "ContainerName": container,
            "BlobName": blob_name,
            "ETag": _quoted(str(data.get("eTag", ""))),
        }
        self._queues.add_message(
            self._host_queue, encode_message(json.dumps(message), self._encoding)
        )

    def handle(self, message: QueueMessage, body: bytes, wait: Waiter) -> bool:
        """Run the function for one trigger message (BlobQueueTriggerExecutor)."""
        try:
            trigger = json.loads(body)
            function_id = trigger["FunctionId"]
            container, blob_name = trigger["ContainerName"], trigger["BlobName"]
        except (ValueError, KeyError, TypeError) as error:
            logger.error("Invalid blob trigger message %s: %s", message.id, error)
            return False
        function = self._functions.get(function_id)
        if function is None:
            logger.info(
                "Blob '%s/%s' was queued for '%s', which this host does not serve; skipping it",
                container,
                blob_name,
                function_id,
            )
            return True
        blob = self._blobs.container(function.connection, container).get_blob_client(blob_name)
        try:
            properties = blob.get_blob_properties()
        except ResourceNotFoundError:
            logger.info(
                "Blob '%s/%s' no longer exists; skipping message %s",
                container,
                blob_name,
                message.id,
            )
            return True
        except AzureError as error:
            logger.warning("Reading blob '%s/%s' failed: %s", container, blob_name, error)
            return False
        execution = self._runner.run(
            function,
            lambda: self._trigger_value(function, blob, properties),
            f"New blob detected({EVENT_GRID_SOURCE}): {container}/{blob_name}",
            wait=wait,
            failure_detail=(
                f" on blob '{container}/{blob_name}' (dequeue count {message.dequeue_count})"
            ),
        )
        return execution.succeeded

    def poison_queue(self, message: QueueMessage) -> QueueClient:
        """`webjobs-blobtrigger-poison` in the blob's account, or the host's if unknown."""
        try:
            function_id = json.loads(decode_message(message.content, self._encoding))["FunctionId"]
        except (MessageDecodingError, ValueError, KeyError, TypeError):
            return self._host_poison_queue
        function = self._functions.get(function_id)
        if function is None:
            return self._host_poison_queue
        return self._queues.queue(function.connection, POISON_QUEUE)

    def invoke_directly(self, function_name: str, path: str | None) -> None:
        """Admin invoke: the input is `container/blob`, run once without retries."""
        function = self._functions[FUNCTION_ID_PREFIX + function_name]
        container, _, blob_name = (path or "").partition("/")
        blob = self._blobs.container(function.connection, container).get_blob_client(blob_name)
        self._runner.run(
            function,
            lambda: self._trigger_value(function, blob, blob.get_blob_properties()),
            "This function was programmatically called via the host APIs.",
        )

    def _trigger_value(
        self, function: BlobFunction, blob: BlobClient, properties: BlobProperties
    ) -> Any:
        """The parameter value, made by the same converters the worker uses.

        An SDK type gets the model binding data the host sends (connection setting, container,
        blob) and the blob extension builds the client; nothing is downloaded. Otherwise the
        content is downloaded into an `InputStream` with the host's trigger metadata.
        """
        container, blob_name = blob.container_name, blob.blob_name
        binding_data = function.path.match(container, blob_name) or {}
        metadata = {
            "BlobTrigger": Datum(f"{container}/{blob_name}", "string"),
            "Uri": Datum(blob.url, "string"),
            "Properties": Datum(json.dumps(_properties_json(properties)), "json"),
            "Metadata": Datum(json.dumps(dict(properties.metadata or {})), "json"),
            **{name: Datum(value, "string") for name, value in binding_data.items()},
        }
        if function.sdk_type is not None:
            from azurefunctions.extensions.base import Datum as ExtensionDatum
            from azurefunctions.extensions.base import meta as extension_meta

            content = {
                "Connection": function.connection_setting,
                "ContainerName": container,
                "BlobName": blob_name,
            }
            binding = _ModelBindingData(
                "1.0", BLOB_EXTENSION_SOURCE, "application/json", json.dumps(content)
            )
            converter = extension_meta.get_binding_registry().get("blobTrigger")
            return converter.decode(
                ExtensionDatum(binding, "model_binding_data"),
                trigger_metadata=metadata,
                pytype=function.sdk_type,
            )
        data = blob.download_blob().readall()
        return BlobConverter.decode(Datum(data, "bytes"), trigger_metadata=metadata)


class BlobWatcher(BackgroundLoop):
    """Stands in for Event Grid: one subscription per function, made by listing its container.

    Blobs present at start are known already, so they raise no event, as with a new
    subscription; a new blob, or a new ETag on a known one, raises one BlobCreated event.
    """

    def __init__(
        self,
        functions: Sequence[BlobFunction],
        *,
        blobs: BlobStorage,
        post: Callable[[str, Sequence[Mapping[str, Any]]], None],
        interval: float,
    ) -> None:
        self._functions = functions
        self._blobs = blobs
        self._post = post
        self._interval = interval
        self._known: dict[str, dict[str, str]] = {}
        super().__init__("devhost-blob-watch")

    def start(self) -> None:
        """List every watched container now, so only later writes count as events."""
        for function in self._functions:
            self._known[function.name] = {
                name: etag for name, (etag, _) in self._list(function).items()
            }
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            for function in self._functions:
                try:
                    self._scan(function)
                except AzureError as error:
                    logger.warning(
                        "Watching container '%s' failed: %s", function.path.container, error
                    )

    def _scan(self, function: BlobFunction) -> None:
        known = self._known[function.name]
        current = self._list(function)
        for name, (etag, properties) in current.items():
            if known.get(name) != etag:
                container = self._blobs.container(function.connection, function.path.container)
                event = blob_created_event(container.get_blob_client(name).url, properties)
                self._post(function.function_id, [event])
        self._known[function.name] = {name: etag for name, (etag, _) in current.items()}

    def _list(self, function: BlobFunction) -> dict[str, tuple[str, BlobProperties]]:
        container = self._blobs.container(function.connection, function.path.container)
        try:
            return {blob.name: (blob.etag, blob) for blob in container.list_blobs()}
        except ResourceNotFoundError:
            return {}


def blob_created_event(url: str, properties: BlobProperties) -> dict[str, Any]:
    """A `Microsoft.Storage.BlobCreated` event in the Event Grid schema, as storage sends it."""
    container, blob_name = _blob_of(url, None)
    return {
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/devhost"
        "/providers/Microsoft.Storage/storageAccounts/devhost",
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob_name}",
        "eventType": BLOB_CREATED,
        "id": str(uuid.uuid4()),
        "eventTime": datetime.now(UTC).isoformat(),
        "data": {
            "api": "PutBlob",
            "eTag": properties.etag.strip('"'),
            "contentType": properties.content_settings.content_type,
            "contentLength": properties.size,
            "blobType": str(properties.blob_type.value if properties.blob_type else "BlockBlob"),
            "url": url,
            "sequencer": f"{time.time_ns():032x}",
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


def _blob_of(url: Any, subject: Any) -> tuple[str, str]:
    """Container and blob name from `data.url` (as the host reads it) or else the subject."""
    if isinstance(url, str) and url:
        parts = urlsplit(url)
        segments = parts.path.lstrip("/").split("/")
        if _path_style(parts.hostname or "", parts.port):
            segments = segments[1:]
        if len(segments) >= 2:
            return unquote(segments[0]), unquote("/".join(segments[1:]))
    found = _SUBJECT.match(subject) if isinstance(subject, str) else None
    if found is None:
        raise ValueError("the event names no blob: it has neither data.url nor a blob subject")
    return found["container"], found["blob"]


def _quoted(etag: str) -> str:
    """An ETag as the host writes it in trigger messages: in double quotes (Event Grid has none)."""
    return '"' + etag.strip('"') + '"'


def _path_style(host: str, port: int | None) -> bool:
    """Whether a URL has the account in its path (an IP, localhost or emulator port)."""
    if host == "localhost" or port in _EMULATOR_PORTS:
        return True
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _properties_json(properties: BlobProperties) -> dict[str, Any]:
    """The blob properties the host puts in the `Properties` trigger metadata (a subset)."""
    settings = properties.content_settings
    return {
        "ContentLength": properties.size,
        "ContentType": settings.content_type,
        "ContentEncoding": settings.content_encoding,
        "ETag": properties.etag,
        "LastModified": properties.last_modified and properties.last_modified.isoformat(),
        "CreatedOn": properties.creation_time and properties.creation_time.isoformat(),
        "BlobType": str(properties.blob_type.value if properties.blob_type else "BlockBlob"),
    }


def _is_sdk_type(annotation: Any) -> bool:
    """Whether the parameter wants an SDK client (azurefunctions-extensions-bindings-blob)."""
    if not isinstance(annotation, type):
        return False
    try:
        from azurefunctions.extensions.base import meta as extension_meta
    except ImportError:
        return False
    registry = extension_meta.get_binding_registry()
    return registry.check_supported_type(annotation) and registry.get("blobTrigger") is not None
