"""The run report: what a finished run read, sent, rejected and removed, as JSON and a summary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import ChunkResult, PartitionResult, Run, Status
from shared.core.source_files import row_part

REMOVAL_ORDER = 1 << 62  # removals sort after every source row; they have no line
EXAMPLES_PER_REASON = 5

RUN_ENDED = "export run ended"
"""Start of the one log line each run's end writes. The alert rules in
infra/app/monitoring.bicep match `<RUN_ENDED>: status=<status> `: keep the two in step."""

_END_LEVELS = {
    Status.FAILED: logging.ERROR,
    Status.STOPPED: logging.WARNING,
    Status.PARTIALLY_SUCCEEDED: logging.WARNING,
}


def run_ended(run: Run) -> tuple[int, str]:
    """The log level and line announcing a run's end: what the operator's alerts fire on.
    Names and counts only: run messages never carry profile data."""
    line = f"{RUN_ENDED}: status={run.status} run={run.run_id} export={run.export_name}"
    return _END_LEVELS.get(run.status, logging.INFO), f"{line}: {run.message}"


def row_position(order: int, files: Callable[[], list[str]]) -> dict[str, Any]:
    """Where a row came from: its line, its partition file for a CDM source, or that it is
    a profile leaving the segment (it has no row)."""
    if order >= REMOVAL_ORDER:
        return {"order": order, "left_segment": True}
    part, line = row_part(order)
    position: dict[str, Any] = {"order": order, "line": line}
    if part is not None:
        position["file"] = files()[part]
    return position


class RejectionExamples:
    """Where the first few rows rejected for each reason are: their line (and file, for a CDM
    partition), never their values, so the report and its summary can show examples without
    copying personal data out of the rejected rows."""

    def __init__(self) -> None:
        self._by_code: dict[str, list[dict[str, Any]]] = {}

    def add(self, entry: dict[str, Any]) -> None:
        """Take note of one rejected row, as rejected.jsonl holds it (in source order)."""
        position = {k: entry[k] for k in ("line", "file", "left_segment") if k in entry}
        for code in entry.get("codes", []):
            found = self._by_code.setdefault(str(code), [])
            if len(found) < EXAMPLES_PER_REASON:
                found.append(position)

    def by_code(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self._by_code)


def final_status(run: Run) -> Status:
    """failed: planning failed, no row was valid, or Braze took none of what was sent;
    stopped: a safety valve held it; partially: some rows rejected; else succeeded."""
    rejected = run.rows_rejected + run.profiles_rejected_by_braze
    if run.planning_failed:
        return Status.FAILED
    if run.stopped_by:
        return Status.STOPPED
    if run.rows_valid == 0 and run.rows_rejected > 0:
        return Status.FAILED
    if run.objects_planned and run.profiles_accepted == 0 and not run.dry_run:
        return Status.FAILED
    return Status.PARTIALLY_SUCCEEDED if rejected else Status.SUCCEEDED


def summary(run: Run, results: list[ChunkResult], unlisted: int) -> str:
    failed = [r for r in results if r.failure]
    if failed or unlisted:
        names = ", ".join(str(r.chunk_index) for r in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        text = (
            f"{len(failed)} chunk(s) failed after every retry (chunk {names}{more}): "
            f"{failed[0].failure}; their listed profiles are in the rejected rows as "
            "delivery_failed and can be replayed"
            if failed
            else ""
        )
        if unlisted:
            text += (
                f"{'; ' if text else ''}{unlisted} profiles of a failed chunk whose blob could "
                "not be read are counted as rejected but cannot be listed or replayed; the next "
                "run sends their partition again"
            )
        return text
    sent = (
        f"{run.profiles_new} new, {run.profiles_changed} changed, {run.profiles_removed} "
        f"leaving, {run.profiles_unchanged} unchanged"
    )
    if run.removals_held:
        sent += (
            f"; {run.removals_held} profiles missing from the source were not removed because "
            f"{run.rows_unidentified} rows could not be read (fix them and run again)"
        )
    if not run.objects_planned:
        return f"nothing changed, nothing sent ({sent})"
    rejected = run.rows_rejected + run.profiles_rejected_by_braze
    if rejected:
        return (
            f"{run.profiles_accepted} of {run.objects_planned} profiles sent were accepted by "
            f"Braze ({sent}); {run.rows_rejected} rows rejected by validation, "
            f"{run.profiles_rejected_by_braze} by Braze"
        )
    return f"all {run.profiles_accepted} profiles sent were accepted by Braze ({sent})"


def build_report(
    run: Run,
    partitions: list[PartitionResult] | None = None,
    examples: RejectionExamples | None = None,
) -> dict[str, Any]:
    """The run report: counts that add up, the diff, data points, timings, and why rows were
    rejected, with where the first rows of each reason are."""
    seconds = (
        (run.finished_at - run.created_at).total_seconds()
        if run.finished_at and run.created_at
        else None
    )
    planning = (
        (run.planning_finished_at - run.planning_started_at).total_seconds()
        if run.planning_finished_at and run.planning_started_at
        else None
    )
    cap_examples = [e for p in partitions or [] for e in p.array_cap_examples][:10]
    return {
        "run_id": run.run_id,
        "export": run.export_name,
        "segment": run.segment,
        "connection": run.connection,
        "source": run.source,
        "trigger": run.trigger,
        "status": run.status,
        "message": run.message,
        "options": {
            "full_refresh": run.full_refresh,
            "dry_run": run.dry_run,
            "override_safety_valves": run.override_safety_valves,
            "teardown": run.teardown,
        },
        "counts": {
            "rows_read": run.rows_read,
            "rows_valid": run.rows_valid,
            "rows_rejected_by_validation": run.rows_rejected,
            "rows_not_validated": run.rows_not_validated,
            "profiles_new": run.profiles_new,
            "profiles_changed": run.profiles_changed,
            "profiles_unchanged": run.profiles_unchanged,
            "profiles_removed": run.profiles_removed,
            "removals_held": run.removals_held,
            "profiles_sent": run.objects_planned,
            "profiles_accepted_by_braze": run.profiles_accepted,
            "profiles_rejected_by_braze": run.profiles_rejected_by_braze,
            "requests_planned": run.requests_planned,
            "requests_sent": run.requests_sent,
            "chunks": run.chunks_total,
            "partitions": run.partitions,
        },
        "data_points": {"estimated": run.data_points_estimated, "used": run.data_points_used},
        "diff": {
            "full_refresh_reason": run.full_refresh_reason or None,
            "previous_snapshot": run.previous_snapshot or None,
            "previous_profiles": run.previous_profiles,
            "snapshot_profiles": run.snapshot_profiles,
            "unchanged_since": run.unchanged_since or None,
        },
        "safety_valve": run.stopped_by or None,
        "warnings": {
            "array_cap": {
                "profiles": run.array_cap_warnings,
                "examples": cap_examples,
            }
        }
        if run.array_cap_warnings
        else {},
        "rejections_by_reason": dict(sorted(run.rejections.items(), key=lambda kv: -kv[1])),
        "rejection_examples": examples.by_code() if examples else {},
        "timings": {
            "created_at": run.created_at.isoformat(),
            "planning_started_at": _iso(run.planning_started_at),
            "planning_finished_at": _iso(run.planning_finished_at),
            "finished_at": _iso(run.finished_at),
            "planning_seconds": planning,
            "total_seconds": seconds,
            "profiles_per_second": round(run.objects_planned / seconds, 1) if seconds else None,
        },
        "blobs": {
            "container": RUNS_CONTAINER,
            "report": run.report_blob,
            "summary": run.summary_blob or None,
            "rejected_rows": run.rejected_blob,
            "dry_run_requests": run.dry_run_blob or None,
        },
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None
