"""The HTTP API, independent of the Functions host: request parts in, status and JSON out.

Errors are JSON `{"error": code, "message": text}`. Who is asking is checked first (with
EXPORT_API_AUTH=entra; see shared/core/access.py), then names against the same strict patterns
as the definitions, before they reach a storage key or blob path. A message quotes at most
ECHO_CHARS characters of what the caller sent, and an unexpected error is a 500 naming only a
correlation id.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec

from shared.adapters.services import Services
from shared.core.access import ADMIN, READ, RUN, authorize
from shared.core.definitions import Connection, Export, UnknownExport, is_valid_name
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import ExportBusy, Run, utcnow
from shared.core.schedule import next_slot
from shared.pipeline.replay import NotReplayable, replay_run
from shared.pipeline.start import start_run

MAX_BODY_BYTES = 16 * 1024
MAX_LIMIT = 100
ECHO_CHARS = 80  # the most of any one name or key a message quotes back
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,100}$")
START_OPTIONS = {"full_refresh", "dry_run", "override_safety_valves"}
TEARDOWN_OPTIONS = {"dry_run", "override_safety_valves"}

log = logging.getLogger(__name__)
P = ParamSpec("P")


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> str:
        return json.dumps(self.body, ensure_ascii=False)


def _error(status: int, code: str, message: str) -> ApiResponse:
    return ApiResponse(status, {"error": code, "message": message})


def _guarded(handler: Callable[P, ApiResponse]) -> Callable[P, ApiResponse]:
    """Turn an unexpected error into a 500 that names a correlation id, logged with the error.

    Left to the host, the caller would get an empty 500 and no way to point at the cause; an
    exception's text (hosts, paths, values) is for the log, not for the caller.
    """

    @functools.wraps(handler)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> ApiResponse:
        try:
            return handler(*args, **kwargs)
        except Exception:
            correlation_id, message = unexpected_error(handler.__name__)
            response = _error(500, "internal_error", message)
            response.body["correlation_id"] = correlation_id
            return response

    return guarded


def unexpected_error(what: str) -> tuple[str, str]:
    """Log the exception being handled under a new correlation id; the id, and the message
    naming it for the caller."""
    correlation_id = uuid.uuid4().hex
    log.exception("HTTP %s failed (correlation id %s)", what, correlation_id)
    message = (
        "the request failed unexpectedly; the app's log has the cause under correlation id "
        f"{correlation_id}"
    )
    return correlation_id, message


def _refused(
    services: Services,
    headers: Mapping[str, str],
    needs: str,
    connection: Connection | None = None,
) -> ApiResponse | None:
    """401 or 403 when the caller may not do this (only with EXPORT_API_AUTH=entra)."""
    refusal = authorize(
        services.settings.api_auth,
        headers,
        needs,
        connection=connection.name if connection else None,
        connection_roles=connection.allowed_roles if connection else None,
    )
    if refusal is None:
        return None
    response = _error(refusal.status, refusal.code, refusal.message)
    response.headers.update(refusal.headers)
    return response


@_guarded
def start_export_run(
    services: Services, name: str, body: bytes, *, headers: Mapping[str, str]
) -> ApiResponse:
    """POST /api/exports/{name}/runs: 202 with the queued run and a Location to follow it."""
    return _start(services, name, body, headers, START_OPTIONS, "http", RUN)


@_guarded
def start_teardown(
    services: Services, name: str, body: bytes, *, headers: Mapping[str, str]
) -> ApiResponse:
    """POST /api/exports/{name}/teardown: remove the export's membership from everyone in its
    snapshot, as a run (202, like any start). Administrators only: it empties a segment."""
    return _start(services, name, body, headers, TEARDOWN_OPTIONS, "teardown", ADMIN, teardown=True)


def _start(
    services: Services,
    name: str,
    body: bytes,
    headers: Mapping[str, str],
    allowed: set[str],
    trigger: str,
    needs: str,
    teardown: bool = False,
) -> ApiResponse:
    if refused := _refused(services, headers, needs):
        return refused
    if not is_valid_name(name):
        return _error(400, "invalid_name", f"'{name[:ECHO_CHARS]}' is not a valid export name")
    if len(body) > MAX_BODY_BYTES:
        return _error(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    options, problem = _start_options(body, allowed)
    if problem:
        return _error(400, "invalid_body", problem)
    definitions = services.definitions()
    try:
        export = definitions.export(name)
    except UnknownExport:
        return _error(404, "export_not_found", f"no export named '{name}'")
    if refused := _refused(services, headers, needs, definitions.connection(export.connection)):
        return refused
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


@_guarded
def get_run(services: Services, run_id: str, *, headers: Mapping[str, str]) -> ApiResponse:
    """GET /api/runs/{run_id}."""
    if refused := _refused(services, headers, READ):
        return refused
    run = find_run(services, run_id)
    if not isinstance(run, Run):
        return _error(*run)
    return ApiResponse(200, _run_links(services, run))


@_guarded
def replay(services: Services, run_id: str, *, headers: Mapping[str, str]) -> ApiResponse:
    """POST /api/runs/{run_id}/replay: send the run's rejected deliveries again (202)."""
    if refused := _refused(services, headers, RUN):
        return refused
    run = find_run(services, run_id)
    if not isinstance(run, Run):
        return _error(*run)
    # Replaying a teardown removes memberships again: as the teardown itself, Admin only.
    needs = ADMIN if run.teardown else RUN
    if refused := _refused(services, headers, needs, connection_named(services, run.connection)):
        return refused
    try:
        run = replay_run(services, run_id)
    except NotReplayable as error:
        return _error(409, "not_replayable", str(error))
    return ApiResponse(202, _run_links(services, run), {"Location": f"/api/runs/{run_id}"})


