"""Issue #5, "Nothing lost under faults": one export through several local hosts while the Braze
sandbox misbehaves and a worker is killed, then everything that must hold is checked.

The run happens once per module (the `faulted` fixture); each test checks one promise, so a
failure names the promise that broke. Nothing waits for a fixed time: the kill waits for
progress, the end waits for the run's final status, and the deadlines only bound a hang.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.processes import Azurite, Sandbox
from shared.core.runs import Run, Status
from shared.pipeline.start import start_run
from tests.faults.conftest import SANDBOX_KEY
from tests.faults.segment import (
    MEMBERSHIP_ATTRIBUTE,
    Segment,
    expected_outcome,
    export_definition,
    make_segment,
)
from tests.faults.workers import Worker, queue_functions, start_workers
from tests.integration.conftest import SEGMENT_CONTAINER, App

# --- knobs ------------------------------------------------------------------------------------
PROFILES = 20_000  # rows in the segment file, about 2.7% of them invalid
WORKERS = 4  # local hosts sharing the storage account
SEED = 5  # of the segment's data and of the sandbox's fault RNG
CHUNK_SIZE = 500
OBJECTS_PER_REQUEST = 25  # below Braze's 75, so the faults meet several hundred requests
RATE_LIMIT_REQUESTS = 150  # per window, on the sandbox and in the connection's definition
RATE_LIMIT_WINDOW_SECONDS = 3
FAULTS = {
    "fault_5xx": 0.10,
    "fault_429_burst": 0.01,
    "fault_429_burst_seconds": 1.0,
    "fault_drop": 0.02,
    "fault_drop_after_apply": 0.5,  # of the dropped requests, half are applied first
    "latency_ms": 20,
    "latency_jitter_ms": 60,
    "seed": SEED,
}
KILL_AFTER_SHARE = 0.3  # SIGKILL a busy worker once Braze has applied this share of profiles
MESSAGE_LEASE_SECONDS = 10  # how long a killed worker's messages stay invisible
RUN_TIMEOUT_SECONDS = 900  # bounds a hang only
# ----------------------------------------------------------------------------------------------

EXPORT = "faults"
SEGMENT = 'Faults – Zoë\'s "best", 🎯'
SOURCE_PATH = "faults/segment.csv"
USER_AGENT = re.compile(r"^braze-segment-exporter/\S+ \(.+\)$")


@dataclass(frozen=True)
class Kill:
    """What was true when a worker was killed."""

    worker: str
    deliveries_in_flight: int
    exit_status: int
    run_final_after: bool


@dataclass(frozen=True)
class Evidence:
    """Everything the tests check, gathered once the run is final."""

    segment: Segment
    expected: dict[str, dict[str, Any]]
    rejected: dict[int, str]
    run: Run
    kill: Kill
    users: dict[str, dict[str, Any]]
    stats: dict[str, Any]
    sent: list[dict[str, Any]]
    rejected_entries: list[dict[str, Any]]
    report: dict[str, Any]


@pytest.fixture(scope="module")
def faulted(
    fault_storage: Azurite, fault_sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Evidence:
    work = tmp_path_factory.mktemp("faults")
    segment = make_segment(PROFILES, seed=SEED)
    expected, rejected = expected_outcome(segment.rows, SEGMENT)
    app = _app(fault_storage, fault_sandbox, work)
    app.upload(SOURCE_PATH, segment.data)
    export = export_definition(EXPORT, SEGMENT_CONTAINER, SOURCE_PATH, SEGMENT)
    app.define(
        [{**export, "chunk_size": CHUNK_SIZE}],
        objects_per_request=OBJECTS_PER_REQUEST,
        rate_limit_requests=RATE_LIMIT_REQUESTS,
        rate_limit_window_seconds=RATE_LIMIT_WINDOW_SECONDS,
    )
    _configure(
        fault_sandbox,
        "limits",
        rate_limit=RATE_LIMIT_REQUESTS,
        rate_window_seconds=RATE_LIMIT_WINDOW_SECONDS,
    )
    _configure(fault_sandbox, "faults", **FAULTS)
    functions = queue_functions()
    names = [f"fault-worker-{i}" for i in range(1, WORKERS + 1)]
    workers = start_workers(names, app.env, work, functions, MESSAGE_LEASE_SECONDS)
    try:
        run_id = start_run(app.services, EXPORT, "test").run.run_id
        kill = _kill_a_busy_worker(app, run_id, workers, len(expected))
        workers += start_workers(
            [f"fault-worker-{WORKERS + 1}"], app.env, work, functions, MESSAGE_LEASE_SECONDS
        )
        run = app.wait_for_final(run_id, timeout=RUN_TIMEOUT_SECONDS)
        evidence = Evidence(
            segment=segment,
            expected=expected,
            rejected=rejected,
            run=run,
            kill=kill,
            users=app.braze_users(),
            stats=requests.get(f"{fault_sandbox.url}/_sandbox/stats", timeout=30).json(),
            sent=app.sandbox_requests(),
            rejected_entries=_json_lines(app, run.rejected_blob),
            report=json.loads(app.blob_text(run.report_blob)) if run.report_blob else {},
        )
    finally:
        for worker in workers:
            worker.stop()
    return evidence


def _app(storage: Azurite, sandbox: Sandbox, work: Path) -> App:
    env = {
        "AzureWebJobsStorage": storage.connection_string,
        "EXPORT_DEFINITIONS_PATH": str(work / "exports.json"),
        "BRAZE_SECRET_BRAZE_SANDBOX_KEY": SANDBOX_KEY,
        "EXPORT_ALLOW_LOOPBACK_ENDPOINTS": "true",  # the sandbox is on this machine
        # Poll fast and retry a failed message at once, so the suite is quick; nothing
        # asserted depends on either.
        "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.200",
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:00",
    }
    app = App(env, work / "exports.json", sandbox)
    app.services.ensure_resources()
    return app


def _configure(sandbox: Sandbox, what: str, **options: Any) -> None:
    requests.put(f"{sandbox.url}/_sandbox/{what}", json=options, timeout=10).raise_for_status()


def _kill_a_busy_worker(app: App, run_id: str, workers: list[Worker], profiles: int) -> Kill:
    """Once a share of the profiles is in Braze, SIGKILL a worker that is delivering chunks."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        applied = requests.get(f"{app.sandbox.url}/_sandbox/stats", timeout=10).json()[
            "objects_applied"
        ]
        busiest = max(workers, key=Worker.deliveries_in_flight)
        in_flight = busiest.deliveries_in_flight()
        run = app.services.runs.get(run_id)
        progressed = applied >= KILL_AFTER_SHARE * profiles and in_flight > 0
        if progressed or (run is not None and run.is_final) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    exit_status = busiest.kill()
    after = app.services.runs.get(run_id)
    return Kill(busiest.name, in_flight, exit_status, after is None or after.is_final)


