"""Run records in Azure Table storage: an entity per run, and per split, partition and chunk.

Chunk workers never update the run entity (40 instances would fight over its ETag); each writes
its own chunk entity, and the run's totals are summed from them when the run is finalized.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.adapters.storage import forget_traceback
from shared.core.messages import ANY_PARTITION
from shared.core.runs import (
    ChunkProgress,
    ChunkResult,
    ExportBusy,
    PartitionResult,
    PendingStart,
    Run,
    RunConflict,
    SplitPieces,
    SplitResult,
    Status,
    utcnow,
)

RUN_ROW = "run"
CLAIM_GRACE = timedelta(minutes=5)
# Per-export bookkeeping shares the table; "~" cannot start a run id (export names cannot).
LATEST_PARTITION = "~latest"  # the export's latest run: the one-active-run rule
PENDING_PARTITION = "~pending"  # a start deferred while the export was busy
SCHEDULE_PARTITION = "~schedule"  # the last schedule slot handled per export

_RUN_FIELDS = {f.name for f in fields(Run)} - {"run_id", "etag"}
# The SDK's methods to send again after a dropped connection, and POST: for an insert, whose
# repeat finds the entity existing if the first had landed (`_create_once`, `create`).
RETRIED_METHODS = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "POST"})
# And PATCH, for a merge of a value no other writer changes back, so that sending it again
# after a dropped connection, whenever it lands, leaves what the first would have (a flag set
# once, the schedule's own slot). Not for a run's fields: a repeat that landed after another
# job's write (a finalizer's, once the release had queued the chunks) would put back this
# job's older copy; and a merge conditional on the run's ETag would find its own write and take
# it for another's. Their jobs are retried instead. Azurite closes an idle keep-alive
# connection as the client reuses it now and then: such a merge failed its job in a test run.
MERGE_RETRIED_METHODS = RETRIED_METHODS | {"PATCH"}


class SavedProgress(NamedTuple):
    """A chunk's progress and when and as what it was last saved (None: never)."""

    progress: ChunkProgress
    etag: str | None
    saved_at: datetime | None


