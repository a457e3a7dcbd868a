"""The status page and the run files it links to, independent of the Functions host.

`GET /api/dashboard` is shared/core/status_page.py filled from the definitions and the run
table; `GET /api/runs/{run_id}/report` and `.../rejected` send a run's report.json and
rejected.jsonl from the runs container, so the page's links work with the function key alone
(the API's run links point into storage, which a browser cannot open without storage access).
With EXPORT_API_AUTH=entra they need the Exports.Read app role, like the API's reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html import escape

from shared.adapters.services import Services
from shared.adapters.settings import ConfigurationError
from shared.adapters.storage import BlobNotFound
from shared.core.access import READ, RUN, Refusal, authorize
from shared.core.definitions import DefinitionsError
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import Run, utcnow
from shared.core.schedule import next_slot
from shared.core.status_page import CONTENT_SECURITY_POLICY, ExportStatus, render
from shared.entrypoints.http_api import connection_named, find_run, unexpected_error

RUNS_PER_EXPORT = 14  # two weeks of a daily export
RUNS_WITHOUT_DEFINITIONS = 200  # the newest runs of any export, when the definitions are broken
MAX_FILE_BYTES = 64 * 1024 * 1024
"""The most of a run file sent through the app: the worker holds a response whole in memory.
A larger one is refused with its blob's name, to download from storage instead."""

HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
JSON_LINES = "application/x-ndjson; charset=utf-8"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebResponse:
    """Status, bytes and headers (Content-Type among them), for the trigger adapter to send."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _secured(headers: dict[str, str]) -> dict[str, str]:
    """Nothing is loaded or framed, nothing sniffed or cached: the links carry the key."""
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        **headers,
    }


def dashboard(
    services: Services, *, params: Mapping[str, str], headers: Mapping[str, str]
) -> WebResponse:
    """GET /api/dashboard: the status page. Broken definitions do not hide the runs: the page
    says what is wrong with them and lists the runs the table holds."""
    try:
        if refusal := authorize(services.settings.api_auth, headers, READ):
            return _page(refusal.status, refusal.message, refusal.headers)
        now = utcnow()
        problem = None
        try:
            exports = [
                ExportStatus(
                    export.name,
                    services.runs.list_runs(export.name, RUNS_PER_EXPORT),
                    export,
                    next_slot(export.schedule, now) if export.schedule else None,
                )
                for export in services.definitions().exports
            ]
        except (DefinitionsError, ConfigurationError, BlobNotFound) as error:
            problem = str(error)
            exports = _recorded(services.runs.list_runs(None, RUNS_WITHOUT_DEFINITIONS))
        page = render(exports, now, key=params.get("code") or None, problem=problem)
        return WebResponse(200, page.encode(), _secured({"Content-Type": HTML}))
    except Exception:
        return _page(500, _failed("dashboard"))


def _recorded(runs: list[Run]) -> list[ExportStatus]:
    """The runs found, by export (newest first), when the definitions cannot say which."""
    by_export: dict[str, list[Run]] = {}
    for run in runs:
        by_export.setdefault(run.export_name, []).append(run)
    return [ExportStatus(name, found[:RUNS_PER_EXPORT]) for name, found in by_export.items()]


@dataclass(frozen=True)
class RunFile:
    """One of a run's files the status page links to, and how a browser gets it."""

    what: str
    blob: Callable[[Run], str]
    content_type: str
    disposition: str  # "inline" to show it, "attachment" to download it
    file_name: str  # after the run id, for the browser to save it under
    needs: str  # the app role (with EXPORT_API_AUTH=entra)
    personal: bool  # holds customer data: the connection's allowed_roles apply too


REPORT = RunFile("report", lambda run: run.report_blob, JSON, "inline", "report.json", READ, False)
REJECTED_ROWS = RunFile(
    "rejected rows",
    lambda run: run.rejected_blob,
    JSON_LINES,
    "attachment",  # the rows as they were read, personal data included: not left on screen
    "rejected.jsonl",
    RUN,  # customers' data: whoever may send it through the connection, not every reader
    True,
)


def run_file(
    services: Services, run_id: str, file: RunFile, *, headers: Mapping[str, str]
) -> WebResponse:
    """GET /api/runs/{run_id}/report or .../rejected: the file from the runs container."""
    try:
        mode = services.settings.api_auth
        if refused := _refused(authorize(mode, headers, file.needs)):
            return refused
        run = find_run(services, run_id)
        if not isinstance(run, Run):
            return _error(*run)
        connection = connection_named(services, run.connection) if file.personal else None
        if connection is not None and (
            refused := _refused(
                authorize(
                    mode,
                    headers,
                    file.needs,
                    connection=connection.name,
                    connection_roles=connection.allowed_roles,
                )
            )
        ):
            return refused
        blob = file.blob(run)
        if not blob:
            return _error(
                404,
                "not_written_yet",
                f"run '{run_id}' is {run.status}: it has no {file.what} until it finishes",
            )
        try:
            size = services.storage.size(RUNS_CONTAINER, blob)
            if size > MAX_FILE_BYTES:
                return _error(
                    409,
                    "file_too_large",
                    f"run '{run_id}': its {file.what} file has {size:,} bytes, more than this "
                    f"app sends ({MAX_FILE_BYTES:,}); download blob '{blob}' from container "
                    f"'{RUNS_CONTAINER}' instead",
                )
            data = services.storage.read_bytes(RUNS_CONTAINER, blob)
        except BlobNotFound:
            return _error(
                404,
                "file_not_found",
                f"blob '{blob}' is no longer in container '{RUNS_CONTAINER}' (deleted or expired)",
            )
        disposition = f'{file.disposition}; filename="{run.run_id}-{file.file_name}"'
        return WebResponse(
            200,
            data,
            _secured({"Content-Type": file.content_type, "Content-Disposition": disposition}),
        )
    except Exception:
        return _error(500, "internal_error", _failed(f"run {file.what}"))


def _refused(refusal: Refusal | None) -> WebResponse | None:
    if refusal is None:
        return None
    return _error(refusal.status, refusal.code, refusal.message, refusal.headers)


def _failed(what: str) -> str:
    """The message for an unexpected error, logged under a new correlation id. An exception's
    text (hosts, paths, values) is for the log, not for the caller."""
    return unexpected_error(what)[1]


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> WebResponse:
    """The API's error shape: JSON `{"error": code, "message": text}`."""
    body = json.dumps({"error": code, "message": message}, ensure_ascii=False).encode()
    return WebResponse(status, body, _secured({"Content-Type": JSON, **(headers or {})}))


def _page(status: int, message: str, headers: Mapping[str, str] | None = None) -> WebResponse:
    """An error as a small page, since a person opened the status page."""
    body = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<link rel="icon" href="data:,"><title>Export status</title></head>'
        f"<body><h1>Export status</h1><p>{escape(message)}</p></body></html>\n"
    )
    return WebResponse(status, body.encode(), _secured({"Content-Type": HTML, **(headers or {})}))
