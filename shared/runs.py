"""Run records in Azure Table storage: one entity per run plus one per delivered chunk.

Chunk workers never update the run entity (40 instances would fight over its ETag); each writes
its own chunk entity, and the run's totals are summed from them when the run is finalized.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

RUN_ROW = "run"


class Status(StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"


FINAL_STATUSES = {Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED, Status.FAILED}


def new_run_id(export_name: str, now: datetime | None = None) -> str:
    """Readable and sortable per export: `<export>-<UTC time>-<random>`."""
    stamp = (now or utcnow()).strftime("%Y%m%dT%H%M%SZ")
    return f"{export_name}-{stamp}-{secrets.token_hex(3)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Run:
    """What the operator sees about one run of an export."""

    run_id: str
    export_name: str
    segment: str
    connection: str
    source: str
    trigger: str
    status: str = Status.QUEUED
    message: str = ""
    planning_failed: bool = False
    created_at: datetime = field(default_factory=utcnow)
    planning_started_at: datetime | None = None
    planning_finished_at: datetime | None = None
    finished_at: datetime | None = None
    rows_read: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0
    chunks_planned: int = 0
    chunks_total: int | None = None
    profiles_accepted: int = 0
    profiles_rejected_by_braze: int = 0
    requests_sent: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    report_blob: str = ""
    rejected_blob: str = ""
    finalize_claim: str = ""
    etag: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def public(self) -> dict[str, Any]:
        """The run as JSON-friendly data, without storage internals."""
        data = asdict(self)
        for internal in ("finalize_claim", "etag"):
            data.pop(internal)
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}


@dataclass
class ChunkResult:
    """Outcome of delivering one chunk, written once by the worker that delivered it."""

    chunk_index: int
    rows: int
    accepted: int
    rejected: int
    requests: int
    rejected_blob: str = ""
    rejections: dict[str, int] = field(default_factory=dict)
    finished_at: datetime = field(default_factory=utcnow)


_RUN_FIELDS = {f.name for f in fields(Run)} - {"run_id", "etag"}


class RunConflict(Exception):
    """The run entity changed since it was read (someone else got there first)."""


class RunStore:
    """Reads and writes run and chunk entities; partition key = run id."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def create(self, run: Run) -> None:
        """Insert a new run; raise RunConflict if that run id exists (a duplicate trigger)."""
        try:
            self._table.create_entity(self._entity(run))
        except ResourceExistsError:
            raise RunConflict(f"run {run.run_id} already exists") from None

    def get(self, run_id: str) -> Run | None:
        try:
            entity = self._table.get_entity(run_id, RUN_ROW)
        except ResourceNotFoundError:
            return None
        return _run_from(entity)

    def update(self, run: Run, *, if_unchanged: bool = False) -> None:
        """Merge the fields; with `if_unchanged`, only if nobody wrote it since it was read."""
        kwargs: dict[str, Any] = {"mode": UpdateMode.MERGE}
        if if_unchanged:
            kwargs.update(etag=run.etag, match_condition=MatchConditions.IfNotModified)
        try:
            metadata = self._table.update_entity(self._entity(run), **kwargs)
        except HttpResponseError as error:
            if error.status_code == 412:
                raise RunConflict(f"run {run.run_id} changed concurrently") from None
            raise
        run.etag = metadata.get("etag")

    def record_chunk(self, run_id: str, result: ChunkResult) -> None:
        """Upsert, so a redelivered chunk rewrites the same entity instead of adding one."""
        entity = {"PartitionKey": run_id, "RowKey": chunk_row(result.chunk_index)}
        entity.update(_to_entity_values(asdict(result)))
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def chunk_done(self, run_id: str, chunk_index: int) -> bool:
        try:
            self._table.get_entity(run_id, chunk_row(chunk_index), select=["RowKey"])
        except ResourceNotFoundError:
            return False
        return True

    def chunk_results(self, run_id: str) -> list[ChunkResult]:
        query = f"PartitionKey eq '{_quote(run_id)}' and RowKey ge 'chunk-' and RowKey lt 'chunk.'"
        results = []
        for entity in self._table.query_entities(query):
            values = {
                name: entity[name] for name in ChunkResult.__dataclass_fields__ if name in entity
            }
            values["rejections"] = _decode_tally(entity.get("rejections", ""))
            results.append(ChunkResult(**values))
        return sorted(results, key=lambda r: r.chunk_index)

    def list_runs(self, export_name: str | None = None, limit: int = 20) -> list[Run]:
        query = f"RowKey eq '{RUN_ROW}'"
        if export_name:
            query += f" and export_name eq '{_quote(export_name)}'"
        runs = [_run_from(e) for e in self._table.query_entities(query)]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return runs[:limit]

    @staticmethod
    def _entity(run: Run) -> dict[str, Any]:
        values = {name: getattr(run, name) for name in _RUN_FIELDS}
        return {"PartitionKey": run.run_id, "RowKey": RUN_ROW, **_to_entity_values(values)}


def chunk_row(index: int) -> str:
    return f"chunk-{index:06d}"


def _run_from(entity: Any) -> Run:
    values = {name: entity[name] for name in _RUN_FIELDS if name in entity}
    for name in ("created_at", "planning_started_at", "planning_finished_at", "finished_at"):
        if isinstance(values.get(name), str):
            values[name] = datetime.fromisoformat(values[name]) if values[name] else None
    values["rejections"] = _decode_tally(values.get("rejections", ""))
    if values.get("chunks_total") == -1:
        values["chunks_total"] = None
    run = Run(run_id=entity["PartitionKey"], **values)
    run.etag = entity.metadata.get("etag")
    return run


def _to_entity_values(values: dict[str, Any]) -> dict[str, Any]:
    """Tables store no nulls or dicts: encode them so a merge can also clear a field."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, datetime):
            out[name] = value.isoformat()
        elif isinstance(value, dict):
            out[name] = _encode_tally(value)
        elif value is None:
            out[name] = -1 if name == "chunks_total" else ""
        else:
            out[name] = value
    return out


def _encode_tally(tally: dict[str, int]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(tally.items()))


def _decode_tally(text: str) -> dict[str, int]:
    pairs = (item.rsplit("=", 1) for item in text.split(";") if item)
    return {k: int(v) for k, v in pairs}


def _quote(value: str) -> str:
    return value.replace("'", "''")
