"""The local host: settings, indexing, listeners and shutdown, in the real host's order."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from azure.core.exceptions import AzureError

from devhost.hostconfig import HostConfigError, QueueOptions, load_queue_options
from devhost.indexing import FunctionInfo, imported_app, index_module
from devhost.invocation import (
    FunctionLoadError,
    FunctionNotServed,
    QueueFunction,
    Worker,
    prepare_queue_function,
)
from devhost.queues import DEFAULT_MESSAGE_LEASE, QueueListener, QueueStorage
from devhost.settings import SettingsError, merge_settings, read_local_settings

LOCAL_SETTINGS_FILE = "local.settings.json"
QUEUE_TRIGGER = "queueTrigger"
DEFAULT_DRAIN_TIMEOUT = timedelta(seconds=30)

logger = logging.getLogger(__name__)


class HostStartError(Exception):
    """The host cannot start with this app or these options."""


@dataclass(frozen=True)
class ListedFunction:
    """A function as the start-up listing shows it, and whether devhost serves it."""

    name: str
    trigger_type: str
    queue_name: str | None = None
    connection: str | None = None
    problem: str | None = None

    @property
    def served(self) -> bool:
        return self.problem is None and self.queue_name is not None

    def describe(self) -> str:
        if self.served:
            return f"{self.name}: {self.trigger_type} (queue={self.queue_name})"
        return f"{self.name}: {self.trigger_type} ({self.problem})"


class LocalHost:
    """Serves an app's queue triggers from background threads until stopped.

    Use as a context manager (`with LocalHost(app_dir, env=...) as host:`) or call `start()`
    and `stop()`. While running, the app's settings are in `os.environ` and its modules are
    importable, as under the worker; both are undone by `stop()`.
    """

    def __init__(
        self,
        app_dir: Path | str = ".",
        *,
        env: Mapping[str, str] | None = None,
        settings_file: Path | str | None = None,
        functions: Collection[str] | None = None,
        message_lease: timedelta = DEFAULT_MESSAGE_LEASE,
        drain_timeout: timedelta = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        self.app_dir = Path(app_dir).resolve()
        self._extra_env = dict(env or {})
        self._settings_file = Path(settings_file) if settings_file else None
        self._selected = set(functions) if functions else None
        self._message_lease = message_lease
        self._drain_timeout = drain_timeout
        self._cleanup = ExitStack()
        self._listeners: list[QueueListener] = []
        self.functions: list[ListedFunction] = []
        self.queue_options = QueueOptions()

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
        """Load settings, index the app, create the trigger queues and start listening."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> bool:
        """Stop receiving, wait for in-flight invocations; True if they all finished in time."""
        for listener in self._listeners:
            listener.stop_receiving()
        deadline = time.monotonic() + self._drain_timeout.total_seconds()
        drained = all([listener.wait_drained(deadline) for listener in self._listeners])
        if not drained:
            logger.error(
                "Invocations still running after %ss; their messages reappear once their "
                "lease expires",
                self._drain_timeout.total_seconds(),
            )
        self._listeners = []
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
            self.queue_options = load_queue_options(self.app_dir, settings)
            worker = Worker(settings)
        except (HostConfigError, SettingsError) as error:
            raise HostStartError(str(error)) from error
        self._cleanup.callback(worker.shutdown)
        storage = QueueStorage(settings)
        self._cleanup.callback(storage.close)

        self.functions = []
        for info in indexed:
            if self._selected is None or info.name in self._selected:
                self.functions.append(self._serve(info, settings, storage, worker))
        try:
            for listener in self._listeners:
                listener.start()
        except AzureError as error:
            raise HostStartError(f"cannot reach queue storage: {error}") from error

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

    def _serve(
        self,
        info: FunctionInfo,
        settings: Mapping[str, str],
        storage: QueueStorage,
        worker: Worker,
    ) -> ListedFunction:
        """Set up a listener for `info` if devhost can serve it; say why not otherwise."""
        if info.trigger_type != QUEUE_TRIGGER:
            return ListedFunction(info.name, info.trigger_type, problem="not served by devhost yet")
        try:
            function: QueueFunction = prepare_queue_function(info, settings)
            listener = QueueListener(
                function,
                storage=storage,
                options=self.queue_options,
                worker=worker,
                message_lease=self._message_lease,
            )
        except FunctionNotServed as reason:
            return ListedFunction(
                info.name, info.trigger_type, problem=f"not served by devhost yet: {reason}"
            )
        except (FunctionLoadError, SettingsError) as error:
            logger.error("Function '%s' is in error: %s", info.name, error)
            return ListedFunction(info.name, info.trigger_type, problem=f"error: {error}")
        self._listeners.append(listener)
        return ListedFunction(
            info.name, info.trigger_type, function.queue_name, function.connection
        )


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
