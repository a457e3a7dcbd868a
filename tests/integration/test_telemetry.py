"""Telemetry: the job context on log lines, the metrics a real run records, and what reaches
Application Insights over the wire when its connection string is set (a local ingestion
endpoint stands in for Azure Monitor's: the real exporter posts to it)."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from devtools.processes import Azurite, start_azurite
from devtools.sample import make_segment
from shared.adapters import telemetry
from shared.adapters.storage import Storage
from shared.core.messages import ChunkJob, PartitionJob
from shared.core.report import RUN_ENDED
from shared.core.runs import Status
from tests.integration.conftest import (
    BLOCKLISTED,
    SANDBOX_KEY,
    App,
    export_definition,
    run_in_process,
    running_local_host,
    wait_for,
)
from tests.local_server import serving

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("shared.test_telemetry")


def test_lines_logged_for_a_job_carry_its_run_export_and_chunk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = ChunkJob("vip-20261204T000000Z-abc", "vip", 7, ["runs/x/chunks/7.jsonl"], 10, [3])
    with caplog.at_level(logging.INFO):
        with telemetry.job_context(job):
            log.info("on the function's thread")
            Storage.in_parallel([lambda: log.info("on a storage thread")])
        log.info("after the job")

    stamped = {r.getMessage(): (r.run_id, r.export_name, r.chunk) for r in caplog.records}
    expected = ("vip-20261204T000000Z-abc", "vip", "chunk 7")
    assert stamped["on the function's thread"] == expected
    assert stamped["on a storage thread"] == expected
    assert stamped["after the job"] == ("-", "-", "-")


def test_a_partition_job_names_its_partition(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), telemetry.job_context(PartitionJob("r-1", "e", 12, 32)):
        log.info("diffing")
    assert caplog.records[-1].chunk == "partition 12"
    with caplog.at_level(logging.INFO), telemetry.job_context(PartitionJob("r-1", "e", 12, 32, 4)):
        log.info("diffing a delta's")
    assert caplog.records[-1].chunk == "partitions 12-15"


def test_a_connection_string_that_cannot_be_used_turns_telemetry_off_not_the_app() -> None:
    """In a fresh process (configuring OpenTelemetry is once per process)."""
    script = (
        "from shared.adapters import telemetry\n"
        "env = {'APPLICATIONINSIGHTS_CONNECTION_STRING': 'InstrumentationKey=not-a-key'}\n"
        "print(telemetry.configure(env), telemetry.metrics())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "None"]
    assert "telemetry is off: APPLICATIONINSIGHTS_CONNECTION_STRING could not be used" in (
        done.stderr
    )


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    telemetry.use_meter_provider(MeterProvider(metric_readers=[reader]))
    yield reader
    telemetry.use_meter_provider(None)


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def test_a_run_records_its_counts_latencies_and_duration(
    quiet_app: App, reader: InMemoryMetricReader
) -> None:
    sample = make_segment(300, invalid_every=29, id_prefix="otel")
    rows = sample.data.decode().splitlines()
    rows[5] = f"{BLOCKLISTED}," + rows[5].split(",", 1)[1]  # Braze rejects this one
    quiet_app.upload("otel/seg.csv", ("\n".join(rows) + "\n").encode())
    quiet_app.define([export_definition("otel", "otel/seg.csv", "Telemetry")])

    run = run_in_process(quiet_app, "otel")

    assert run.status == Status.PARTIALLY_SUCCEEDED and run.profiles_rejected_by_braze == 1
    points = _points(reader)
    (sent,) = points["exporter.profiles_sent"]
    assert sent.value == run.profiles_accepted and dict(sent.attributes) == {"export": "otel"}
    rejected = {p.attributes["stage"]: p.value for p in points["exporter.profiles_rejected"]}
    assert rejected == {"validation": run.rows_rejected, "braze": 1}
    (latency,) = points["exporter.braze_request_latency"]
    assert latency.count == run.requests_sent and latency.attributes["status_class"] == "2xx"
    (duration,) = points["exporter.run_duration"]
    assert duration.count == 1 and duration.attributes["status"] == "partially_succeeded"
    assert "exporter.braze_rate_limited" not in points  # no 429 in this run


# --- Application Insights over the wire -------------------------------------------------------


class _Ingestion(BaseHTTPRequestHandler):
    """Azure Monitor's ingestion endpoint, as the exporter speaks to it (`POST /v2.1/track`,
    a JSON array of envelopes, possibly gzipped)."""

    envelopes: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        batch = json.loads(body)
        batch = batch if isinstance(batch, list) else [batch]
        self.server.envelopes.extend(batch)  # type: ignore[attr-defined]
        answer = json.dumps(
            {"itemsReceived": len(batch), "itemsAccepted": len(batch), "errors": []}
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def ingestion() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ingestion)
    server.envelopes = []  # type: ignore[attr-defined]
    with serving(server):
        yield server


@pytest.fixture
def telemetry_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    running = start_azurite(tmp_path_factory.mktemp("otel-azurite"))
    yield running
    running.stop()


def test_with_a_connection_string_logs_and_metrics_reach_application_insights(
    sandbox: Any,
    telemetry_storage: Azurite,
    ingestion: ThreadingHTTPServer,
    tmp_path: Path,
) -> None:
    port = ingestion.server_address[1]
    definitions = tmp_path / "exports.json"
    env = {
        "AzureWebJobsStorage": telemetry_storage.connection_string,
        "EXPORT_DEFINITIONS_PATH": str(definitions),
        "BRAZE_SECRET_BRAZE_SANDBOX_KEY": SANDBOX_KEY,
        "EXPORT_ALLOW_LOOPBACK_ENDPOINTS": "true",
        "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.200",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": (
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
            f"IngestionEndpoint=http://127.0.0.1:{port}/"
        ),
        # Nothing may leave the machine: no usage statistics to Microsoft's endpoints.
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        # The exporter keeps unsent telemetry in a folder under the temporary directory, named
        # by a hash that includes the working directory: one more folder in /tmp per checkout
        # the suite runs in (each fresh clone), never removed. The test's own folder is.
        "TMPDIR": str(tmp_path),
    }
    app = App(env, definitions, sandbox)
    app.services.ensure_resources()
    app.reset_sandbox()
    sample = make_segment(120, invalid_every=40, id_prefix="wire")
    app.upload("wire/seg.csv", sample.data)
    app.define([export_definition("wire", "wire/seg.csv", "Wire")])
    with running_local_host(env) as host:
        started = requests.post(f"{host.url}/api/exports/wire/runs", timeout=30).json()
        run = app.wait_for_final(started["run_id"])
        assert run.status == Status.PARTIALLY_SUCCEEDED

        envelopes: list[dict[str, Any]] = ingestion.envelopes  # type: ignore[attr-defined]

        def ended() -> list[dict[str, Any]]:
            return [
                e["data"]["baseData"]
                for e in list(envelopes)
                if e["data"]["baseType"] == "MessageData"
                and e["data"]["baseData"]["message"].startswith(f"{RUN_ENDED}: status=")
            ]

        (line,) = wait_for(ended, "the run-end log line in Application Insights")
        assert run.run_id in line["message"]
        assert line["severityLevel"] == 2  # Warning, in Application Insights' numbering

        def sent() -> list[dict[str, Any]]:
            return [
                (metric, e["data"]["baseData"].get("properties", {}))
                for e in list(envelopes)
                if e["data"]["baseType"] == "MetricData"
                for metric in e["data"]["baseData"]["metrics"]
                if metric["name"] == "exporter.profiles_sent"
            ]

        metric, properties = wait_for(sent, "exporter.profiles_sent in Application Insights")[0]
        assert metric["value"] == run.profiles_accepted == len(sample.expected)
        assert properties["export"] == "wire"
        stamped = [
            e["data"]["baseData"]["properties"]
            for e in list(envelopes)
            if e["data"]["baseType"] == "MessageData"
            and e["data"]["baseData"].get("properties", {}).get("run_id") == run.run_id
        ]
        assert stamped and all(p["export_name"] == "wire" for p in stamped)
        # Only the exporter's telemetry: no request spans, no dependency calls.
        kinds = {e["data"]["baseType"] for e in list(envelopes)}
        assert kinds <= {"MessageData", "MetricData", "ExceptionData"}, kinds
