"""An app environment on the test Azurite, a Braze sandbox, and the local Functions host."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient
from azure.functions.queue import QueueMessage
from azure.storage.blob import ContentSettings

from devtools.processes import ROOT, Azurite, Sandbox, start_azurite, start_sandbox
from devtools.sample import demo_definitions
from shared.adapters.services import Services
from shared.adapters.settings import StorageSettings, load_settings
from shared.adapters.storage import Storage
from shared.core.messages import ChunkJob, ExportJob, PartitionJob, SplitJob
from shared.core.resource_names import CHUNKS_QUEUE, JOBS_QUEUE, RATE_TABLE
from shared.core.runs import Run
from shared.pipeline.deliver_chunk import deliver_chunk
from shared.pipeline.diff_partition import diff_partition
from shared.pipeline.plan_export import plan_run
from shared.pipeline.split_source import split_source
from shared.pipeline.start import start_run

SANDBOX_KEY = "test-sandbox-key"
BLOCKLISTED = "blocked-id-1"
SEGMENT_CONTAINER = "segments"


class App:
    """The exporter's settings and services as the host would see them, plus test helpers."""

    def __init__(self, env: dict[str, str], definitions_path: Path, sandbox: Sandbox) -> None:
        self.env = env
        self.definitions_path = definitions_path
        self.sandbox = sandbox
        self.services = Services(load_settings(env))
        self._requests_mark = 0

    def define(self, exports: list[dict[str, Any]], **connection: Any) -> None:
        document = {
            "connections": [
                {
                    "name": "sandbox",
                    "rest_endpoint": self.sandbox.url,
                    "api_key_secret": "braze-sandbox-key",
                    **connection,
                }
            ],
            "exports": exports,
        }
        self.definitions_path.write_text(json.dumps(document, ensure_ascii=False))

    def upload(
        self,
        path: str,
        data: bytes | Iterable[bytes],
        content_settings: ContentSettings | None = None,
    ) -> None:
        """Write a source blob; `data` may be a stream of pieces (a large file made as sent)."""
        blobs = self.services.storage.blobs
        with contextlib.suppress(ResourceExistsError):
            blobs.create_container(SEGMENT_CONTAINER)
        blob = blobs.get_blob_client(SEGMENT_CONTAINER, path)
        blob.upload_blob(data, overwrite=True, content_settings=content_settings)

    def wait_for_final(self, run_id: str, timeout: float = 180) -> Run:
        """Poll until the run is final; the deadline only bounds a hang, it asserts no speed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.services.runs.get(run_id)
            if run and run.is_final:
                return run
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} did not finish: {self.services.runs.get(run_id)}")

    def braze_users(self) -> dict[str, dict[str, Any]]:
        response = requests.get(f"{self.sandbox.url}/_sandbox/users", timeout=30)
        response.raise_for_status()
        users = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return {
            u["external_id"]: {"external_id": u["external_id"], **u["attributes"]} for u in users
        }

    def sandbox_requests(self) -> list[dict[str, Any]]:
        """Request bodies the sandbox received since it was reset or the last mark."""
        since = self._requests_total() - self._requests_mark
        if since <= 0:
            return []
        url = f"{self.sandbox.url}/_sandbox/requests?limit={since}"
        response = requests.get(url, timeout=30)
        response.raise_for_status()
        return [entry["body"] for entry in response.json()["requests"]]

    def mark_sandbox_requests(self) -> None:
        """From now on, `sandbox_requests` lists only newer requests (Braze state is kept)."""
        self._requests_mark = self._requests_total()

    def _requests_total(self) -> int:
        response = requests.get(f"{self.sandbox.url}/_sandbox/stats", timeout=10)
        response.raise_for_status()
        return int(response.json()["requests_total"])

    def set_sandbox_limits(self, **limits: Any) -> None:
        url = f"{self.sandbox.url}/_sandbox/limits"
        requests.put(url, json=limits, timeout=10).raise_for_status()

    def reset_sandbox(self) -> None:
        requests.post(f"{self.sandbox.url}/_sandbox/reset", timeout=10).raise_for_status()
        self._requests_mark = 0

    def blob_text(self, name: str) -> str:
        return self.services.storage.read_bytes("export-runs", name).decode("utf-8")

    def rejected(self, run: Run) -> list[dict[str, Any]]:
        """The run's rejected.jsonl entries (split at line feeds only: JSON keeps U+2028 as
        is); none when it has no such blob."""
        if not run.rejected_blob:
            return []
        text = self.blob_text(run.rejected_blob)
        return [json.loads(line) for line in text.split("\n") if line]


class OneAtATime:
    """For test doubles of the Braze client: `submit` runs `track` at once, in the caller's
    thread, so a double that counts its calls sees them in batch order."""

    max_in_flight = 1
    track: Callable[[Any], Any]

    def submit(self, objects: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(self.track(objects))
        except BaseException as error:  # a crash double raises SystemExit; the future keeps it
            future.set_exception(error)
        return future


def export_definition(name: str, path: str, segment: str, **overrides: Any) -> dict[str, Any]:
    """The demo mapping on another source file, with overrides."""
    export = demo_definitions("http://unused", SEGMENT_CONTAINER, path, segment)["exports"][0]
    export.update(name=name, **overrides)
    return export


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    running = start_sandbox(SANDBOX_KEY, "--blocklist", BLOCKLISTED)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def app_env(azurite: Azurite, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> App:
    definitions = tmp_path_factory.mktemp("app") / "exports.json"
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "EXPORT_DEFINITIONS_PATH": str(definitions),
        "BRAZE_SECRET_BRAZE_SANDBOX_KEY": SANDBOX_KEY,
        "EXPORT_ALLOW_LOOPBACK_ENDPOINTS": "true",  # the sandbox is on this machine
        # Poll fast so the suite is quick; correctness does not depend on it.
        "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.200",
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:00",
        "DEVHOST_BLOB_WATCH_SECONDS": "0.2",
    }
    app = App(env, definitions, sandbox)
    app.services.ensure_resources()
    return app


@dataclass
class LocalHost:
    """The running local host: its process, its HTTP base URL and everything it printed."""

    process: subprocess.Popen[str]
    url: str
    output: list[str]


@contextlib.contextmanager
def running_local_host(app_env: Mapping[str, str]) -> Iterator[LocalHost]:
    """`python -m devhost` running function_app.py's triggers with these app settings."""
    env = {k: v for k, v in os.environ.items() if k != "AzureWebJobsStorage"}
    env.update(app_env, PYTHONUNBUFFERED="1")
    host = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--app-dir", str(ROOT), "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output: list[str] = []
        url = ""
        assert host.stdout is not None
        for line in host.stdout:
            output.append(line)
            if line.startswith("devhost http listening on "):
                url = line.split()[-1]
            if line.strip() == "devhost ready":
                break
        else:
            raise RuntimeError("devhost did not start:\n" + "".join(output))
        threading.Thread(target=lambda: output.extend(host.stdout), daemon=True).start()  # type: ignore[arg-type]
        yield LocalHost(host, url, output)
    finally:
        host.terminate()
        host.wait(timeout=60)


