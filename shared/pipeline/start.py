"""How runs start — on demand, on schedule, on a blob drop — under one rule each way in.

The rule: **one active run per export**. A run is active while queued, planning or delivering.
An on-demand start (CLI, HTTP) is refused while the export is busy (HTTP 409). A scheduled or
dropped start is deferred instead: it is recorded and begins when the active run finishes (the
newest deferred start wins), so no refresh is lost and none runs twice.

Scheduled and dropped runs have deterministic ids (export + slot, export + blob version), so a
duplicate or concurrent trigger finds the run already there and starts nothing.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

from shared.adapters.services import Services
from shared.core import schedule
from shared.core.definitions import Export, UnknownExport, format_of
from shared.core.messages import ExportJob
from shared.core.report import run_ended
from shared.core.resource_names import JOBS_QUEUE
from shared.core.runs import ExportBusy, Run, RunConflict, Status, new_run_id, utcnow

log = logging.getLogger(__name__)

TEMPORARY_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", "_copying_")
TEMPORARY_PREFIXES = (".", "~", "_")


@dataclass(frozen=True)
class Started:
    """The run a trigger resolved to; `created` is False when it already existed (duplicate)."""

    run: Run
    created: bool


def start_run(
    services: Services,
    export_name: str,
    trigger: str,
    *,
    source: str | None = None,
    run_id: str | None = None,
    full_refresh: bool = False,
    dry_run: bool = False,
    override_safety_valves: bool = False,
    teardown: bool = False,
) -> Started:
    """Create a run and enqueue its planning job.

    Raises UnknownExport for an unknown export and ExportBusy while another run of it is active.
    """
    export = services.definitions().export(export_name)
    services.ensure_resources()
    run_id = run_id or new_run_id(export.name)
    existing = services.runs.get(run_id)
    if existing is not None:
        return Started(existing, created=False)
    services.runs.claim_export(export.name, run_id)
    run = Run(
        run_id=run_id,
        export_name=export.name,
        segment=export.segment,
        connection=export.connection,
        source=source or f"{export.source.container}/{export.source.path}",
        trigger=trigger,
        full_refresh=full_refresh,
        dry_run=dry_run,
        override_safety_valves=override_safety_valves,
        teardown=teardown,
    )
    try:
        services.runs.create(run)
    except RunConflict:
        existing = services.runs.get(run_id)
        # The run as this call made it, to the microsecond: its own insert, sent again after
        # the answer was lost. Its planning job is queued below, or nobody would plan it.
        if existing is None or existing.created_at != run.created_at:
            return Started(existing or run, created=False)
    try:
        services.storage.queue(JOBS_QUEUE).send_message(
            ExportJob(run.run_id, export.name).to_json()
        )
    except Exception as error:
        # A queued run nobody will plan would keep the export busy for good: fail it instead.
        run.status, run.finished_at = Status.FAILED, utcnow()
        run.message = f"could not queue the planning job: {type(error).__name__}: {error}"
        services.runs.update(run)
        log.log(*run_ended(run))
        raise
    log.info(
        "run %s queued for export %s (%s, source %s)", run_id, export.name, trigger, run.source
    )
    return Started(run, created=True)


def start_or_defer(
    services: Services, export_name: str, trigger: str, *, run_id: str, source: str | None = None
) -> str:
    """Start now, or record the start for when the active run ends. Returns what happened."""
    try:
        started = start_run(services, export_name, trigger, source=source, run_id=run_id)
    except ExportBusy as busy:
        export = services.definitions().export(export_name)
        services.runs.defer_start(
            export_name,
            run_id,
            trigger,
            source or f"{export.source.container}/{export.source.path}",
        )
        log.info("export %s is busy with %s; %s deferred", export_name, busy.run_id, run_id)
        # The active run may have finished between the claim and the deferral.
        start_pending(services, export_name)
        return "deferred"
    return "started" if started.created else "duplicate"


def start_pending(services: Services, export_name: str) -> Run | None:
    """Start the export's deferred run, if any and if the export is free now."""
    pending = services.runs.pending_start(export_name)
    if pending is None:
        return None
    try:
        started = start_run(
            services, export_name, pending.trigger, source=pending.source, run_id=pending.run_id
        )
    except ExportBusy:
        return None
    except UnknownExport:
        log.warning(
            "deferred run %s dropped: export %s no longer exists", pending.run_id, export_name
        )
        services.runs.clear_pending(export_name, pending)
        return None
    services.runs.clear_pending(export_name, pending)
    return started.run


