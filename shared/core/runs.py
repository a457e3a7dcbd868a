"""A run and its parts (splits, partitions, chunks): the records every stage reads and updates."""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    DELIVERING = "delivering"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    STOPPED = "stopped"  # a safety valve held the run before anything was sent


DUPLICATE_REASON = "duplicate_customer_id"  # a later valid row for an id already seen
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
    # Rows of a run whose planning failed that no diff validated: neither valid nor rejected.
    rows_not_validated: int = 0
    chunks_planned: int = 0
    chunks_total: int | None = None
    # The export's chunk size when the run was released: small chunk blobs are grouped up to it
    # (`release.chunk_jobs`), and anything that lists the run's chunks again must group alike.
    chunk_size: int = 0
    # Each partition goes to Braze as soon as it is diffed, one delivery job per partition
    # numbered by it, instead of all at the release: decided when the splits finish, only where
    # no safety valve can stop the run (`release.delivers_while_diffing`).
    delivers_while_diffing: bool = False
    # Partitions each diff job takes, one after another: more than one for a delta whose
    # splits filed most rows by the snapshot's index (`split_source.partitions_per_job`).
    partitions_per_job: int = 1
    profiles_accepted: int = 0
    profiles_rejected_by_braze: int = 0
    requests_sent: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    validation_rejections: dict[str, int] = field(default_factory=dict)
    replay_round: int = 0
    splits: int = 0  # split jobs the source was cut into (1: split inline by plan_export)
    split_finished_at: datetime | None = None
    # The diff against the previous snapshot (core/fingerprints.py, pipeline/diff_partition.py).
    partitions: int = 0
    mapping_fingerprint: str = ""
    previous_snapshot: str = ""
    previous_partitions: int = 0
    previous_profiles: int = 0
    previous_code_version: str = ""  # the code that planned the snapshot's run (`Manifest`)
    full_refresh_reason: str = ""
    # The source files' versions with the export's definition (see plan_export._source_version);
    # when they equal the snapshot's, the run reads nothing and `unchanged_since` names the run
    # whose snapshot it kept.
    source_version: str = ""
    # JSON `[[file, ETag], ...]` of the bytes the version was computed from: a run vouches for
    # its version only if none was written again before it finished.
    source_etags: str = ""
    # The app's code when the run was planned (`run_source.code_digest`): row digests are seeded
    # by it, and a diff on other code (a deployment mid-run) validates every row.
    code_version: str = ""
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
    summary_blob: str = ""  # the report in Markdown, without personal data
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


@dataclass(kw_only=True)
class DeliveryCounts:
    """What Braze answered for a chunk's batches: its progress and its result both carry it."""

    accepted: int = 0
    rejected: int = 0
    requests: int = 0
    data_points: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    # One append blob per attempt that rejected rows, and how many batches of it are recorded:
    # lines of a batch answered but never recorded (the attempt died) are not counted.
    rejected_blobs: list[str] = field(default_factory=list)
    rejected_until: list[int] = field(default_factory=list)
    unlisted: int = 0  # rows counted as failed that could not be listed (blob unreadable)
    failure: str = ""


@dataclass(kw_only=True)
class ChunkResult(DeliveryCounts):
    """Outcome of delivering one chunk, written once by the worker that delivered it."""

    chunk_index: int
    rows: int
    finished_at: datetime = field(default_factory=utcnow)
    partitions: list[int] = field(default_factory=list)  # as in its ChunkJob
    round: int = 0  # 0 for the run's own chunks, n for the n-th replay of its rejected rows


@dataclass
class SplitResult:
    """What one split of the source read: counts, rejection reasons and its rejected rows."""

    split: int
    partitions: int = 0
    rows_read: int = 0
    rows_matched: int = 0  # of rows_read: filed by the snapshot's index, as matched records
    rows_rejected: int = 0
    unidentified: int = 0  # malformed rows: whose they are cannot be told
    reasons: dict[str, int] = field(default_factory=dict)
    rejected_blob: str = ""
    # Rows filed under each partition (empty from a version that did not count them): a diff's
    # sends are at most its rows, which bounds its chunk blobs before it runs.
    partition_rows: list[int] = field(default_factory=list)
    # The blob of the split's pieces (`run_files.split_pieces_name`) and where in it each
    # partition's piece ends; none from a version that wrote a blob per piece.
    pieces_blob: str = ""
    piece_ends: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class SplitPieces:
    """Where one split's pieces are (`SplitResult.pieces_blob` and `piece_ends`), which every
    diff reads; none from a version that wrote a blob per piece."""

    split: int
    pieces_blob: str = ""
    piece_ends: list[int] = field(default_factory=list)


@dataclass
class PartitionResult:
    """What one partition's diff found and which chunk blobs it wrote for delivery."""

    partition: int
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    rejected: int = 0  # rows rejected by validation here (their ids were usable)
    reasons: dict[str, int] = field(default_factory=dict)  # of those rows
    duplicates: int = 0
    objects: int = 0
    removals_held: int = 0
    data_points: int = 0
    array_cap_warnings: int = 0
    chunk_rows: list[int] = field(default_factory=list)
    rejected_blob: str = ""
    snapshot_profiles: int = 0  # in this run's snapshot partition if Braze accepts everything
    array_cap_examples: list[str] = field(default_factory=list)
    # Delivering while diffing: the partition's job was queued. A repeated diff job queues it
    # only if not, so a job goes twice only after a crash between the two.
    delivery_queued: bool = False
    # Recorded instead of a diff when a run delivering while diffing ended in planning: no diff
    # of this partition will count, and no job of it will come.
    abandoned: bool = False


def sum_diffs(run: Run, results: list[PartitionResult]) -> None:
    """What the partitions' diffs found, into the run: set, never added, so summing again
    counts once."""
    run.profiles_new = sum(r.new for r in results)
    run.profiles_changed = sum(r.changed for r in results)
    run.profiles_unchanged = sum(r.unchanged for r in results)
    run.profiles_removed = sum(r.removed for r in results)
    run.removals_held = sum(r.removals_held for r in results)
    run.objects_planned = sum(r.objects for r in results)
    run.data_points_estimated = sum(r.data_points for r in results)
    run.array_cap_warnings = sum(r.array_cap_warnings for r in results)


def valid_rows(results: list[PartitionResult]) -> int:
    """The rows the partitions' diffs found valid: each member's first valid row, whether its
    profile is new, changed or unchanged."""
    return sum(r.new + r.changed + r.unchanged for r in results)


def rejection_reasons(
    split_reasons: list[dict[str, int]], results: list[PartitionResult]
) -> dict[str, int]:
    """Rows rejected by validation, by reason: in the splits (unusable ids, unreadable rows)
    and in the partitions (validated there), with the duplicates."""
    reasons: Counter[str] = Counter()
    for tally in [*split_reasons, *(r.reasons for r in results)]:
        reasons.update(tally)
    if duplicates := sum(r.duplicates for r in results):
        reasons[DUPLICATE_REASON] = duplicates
    return dict(reasons)


@dataclass(kw_only=True)
class ChunkProgress(DeliveryCounts):
    """Batches of a chunk that Braze already answered, so a redelivery resumes after them."""

    batches_done: int = 0
    batch_size: int = 0  # fixed at the first attempt, so a resume cuts the same batches
    # The delivery attempt that holds the chunk ("" when none): a second attempt of the same
    # chunk waits while the holder keeps saving, instead of sending the chunk again.
    holder: str = ""


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