@pytest.fixture(scope="session")
def local_host(app_env: App) -> Iterator[LocalHost]:
    """The local host against the test Azurite, for the whole session."""
    with running_local_host(app_env.env) as host:
        yield host


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    """Poll for an outcome; the deadline only bounds a hang, it asserts no speed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def own_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A storage account of in-process tests' own, which no local host listens to."""
    running = start_azurite(tmp_path_factory.mktemp("quiet-azurite"))
    yield running
    running.stop()


@pytest.fixture
def quiet_app(
    own_storage: Azurite, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> App:
    """Each test drives the functions itself, exactly as the host would call them, one at a
    time, so every step is deterministic."""
    definitions = tmp_path_factory.mktemp("quiet") / "exports.json"
    env = {
        "AzureWebJobsStorage": own_storage.connection_string,
        "EXPORT_DEFINITIONS_PATH": str(definitions),
        "BRAZE_SECRET_BRAZE_SANDBOX_KEY": SANDBOX_KEY,
        "EXPORT_ALLOW_LOOPBACK_ENDPOINTS": "true",  # the sandbox is on this machine
    }
    app = App(env, definitions, sandbox)
    app.services.ensure_resources()
    app.reset_sandbox()
    return app


SPLIT_MIB = 0.02  # about 20 KiB a range: a few thousand rows make a dozen ranges


@pytest.fixture
def split_app(quiet_app: App) -> App:
    """The in-process app with a tiny range size, so small files are cut into many ranges."""
    return App(
        {**quiet_app.env, "EXPORT_SPLIT_MIB": str(SPLIT_MIB)},
        quiet_app.definitions_path,
        quiet_app.sandbox,
    )


def take(app: App, queue_name: str, kind: type[Any], run_id: str) -> list[Any]:
    """Take this run's messages of `kind` off a queue; the others are left, visible again at
    once (the planning queue holds several kinds)."""
    queue = app.services.storage.queue(queue_name)
    jobs, left = [], []
    try:
        for message in queue.receive_messages(messages_per_page=32, visibility_timeout=30):
            if json.loads(message.content).get("kind") == kind.kind:
                job = kind.from_json(message.content)
                if job.run_id == run_id:
                    jobs.append(job)
                    _done_with(lambda m=message: queue.delete_message(m))
                    continue
            left.append(message)
    finally:
        for message in left:
            _done_with(lambda m=message: queue.update_message(m, visibility_timeout=0))
    return jobs


def _done_with(call: Callable[[], object]) -> None:
    """Delete a message or make it visible again, as the host does: one already gone or given a
    new pop receipt is done with. The SDK sends the request again after a dropped connection
    (Azurite now and then closes an idle keep-alive connection as the client reuses it), and a
    repeat of one that had landed finds the message so (a full test run failed on it once)."""
    try:
        call()
    except HttpResponseError as error:
        gone = isinstance(error, ResourceNotFoundError)
        if not (gone or error.error_code == "PopReceiptMismatch"):
            raise


def chunk_jobs(app: App, run_id: str) -> list[ChunkJob]:
    return sorted(take(app, CHUNKS_QUEUE, ChunkJob, run_id), key=lambda j: j.chunk_index)


def released_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs wait for the release to queue their delivery, as deltas do: for tests of the
    release's grouping and of what a run sends nothing for, on first exports (which otherwise
    deliver each partition once diffed, `release.delivers_while_diffing`)."""
    monkeypatch.setattr("shared.pipeline.split_source.delivers_while_diffing", lambda *_: False)


@pytest.fixture(scope="module")
def rate_table(azurite: Azurite) -> TableClient:
    """The rate governor's table on the test Azurite."""
    storage = Storage(StorageSettings(connection_string=azurite.connection_string))
    storage.ensure_resources()
    return storage.table(RATE_TABLE)


