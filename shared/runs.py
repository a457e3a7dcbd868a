"""Run records in Azure Table storage: one entity per run plus one per delivered chunk.

Chunk workers never update the run entity (40 instances would fight over its ETag); each writes
its own chunk entity, and the run's totals are summed from them when the run is finalized.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

RUN_ROW = "run"
CLAIM_GRACE = timedelta(minutes=5)
# Per-export bookkeeping shares the table; "~" cannot start a run id (export names cannot).
LATEST_PARTITION = "~latest"  # the export's latest run: the one-active-run rule
PENDING_PARTITION = "~pending"  # a start deferred while the export was busy
SCHEDULE_PARTITION = "~schedule"  # the last schedule slot handled per export


class Status(StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    STOPPED = "stopped"  # a safety valve held the run before anything was sent


FINAL_STATUSES = {Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED, Status.FAILED, Status.STOPPED}


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
    full_refresh: bool = False
    dry_run: bool = False
    override_safety_valves: bool = False
    teardown: bool = False
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
    validation_rejections: dict[str, int] = field(default_factory=dict)
    replay_round: int = 0
    splits: int = 0  # split jobs the source was cut into (1: split inline by the planner)
    split_finished_at: datetime | None = None
    # The diff against the previous snapshot (see shared/diff.py and shared/partitions.py).
    partitions: int = 0
    mapping_fingerprint: str = ""
    previous_snapshot: str = ""
    previous_partitions: int = 0
    previous_profiles: int = 0
    full_refresh_reason: str = ""
    # The source files' versions with the export's definition (see planner._source_version);
    # when they equal the snapshot's, the run reads nothing and `unchanged_since` names the run
    # whose snapshot it kept.
    source_version: str = ""
    unchanged_since: str = ""
    profiles_new: int = 0
    profiles_changed: int = 0
    profiles_unchanged: int = 0
    profiles_removed: int = 0
    rows_unidentified: int = 0
    removals_held: int = 0
    objects_planned: int = 0
    requests_planned: int = 0
    stopped_by: str = ""
    data_points_estimated: int = 0
    data_points_used: int = 0
    array_cap_warnings: int = 0
    snapshot_profiles: int | None = None
    report_blob: str = ""
    rejected_blob: str = ""
    dry_run_blob: str = ""
    release_claimed_at: datetime | None = None
    finalize_claimed_at: datetime | None = None
    etag: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def public(self) -> dict[str, Any]:
        """The run as JSON-friendly data, without storage internals."""
        data = asdict(self)
        for internal in (
            "finalize_claimed_at",
            "release_claimed_at",
            "mapping_fingerprint",
            "etag",
        ):
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
    rejections: dict[str, int] = field(default_factory=dict)
    finished_at: datetime = field(default_factory=utcnow)
    partition: int = 0
    data_points: int = 0
    rejected_blobs: list[str] = field(default_factory=list)
    rejected_until: list[int] = field(default_factory=list)
    unlisted: int = 0  # rows counted as failed that could not be listed (blob unreadable)
    failure: str = ""
    round: int = 0  # 0 for the run's own chunks, n for the n-th replay of its rejected rows


@dataclass
class SplitResult:
    """What one split of the source read: counts, rejection reasons and its rejected rows."""

    split: int
    partitions: int = 0
    rows_read: int = 0
    rows_rejected: int = 0
    unidentified: int = 0  # malformed rows: whose they are cannot be told
    reasons: dict[str, int] = field(default_factory=dict)
    rejected_blob: str = ""


@dataclass
class PartitionResult:
    """What one partition's diff found and which chunk blobs it wrote for delivery."""

    partition: int
    new: int
    changed: int
    unchanged: int
    removed: int
    duplicates: int
    objects: int
    removals_held: int
    data_points: int
    array_cap_warnings: int
    chunk_rows: list[int]
    rejected_blob: str = ""
    snapshot_profiles: int = 0  # in this run's snapshot partition if Braze accepts everything
    array_cap_examples: list[str] = field(default_factory=list)


@dataclass
class ChunkProgress:
    """Batches of a chunk that Braze already answered, so a redelivery resumes after them."""

    batches_done: int = 0
    accepted: int = 0
    rejected: int = 0
    requests: int = 0
    data_points: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    # One append blob per attempt that rejected rows, and how many batches of it are recorded:
    # lines of a batch answered but never recorded (the attempt died) are not counted.
    rejected_blobs: list[str] = field(default_factory=list)
    rejected_until: list[int] = field(default_factory=list)
    batch_size: int = 0  # fixed at the first attempt, so a resume cuts the same batches
    unlisted: int = 0
    failure: str = ""


_RUN_FIELDS = {f.name for f in fields(Run)} - {"run_id", "etag"}


class RunConflict(Exception):
    """The run entity changed since it was read (someone else got there first)."""


