"""Queue messages: small, versioned, and refused when they are not what this code reads."""

import pytest

from shared.core.messages import ChunkJob, ExportJob, MessageError


def test_round_trip_and_size() -> None:
    job = ChunkJob(
        "vip-20261128T101500Z-abc123", "vip", 41, "runs/x/chunks/p0003-0001.tsv", 3000, 3
    )
    text = job.to_json()
    assert ChunkJob.from_json(text.encode()) == job
    assert len(text) < 512
    assert '"version": 2' in text


@pytest.mark.parametrize(
    ("reader", "text", "words"),
    [
        (ExportJob, "nonsense", "not JSON"),
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
