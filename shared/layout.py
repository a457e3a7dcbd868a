"""Where a run's files live in the runs container: one place, so every stage agrees."""

from __future__ import annotations


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def rejected_prefix(run_id: str) -> str:
    return f"runs/{run_id}/rejected/"


def source_files_blob_name(run_id: str) -> str:
    """The CDM partition files of a run, in order (row positions index into it)."""
    return f"runs/{run_id}/partitions.json"


def partition_piece_name(run_id: str, partition: int, split: int) -> str:
    """One split's valid rows of one hash partition: `[order, customer id, object or null]`
    per line; the partition is its pieces in split order, which is source order."""
    return f"runs/{run_id}/partitions/p{partition:04d}-s{split:04d}.jsonl"


def splits_blob_name(run_id: str) -> str:
    """The split jobs of a run cut into byte ranges, and the CSV header the later ones lack."""
    return f"runs/{run_id}/splits.json"


def plan_rejected_name(run_id: str, split: int) -> str:
    """Rows one split rejected, in source order."""
    return f"{rejected_prefix(run_id)}plan-{split:04d}.jsonl"


def chunk_blob_name(run_id: str, partition: int, index: int) -> str:
    """What to send: `order <TAB> data points <TAB> object` per line."""
    return f"runs/{run_id}/chunks/p{partition:04d}-{index:04d}.tsv"


def replay_chunk_prefix(run_id: str, round_: int) -> str:
    """The chunks of a run's n-th replay round (they mix partitions)."""
    return f"runs/{run_id}/chunks/r{round_:02d}-"


def replay_chunk_name(run_id: str, round_: int, index: int) -> str:
    return f"{replay_chunk_prefix(run_id, round_)}{index:04d}.tsv"


def pending_snapshot_name(run_id: str, partition: int) -> str:
    return f"runs/{run_id}/snapshot/p{partition:04d}.jsonl"


def duplicates_blob_name(run_id: str, partition: int) -> str:
    return f"{rejected_prefix(run_id)}partition-{partition:04d}.jsonl"


def dry_run_blob_name(run_id: str) -> str:
    return f"runs/{run_id}/dry-run/requests.jsonl"


def report_blob_name(run_id: str) -> str:
    return f"runs/{run_id}/report.json"


def rejected_blob_name(run_id: str) -> str:
    return f"runs/{run_id}/rejected.jsonl"
