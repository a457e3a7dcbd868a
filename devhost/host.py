"""The local host: settings, indexing, listeners and shutdown, in the real host's order."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Protocol

from azure.core.exceptions import AzureError

from devhost.blobs import (
    HOST_BLOB_QUEUE_PREFIX,
    BlobFunction,
    BlobTriggerQueue,
    BlobWatcher,
    prepare_blob_function,
)
from devhost.blobstore import HOST_CONTAINER, BlobStorage
from devhost.execution import FunctionRunner
from devhost.hostconfig import (
    HostConfigError,
    QueueOptions,
    http_route_prefix,
    load_host_config,
    queue_options,
)
from devhost.indexing import FunctionInfo, imported_app, index_module
from devhost.invocation import (
    FunctionLoadError,
    FunctionNotServed,
    Worker,
    prepare_queue_function,
)
from devhost.queues import DEFAULT_MESSAGE_LEASE, QueueListener, QueueStorage, QueueTriggerHandler
from devhost.settings import SettingsError, lookup_setting, merge_settings, read_local_settings
from devhost.timers import ScheduleMonitor, TimerListener, prepare_timer_function
from devhost.web import DirectInvoker, HttpFunction, WebHost, prepare_http_function

LOCAL_SETTINGS_FILE = "local.settings.json"
QUEUE_TRIGGER = "queueTrigger"
HTTP_TRIGGER = "httpTrigger"
TIMER_TRIGGER = "timerTrigger"
BLOB_TRIGGER = "blobTrigger"
DEFAULT_DRAIN_TIMEOUT = timedelta(seconds=30)
HOST_ID_SETTING = "AzureFunctionsWebHost__hostid"
BLOB_WATCH_SETTING = "DEVHOST_BLOB_WATCH_SECONDS"
DEFAULT_BLOB_WATCH_SECONDS = 1.0
_HOST_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")

logger = logging.getLogger(__name__)


class HostStartError(Exception):
    """The host cannot start with this app or these options."""


@dataclass(frozen=True)
class ListedFunction:
    """A function as the start-up listing shows it, and whether devhost serves it."""

    name: str
    trigger_type: str
    detail: str | None = None
    queue_name: str | None = None
    connection: str | None = None
    problem: str | None = None

    @property
    def served(self) -> bool:
        return self.problem is None and self.detail is not None

    def describe(self) -> str:
        return f"{self.name}: {self.trigger_type} ({self.detail if self.served else self.problem})"


class _Service(Protocol):
    """A listener the host starts, stops receiving and drains."""

    def start(self) -> None: ...

    def stop_receiving(self) -> None: ...

    def wait_drained(self, deadline: float) -> bool: ...


class LocalHost:
    """Serves an app's triggers from background threads until stopped.

    Use as a context manager (`with LocalHost(app_dir, env=...) as host:`) or call `start()`
    and `stop()`. While running, the app's settings are in `os.environ` and its modules are
    importable, as under the worker; both are undone by `stop()`. HTTP, admin and webhook
    requests are served on `host.http_url` (port 0, the default here, picks a free port).
    """

    def __init__(
        self,
        app_dir: Path | str = ".",
        *,
        env: Mapping[str, str] | None = None,
        settings_file: Path | str | None = None,
        functions: Collection[str] | None = None,
        port: int = 0,
        message_lease: timedelta = DEFAULT_MESSAGE_LEASE,
        drain_timeout: timedelta = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        self.app_dir = Path(app_dir).resolve()
        self._extra_env = dict(env or {})
        self._settings_file = Path(settings_file) if settings_file else None
        self._selected = set(functions) if functions else None
        self._port = port
        self._message_lease = message_lease
        self._drain_timeout = drain_timeout
        self._cleanup = ExitStack()
        self._services: list[_Service] = []
        self.functions: list[ListedFunction] = []
        self.queue_options = QueueOptions()
        self.host_id = ""
        self.http_url = ""

    def __enter__(self) -> LocalHost:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Load settings, index the app, then start the listeners and the HTTP server."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> bool:
        """Stop receiving, wait for in-flight invocations; True if they all finished in time."""
        for service in self._services:
            service.stop_receiving()
        deadline = time.monotonic() + self._drain_timeout.total_seconds()
        drained = all([service.wait_drained(deadline) for service in self._services])
        if not drained:
            logger.error(
                "Invocations still running after %ss; queue messages among them reappear once "
                "their lease expires",
                self._drain_timeout.total_seconds(),
            )
        self._services = []
        self._cleanup.close()
        return drained

    def _start(self) -> None:
        settings = self._load_settings()
        self._cleanup.enter_context(_exported(settings))
        module = self._cleanup.enter_context(imported_app(self.app_dir))
        indexed = index_module(module)
        unknown = (self._selected or set()) - {info.name for info in indexed}
        if unknown:
            raise HostStartError(f"no function named {', '.join(sorted(unknown))} in the app")
        try:
            config = load_host_config(self.app_dir, settings)
            self.queue_options = queue_options(config)
            route_prefix = http_route_prefix(config)
            self.host_id = _host_id(self.app_dir, settings)
            blob_watch_seconds = _blob_watch_seconds(settings)
            worker = Worker(settings)
        except (HostConfigError, SettingsError) as error:
            raise HostStartError(str(error)) from error
        self._cleanup.callback(worker.shutdown)
        queues = QueueStorage(settings)
        self._cleanup.callback(queues.close)
        blobs = BlobStorage(settings)
        self._cleanup.callback(blobs.close)
        runner = FunctionRunner(worker, queues, self.queue_options.message_encoding)
        wiring = _Wiring(settings, queues, blobs, runner, route_prefix)

        self.functions = [
            self._serve(info, wiring)
            for info in indexed
            if self._selected is None or info.name in self._selected
        ]
        if wiring.blob_functions:
            try:
                self._serve_blob_triggers(wiring, blob_watch_seconds)
            except SettingsError as error:
                raise HostStartError(f"blob triggers need the host storage: {error}") from error
        web_host = WebHost(
            port=self._port,
            functions=wiring.http_functions,
            runner=runner,
            direct_invokers=wiring.direct_invokers,
            blob_events=wiring.blob_events,
        )
        try:
            for service in wiring.services:
                service.start()
                self._services.append(service)
        except AzureError as error:
            raise HostStartError(f"cannot reach storage: {error}") from error
        try:
            web_host.start()
        except OSError as error:
            raise HostStartError(f"cannot listen on port {self._port}: {error}") from error
        self._services.insert(0, web_host)
        self.http_url = web_host.url

    def _load_settings(self) -> dict[str, str]:
        """local.settings.json (the given file, or the app's if present) under the environment."""
        settings_file = self._settings_file or self.app_dir / LOCAL_SETTINGS_FILE
        local_values: dict[str, str] = {}
        if self._settings_file or settings_file.exists():
            try:
                local_values = read_local_settings(settings_file)
            except SettingsError as error:
                raise HostStartError(str(error)) from error
        return merge_settings(local_values, {**os.environ, **self._extra_env})

    def _serve(self, info: FunctionInfo, wiring: _Wiring) -> ListedFunction:
        """Set up what serves `info` if devhost can; say why not otherwise."""
        try:
            if info.trigger_type == QUEUE_TRIGGER:
                return wiring.serve_queue(info, self.queue_options, self._message_lease)
            if info.trigger_type == HTTP_TRIGGER:
                return wiring.serve_http(info)
            if info.trigger_type == TIMER_TRIGGER:
                return wiring.serve_timer(info, self.host_id)
            if info.trigger_type == BLOB_TRIGGER:
                return wiring.serve_blob(info)
        except FunctionNotServed as reason:
            return ListedFunction(
                info.name, info.trigger_type, problem=f"not served by devhost yet: {reason}"
            )
        except (FunctionLoadError, SettingsError) as error:
            logger.error("Function '%s' is in error: %s", info.name, error)
            return ListedFunction(info.name, info.trigger_type, problem=f"error: {error}")
        return ListedFunction(info.name, info.trigger_type, problem="not served by devhost yet")

    def _serve_blob_triggers(self, wiring: _Wiring, watch_seconds: float) -> None:
        """The host's blob-trigger queue and its listener, and the stand-in for Event Grid."""
        host_queue = wiring.queues.queue("", HOST_BLOB_QUEUE_PREFIX + self.host_id)
        trigger_queue = BlobTriggerQueue(
            wiring.blob_functions,
            host_queue=host_queue,
            queues=wiring.queues,
            blobs=wiring.blobs,
            runner=wiring.runner,
            encoding=self.queue_options.message_encoding,
        )
        wiring.services.append(
            QueueListener(
                trigger_queue,
                queue=host_queue,
                storage=wiring.queues,
                options=self.queue_options,
                message_lease=self._message_lease,
            )
        )
        wiring.blob_events = trigger_queue.accept_events
        for function in wiring.blob_functions:
            wiring.direct_invokers[function.name] = lambda text, name=function.name: (
                trigger_queue.invoke_directly(name, text)
            )
        if watch_seconds > 0:
            wiring.services.append(
                BlobWatcher(
                    wiring.blob_functions,
                    blobs=wiring.blobs,
                    post=trigger_queue.accept_events,
                    interval=watch_seconds,
                )
            )


class _Wiring:
    """What the functions being set up share, and what they contribute to the host."""

    def __init__(
        self,
        settings: Mapping[str, str],
        queues: QueueStorage,
        blobs: BlobStorage,
        runner: FunctionRunner,
        route_prefix: str,
    ) -> None:
        self.settings = settings
        self.queues = queues
        self.blobs = blobs
        self.runner = runner
        self.route_prefix = route_prefix
        self.services: list[_Service] = []
        self.http_functions: list[HttpFunction] = []
        self.blob_functions: list[BlobFunction] = []
        self.direct_invokers: dict[str, DirectInvoker] = {}
        self.blob_events: Callable[..., None] | None = None

    def serve_queue(
        self, info: FunctionInfo, options: QueueOptions, message_lease: timedelta
    ) -> ListedFunction:
        function = prepare_queue_function(info, self.settings)
        handler = QueueTriggerHandler(function, storage=self.queues, runner=self.runner)
        self.services.append(
            QueueListener(
                handler,
                queue=self.queues.queue(function.connection, function.queue_name),
                storage=self.queues,
                options=options,
                message_lease=message_lease,
            )
        )
        self.direct_invokers[function.name] = lambda text: handler.invoke_directly(text or "")
        return ListedFunction(
            info.name,
            info.trigger_type,
            f"queue={function.queue_name}",
            function.queue_name,
            function.connection,
        )

    def serve_http(self, info: FunctionInfo) -> ListedFunction:
        function = prepare_http_function(info, self.route_prefix, self.settings)
        self.http_functions.append(function)
        return ListedFunction(info.name, info.trigger_type, function.describe_route())

    def serve_timer(self, info: FunctionInfo, host_id: str) -> ListedFunction:
        function = prepare_timer_function(info, self.settings, datetime.now(UTC))
        monitor = None
        if function.use_monitor:
            monitor = ScheduleMonitor(self.blobs.container("", HOST_CONTAINER), host_id)
        listener = TimerListener(function, runner=self.runner, monitor=monitor)
        self.services.append(listener)
        self.direct_invokers[function.name] = listener.invoke_directly
        return ListedFunction(info.name, info.trigger_type, f"schedule={function.schedule}")

    def serve_blob(self, info: FunctionInfo) -> ListedFunction:
        function = prepare_blob_function(info, self.settings)
        self.blob_functions.append(function)
        return ListedFunction(
            info.name,
            info.trigger_type,
            f"EventGrid, path={function.path}",
            connection=function.connection,
        )


def _host_id(app_dir: Path, settings: Mapping[str, str]) -> str:
    """`AzureFunctionsWebHost__hostid`, or one derived from this machine and the app directory.

    The host id names the host's blobs and queues (timer statuses, the blob-trigger queue),
    so it must stay the same from one run to the next. Core Tools derives its own differently;
    set the setting to share state with a `func start` of the same app.
    """
    configured = lookup_setting(settings, HOST_ID_SETTING)
    if configured:
        if not _HOST_ID.match(configured):
            raise SettingsError(
                f"{HOST_ID_SETTING} '{configured}' must be 1-32 lowercase letters, digits and "
                "dashes, not starting or ending with a dash"
            )
        return configured
    digest = hashlib.sha256(str(app_dir).encode()).hexdigest()[:10]
    machine = re.sub(r"[^a-z0-9-]", "", socket.gethostname().lower())[:21].strip("-") or "local"
    return f"{machine}-{digest}"


def _blob_watch_seconds(settings: Mapping[str, str]) -> float:
    """How often the Event Grid stand-in lists containers; 0 turns it off."""
    configured = lookup_setting(settings, BLOB_WATCH_SETTING)
    if not configured:
        return DEFAULT_BLOB_WATCH_SECONDS
    try:
        seconds = float(configured)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise SettingsError(f"{BLOB_WATCH_SETTING} must be a number of seconds, got {configured!r}")
    return seconds


@contextmanager
def _exported(settings: Mapping[str, str]) -> Iterator[None]:
    """App settings as environment variables while the host runs, as the worker sees them."""
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