def split_in_process(app: App, run: Run) -> None:
    """Plan the run and split its ranges, as the planning functions would: its partition
    jobs are left on the queue."""
    plan_run(ExportJob(run.run_id, run.export_name), app.services)
    for split in take(app, JOBS_QUEUE, SplitJob, run.run_id):
        split_source(split, app.services)


def plan_in_process(app: App, run: Run) -> list[ChunkJob]:
    """Plan the run, split its ranges and diff its partitions, as the planning functions
    would; its chunks."""
    split_in_process(app, run)
    for job in take(app, JOBS_QUEUE, PartitionJob, run.run_id):
        diff_partition(job, app.services)
    return chunk_jobs(app, run.run_id)


@pytest.fixture
def triggers_on(quiet_app: App, monkeypatch: pytest.MonkeyPatch) -> App:
    """The queue triggers, called as the host calls them, on the quiet app's services."""
    monkeypatch.setattr("shared.adapters.services.app_services", lambda: quiet_app.services)
    return quiet_app


def opened(data: bytes) -> bytes:
    """A blob's bytes as a test that scans them must see them: every Zstandard frame in it (a
    chunk, a split's pieces and their matched records, a snapshot partition's ids and numbers)
    decompressed in place, the bytes around them as they are; a gzip blob (as an earlier
    version wrote chunks and pieces) decompressed. A frame that does not decode to its end (a
    damaged blob a test left in the shared storage, or the magic bytes by chance inside a
    digest) is kept as it is, and the search goes on after its first byte."""
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError):
            return gzip.decompress(data)
    out, rest = [], data
    while (at := rest.find(ZSTD_MAGIC)) >= 0:
        unpacker = zstandard.ZstdDecompressor().decompressobj()
        try:
            text = unpacker.decompress(rest[at:])
        except zstandard.ZstdError:
            text = b""
        if not unpacker.eof:
            out.append(rest[: at + 1])
            rest = rest[at + 1 :]
            continue
        out += [rest[:at], text]
        rest = unpacker.unused_data
    return b"".join([*out, rest])


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def queue_message(job: Any, dequeue_count: int = 1) -> QueueMessage:
    """A job as the host hands its queue message to a trigger, on its `dequeue_count`th try."""
    return QueueMessage(id="m", body=job.to_json().encode(), dequeue_count=dequeue_count)