class RunStore:
    """Reads and writes run and chunk entities; partition key = run id."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def create(self, run: Run) -> None:
        """Insert a new run; raise RunConflict if that run id exists (a duplicate trigger, or
        this insert sent again after its answer was lost: `start_run` tells them apart)."""
        try:
            self._table.create_entity(self._entity(run), retry_on_methods=RETRIED_METHODS)
        except ResourceExistsError as exists:
            forget_traceback(exists)
            raise RunConflict(f"run {run.run_id} already exists") from None

    def get(self, run_id: str) -> Run | None:
        try:
            entity = self._table.get_entity(run_id, RUN_ROW)
        except ResourceNotFoundError as missing:
            forget_traceback(missing)
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
                forget_traceback(error)
                raise RunConflict(f"run {run.run_id} changed concurrently") from None
            raise
        run.etag = metadata.get("etag")

    def record_chunk(self, run_id: str, result: ChunkResult) -> bool:
        """Record a chunk's outcome once: the first attempt to finish wins, later ones lose."""
        values = asdict(result)
        # The version before read one `partition` per chunk; a chunk of several reads as a
        # replay's (any partition), which that version's finalize handles correctly.
        partitions = result.partitions
        values["partition"] = partitions[0] if len(partitions) == 1 else ANY_PARTITION
        return self._create_once(run_id, chunk_row(result.chunk_index), values)

    def chunk_done(self, run_id: str, chunk_index: int) -> bool:
        return self._exists(run_id, chunk_row(chunk_index))

    def chunks_recorded(self, run_id: str) -> int:
        """How many chunk outcomes are recorded (row keys only: no entity is decoded)."""
        return sum(1 for _ in self._rows(run_id, CHUNK_PREFIX, select=["RowKey"]))

    def chunk_results(self, run_id: str) -> list[ChunkResult]:
        results = [_chunk_result(entity) for entity in self._rows(run_id, CHUNK_PREFIX)]
        return sorted(results, key=lambda r: r.chunk_index)

    def profiles_answered(self, run_id: str) -> int:
        """Profiles Braze has answered so far, for a progress bar: each recorded chunk whole,
        each chunk still on its way up to the batches its worker last saved (about once a
        second), so a run of a few large chunks does not sit at zero until its end."""
        done = {
            entity["RowKey"].removeprefix(CHUNK_PREFIX): entity["rows"] or 0
            for entity in self._rows(run_id, CHUNK_PREFIX, select=["RowKey", "rows"])
        }
        going = sum(
            (entity.get("accepted") or 0) + (entity.get("rejected") or 0)
            for entity in self._rows(run_id, PROGRESS_PREFIX, ["RowKey", "accepted", "rejected"])
            if entity["RowKey"].removeprefix(PROGRESS_PREFIX) not in done
        )
        return sum(done.values()) + going

    def record_split(self, run_id: str, result: SplitResult) -> bool:
        """Record a split once; a repeated job's result loses (it read the same range)."""
        return self._create_once(run_id, split_row(result.split), asdict(result))

    def split_done(self, run_id: str, split: int) -> bool:
        return self._exists(run_id, split_row(split))

    def split_results(self, run_id: str) -> list[SplitResult]:
        results = [_decode(SplitResult, entity) for entity in self._rows(run_id, SPLIT_PREFIX)]
        return sorted(results, key=lambda r: r.split)

    def split_pieces(self, run_id: str) -> list[SplitPieces]:
        """Where each split's pieces are, in split order: every diff job reads them, and the
        whole records (counts, reasons) would cost a run the splits' records as many times as it
        has diff jobs."""
        columns = [item.name for item in fields(SplitPieces)]
        entities = self._rows(run_id, SPLIT_PREFIX, columns)
        return sorted((_decode(SplitPieces, e) for e in entities), key=lambda r: r.split)

    def save_split_progress(self, run_id: str, split: int, rows_read: int) -> None:
        """Rows a split has read so far: the stalled-run sweep sees the planning is alive."""
        entity = {"PartitionKey": run_id, "RowKey": split_progress_row(split), "rows": rows_read}
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def record_partition(self, run_id: str, result: PartitionResult) -> bool:
        """Record a partition's diff once; a duplicate job's result loses (it is the same)."""
        return self._create_once(run_id, partition_row(result.partition), asdict(result))

    def partitions_recorded(self, run_id: str, first: int, last: int) -> set[int]:
        """Which of partitions `first` to `last` have a result: one range query, however many."""
        low, high = partition_row(first), partition_row(last + 1)
        rows = self._between(run_id, low, high, ["RowKey"])
        return {int(row["RowKey"].removeprefix(PARTITION_PREFIX)) for row in rows}

    def partition_result(self, run_id: str, partition: int) -> PartitionResult | None:
        entity = self._get(run_id, partition_row(partition))
        return _decode(PartitionResult, entity) if entity else None

    def mark_delivery_queued(self, run_id: str, partition: int) -> None:
        entity = {"PartitionKey": run_id, "RowKey": partition_row(partition)}
        self._table.update_entity(
            {**entity, "delivery_queued": True},
            mode=UpdateMode.MERGE,
            retry_on_methods=MERGE_RETRIED_METHODS,
        )

    def _create_once(self, run_id: str, row: str, values: dict[str, Any]) -> bool:
        """Create the entity unless it exists; True for the writer that created it.

        An insert is a POST, which the SDK does not send again after a dropped connection (it
        may have landed): a job then failed, and its queue message came back 30 s later (a
        1M benchmark run took 20 s longer when Azurite reset one). Sent again here, an insert
        that had landed is found existing: False, as for a duplicate job, which every caller
        handles; the entity holds the same either way."""
        entity = {"PartitionKey": run_id, "RowKey": row, **_to_entity_values(values)}
        try:
            self._table.create_entity(entity, retry_on_methods=RETRIED_METHODS)
        except ResourceExistsError as exists:
            forget_traceback(exists)
            return False
        return True

    def _exists(self, partition: str, row: str) -> bool:
        try:
            self._table.get_entity(partition, row, select=["RowKey"])
        except ResourceNotFoundError as missing:
            forget_traceback(missing)
            return False
        return True

    def splits_recorded(self, run_id: str) -> int:
        """How many splits have a result, read without the results (`partitions_diffed`)."""
        return sum(1 for _ in self._rows(run_id, SPLIT_PREFIX, select=["RowKey"]))

    def partitions_diffed(self, run_id: str) -> int:
        """How many partitions have a result, read without the results: every diff job asks
        whether it was the last, so reading them all each time would cost the square of a
        run's partition count in entities read and decoded."""
        return sum(1 for _ in self._rows(run_id, PARTITION_PREFIX, select=["RowKey"]))

    def partition_results(self, run_id: str) -> list[PartitionResult]:
        results = [
            _decode(PartitionResult, entity) for entity in self._rows(run_id, PARTITION_PREFIX)
        ]
        return sorted(results, key=lambda r: r.partition)

    def saved_progress(self, run_id: str, chunk_index: int) -> SavedProgress:
        """The chunk's progress as last saved, with what a conditional save needs."""
        entity = self._get(run_id, progress_row(chunk_index))
        if entity is None:
            return SavedProgress(ChunkProgress(), None, None)
        metadata = entity.metadata
        return SavedProgress(
            _decode(ChunkProgress, entity), metadata["etag"], metadata.get("timestamp")
        )

    def save_progress(
        self, run_id: str, chunk_index: int, progress: ChunkProgress, etag: str | None
    ) -> str | None:
        """Save the chunk's progress only if nobody saved it since `etag` (None: it was never
        saved); the new ETag, or None when another attempt got there first."""
        entity = {"PartitionKey": run_id, "RowKey": progress_row(chunk_index)}
        entity.update(_to_entity_values(asdict(progress)))
        try:
            if etag is None:
                metadata = self._table.create_entity(entity)
            else:
                metadata = self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except ResourceExistsError as exists:
            forget_traceback(exists)
            return None
        except HttpResponseError as error:
            if error.status_code == 412:
                forget_traceback(error)
                return None
            raise
        return str(metadata["etag"])

    def _rows(self, run_id: str, prefix: str, select: list[str] | None = None) -> Any:
        """Entities of a run whose row key starts with `prefix` (a range query on the key)."""
        return self._between(run_id, prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), select)

    def _between(self, run_id: str, low: str, high: str, select: list[str] | None) -> Any:
        """Entities of a run whose row key is from `low` up to, not including, `high`."""
        query = f"PartitionKey eq '{_quote(run_id)}' and RowKey ge '{low}' and RowKey lt '{high}'"
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
            except ResourceExistsError as exists:
                forget_traceback(exists)
                continue
            except HttpResponseError as error:
                if error.status_code != 412:
                    raise
                forget_traceback(error)

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
            forget_traceback(error)

    def last_slot(self, export_name: str) -> datetime | None:
        entity = self._get(SCHEDULE_PARTITION, export_name)
        return datetime.fromisoformat(entity["slot"]) if entity else None

    def set_last_slot(self, export_name: str, slot: datetime) -> None:
        self._table.upsert_entity(
            {"PartitionKey": SCHEDULE_PARTITION, "RowKey": export_name, "slot": slot.isoformat()},
            retry_on_methods=MERGE_RETRIED_METHODS,
        )

    def _get(self, partition: str, row: str) -> Any:
        try:
            return self._table.get_entity(partition, row)
        except ResourceNotFoundError as missing:
            forget_traceback(missing)
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
    """A dataclass from its entity: dicts and lists were stored as JSON text. A property it
    lacks keeps the field's default, whether left out or null (as Azure answers a `$select` of
    a property an entity does not have)."""
    values: dict[str, Any] = {}
    for item in fields(cls):  # type: ignore[arg-type]  # fields of a dataclass type
        value = entity.get(item.name)
        if value is None:
            continue
        if item.type in ("dict[str, int]", "list[int]", "list[str]"):
            value = json.loads(value) if value else ({} if item.type.startswith("dict") else [])
        elif item.type == "datetime" and isinstance(value, str):
            value = datetime.fromisoformat(value)
        values[item.name] = value
    return cls(**values)


def _chunk_result(entity: Any) -> ChunkResult:
    """A chunk's outcome; one recorded by a version that delivered one partition per chunk
    holds `partition`, which is read as the list of one."""
    result = _decode(ChunkResult, entity)
    if "partitions" not in entity and "partition" in entity:
        result.partitions = [entity["partition"]]
    return result


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
