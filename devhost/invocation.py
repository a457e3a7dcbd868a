"""The worker's side of an invocation: checking parameters and bindings, and calling user code.

Parameter checks follow the Python worker's function loading, so a signature the real worker
would refuse is refused here too instead of failing only in Azure. User code runs like it does
in the worker: synchronous functions on a thread pool (`PYTHON_THREADPOOL_THREAD_COUNT`),
coroutines on a single event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
import typing
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any

import azure.functions as func

from devhost.indexing import FunctionInfo
from devhost.settings import SettingsError, lookup_setting, resolve_setting_expressions

RETURN_BINDING = "$return"
MAX_THREAD_COUNT = 32
LOOP_STOP_TIMEOUT_SECONDS = 5
_QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")


class FunctionNotServed(Exception):
    """The function uses something devhost does not emulate yet; the message names it."""


class FunctionLoadError(Exception):
    """The worker or host would refuse to load the function."""

    def __init__(self, function_name: str, reason: str) -> None:
        super().__init__(f"cannot load the {function_name} function: {reason}")


class TriggerValue(Enum):
    """What the trigger parameter receives, decided by its annotation like the worker does."""

    MESSAGE = "QueueMessage"
    TEXT = "str"
    BYTES = "bytes"


@dataclass(frozen=True)
class QueueOutput:
    """A queue output binding: a `func.Out` parameter, or the return value for `$return`."""

    arg_name: str
    queue_name: str
    connection: str


@dataclass(frozen=True)
class HostedFunction:
    """What every served function has: a name, its trigger parameter, queue outputs and code."""

    name: str
    trigger_arg: str
    outputs: tuple[QueueOutput, ...]
    user_function: Callable[..., Any]


@dataclass(frozen=True)
class QueueFunction(HostedFunction):
    """A queue-triggered function ready to be served."""

    queue_name: str
    connection: str
    trigger_value: TriggerValue
    binary: bool


def prepare_queue_function(info: FunctionInfo, settings: Mapping[str, str]) -> QueueFunction:
    """Check a queue-triggered function like the host and worker would before serving it."""
    outputs = prepare_outputs(info, settings)
    trigger_arg = str(info.trigger["name"])
    annotation = trigger_annotation(info, [o.arg_name for o in outputs])
    return QueueFunction(
        name=info.name,
        trigger_arg=trigger_arg,
        outputs=outputs,
        user_function=info.user_function,
        queue_name=queue_name(info.name, info.trigger["queueName"], settings),
        connection=str(info.trigger.get("connection", "")),
        trigger_value=_queue_trigger_value(info, annotation),
        binary=str(info.trigger.get("dataType", "")).casefold() == "binary",
    )


def prepare_outputs(
    info: FunctionInfo, settings: Mapping[str, str], *, handled: frozenset[str] = frozenset()
) -> tuple[QueueOutput, ...]:
    """The queue output bindings; binding types in `handled` are the trigger's own business."""
    outputs: list[QueueOutput] = []
    for binding in info.bindings:
        if binding is info.trigger or binding["type"] in handled:
            continue
        if binding["type"] != "queue" or binding["direction"] != "OUT":
            raise FunctionNotServed(f"binding '{binding['name']}' of type '{binding['type']}'")
        if "{" in binding["queueName"]:
            raise FunctionNotServed(f"binding expression in queue name '{binding['queueName']}'")
        output_queue = queue_name(info.name, binding["queueName"], settings)
        outputs.append(QueueOutput(binding["name"], output_queue, binding.get("connection", "")))
    return tuple(outputs)


def queue_name(function_name: str, declared: str, settings: Mapping[str, str]) -> str:
    """Resolve `%SETTING%`s and lower-case the name, then validate it, as the host does."""
    name = resolve_setting(function_name, declared, settings).lower()
    if not _QUEUE_NAME.match(name):
        raise FunctionLoadError(
            function_name,
            f"invalid queue name '{name}': use 3-63 lowercase letters, digits and single hyphens",
        )
    return name


def resolve_setting(function_name: str, declared: str, settings: Mapping[str, str]) -> str:
    """A binding property with its `%SETTING%`s resolved; unknown settings fail the function."""
    try:
        return resolve_setting_expressions(declared, settings)
    except SettingsError as error:
        raise FunctionLoadError(function_name, str(error)) from None