def _json_lines(app: App, blob: str) -> list[dict[str, Any]]:
    if not blob:
        return []
    return [json.loads(line) for line in app.blob_text(blob).splitlines() if line.strip()]


def _examples(items: Any, limit: int = 5) -> str:
    listed = list(items)
    return f"{len(listed)}, e.g. {listed[:limit]!r}"


# --- the promises -----------------------------------------------------------------------------


def test_the_run_met_every_fault_and_lost_a_busy_worker_mid_run(faulted: Evidence) -> None:
    """Guards the others: they prove little unless the faults and the kill really happened."""
    kill = faulted.kill
    assert kill.exit_status == -signal.SIGKILL
    assert kill.deliveries_in_flight > 0
    assert not kill.run_final_after, "the run was over before the kill"
    injected = faulted.stats["faults_injected"]
    assert sum(injected.get(status, 0) for status in ("500", "502", "503", "504")) > 0
    for kind in ("429", "drop", "drop_after_apply"):
        assert injected.get(kind, 0) > 0, injected


def test_braze_holds_exactly_the_expected_profiles(faulted: Evidence) -> None:
    users, expected = faulted.users, faulted.expected
    missing = sorted(expected.keys() - users.keys())
    extra = sorted(users.keys() - expected.keys())
    wrong = {
        external_id: {"braze": users[external_id], "expected": profile}
        for external_id, profile in expected.items()
        if external_id in users and users[external_id] != profile
    }
    assert not missing, f"missing in Braze: {_examples(missing)}"
    assert not extra, f"in Braze but not expected: {_examples(extra)}"
    assert not wrong, f"wrong attributes or membership: {_examples(wrong.items(), 3)}"


