"""The HTTP API, independent of the Functions host: request parts in, status and JSON out.

Errors are JSON `{"error": code, "message": text}`. Names are checked against the same strict
patterns as the definitions before they reach a storage key or blob path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from shared.adapters.services import Services
from shared.core.definitions import Export, UnknownExport, is_valid_name
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import ExportBusy, Run, utcnow
from shared.core.schedule import next_slot
from shared.pipeline.replay import NotReplayable, replay_run
from shared.pipeline.start import start_run

MAX_BODY_BYTES = 16 * 1024
MAX_LIMIT = 100
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,100}$")
START_OPTIONS = {"full_refresh", "dry_run", "override_safety_valves"}
TEARDOWN_OPTIONS = {"dry_run", "override_safety_valves"}


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> str:
        return json.dumps(self.body, ensure_ascii=False)


def _error(status: int, code: str, message: str) -> ApiResponse:
    return ApiResponse(status, {"error": code, "message": message})


def start_export_run(services: Services, name: str, body: bytes) -> ApiResponse:
    """POST /api/exports/{name}/runs: 202 with the queued run and a Location to follow it."""
    return _start(services, name, body, START_OPTIONS, "http")


def start_teardown(services: Services, name: str, body: bytes) -> ApiResponse:
    """POST /api/exports/{name}/teardown: remove the export's membership from everyone in its
    snapshot, as a run (202, like any start)."""
    return _start(services, name, body, TEARDOWN_OPTIONS, "teardown", teardown=True)


def _start(
    services: Services,
    name: str,
    body: bytes,
    allowed: set[str],
    trigger: str,
    teardown: bool = False,
) -> ApiResponse:
    if not is_valid_name(name):
        return _error(400, "invalid_name", f"'{name[:80]}' is not a valid export name")
    if len(body) > MAX_BODY_BYTES:
        return _error(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    options, problem = _start_options(body, allowed)
    if problem:
        return _error(400, "invalid_body", problem)
    try:
        started = start_run(services, name, trigger, teardown=teardown, **options)
    except UnknownExport:
        return _error(404, "export_not_found", f"no export named '{name}'")
    except ExportBusy as busy:
        response = _error(409, "export_busy", f"{busy}; one run per export at a time")
        response.body["active_run"] = {
            "run_id": busy.run_id,
            "status": busy.status,
            "links": {"self": f"/api/runs/{busy.run_id}"},
        }
        return response
    location = f"/api/runs/{started.run.run_id}"
    return ApiResponse(202, _run_links(services, started.run), {"Location": location})


def get_run(services: Services, run_id: str) -> ApiResponse:
    """GET /api/runs/{run_id}."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        return _error(400, "invalid_run_id", f"'{run_id[:80]}' is not a valid run id")
    run = services.runs.get(run_id)
    if run is None:
        return _error(404, "run_not_found", f"no run '{run_id}'")
    return ApiResponse(200, _run_links(services, run))


def replay(services: Services, run_id: str) -> ApiResponse:
    """POST /api/runs/{run_id}/replay: send the run's rejected deliveries again (202)."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        return _error(400, "invalid_run_id", f"'{run_id[:80]}' is not a valid run id")
    try:
        run = replay_run(services, run_id)
    except LookupError:
        return _error(404, "run_not_found", f"no run '{run_id}'")
    except NotReplayable as error:
        return _error(409, "not_replayable", str(error))
    return ApiResponse(202, _run_links(services, run), {"Location": f"/api/runs/{run_id}"})


def list_exports(services: Services) -> ApiResponse:
    """GET /api/exports: every export with its schedule, last run and next due time."""
    now = utcnow()
    exports = []
    for export in services.definitions().exports:
        latest_id = services.runs.latest_run_id(export.name)
        latest = services.runs.get(latest_id) if latest_id else None
        exports.append(_describe_export(export, latest, now))
    return ApiResponse(200, {"exports": exports})


def list_export_runs(services: Services, name: str, limit_text: str | None) -> ApiResponse:
    """GET /api/exports/{name}/runs?limit=N: newest first."""
    if not is_valid_name(name):
        return _error(400, "invalid_name", f"'{name[:80]}' is not a valid export name")
    try:
        limit = int(limit_text) if limit_text is not None else 20
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return _error(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    try:
        services.definitions().export(name)
    except UnknownExport:
        return _error(404, "export_not_found", f"no export named '{name}'")
    runs = services.runs.list_runs(name, limit)
    return ApiResponse(200, {"export": name, "runs": [_run_links(services, r) for r in runs]})


def _start_options(body: bytes, allowed: set[str]) -> tuple[dict[str, bool], str | None]:
    if not body.strip():
        return {}, None
    try:
        data = json.loads(body)
    except ValueError as error:
        return {}, f"the body is not JSON: {error}"
    if not isinstance(data, dict):
        return {}, "the body must be a JSON object"
    unknown = sorted(set(data) - allowed)
    if unknown:
        return {}, f"unknown option(s) {unknown}; allowed: {sorted(allowed)}"
    wrong = sorted(k for k, v in data.items() if not isinstance(v, bool))
    if wrong:
        return {}, f"option(s) {wrong} must be true or false"
    return data, None


def _run_links(services: Services, run: Run) -> dict[str, Any]:
    data = run.public()
    base = services.storage.container(RUNS_CONTAINER).url.rstrip("/")
    data["links"] = {
        "self": f"/api/runs/{run.run_id}",
        "report": f"{base}/{run.report_blob}" if run.report_blob else None,
        "rejected_rows": f"{base}/{run.rejected_blob}" if run.rejected_blob else None,
        "dry_run_requests": f"{base}/{run.dry_run_blob}" if run.dry_run_blob else None,
    }
    return data


def _describe_export(export: Export, latest: Run | None, now: Any) -> dict[str, Any]:
    return {
        "name": export.name,
        "segment": export.segment,
        "connection": export.connection,
        "source": f"{export.source.container}/{export.source.path}",
        "schedule": export.schedule,
        "next_due": next_slot(export.schedule, now).isoformat() if export.schedule else None,
        "drop": export.drop.model_dump() if export.drop else None,
        "last_run": (
            {
                "run_id": latest.run_id,
                "status": latest.status,
                "trigger": latest.trigger,
                "created_at": latest.created_at.isoformat(),
                "finished_at": latest.finished_at.isoformat() if latest.finished_at else None,
            }
            if latest
            else None
        ),
    }
