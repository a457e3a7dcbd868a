"""A split's pieces travel as one blob, read by range: one upload a split instead of one a
partition, the blob an attempt wrote is the one its record points at, and a run split by the
version before (a blob a piece) is still diffed. In process, on Azurite and the sandbox."""

from __future__ import annotations

import itertools
import json

import pytest
import zstandard
from azure.data.tables import UpdateMode

from shared.adapters.run_store import split_row
from shared.core.messages import ExportJob, PartitionJob, SplitJob
from shared.core.partitioning import partition_of
from shared.core.resource_names import JOBS_QUEUE, RUNS_CONTAINER, RUNS_TABLE
from shared.core.runs import Run, SplitResult, Status
from shared.pipeline.deliver_chunk import deliver_chunk
from shared.pipeline.diff_partition import diff_partition
from shared.pipeline.plan_export import plan_run
from shared.pipeline.run_files import (
    DamagedRunFile,
    packer,
    partition_piece_name,
    partition_pieces,
    piece_sections,
    read_rows,
    run_prefix,
    split_pieces_name,
    unpacked,
)
from shared.pipeline.run_source import range_rows
from shared.pipeline.split_source import split_and_record, split_source
from shared.pipeline.start import start_run
from tests.integration.conftest import (
    MESSY_HEADER,
    App,
    chunk_jobs,
    csv_bytes,
    export_definition,
    messy_rows,
    take,
)

HEADER = MESSY_HEADER
pytestmark = pytest.mark.usefixtures("small_partitions")


def _rows(count: int, mail: str = "example.com") -> list[dict[str, str]]:
    return messy_rows(count, "piece", mail)


def _start(app: App, name: str, rows: list[dict[str, str]]) -> tuple[Run, str]:
    path = f"pieces/{name}.csv"
    app.define([export_definition(name, path, f"Pieces {name}")])
    app.upload(path, csv_bytes(rows, HEADER))
    run = start_run(app.services, name, "test").run
    take(app, JOBS_QUEUE, ExportJob, run.run_id)
    plan_run(ExportJob(run.run_id, name), app.services)
    return run, path


def _split_all(app: App, run: Run) -> Run:
    for job in take(app, JOBS_QUEUE, SplitJob, run.run_id):
        split_source(job, app.services)
    split = app.services.runs.get(run.run_id)
    assert split is not None and split.partitions > 1 and split.splits >= 4, split
    return split


def _diff_and_deliver(app: App, run: Run) -> Run:
    for job in take(app, JOBS_QUEUE, PartitionJob, run.run_id):
        diff_partition(job, app.services)
    for chunk in chunk_jobs(app, run.run_id):
        deliver_chunk(chunk, app.services)
    final = app.services.runs.get(run.run_id)
    assert final is not None and final.is_final, final
    return final


def _expected(rows: list[dict[str, str]]) -> dict[str, str]:
    """Customer id -> email Braze should hold: the first valid row per id."""
    expected: dict[str, str] = {}
    for row in rows:
        if "@" in row["Email"] and row["CustomerId"].strip():
            expected.setdefault(row["CustomerId"], row["Email"])
    return expected


def _piece_blobs(app: App, run: Run) -> list[str]:
    prefix = f"{run_prefix(run.run_id)}partitions/"
    container = app.services.storage.container(RUNS_CONTAINER)
    return sorted(blob.name for blob in container.list_blobs(name_starts_with=prefix))


