"""Queue messages: small, versioned, and refused when they are not what this code reads."""

import base64
import json

import pytest

from shared.core.messages import (
    ChunkJob,
    ExportJob,
    MessageError,
    PartitionJob,
    SplitJob,
    planning_job,
)
from shared.pipeline.release import MAX_CHUNK_BLOBS


def test_round_trip_and_size() -> None:
    job = ChunkJob(
        "vip-20261128T101500Z-abc123", "vip", 41, ["runs/x/chunks/p0003-0001.tsv"], 3000, [3]
    )
    text = job.to_json()
    assert ChunkJob.from_json(text.encode()) == job
    assert len(text) < 512
    assert '"version": 3' in text


def test_a_chunk_of_the_most_blobs_release_groups_fits_a_queue_message() -> None:
    names = [f"runs/{'r' * 87}/chunks/p{p:04d}-0000.tsv" for p in range(MAX_CHUNK_BLOBS)]
    partitions = list(range(200, 200 + MAX_CHUNK_BLOBS))
    text = ChunkJob("r" * 87, "e" * 63, 10**6, names, 80_000, partitions).to_json()
    assert len(base64.b64encode(text.encode())) < 64 * 1024  # the Storage queue's cap


def test_a_chunk_job_queued_by_the_version_before_is_read_as_its_one_blob() -> None:
    text = (
        '{"kind": "chunk-job", "version": 2, "run_id": "r", "export_name": "e", '
        '"chunk_index": 4, "blob_name": "runs/r/chunks/p0001-0000.tsv", "rows": 9, '
        '"partition": 1}'
    )
    job = ChunkJob.from_json(text)
    assert job == ChunkJob("r", "e", 4, ["runs/r/chunks/p0001-0000.tsv"], 9, [1])


@pytest.mark.parametrize(
    ("reader", "text", "words"),
    [
        (ExportJob, "nonsense", "not JSON"),
        (ChunkJob, '{"kind": "chunk-job", "version": 3, "run_id": "r"}', "lacks"),
        (ChunkJob, '{"kind": "chunk-job", "version": 2, "run_id": "r"}', "lacks"),
        (
            ChunkJob,
            '{"kind": "chunk-job", "version": 1, "run_id": "r"}',
            "version 1 is not supported",
        ),
        (
            ExportJob,
            '{"kind": "export-job", "version": 2, "run_id": "r", "export_name": "e"}',
            "version 2",
        ),
        (ExportJob, '{"kind": "chunk-job", "version": 1}', "expected a 'export-job'"),
    ],
)
def test_unreadable_messages_are_refused(
    reader: type[ExportJob | ChunkJob], text: str, words: str
) -> None:
    with pytest.raises(MessageError, match=words):
        reader.from_json(text)


@pytest.mark.parametrize(
    "job",
    [
        ExportJob("r1", "e"),
        SplitJob("r1", "e", 2, 10, 32, 1_000, 2_000, 17),
        SplitJob("r1", "e", 3, 10, 32, 4_000, -1, 90, 1),
        PartitionJob("r1", "e", 5, 32),
        PartitionJob("r1", "e", 8, 32, 4),
    ],
)
def test_the_planning_queue_gives_each_step_its_own_job(
    job: ExportJob | SplitJob | PartitionJob,
) -> None:
    assert planning_job(job.to_json()) == job
    assert planning_job(job.to_json().encode()) == job


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (ChunkJob("r", "e", 0, ["b"], 1, [0]).to_json(), "expected a planning job"),
        ('{"version": 1, "run_id": "r"}', "expected a planning job"),
        ("[1, 2]", "expected a planning job"),
        ("{not json", "not JSON"),
        ('{"kind": "split-job", "version": 1, "run_id": "r"}', "split-job message lacks"),
    ],
)
def test_a_message_no_planning_step_reads_is_refused(text: str, words: str) -> None:
    with pytest.raises(MessageError, match=words):
        planning_job(text)


@pytest.mark.parametrize(
    ("start", "end", "file_index"),
    [(0, -1, 4), (1_000, 2_000, -1)],
    ids=["cdm-file", "plain-range"],
)
def test_a_split_job_the_previous_version_queued_is_read_as_the_range_it_meant(
    start: int, end: int, file_index: int
) -> None:
    """Version 1 read a CDM folder's partition file `split` whole (to the end, -1), and a
    plain file's ranges to an offset."""
    text = json.dumps(
        {
            "kind": "split-job",
            "version": 1,
            "run_id": "r1",
            "export_name": "e",
            "split": 4,
            "splits": 10,
            "partitions": 32,
            "start": start,
            "end": end,
            "first_line": 1,
        }
    )
    assert planning_job(text) == SplitJob("r1", "e", 4, 10, 32, start, end, 1, file_index)


# A partition job as version 1 wrote it (it diffed one partition, and had no `count`).
VERSION_1_PARTITION_JOB = {
    "kind": "partition-job",
    "version": 1,
    "run_id": "r1",
    "export_name": "e",
    "partition": 7,
    "partitions": 32,
}


def test_a_partition_job_the_previous_version_queued_is_read_as_its_one_partition() -> None:
    job = planning_job(json.dumps(VERSION_1_PARTITION_JOB))
    assert job == PartitionJob("r1", "e", 7, 32, 1)
    assert isinstance(job, PartitionJob) and list(job.numbers) == [7]


def test_a_partition_job_of_one_is_written_as_the_previous_version_reads_it() -> None:
    """During a deployment an earlier version may take a first export's jobs; it reads version
    1, and `count` only from version 2, which it refuses rather than diff the first partition
    of several alone (the others would never be diffed)."""
    assert json.loads(PartitionJob("r1", "e", 7, 32).to_json()) == VERSION_1_PARTITION_JOB
    several = PartitionJob("r1", "e", 8, 32, 4)
    assert list(several.numbers) == [8, 9, 10, 11]
    assert json.loads(several.to_json())["version"] == 2
    assert planning_job(several.to_json()) == several


@pytest.mark.parametrize(
    ("partition", "partitions", "count"),
    [(0, 32, 0), (-1, 32, 1), (30, 32, 4), (32, 32, 1), (0, 32, "4"), (0, 32, 1.5), (0, 32, True)],
)
def test_a_partition_job_naming_no_partition_of_its_run_is_refused(
    partition: int, partitions: int, count: object
) -> None:
    where = {"partition": partition, "partitions": partitions, "count": count}
    text = json.dumps({**VERSION_1_PARTITION_JOB, "version": 2, **where})
    with pytest.raises(MessageError, match="a partition job"):
        planning_job(text)