def csv_bytes(rows: list[dict[str, str]], header: list[str]) -> bytes:
    """Rows as a CSV file as export tools write one: a BOM, CRLF line ends, values quoted
    where they hold quotes, commas or line breaks."""
    text = io.StringIO()
    writer = csv.DictWriter(text, header, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return ("\ufeff" + text.getvalue()).encode()


MESSY_HEADER = ["CustomerId", "Email", "FirstName", "LoyaltyPoints", "IsVip", "BirthDate", "Note"]
_MESSY_NOTES = ['says "hi", twice', "multi\nline, with comma", "Zoë 李 🎉", "\ufeffbom inside", ""]


def messy_row(n: int, prefix: str, mail: str = "example.com") -> dict[str, str]:
    """Row `n` of `MESSY_HEADER`, with quotes, commas, line breaks, a BOM and emoji in values."""
    return {
        "CustomerId": f"{prefix}-{n:05d}",
        "Email": f"user.{n}@{mail}",
        "FirstName": ["Zoë", "O'Brien", "José, Jr.", 'Ann "the" Great'][n % 4],
        "LoyaltyPoints": str(n * 7),
        "IsVip": ["true", "false"][n % 2],
        "BirthDate": f"19{50 + n % 50}-0{1 + n % 9}-1{n % 10}",
        "Note": _MESSY_NOTES[n % len(_MESSY_NOTES)],
    }


def messy_rows(count: int, prefix: str, mail: str = "example.com") -> list[dict[str, str]]:
    """`count` messy rows (`messy_row`); every 50th has an invalid email, and one more row
    repeats the second's id."""
    rows = [messy_row(n, prefix, mail) for n in range(count)]
    for row in rows[::50]:
        row["Email"] = "not-an-email"
    return [*rows, {**rows[1], "Email": "dupe@example.com"}]


@pytest.fixture
def small_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several partitions for a few thousand rows, as a large file has."""
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 16 * 1024)


def run_counts(run: Run) -> dict[str, int]:
    """A run's row and profile counts, to compare two ways of running the same segment."""
    keys = ("rows_read", "rows_valid", "rows_rejected", "profiles_new", "profiles_changed")
    keys += ("profiles_unchanged", "profiles_removed", "profiles_accepted")
    return {key: getattr(run, key) for key in keys}


def run_in_process(app: App, export_name: str, **options: Any) -> Run:
    """Start a run and carry it through every stage in this process; the final run."""
    run = start_run(app.services, export_name, "test", **options).run
    take(app, JOBS_QUEUE, ExportJob, run.run_id)
    for job in plan_in_process(app, run):
        deliver_chunk(job, app.services)
    final = app.services.runs.get(run.run_id)
    assert final is not None and final.is_final, final
    return final


@pytest.fixture
def app(app_env: App, local_host: LocalHost) -> Iterator[App]:
    app_env.reset_sandbox()
    yield app_env