def test_each_split_uploads_its_pieces_as_one_blob_which_the_diffs_read_by_range(
    split_app: App,
) -> None:
    rows = _rows(2_500)
    run, _ = _start(split_app, "one-blob", rows)
    run = _split_all(split_app, run)
    splits = split_app.services.runs.split_results(run.run_id)

    assert _piece_blobs(split_app, run) == sorted(s.pieces_blob for s in splits)
    assert all(len(s.piece_ends) == run.partitions for s in splits)
    # Each piece is a frame of its own, so that the range read of it opens alone.
    for split in splits:
        joined = split_app.services.storage.read_bytes(RUNS_CONTAINER, split.pieces_blob)
        starts = [0, *split.piece_ends[:-1]]
        packed = [joined[a:b] for a, b in zip(starts, split.piece_ends, strict=True) if b > a]
        assert packed and all(piece[:4] == b"\x28\xb5\x2f\xfd" for piece in packed)
        frames = [zstandard.ZstdDecompressor().decompressobj().decompress(p) for p in packed]
        assert all(list(read_rows(frame.decode())) for frame in frames)
    # A job of several partitions reads one range of each split's blob for all of them.
    together = partition_pieces(split_app.services, run, range(run.partitions))
    assert sorted(together) == list(range(run.partitions))
    for partition in range(run.partitions):
        pieces = partition_pieces(split_app.services, run, [partition])[partition]
        assert together[partition] == pieces
        filed = [row for piece in pieces for row in read_rows(piece_sections(piece)[0])]
        assert len(filed) == sum(s.partition_rows[partition] for s in splits)
        ids = [json.loads(id_json) for _, id_json, *_ in filed]
        assert {partition_of(i, run.partitions) for i in ids} == {partition}
        orders = [order for order, *_ in filed]
        assert orders == sorted(orders)  # split order is source order

    final = _diff_and_deliver(split_app, run)
    expected = _expected(rows)
    assert final.status == Status.PARTIALLY_SUCCEEDED
    assert final.profiles_accepted == len(expected) and final.rows_rejected == 51
    users = split_app.braze_users()
    assert {i: users[i]["email"] for i in expected} == expected


def test_a_late_attempt_of_a_recorded_split_leaves_what_the_diffs_read_as_recorded(
    split_app: App,
) -> None:
    """A split's message came back while its first attempt was finishing, and the second
    attempt read the source after it was written again: other emails and other rows without
    an id, of the same lengths (the range still starts and ends at records, so the second
    attempt reads it; its pieces differ in size). The first attempt's record stands, and so
    do the pieces and the rejected rows it points at."""
    rows = _rows(2_500)
    rows[3]["CustomerId"] = " " * len(rows[3]["CustomerId"])
    rewritten = _rows(2_500, mail="exampl3.com")
    for n in (5, 7):
        rewritten[n]["CustomerId"] = " " * len(rewritten[n]["CustomerId"])
    run, path = _start(split_app, "late-attempt", rows)
    jobs = sorted(take(split_app, JOBS_QUEUE, SplitJob, run.run_id), key=lambda j: j.split)
    for job in jobs:
        split_source(job, split_app.services)
    split = split_app.services.runs.get(run.run_id)
    assert split is not None and split.partitions > 1 and len(jobs) >= 4

    split_app.upload(path, csv_bytes(rewritten, HEADER))
    export = split_app.services.definitions().export("late-attempt")
    late = jobs[0]
    split_and_record(
        split, export, late, range_rows(split, export, late, split_app.services), split_app.services
    )
    assert len(_piece_blobs(split_app, split)) == len(jobs) + 1  # the late attempt's own
    assert split_app.services.runs.split_results(run.run_id)[0].rows_rejected == 1

    final = _diff_and_deliver(split_app, split)
    expected = _expected(rows)
    assert final.profiles_accepted == len(expected)
    users = split_app.braze_users()
    assert {i: users[i]["email"] for i in expected} == expected
    blank = [e for e in split_app.rejected(final) if e["codes"] == ["customer_id_blank"]]
    assert [e["row"]["Email"] for e in blank] == ["user.3@example.com"]
    manifest = split_app.services.snapshots.current("late-attempt", "sandbox")
    assert manifest is not None and manifest.source_version == ""  # the source changed


def test_a_run_split_by_the_version_before_reads_a_blob_per_piece(split_app: App) -> None:
    """Splits recorded without a pieces blob wrote each piece as a blob of its own: a diff
    by this version reads those."""
    rows = _rows(2_500)
    run, _ = _start(split_app, "blob-a-piece", rows)
    run = _split_all(split_app, run)
    storage, table = split_app.services.storage, split_app.services.storage.table(RUNS_TABLE)
    for split in split_app.services.runs.split_results(run.run_id):
        joined = storage.read_bytes(RUNS_CONTAINER, split.pieces_blob)
        for partition, end in enumerate(split.piece_ends):
            start = split.piece_ends[partition - 1] if partition else 0
            name = partition_piece_name(run.run_id, partition, split.split)
            plain = unpacked(joined[start:end])  # as the version before wrote a piece
            storage.write_bytes(RUNS_CONTAINER, name, plain, "text/plain")
        storage.container(RUNS_CONTAINER).delete_blob(split.pieces_blob)
        entity = table.get_entity(run.run_id, split_row(split.split))
        del entity["pieces_blob"], entity["piece_ends"]
        table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    final = _diff_and_deliver(split_app, run)
    expected = _expected(rows)
    assert final.profiles_accepted == len(expected)
    users = split_app.braze_users()
    assert {i: users[i]["email"] for i in expected} == expected


