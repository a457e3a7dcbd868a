"""Splitting a large source in parallel byte ranges, in process on Azurite: the ranges together
read exactly what one reader reads (rows, lines, first-valid-row-wins, rejections, a 50 MB
record wherever the ranges fall), and a whole-file problem in any range fails the run with its
real line, before anything is sent."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from devtools.sample import make_segment
from shared.adapters.storage import Storage
from shared.core.messages import ExportJob, SplitJob
from shared.core.resource_names import JOBS_QUEUE
from shared.core.runs import Status
from shared.pipeline import run_source
from shared.pipeline.plan_export import plan_run
from shared.pipeline.run_files import rejected_prefix, splits_blob_name
from shared.pipeline.split_source import split_source
from shared.pipeline.start import start_run
from tests.integration.conftest import App, export_definition, run_in_process, take


@pytest.mark.parametrize("bom", [True, False])
def test_ranges_read_exactly_what_one_reader_reads(split_app: App, bom: bool) -> None:
    # Quoted newlines, commas and quotes in fields, emoji, malformed rows, and duplicates whose
    # first valid row sits in an earlier range than the duplicate.
    sample = make_segment(4_000, invalid_every=29, bom=bom, segment="Split – Zoë 🎉")
    name = f"ranges-{'bom' if bom else 'plain'}"  # each its own snapshot
    split_app.upload(f"split/{name}.csv", sample.data)
    split_app.define([export_definition(name, f"split/{name}.csv", sample.segment, chunk_size=700)])

    final = run_in_process(split_app, name)

    assert final.splits >= 10, final.splits
    assert split_app.braze_users() == sample.expected
    rejected = split_app.rejected(final)
    assert {r["line"]: r["codes"][0] for r in rejected} == sample.invalid_lines
    assert [r["line"] for r in rejected] == sorted(r["line"] for r in rejected)
    assert final.rows_read == sample.rows == final.rows_valid + final.rows_rejected
    assert final.profiles_accepted == len(sample.expected)
    assert final.status == Status.PARTIALLY_SUCCEEDED


def test_json_lines_split_by_line(split_app: App) -> None:
    rows = [
        {"CustomerId": f"j-{n:05d}", "Email": f"j{n}@example.com", "FirstName": "Zoë\n🎉"}
        for n in range(3_000)
    ]
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    lines[1_500] = "[not an object]"
    split_app.upload("split/rows.jsonl", ("\n".join(lines) + "\n").encode())
    export = export_definition(
        "jsonl-ranges",
        "split/rows.jsonl",
        "J",
        mapping={
            "customer_id": "CustomerId",
            "email": "Email",
            "attributes": [{"column": "FirstName", "attribute": "first_name"}],
        },
    )
    split_app.define([export])

    final = run_in_process(split_app, "jsonl-ranges")

    assert final.splits > 1
    assert (final.rows_read, final.rows_valid) == (3_000, 2_999)
    assert [(r["line"], r["codes"]) for r in split_app.rejected(final)] == [
        (1_501, ["malformed_row"])
    ]
    users = split_app.braze_users()
    assert len(users) == 2_999 and users["j-02999"]["first_name"] == "Zoë\n🎉"


def test_a_bad_line_in_a_later_range_fails_the_run_naming_its_line(split_app: App) -> None:
    sample = make_segment(3_000, invalid_every=10_000)
    data = sample.data.splitlines(keepends=True)
    data[2_500] = b"bad-\xff-utf8,x@example.com,Ann,1,true,1990-01-01,\n"
    split_app.upload("split/broken.csv", b"".join(data))
    split_app.define([export_definition("broken-range", "split/broken.csv", "B")])
    run = start_run(split_app.services, "broken-range", "test").run
    take(split_app, JOBS_QUEUE, ExportJob, run.run_id)

    plan_run(ExportJob(run.run_id, "broken-range"), split_app.services)
    jobs = take(split_app, JOBS_QUEUE, SplitJob, run.run_id)
    assert len(jobs) > 1
    for job in jobs:
        split_source(job, split_app.services)

    final = split_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.FAILED
    physical_line = b"".join(data[:2_500]).count(b"\n") + 1
    assert f"line {physical_line} is not valid UTF-8" in final.message
    assert "split" in final.message
    assert split_app.sandbox_requests() == []


MIB = 2**20
HUGE_MIB = 50
CAP = "1 MiB (1,048,576 bytes)"
JSONL_MAPPING = {
    "customer_id": "CustomerId",
    "email": "Email",
    "attributes": [{"column": "FirstName", "attribute": "first_name"}],
}


def _huge_record(fmt: str, line_breaks: bool) -> tuple[bytes, bytes, bytes]:
    """A 50 MB record as (its start, a 1 MiB piece to repeat HUGE_MIB times, its end): a note
    full of doubled (or escaped) quotes, commas and emoji, with or without line breaks."""
    if fmt == "jsonl":
        piece = b'a \\"q\\", \xf0\x9f\x8e\x89;xy' * (MIB // 16)
        opening = b'{"CustomerId": "huge-1", "Email": "huge@example.com", "Note": "'
        return opening, piece, b'"}\n'
    piece = b'a ""q"", \xf0\x9f\x8e\x89;xy' * (MIB // 16)
    if line_breaks:
        piece = piece[:-2] + b"\r\n"
    return b'huge-1,huge@example.com,H,1,true,1990-01-01,"', piece, b'"\n'


def _jsonl_rows(prefix: str, count: int) -> bytes:
    """`count` JSON Lines rows, the middle one not an object."""
    rows = [
        json.dumps({"CustomerId": f"{prefix}-{n:04d}", "Email": f"{n}@x.com", "FirstName": "Zoë"})
        for n in range(count)
    ]
    rows[count // 2] = "[not an object]"
    return ("\n".join(rows) + "\n").encode()


@pytest.mark.parametrize(
    ("fmt", "line_breaks"),
    [("csv", False), ("csv", True), ("jsonl", False)],
    ids=["csv-one-line", "csv-quoted-line-breaks", "jsonl"],
)
def test_a_50_mb_record_is_one_rejected_row_wherever_the_ranges_fall(
    split_app: App, fmt: str, line_breaks: bool
) -> None:
    """Nearly every range boundary aimed at falls inside the record: each moves to the record
    after it, the record is rejected once with its lines and size, and every other row is read
    once, at its real line."""
    opening, piece, closing = _huge_record(fmt, line_breaks)
    assert len(piece) == MIB
    if fmt == "csv":
        before = make_segment(1_000, segment="Huge", invalid_every=37, bom=False, id_prefix="a")
        after = make_segment(1_000, segment="Huge", invalid_every=41, bom=False, id_prefix="b")
        head, tail = before.data, after.data.split(b"\n", 1)[1]  # `after` without its header
    else:
        head, tail = _jsonl_rows("a", 1_000), _jsonl_rows("b", 1_000)
    line = head.count(b"\n") + 1
    lines = opening.count(b"\n") + HUGE_MIB * piece.count(b"\n") + closing.count(b"\n")
    name = f"huge-{fmt}-{'lines' if line_breaks else 'line'}"
    split_app.upload(
        f"split/{name}.{fmt}",
        itertools.chain([head, opening], itertools.repeat(piece, HUGE_MIB), [closing, tail]),
    )
    overrides = {"mapping": JSONL_MAPPING} if fmt == "jsonl" else {}
    split_app.define([export_definition(name, f"split/{name}.{fmt}", "Huge", **overrides)])

    final = run_in_process(split_app, name)

    plan = json.loads(split_app.blob_text(splits_blob_name(final.run_id)))
    first_lines = [SplitJob.from_json(job).first_line for job in plan["jobs"]]
    assert final.splits > 1 and line + lines in first_lines, first_lines
    assert not [n for n in first_lines if line < n < line + lines]
    rejected = {r["line"]: r for r in split_app.rejected(final)}
    entry = rejected.pop(line)
    where = f"line {line}" if lines == 1 else f"lines {line} to {line + lines - 1}"
    size = len(opening) + HUGE_MIB * MIB + len(closing)
    assert (entry["codes"], entry["reasons"], entry["row"]) == (
        ["row_too_long"],
        [f"row on {where} is {size:,} bytes long; a record may have at most {CAP}"],
        {},
    )
    shift = line + lines - 2  # `after`'s first row is on line 2 of its own file
    if fmt == "csv":
        later = {n + shift: code for n, code in after.invalid_lines.items()}
        codes = {**before.invalid_lines, **later}
        assert split_app.braze_users() == {**before.expected, **after.expected}
    else:
        codes = {501: "malformed_row", shift + 502: "malformed_row"}
        assert len(split_app.braze_users()) == 1_998
    assert {n: r["codes"][0] for n, r in rejected.items()} == codes
    assert final.rows_read == 2_001
    assert final.rows_unidentified == 1 + list(codes.values()).count("malformed_row")
    assert final.status == Status.PARTIALLY_SUCCEEDED


def test_only_the_jobs_that_rejected_rows_write_a_part_of_the_rejected_rows(
    split_app: App,
) -> None:
    """A split or a diff that rejected nothing uploads no empty part (finalizing then reads
    none): a clean source leaves none, and a source with one row the split rejects (a blank
    id) and one a diff rejects (an invalid email) leaves exactly those two parts, merged in
    line order."""
    parts = {}
    for name, invalid_every in (("clean", 5_000), ("two-bad", 2_000)):
        sample = make_segment(4_000, invalid_every=invalid_every, segment=f"Parts {name}")
        split_app.upload(f"split/{name}.csv", sample.data)
        split_app.define([export_definition(name, f"split/{name}.csv", sample.segment)])
        split_app.reset_sandbox()  # the two segments name the same customers
        final = run_in_process(split_app, name)
        assert final.splits >= 10 and split_app.braze_users() == sample.expected
        prefix = rejected_prefix(final.run_id)
        blobs = split_app.services.storage.container("export-runs").list_blobs(prefix)
        parts[name] = sorted(blob.name.removeprefix(prefix).split("-")[0] for blob in blobs)
        rejected = split_app.rejected(final)
        assert {r["line"]: r["codes"][0] for r in rejected} == sample.invalid_lines
        assert [r["line"] for r in rejected] == sorted(sample.invalid_lines)
    assert parts == {"clean": [], "two-bad": ["partition", "plan"]}


@pytest.mark.parametrize("head_bytes", [1 << 20, 40], ids=["header-in-head", "header-past-head"])
def test_a_file_cut_into_ranges_has_its_header_read_from_the_plans_scan(
    split_app: App, monkeypatch: pytest.MonkeyPatch, head_bytes: int
) -> None:
    """The plan reads the header from the first bytes its digest read kept, not from another
    download: a header with a quoted line break, a comma and an accent is read whole, and one
    that does not end within those bytes is read from the file as before. A mapped column the
    header lacks fails the run, naming it, before anything is sent."""
    monkeypatch.setattr(run_source, "HEAD_BYTES", head_bytes)
    name = f"header-{head_bytes}"  # each its own snapshot
    sample = make_segment(4_000, invalid_every=5_000, segment="Header")
    header, rest = sample.data.split(b"\n", 1)
    odd = '"Note, ""long""\nand Zoë"'.encode()
    data = header.replace(b"Note", odd) + b"\n" + rest
    split_app.upload(f"split/{name}.csv", data)
    definition = export_definition(name, f"split/{name}.csv", sample.segment)
    for attribute in definition["mapping"]["attributes"]:
        if attribute["column"] == "Note":
            attribute["column"] = 'Note, "long"\nand Zoë'
    split_app.define([definition])
    split_app.reset_sandbox()
    reads = _source_reads(split_app, monkeypatch, f"split/{name}.csv")

    final = run_in_process(split_app, name)

    assert final.splits >= 10 and final.rows_rejected == 0, final.message
    assert split_app.braze_users() == sample.expected
    # A read per range (the digest's goes through `Storage.digest`); a read of the file from
    # its start, for the header, only when the header does not end within the head.
    assert len(reads) >= final.splits and reads.count(None) == (0 if head_bytes > 100 else 1)

    definition["mapping"]["attributes"].append({"column": "Missing", "attribute": "missing"})
    split_app.define([definition])
    split_app.mark_sandbox_requests()
    failed = run_in_process(split_app, name, full_refresh=True)
    assert failed.status == Status.FAILED and "['Missing'] not in the CSV header" in failed.message
    assert split_app.sandbox_requests() == []


def _source_reads(app: App, monkeypatch: pytest.MonkeyPatch, path: str) -> list[int | None]:
    """The offset of every download of the source from now on (None: from its start)."""
    reads: list[int | None] = []
    read_chunks = Storage.read_chunks

    def counted(storage: Storage, container: str, name: str, offset: Any = None, *a: Any) -> Any:
        if f"{container}/{name}" == f"segments/{path}":
            reads.append(offset)
        return read_chunks(storage, container, name, offset, *a)

    monkeypatch.setattr(Storage, "read_chunks", counted)
    return reads
