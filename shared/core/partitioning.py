"""Which partition a customer id belongs to, and how many partitions a source needs.

The hash is stable across runs and processes, so a snapshot's partition holds the same ids as
the run's partition of the same number (or, after a re-partitioning, a known set of them).
"""

from __future__ import annotations

from hashlib import blake2b

PARTITION_TARGET_BYTES = 4 * 1024 * 1024  # of plain source text per partition
GZIP_RATIO = 5  # a gzip file holds about five times its size in text
MAX_PARTITIONS = 256  # one open temporary file per partition while planning


def id_hash(customer_id: str) -> int:
    """A stable 64-bit hash of the customer id: it picks the partition in every run."""
    return int.from_bytes(blake2b(customer_id.encode(), digest_size=8).digest())


def partition_of(customer_id: str, partitions: int) -> int:
    return id_hash(customer_id) % partitions


def partition_count(source_bytes: int, compressed: bool) -> int:
    """A power of two that keeps one partition near 4 MiB of source text, so the work per
    partition (and a partition worker's memory) stays flat however large the segment grows."""
    text_bytes = source_bytes * (GZIP_RATIO if compressed else 1)
    count = 1
    while count < MAX_PARTITIONS and count * PARTITION_TARGET_BYTES < text_bytes:
        count *= 2
    return count


def old_partitions_for(partition: int, partitions: int, old_partitions: int) -> list[int]:
    """The previous snapshot's partitions that can hold ids of `partition` (both powers of two).

    The hash modulo a power of two keeps its low bits, so the ids of new partition p live in the
    old partitions congruent to p modulo the smaller count.
    """
    if old_partitions <= partitions:
        return [partition % old_partitions]
    return list(range(partition, old_partitions, partitions))