def schedule_tick(services: Services, now: datetime) -> dict[str, str]:
    """Start each scheduled export whose latest slot has not been handled yet.

    Only the latest slot counts, so slots missed while the app was down run once, not once
    each. A schedule seen for the first time starts from its next slot.
    """
    outcomes: dict[str, str] = {}
    for export in services.definitions().exports:
        # A deferred start whose trigger (a finalizer) died before starting it is picked up here.
        start_pending(services, export.name)
        if not export.schedule:
            continue
        slot = schedule.latest_slot(export.schedule, now)
        last = services.runs.last_slot(export.name)
        if last is None:
            services.runs.set_last_slot(export.name, slot)
            outcomes[export.name] = "baseline"
            continue
        if slot <= last:
            continue
        run_id = schedule.slot_run_id(export.name, slot)
        outcomes[export.name] = start_or_defer(services, export.name, "schedule", run_id=run_id)
        services.runs.set_last_slot(export.name, slot)
    return outcomes


def drop_ignored_because(name: str, size: int) -> str | None:
    """Why a dropped blob never starts anything, or None."""
    base = posixpath.basename(name)
    if size == 0:
        return "it is empty (zero bytes)"
    if base.startswith(TEMPORARY_PREFIXES) or base.lower().endswith(TEMPORARY_SUFFIXES):
        return "its name marks a temporary or hidden file"
    if "/_temporary/" in f"/{name}":
        return "it is inside a _temporary folder"
    return None


def blob_version(content_md5: bytes | bytearray | None, etag: str) -> str:
    """What identifies a blob's content: its MD5 when the uploader set one, else its ETag."""
    return bytes(content_md5).hex() if content_md5 else f"etag:{etag}"


def drop_run_id(export_name: str, container: str, name: str, version: str) -> str:
    """One id per export and blob content: a redelivered event or an unchanged re-upload
    resolves to the same run."""
    digest = hashlib.sha256(f"{container}/{name}@{version}".encode()).hexdigest()[:16]
    return f"{export_name}-d{digest}"


def handle_drop(
    services: Services, container: str, name: str, size: int, version: str
) -> dict[str, str]:
    """Start every export whose drop pattern matches the blob; say why for anything ignored."""
    reason = drop_ignored_because(name, size)
    if reason:
        log.info("ignored %s/%s: %s", container, name, reason)
        return {"": f"ignored: {reason}"}
    matching = [e for e in services.definitions().exports if _drop_matches(e, container, name)]
    if not matching:
        log.info("ignored %s/%s: no export's drop pattern matches it", container, name)
        return {"": "ignored: no export's drop pattern matches it"}
    outcomes = {}
    for export in matching:
        if export.source.resolved_format() == "cdm" and format_of(name) != "cdm":
            outcomes[export.name] = (
                "ignored: a CDM partition; the export starts when model.json lands"
            )
            continue
        run_id = drop_run_id(export.name, container, name, version)
        outcomes[export.name] = start_or_defer(
            services, export.name, "blob", run_id=run_id, source=f"{container}/{name}"
        )
    for export_name, outcome in outcomes.items():
        log.info("drop %s/%s -> export %s: %s", container, name, export_name, outcome)
    return outcomes


def _drop_matches(export: Export, container: str, name: str) -> bool:
    return (
        export.drop is not None
        and export.drop.container == container
        and fnmatchcase(name, export.drop.path)
    )