def test_every_invalid_row_is_reported_with_its_reason(faulted: Evidence) -> None:
    entries = faulted.rejected_entries
    by_line = {entry["line"]: entry for entry in entries}
    assert len(by_line) == len(entries), "a line is reported twice"
    assert {line: entry["codes"] for line, entry in by_line.items()} == {
        line: [code] for line, code in faulted.rejected.items()
    }
    for entry in entries:
        assert entry["stage"] == "validation" and entry["reasons"], entry


def test_no_invalid_row_reached_braze(faulted: Evidence) -> None:
    """Every object the sandbox received, faulted or not, is a valid row's own profile."""
    assert len(faulted.sent) == faulted.stats["requests_total"], "the request log is incomplete"
    expected, membership = faulted.expected, {"add": [SEGMENT]}
    strays = []
    for body in faulted.sent:
        for obj in body.get("attributes", []):
            profile = expected.get(obj.get("external_id"))
            if profile is None or any(
                value != (membership if key == MEMBERSHIP_ATTRIBUTE else profile.get(key))
                for key, value in obj.items()
            ):
                strays.append(obj)
    assert not strays, f"objects that are no valid row's profile: {_examples(strays, 3)}"


def test_no_window_went_over_the_budget(faulted: Evidence) -> None:
    rate = faulted.stats["rate_limit"]
    assert rate["windows_over_budget"] == 0, rate["per_key"]


def test_every_worker_names_its_instance_in_its_user_agent(faulted: Evidence) -> None:
    """The per-client accounting below is only as fine as the clients can be told apart."""
    clients = faulted.stats["rate_limit"]["per_client"]
    assert all(USER_AGENT.match(client) for client in clients), sorted(clients)


def test_no_request_was_sent_before_a_reset_its_client_was_told(faulted: Evidence) -> None:
    """A worker is one client (its User-Agent), each of its threads with a connection of its
    own, and a 429 holds all of them until its reset. Two structural bounds, no time bound:

    - on the connection a 429 came back on, nothing arrives before its reset: that thread read
      the 429 before it could send again there, so it never sends past a 429 it read;
    - on each of the worker's other connections, at most one request arrives before the reset
      of any one 429: the one that thread already had on the wire (or past its limiter) when
      the 429 landed. A second one would have followed an answer to the first.
    """
    rate = faulted.stats["rate_limit"]
    assert rate["requests_before_told_reset"] == 0, rate["per_client"]
    assert rate["max_in_flight_per_connection_per_429"] <= 1, rate["per_client"]


def test_the_counts_add_up_and_the_status_is_right(faulted: Evidence) -> None:
    run, valid = faulted.run, len(faulted.expected)
    assert run.status == Status.PARTIALLY_SUCCEEDED, run.message
    counts = (run.rows_read, run.rows_valid, run.rows_rejected)
    assert counts == (len(faulted.segment.rows), valid, len(faulted.rejected))
    assert (run.profiles_accepted, run.profiles_rejected_by_braze) == (valid, 0)
    assert run.rejections == dict(Counter(faulted.rejected.values()))
    assert math.ceil(valid / OBJECTS_PER_REQUEST) <= run.requests_sent
    assert run.requests_sent <= faulted.stats["requests_total"]
    report = faulted.report
    assert report["status"] == run.status
    assert report["counts"]["rows_read"] == run.rows_read
    assert report["counts"]["profiles_accepted_by_braze"] == run.profiles_accepted
    assert report["rejections_by_reason"] == run.rejections
