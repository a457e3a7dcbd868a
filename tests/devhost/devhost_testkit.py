"""Test kit for devhost: a throwaway v2 app that records what its functions receive.

The recording function writes one file per attempt (`<message id>.<dequeue count>.started.json`,
plus `.done.json` when it succeeds) and obeys instructions in a JSON body: `{"fail_attempts": n}`
fails the first n attempts, `{"fail_attempts": "always"}` always fails, `{"hold": true}` waits
for a `release/<message id>` (or `release/all`) file. While running it keeps a marker in
`inflight/`, and records how many markers it saw, which measures concurrency without timing.
Functions that tests add call `record_call(name, **details)`, one file per invocation, read
back with `RecordingApp.calls(name)`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

T = TypeVar("T")


class Azurite(Protocol):
    """The session's Azurite, from tests/conftest.py."""

    @property
    def connection_string(self) -> str: ...


FUNCTION_APP = """\
import azure.functions as func

from recording_blueprint import bp

app = func.FunctionApp()
app.register_functions(bp)
"""

RECORDING_BLUEPRINT = '''\
"""Functions for devhost tests: a recording queue trigger, and triggers devhost does not serve."""

import json
import os
import pathlib
import time

import azure.functions as func

bp = func.Blueprint()
HOLD_LIMIT_SECONDS = 120


@bp.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
def record_work(msg: func.QueueMessage) -> None:
    records = pathlib.Path(os.environ["RECORD_DIR"])
    body = msg.get_body().decode("utf-8")
    try:
        instructions = json.loads(body)
    except ValueError:
        instructions = {}
    if not isinstance(instructions, dict):
        instructions = {}
    marker = records / "inflight" / msg.id
    marker.touch()
    try:
        attempt = {
            "id": msg.id,
            "body": body,
            "dequeue_count": msg.dequeue_count,
            "concurrent": len(list(marker.parent.iterdir())),
        }
        name = f"{msg.id}.{msg.dequeue_count}"
        _write_whole(records / f"{name}.started.json", attempt)
        if instructions.get("hold"):
            _wait_for_release(records / "release", msg.id)
        fail_attempts = instructions.get("fail_attempts", 0)
        if fail_attempts == "always" or msg.dequeue_count <= fail_attempts:
            raise RuntimeError(f"failing attempt {msg.dequeue_count} on purpose")
        _write_whole(records / f"{name}.done.json", attempt)
    finally:
        marker.unlink()


def record_call(function_name: str, **details) -> None:
    """One file per invocation, for tests that count invocations of timers, blobs and HTTP."""
    calls = pathlib.Path(os.environ["RECORD_DIR"]) / "calls"
    calls.mkdir(exist_ok=True)
    record = {"function": function_name, "pid": os.getpid(), "at": time.time_ns(), **details}
    _write_whole(calls / f"{function_name}.{os.getpid()}.{time.time_ns()}.json", record)


def _write_whole(path: pathlib.Path, record: dict) -> None:
    """Write then rename, so a reader never sees a half-written record."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def _wait_for_release(releases: pathlib.Path, message_id: str) -> None:
    give_up_at = time.monotonic() + HOLD_LIMIT_SECONDS
    while not ((releases / message_id).exists() or (releases / "all").exists()):
        if time.monotonic() > give_up_at:
            raise TimeoutError("nobody released this message")
        time.sleep(0.02)


@bp.timer_trigger(arg_name="timer", schedule="0 */5 * * * *", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    pass


@bp.route(route="ping")
def ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("pong")
'''

FAST_POLLING = {"maxPollingInterval": "00:00:00.200", "visibilityTimeout": "00:00:00"}


@dataclass(frozen=True)
class RecordingApp:
    """Where a throwaway app lives and what it recorded."""

    app_dir: Path
    records: Path

    def attempts(self) -> list[dict[str, Any]]:
        """Every attempt started, by message id then dequeue count."""
        return self._read("*.started.json")

    def successes(self) -> list[dict[str, Any]]:
        return self._read("*.done.json")

    def in_flight(self) -> list[str]:
        """Ids of messages whose invocation is running right now."""
        return sorted(path.name for path in (self.records / "inflight").iterdir())

    def release(self, message_id: str = "all") -> None:
        (self.records / "release" / message_id).touch()

    def calls(self, function_name: str) -> list[dict[str, Any]]:
        """What `record_call` recorded for a function, oldest first."""
        calls = self.records / "calls"
        found = [json.loads(path.read_text()) for path in calls.glob(f"{function_name}.*.json")]
        return sorted(found, key=lambda call: call["at"])

    def _read(self, pattern: str) -> list[dict[str, Any]]:
        attempts = [json.loads(path.read_text()) for path in self.records.glob(pattern)]
        return sorted(attempts, key=lambda attempt: (attempt["id"], attempt["dequeue_count"]))


def write_app(directory: Path, queues: dict[str, Any], extra_functions: str = "") -> RecordingApp:
    """A v2 app (function_app.py, a blueprint module, host.json) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "function_app.py").write_text(FUNCTION_APP)
    (directory / "recording_blueprint.py").write_text(RECORDING_BLUEPRINT + extra_functions)
    host_json = {"version": "2.0", "extensions": {"queues": queues}}
    (directory / "host.json").write_text(json.dumps(host_json, indent=2))
    records = directory / "records"
    for subdirectory in ("inflight", "release"):
        (records / subdirectory).mkdir(parents=True)
    return RecordingApp(directory, records)


def host_env(azurite: Azurite, app: RecordingApp, work_queue: str, **extra: str) -> dict[str, str]:
    """The app settings the recording app needs."""
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "WORK_QUEUE": work_queue,
        "RECORD_DIR": str(app.records),
        **extra,
    }


def queue_client(azurite: Azurite, name: str, *, base64: bool = True) -> QueueClient:
    """A client for a test queue, encoding like the host expects by default."""
    if base64:
        return QueueClient.from_connection_string(
            azurite.connection_string,
            name,
            message_encode_policy=TextBase64EncodePolicy(),
            message_decode_policy=TextBase64DecodePolicy(),
        )
    return QueueClient.from_connection_string(azurite.connection_string, name)


def message_count(queue: QueueClient) -> int:
    """Messages in a queue, visible or not; a queue that does not exist holds none."""
    try:
        return queue.get_queue_properties().approximate_message_count
    except ResourceNotFoundError:
        return 0


def wait_until(condition: Callable[[], T], description: str, timeout: float = 60.0) -> T:
    """Poll until `condition` returns something truthy; the deadline is only a safety net."""
    give_up_at = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > give_up_at:
            raise AssertionError(f"gave up after {timeout}s waiting until {description}")
        time.sleep(0.05)