class ExportBusy(Exception):
    """The export already has a run in progress (one active run per export)."""

    def __init__(self, export_name: str, run_id: str, status: str) -> None:
        self.run_id, self.status = run_id, status
        super().__init__(f"export '{export_name}' already has run {run_id} ({status})")


@dataclass(frozen=True)
class PendingStart:
    """A start that waits for the export's active run to finish; the newest one wins."""

    run_id: str
    trigger: str
    source: str
    etag: str


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

    def record_chunk(self, run_id: str, result: ChunkResult) -> bool:
        """Record a chunk's outcome once: the first attempt to finish wins, later ones lose."""
        return self._create_once(run_id, chunk_row(result.chunk_index), asdict(result))

    def chunk_done(self, run_id: str, chunk_index: int) -> bool:
        return self._exists(run_id, chunk_row(chunk_index))

    def chunks_recorded(self, run_id: str) -> int:
        """How many chunk outcomes are recorded (row keys only: no entity is decoded)."""
        return sum(1 for _ in self._rows(run_id, CHUNK_PREFIX, select=["RowKey"]))

    def chunk_results(self, run_id: str) -> list[ChunkResult]:
        results = [_decode(ChunkResult, entity) for entity in self._rows(run_id, CHUNK_PREFIX)]
        return sorted(results, key=lambda r: r.chunk_index)

    def record_split(self, run_id: str, result: SplitResult) -> bool:
        """Record a split once; a repeated job's result loses (it read the same range)."""
        return self._create_once(run_id, split_row(result.split), asdict(result))

    def split_done(self, run_id: str, split: int) -> bool:
        return self._exists(run_id, split_row(split))

    def split_results(self, run_id: str) -> list[SplitResult]:
        results = [_decode(SplitResult, entity) for entity in self._rows(run_id, SPLIT_PREFIX)]
        return sorted(results, key=lambda r: r.split)

    def save_split_progress(self, run_id: str, split: int, rows_read: int) -> None:
        """Rows a split has read so far: the stalled-run sweep sees the planning is alive."""
        entity = {"PartitionKey": run_id, "RowKey": split_progress_row(split), "rows": rows_read}
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def record_partition(self, run_id: str, result: PartitionResult) -> bool:
        """Record a partition's diff once; a duplicate job's result loses (it is the same)."""
        return self._create_once(run_id, partition_row(result.partition), asdict(result))

    def partition_done(self, run_id: str, partition: int) -> bool:
        return self._exists(run_id, partition_row(partition))

    def _create_once(self, run_id: str, row: str, values: dict[str, Any]) -> bool:
        """Create the entity unless it exists; True for the writer that created it."""
        entity = {"PartitionKey": run_id, "RowKey": row, **_to_entity_values(values)}
        try:
            self._table.create_entity(entity)
        except ResourceExistsError:
            return False
        return True

    def _exists(self, partition: str, row: str) -> bool:
        try:
            self._table.get_entity(partition, row, select=["RowKey"])
        except ResourceNotFoundError:
            return False
        return True

    def partition_results(self, run_id: str) -> list[PartitionResult]:
        results = [
            _decode(PartitionResult, entity) for entity in self._rows(run_id, PARTITION_PREFIX)
        ]
        return sorted(results, key=lambda r: r.partition)

    def chunk_progress(self, run_id: str, chunk_index: int) -> ChunkProgress:
        entity = self._get(run_id, progress_row(chunk_index))
        return _decode(ChunkProgress, entity) if entity else ChunkProgress()

    def save_progress(self, run_id: str, chunk_index: int, progress: ChunkProgress) -> None:
        entity = {"PartitionKey": run_id, "RowKey": progress_row(chunk_index)}
        entity.update(_to_entity_values(asdict(progress)))
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def _rows(self, run_id: str, prefix: str, select: list[str] | None = None) -> Any:
        """Entities of a run whose row key starts with `prefix` (a range query on the key)."""
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        query = (
            f"PartitionKey eq '{_quote(run_id)}' and RowKey ge '{prefix}' and RowKey lt '{upper}'"
        )
        return self._table.query_entities(query, select=select)

    def last_activity(self, run_id: str) -> datetime | None:
        """When anything of the run last changed: the run, a partition, a chunk or a batch."""
        stamps = [
            entity.metadata["timestamp"]
            for entity in self._table.query_entities(f"PartitionKey eq '{_quote(run_id)}'")
        ]
        return max(stamps, default=None)

    def latest_run_id(self, export_name: str) -> str | None:
        entity = self._get(LATEST_PARTITION, export_name)
        return entity["run_id"] if entity else None

    def claim_export(self, export_name: str, run_id: str) -> None:
        """Make `run_id` the export's latest run unless another run of it is still active.

        The ETag-guarded write makes concurrent claims safe: exactly one claimant wins.
        """
        while True:
            entity = self._get(LATEST_PARTITION, export_name)
            now = utcnow()
            record = {
                "PartitionKey": LATEST_PARTITION,
                "RowKey": export_name,
                "run_id": run_id,
                "claimed_at": now.isoformat(),
            }
            try:
                if entity is None:
                    self._table.create_entity(record)
                    return
                if entity["run_id"] == run_id:
                    return
                active = self.get(entity["run_id"])
                if active is None:
                    # Claimed but not created yet, or the claimant died: busy for a while.
                    claimed = datetime.fromisoformat(entity["claimed_at"])
                    if now - claimed < CLAIM_GRACE:
                        raise ExportBusy(export_name, entity["run_id"], Status.QUEUED)
                elif not active.is_final:
                    raise ExportBusy(export_name, active.run_id, active.status)
                self._table.update_entity(
                    record,
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return
            except ResourceExistsError:
                continue
            except HttpResponseError as error:
                if error.status_code != 412:
                    raise

    def defer_start(self, export_name: str, run_id: str, trigger: str, source: str) -> None:
        self._table.upsert_entity(
            {
                "PartitionKey": PENDING_PARTITION,
                "RowKey": export_name,
                "run_id": run_id,
                "trigger": trigger,
                "source": source,
            },
            mode=UpdateMode.REPLACE,
        )

    def pending_start(self, export_name: str) -> PendingStart | None:
        entity = self._get(PENDING_PARTITION, export_name)
        if entity is None:
            return None
        return PendingStart(
            entity["run_id"], entity["trigger"], entity["source"], entity.metadata["etag"]
        )

    def clear_pending(self, export_name: str, pending: PendingStart) -> None:
        """Remove the deferred start, unless a newer one replaced it meanwhile."""
        try:
            self._table.delete_entity(
                PENDING_PARTITION,
                export_name,
                etag=pending.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except HttpResponseError as error:
            if error.status_code != 412:
                raise

    def last_slot(self, export_name: str) -> datetime | None:
        entity = self._get(SCHEDULE_PARTITION, export_name)
        return datetime.fromisoformat(entity["slot"]) if entity else None

    def set_last_slot(self, export_name: str, slot: datetime) -> None:
        self._table.upsert_entity(
            {"PartitionKey": SCHEDULE_PARTITION, "RowKey": export_name, "slot": slot.isoformat()}
        )

    def _get(self, partition: str, row: str) -> Any:
        try:
            return self._table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None

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


CHUNK_PREFIX = "chunk-"
PARTITION_PREFIX = "part-"
PROGRESS_PREFIX = "prog-"
SPLIT_PREFIX = "split-"
SPLIT_PROGRESS_PREFIX = "splitprog-"


def chunk_row(index: int) -> str:
    return f"{CHUNK_PREFIX}{index:06d}"


def partition_row(index: int) -> str:
    return f"{PARTITION_PREFIX}{index:04d}"


def progress_row(index: int) -> str:
    return f"{PROGRESS_PREFIX}{index:06d}"


def split_row(index: int) -> str:
    return f"{SPLIT_PREFIX}{index:04d}"


def split_progress_row(index: int) -> str:
    return f"{SPLIT_PROGRESS_PREFIX}{index:04d}"


D = TypeVar("D")


def _decode(cls: type[D], entity: Any) -> D:
    """A dataclass from its entity: dicts and lists were stored as JSON text."""
    values: dict[str, Any] = {}
    for item in fields(cls):  # type: ignore[arg-type]  # fields of a dataclass type
        if item.name not in entity:
            continue
        value = entity[item.name]
        if item.type in ("dict[str, int]", "list[int]", "list[str]"):
            value = json.loads(value) if value else ({} if item.type.startswith("dict") else [])
        elif item.type == "datetime" and isinstance(value, str):
            value = datetime.fromisoformat(value)
        values[item.name] = value
    return cls(**values)


def _run_from(entity: Any) -> Run:
    values = {name: entity[name] for name in _RUN_FIELDS if name in entity}
    for name in (
        "created_at",
        "planning_started_at",
        "split_finished_at",
        "planning_finished_at",
        "finished_at",
        "finalize_claimed_at",
        "release_claimed_at",
    ):
        if isinstance(values.get(name), str):
            values[name] = datetime.fromisoformat(values[name]) if values[name] else None
    for tally in ("rejections", "validation_rejections"):
        values[tally] = _decode_tally(values.get(tally, ""))
    for optional in ("chunks_total", "snapshot_profiles"):
        if values.get(optional) == -1:
            values[optional] = None
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
        elif isinstance(value, list):
            out[name] = json.dumps(value)
        elif value is None:
            out[name] = -1 if name in ("chunks_total", "snapshot_profiles") else ""
        else:
            out[name] = value
    return out


def _encode_tally(tally: dict[str, int]) -> str:
    """JSON, because the codes include Braze's error types, which may hold any character."""
    return json.dumps(tally, sort_keys=True)


def _decode_tally(text: str) -> dict[str, int]:
    return json.loads(text) if text else {}


def _quote(value: str) -> str:
    return value.replace("'", "''")