def _planned_by_hand(app: App, name: str, splits: int) -> Run:
    """A run of its own export taken off the queue, as if planned into `splits` splits, whose
    split records a test then writes itself."""
    app.define([export_definition(name, f"pieces/{name}.csv", f"Pieces {name}")])
    run = start_run(app.services, name, "test").run
    take(app, JOBS_QUEUE, ExportJob, run.run_id)
    run.splits = splits
    app.services.runs.update(run)
    return run


def test_the_pieces_of_several_partitions_are_cut_from_one_range_of_each_split(
    split_app: App,
) -> None:
    """Hand-made layouts of six partitions: split 0 with nothing in partitions 1 to 4 (its
    range for them is empty, and not read), split 1 by the version before (a blob a piece),
    split 2 with empty pieces between full ones; asked for all, for some not adjacent, for
    the first and the last."""
    services, storage = split_app.services, split_app.services.storage
    run = _planned_by_hand(split_app, "layout", splits=3)
    first = [b'0\t"p0"\n', b"", 'two\t"Zoë 🎉"\n'.encode(), b"", b"", b'5\t"p5"\n']
    last = [b"a\n", b"", b"", b"", b"", b"z\n"]
    for split, pieces in ((0, last), (2, first)):
        blob = split_pieces_name(run.run_id, split, "attempt")
        storage.write_bytes(RUNS_CONTAINER, blob, b"".join(pieces), "application/octet-stream")
        ends = list(itertools.accumulate(len(piece) for piece in pieces))
        result = SplitResult(split, partitions=6, pieces_blob=blob, piece_ends=ends)
        services.runs.record_split(run.run_id, result)
    old = [f"old {p}, with a comma\n".encode() for p in range(6)]
    for p, piece in enumerate(old):
        name = partition_piece_name(run.run_id, p, 1)
        storage.write_bytes(RUNS_CONTAINER, name, piece, "application/octet-stream")
    services.runs.record_split(run.run_id, SplitResult(1, partitions=6))

    expected = {p: [x for x in (last[p], old[p], first[p]) if x] for p in range(6)}
    assert partition_pieces(services, run, range(6)) == expected
    for asked in ([1, 3, 4], [2, 4], [0], [5], [0, 5]):
        assert partition_pieces(services, run, asked) == {p: expected[p] for p in asked}
    for wrong in ([3, 1], [2, 2], []):
        with pytest.raises(ValueError, match="some, ascending"):
            partition_pieces(services, run, wrong)


def test_a_damaged_or_short_pieces_blob_fails_naming_the_blob_and_the_piece(
    split_app: App,
) -> None:
    """A flipped byte in one piece, and a blob shorter than its split's record says (which
    could otherwise drop a piece's matched records unseen): the diff's read names them."""
    services, storage = split_app.services, split_app.services.storage
    run = _planned_by_hand(split_app, "damaged", splits=1)
    pieces = []
    for text in (b'0\t"p0"\n' * 50, b'1\t"p1"\n' * 50):
        frame = packer()
        pieces.append(frame.compress(text) + frame.flush())
    flipped = bytearray(pieces[1])
    flipped[len(flipped) // 2] ^= 0x01
    blob = split_pieces_name(run.run_id, 0, "attempt")
    ends = list(itertools.accumulate(len(piece) for piece in pieces))
    services.runs.record_split(run.run_id, SplitResult(0, 2, pieces_blob=blob, piece_ends=ends))

    storage.write_bytes(RUNS_CONTAINER, blob, pieces[0] + flipped, "application/octet-stream")
    assert partition_pieces(services, run, [0]) == {0: [b'0\t"p0"\n' * 50]}
    with pytest.raises(DamagedRunFile, match=f"pieces blob {blob}, partition 1's piece: "):
        partition_pieces(services, run, [0, 1])

    storage.write_bytes(RUNS_CONTAINER, blob, b"".join(pieces)[:-4], "application/octet-stream")
    with pytest.raises(DamagedRunFile, match=f"pieces blob {blob}: {ends[1] - 4} bytes where"):
        partition_pieces(services, run, [0, 1])