@_guarded
def list_exports(services: Services, *, headers: Mapping[str, str]) -> ApiResponse:
    """GET /api/exports: every export with its schedule, last run and next due time."""
    if refused := _refused(services, headers, READ):
        return refused
    now = utcnow()
    exports = []
    for export in services.definitions().exports:
        latest_id = services.runs.latest_run_id(export.name)
        latest = services.runs.get(latest_id) if latest_id else None
        exports.append(_describe_export(export, latest, now))
    return ApiResponse(200, {"exports": exports})


@_guarded
def list_export_runs(
    services: Services, name: str, limit_text: str | None, *, headers: Mapping[str, str]
) -> ApiResponse:
    """GET /api/exports/{name}/runs?limit=N: newest first."""
    if refused := _refused(services, headers, READ):
        return refused
    if not is_valid_name(name):
        return _error(400, "invalid_name", f"'{name[:ECHO_CHARS]}' is not a valid export name")
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
    except ValueError as error:  # the decoder's position, never the text
        return {}, f"the body is not JSON: {error}"
    except RecursionError:
        return {}, "the body is not JSON this API takes: it is nested too deeply"
    if not isinstance(data, dict):
        return {}, "the body must be a JSON object"
    unknown = sorted(set(data) - allowed)
    if unknown:
        named = [key[:ECHO_CHARS] for key in unknown[:3]] + (["..."] if len(unknown) > 3 else [])
        return {}, f"unknown option(s) {named}; allowed: {sorted(allowed)}"
    wrong = sorted(k for k, v in data.items() if not isinstance(v, bool))
    if wrong:
        return {}, f"option(s) {wrong} must be true or false"
    return data, None


def find_run(services: Services, run_id: str) -> Run | tuple[int, str, str]:
    """The run, or the error (status, code, message) for an id that names none: checked
    against the pattern before it reaches a storage key."""
    if not RUN_ID_PATTERN.fullmatch(run_id):
        return 400, "invalid_run_id", f"'{run_id[:ECHO_CHARS]}' is not a valid run id"
    run = services.runs.get(run_id)
    if run is None:
        return 404, "run_not_found", f"no run '{run_id[:ECHO_CHARS]}'"
    return run


def connection_named(services: Services, name: str) -> Connection | None:
    """The connection a run was sent through, if the definitions still have it (without it,
    nothing can be sent, so there is nothing to restrict)."""
    try:
        return services.definitions().connection(name)
    except UnknownExport:
        return None


def _run_links(services: Services, run: Run) -> dict[str, Any]:
    data = run.public()
    base = services.storage.container(RUNS_CONTAINER).url.rstrip("/")
    data["links"] = {
        "self": f"/api/runs/{run.run_id}",
        "report": f"{base}/{run.report_blob}" if run.report_blob else None,
        "summary": f"{base}/{run.summary_blob}" if run.summary_blob else None,
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