def trigger_annotation(info: FunctionInfo, output_args: list[str]) -> Any:
    """Match Python parameters to bindings like the worker; the trigger's annotation or None."""
    trigger_arg = str(info.trigger["name"])
    parameters = set(inspect.signature(info.user_function).parameters)
    bound = {trigger_arg, *output_args} - {RETURN_BINDING}
    if "context" in parameters - bound:
        raise FunctionNotServed("the 'context' parameter")
    if parameters - bound:
        raise FunctionLoadError(
            info.name, f"parameters declared in Python but not as bindings: {parameters - bound}"
        )
    if bound - parameters:
        raise FunctionLoadError(
            info.name, f"bindings declared but not as Python parameters: {bound - parameters}"
        )
    try:
        annotations = typing.get_type_hints(info.user_function)
    except Exception as error:
        raise FunctionLoadError(info.name, f"cannot resolve annotations: {error}") from None

    for output_arg in set(output_args) - {RETURN_BINDING}:
        annotation = annotations.get(output_arg)
        if annotation is not None and typing.get_origin(annotation) is not func.Out:
            raise FunctionLoadError(
                info.name,
                f"binding {output_arg} has the 'out' direction, but its annotation is not "
                "azure.functions.Out",
            )
    return annotations.get(trigger_arg)


def annotation_mismatch(info: FunctionInfo, annotation: Any) -> FunctionLoadError:
    """The worker's error for a trigger parameter whose annotation its binding cannot supply."""
    return FunctionLoadError(
        info.name,
        f'type of {info.trigger["name"]} binding "{info.trigger_type}" does not match its '
        f'Python annotation "{getattr(annotation, "__name__", annotation)}"',
    )


def is_subclass(annotation: Any, base: type) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, base)


def _queue_trigger_value(info: FunctionInfo, annotation: Any) -> TriggerValue:
    """What the queue trigger parameter receives, by its annotation."""
    if annotation is None or is_subclass(annotation, func.QueueMessage):
        return TriggerValue.MESSAGE
    if annotation is str:
        return TriggerValue.TEXT
    if annotation is bytes:
        return TriggerValue.BYTES
    raise annotation_mismatch(info, annotation)


class _OutValue(func.Out[Any]):
    """What the worker passes for an output binding parameter."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class Worker:
    """Runs user functions the way the Python language worker does."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._threads = ThreadPoolExecutor(
            max_workers=_thread_count(settings), thread_name_prefix="devhost-worker"
        )
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="devhost-event-loop", daemon=True
        )
        self._loop_thread.start()

    def invoke(self, function: HostedFunction, trigger_value: Any) -> Future[dict[str, Any]]:
        """Start one invocation; its future holds output binding values by binding name."""
        outputs = {
            o.arg_name: _OutValue() for o in function.outputs if o.arg_name != RETURN_BINDING
        }
        arguments: dict[str, Any] = {function.trigger_arg: trigger_value, **outputs}

        def collect(result: Any) -> dict[str, Any]:
            values = {name: out.get() for name, out in outputs.items()}
            return {**values, RETURN_BINDING: result}

        if inspect.iscoroutinefunction(function.user_function):

            async def run_coroutine() -> dict[str, Any]:
                return collect(await function.user_function(**arguments))

            return asyncio.run_coroutine_threadsafe(run_coroutine(), self._loop)
        return self._threads.submit(lambda: collect(function.user_function(**arguments)))

    def shutdown(self) -> None:
        """Release the pool and the loop; in-flight calls must already be finished or abandoned."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        # A coroutine stuck in blocking code keeps the loop running; leave that daemon thread be.
        self._loop_thread.join(timeout=LOOP_STOP_TIMEOUT_SECONDS)
        if not self._loop_thread.is_alive():
            self._loop.close()


def _thread_count(settings: Mapping[str, str]) -> int | None:
    """`PYTHON_THREADPOOL_THREAD_COUNT`, or None for Python's default, min(32, CPUs + 4)."""
    configured = lookup_setting(settings, "PYTHON_THREADPOOL_THREAD_COUNT")
    if not configured:
        return None
    if not configured.isdigit() or not 1 <= int(configured) <= MAX_THREAD_COUNT:
        raise SettingsError(
            f"PYTHON_THREADPOOL_THREAD_COUNT must be between 1 and {MAX_THREAD_COUNT}, "
            f"got {configured!r}"
        )
    return int(configured)
