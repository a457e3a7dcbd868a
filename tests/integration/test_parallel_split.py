"""Splitting a large source in parallel byte ranges, in process on Azurite: the ranges together
read exactly what one reader reads (rows, lines, first-valid-row-wins, rejections), and a
whole-file problem in any range fails the run with its real line, before anything is sent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devtools.sample import make_segment
from shared.core.messages import ExportJob, SplitJob
from shared.core.resource_names import JOBS_QUEUE, SPLITS_QUEUE
from shared.core.runs import Run, Status
from shared.pipeline.plan_export import plan_run
from shared.pipeline.split_source import split_source
from shared.pipeline.start import start_run
from tests.integration.conftest import App, export_definition, run_in_process, take

SPLIT_MIB = 0.02  # about 20 KiB a range: a few thousand rows make a dozen ranges


@pytest.fixture
def split_app(quiet_app: App) -> App:
    """The in-process app with a tiny range size, so small files are cut into many ranges."""
    return App(
        {**quiet_app.env, "EXPORT_SPLIT_MIB": str(SPLIT_MIB)},
        quiet_app.definitions_path,
        quiet_app.sandbox,
    )


def _rejected(app: App, run: Run) -> list[dict[str, Any]]:
    return [json.loads(line) for line in app.blob_text(run.rejected_blob).splitlines()]


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
    rejected = _rejected(split_app, final)
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
    assert [(r["line"], r["codes"]) for r in _rejected(split_app, final)] == [
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
    jobs = take(split_app, SPLITS_QUEUE, SplitJob, run.run_id)
    assert len(jobs) > 1
    for job in jobs:
        split_source(job, split_app.services)

    final = split_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.FAILED
    physical_line = b"".join(data[:2_500]).count(b"\n") + 1
    assert f"line {physical_line} is not valid UTF-8" in final.message
    assert "split" in final.message
    assert split_app.sandbox_requests() == []
