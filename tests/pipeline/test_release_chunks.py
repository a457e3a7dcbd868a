"""How release turns the partitions' chunk blobs into delivery jobs.

Small blobs (a delta's few changes per partition) travel together up to the run's chunk size,
so they fill whole requests and take one queue message; full chunks stay alone; a run released
by a version that did not group (chunk size 0) lists one job per blob, as it was queued.
"""

from __future__ import annotations

from shared.core.runs import PartitionResult, Run, SplitResult
from shared.pipeline.release import MAX_CHUNK_BLOBS, chunk_jobs, summarize
from shared.pipeline.run_files import chunk_blob_name
from shared.pipeline.split_source import _largest


def _run(chunk_size: int) -> Run:
    return Run("r-1", "vip", "VIP", "sandbox", "segments/vip.csv", "test", chunk_size=chunk_size)


def _results(*chunk_rows: list[int]) -> list[PartitionResult]:
    return [PartitionResult(p, chunk_rows=rows) for p, rows in enumerate(chunk_rows)]


def test_small_blobs_travel_together_up_to_the_chunk_size_in_partition_order() -> None:
    results = _results([40_000, 300], [200], [], [39_600], [100, 40_000])
    jobs = chunk_jobs(_run(40_000), results)
    name = chunk_blob_name
    assert [(job.blob_names, job.rows, job.partitions) for job in jobs] == [
        ([name("r-1", 0, 0)], 40_000, [0]),
        ([name("r-1", 0, 1), name("r-1", 1, 0)], 500, [0, 1]),
        ([name("r-1", 3, 0), name("r-1", 4, 0)], 39_700, [3, 4]),
        ([name("r-1", 4, 1)], 40_000, [4]),
    ]
    assert [job.chunk_index for job in jobs] == [0, 1, 2, 3]


def test_a_job_names_each_partition_its_blobs_came_from_once() -> None:
    (job,) = chunk_jobs(_run(1_000), _results([], [], [300, 200]))
    assert (job.partitions, job.rows, len(job.blob_names)) == ([2], 500, 2)


def test_one_job_names_at_most_the_blobs_a_queue_message_can_hold() -> None:
    jobs = chunk_jobs(_run(40_000), _results(*([[1]] * (MAX_CHUNK_BLOBS + 6))))
    assert [len(job.blob_names) for job in jobs] == [MAX_CHUNK_BLOBS, 6]
    assert sum(job.rows for job in jobs) == MAX_CHUNK_BLOBS + 6


def test_a_run_released_without_a_chunk_size_lists_one_job_per_blob() -> None:
    jobs = chunk_jobs(_run(0), _results([5, 7], [3]))
    assert [(len(job.blob_names), job.rows, job.partitions) for job in jobs] == [
        (1, 5, [0]),
        (1, 7, [0]),
        (1, 3, [1]),
    ]


def test_planned_requests_count_whole_batches_of_the_grouped_jobs() -> None:
    """32 partitions of 5 changed profiles: 3 requests of 75, 75 and 10, not 32 of 5."""
    run = _run(40_000)
    results = _results(*([[5]] * 32))
    summarize(run, results, [], objects_per_request=75)
    assert run.requests_planned == 3


def test_a_run_delivering_while_diffing_has_one_job_per_partition_numbered_by_it() -> None:
    run = _run(40_000)
    run.delivers_while_diffing = True
    jobs = chunk_jobs(run, _results([40_000, 300], [], [7]))
    name = chunk_blob_name
    assert [(job.chunk_index, job.blob_names, job.rows, job.partitions) for job in jobs] == [
        (0, [name("r-1", 0, 0), name("r-1", 0, 1)], 40_300, [0]),
        (1, [], 0, [1]),  # nothing to send, but the numbers stay 0..partitions-1
        (2, [name("r-1", 2, 0)], 7, [2]),
    ]


def test_the_largest_partition_is_known_only_when_every_split_counted_its_rows() -> None:
    counted = [
        SplitResult(0, 3, partition_rows=[5, 0, 2]),
        SplitResult(1, 3, partition_rows=[1, 4, 2]),
    ]
    assert _largest(counted) == 6
    older = [counted[0], SplitResult(1, 3)]  # a split by a version that did not count
    assert _largest(older) is None  # so the rows read bound the jobs instead
