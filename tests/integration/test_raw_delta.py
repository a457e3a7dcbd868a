"""Delta runs of a large file (split in parallel byte ranges), in process on Azurite and the
sandbox: rows whose bytes the snapshot holds are filed by their raw digest without being
parsed, and every outcome is the one reading every row gives: what is sent, who leaves,
duplicates, rejections, and what happens when the raw cut, the index or the code cannot be
trusted."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
from typing import Any

import numpy as np
import pytest
from azure.storage.blob import ContentSettings

from shared.adapters.storage import Storage
from shared.core.fingerprints import CONTROL_KEYS, fingerprint
from shared.core.partitioning import partition_count, partition_of
from shared.core.raw_records import digest_records, raw_blocks, raw_digest_seed
from shared.core.resource_names import SNAPSHOTS_CONTAINER
from shared.core.runs import Run
from shared.pipeline import diff_partition, plan_export, run_source
from shared.pipeline.run_files import matched_records, partition_pieces, piece_sections
from tests.integration.conftest import (
    MESSY_HEADER,
    SPLIT_MIB,
    App,
    export_definition,
    messy_row,
    run_counts,
    run_in_process,
)

HEADER = MESSY_HEADER


def _row(n: int, **changes: str) -> dict[str, str]:
    return {**messy_row(n, "raw"), **changes}


def _csv(rows: list[dict[str, str]], header: list[str] = HEADER) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, header, lineterminator="\r\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return ("\ufeff" + text.getvalue()).encode()


def _define(app: App, name: str) -> str:
    path = f"raw/{name}.csv"
    app.define([export_definition(name, path, f"Raw {name}", chunk_size=500)])
    return path


def _sent(app: App) -> dict[str, dict[str, Any]]:
    return {o["external_id"]: o for b in app.sandbox_requests() for o in b["attributes"]}


def _filed_by_bytes(app: App, run: Run) -> int:
    """Rows of the run's pieces filed by their raw digest (matched records)."""
    pieces = partition_pieces(app.services, run, range(run.partitions)).values()
    return sum(len(matched_records(piece_sections(p)[1])) for part in pieces for p in part)


def _lines_filed_by_bytes(app: App, run: Run) -> set[int]:
    """The lines of the run's rows filed by their raw digest (a file's rows are ordered by
    line)."""
    pieces = partition_pieces(app.services, run, range(run.partitions)).values()
    records = [matched_records(piece_sections(p)[1]) for part in pieces for p in part]
    return {order for found in records for order in found["order"].tolist()}


def _line_of(rows: list[dict[str, str]], index: int) -> int:
    """The line row `index` starts on in `_csv(rows)`: after the header and the line breaks
    inside the values before it."""
    return 2 + index + sum(value.count("\n") for row in rows[:index] for value in row.values())


def test_a_delta_files_unchanged_rows_by_their_bytes_and_sends_what_reading_them_sends(
    split_app: App,
) -> None:
    rows = [_row(n) for n in range(3_000)]
    rows[40]["Email"] = "not an email"  # rejected in both runs
    path = _define(split_app, "raw-delta")
    split_app.upload(path, _csv(rows))
    split_app.mark_sandbox_requests()
    first = run_in_process(split_app, "raw-delta")
    assert first.splits >= 10 and first.profiles_accepted == 2_999
    assert _filed_by_bytes(split_app, first) == 0  # no snapshot yet: every row parsed
    # The snapshot remembers each attribute sent by its own fingerprint (the membership
    # update's too, which the diff hashes once per partition).
    remembered = {
        json.loads(id_json): json.loads(line.split("\t")[2])
        for id_json, line in _snapshot_entries(split_app, "raw-delta").items()
    }
    assert remembered == {
        customer: {k: fingerprint(v) for k, v in obj.items() if k not in CONTROL_KEYS}
        for customer, obj in _sent(split_app).items()
    }

    changed = [dict(row) for row in rows]
    changed[7]["FirstName"] = "Zoë-Renamed"
    changed[1_500]["Note"] = 'now "quoted",\nand multi-line'
    changed[2_999]["LoyaltyPoints"] = "1"
    leavers = {changed[100]["CustomerId"], changed[2_000]["CustomerId"]}
    changed = [row for row in changed if row["CustomerId"] not in leavers]
    changed += [_row(n) for n in (5_000, 5_001)]  # newcomers
    duplicate = dict(changed[3])  # the same bytes again, ranges later: a duplicate
    changed.append(duplicate)
    split_app.upload(path, _csv(changed))
    split_app.mark_sandbox_requests()

    second = run_in_process(split_app, "raw-delta")

    sent = _sent(split_app)
    assert set(sent) == {"raw-00007", "raw-01500", "raw-02999", "raw-05000", "raw-05001"} | leavers
    assert sent["raw-00007"] == {"external_id": "raw-00007", "first_name": "Zoë-Renamed"}
    assert sent["raw-01500"]["note"] == 'now "quoted",\nand multi-line'
    assert sent["raw-02999"] == {"external_id": "raw-02999", "loyalty_points": 1}
    users = split_app.braze_users()
    assert users["raw-01500"]["note"] == 'now "quoted",\nand multi-line'
    assert users["raw-00003"]["first_name"] == 'Ann "the" Great'
    # Nearly every row was filed by its bytes; the changed, new and rejected ones were parsed.
    assert _filed_by_bytes(split_app, second) >= len(changed) - 10
    assert second.profiles_unchanged == 2_999 - 2 - 3
    assert (second.profiles_new, second.profiles_changed, second.profiles_removed) == (2, 3, 2)
    rejected = split_app.rejected(second)
    assert [r["codes"] for r in rejected] == [["email_invalid"], ["duplicate_customer_id"]]
    assert rejected[0]["line"] == _line_of(changed, 40)
    assert rejected[0]["row"]["Email"] == "not an email"
    # The duplicate is reported where it is, with the profile it would have sent.
    assert rejected[1]["line"] == _line_of(changed, len(changed) - 1)
    assert rejected[1]["object"]["external_id"] == "raw-00003"
    assert rejected[1]["object"]["first_name"] == 'Ann "the" Great'
    assert second.rows_read == len(changed)


def test_changed_records_parsed_together_keep_their_lines_after_multi_line_ones(
    split_app: App,
) -> None:
    """A block's changed records are parsed by one reader, joined: a multi-line one among
    them must not shift the lines the others are reported on."""
    rows = [_row(n) for n in range(600)]
    path = _define(split_app, "raw-lines")
    split_app.upload(path, _csv(rows))
    run_in_process(split_app, "raw-lines")
    changed = [dict(row) for row in rows]
    assert "\n" in changed[11]["Note"] and "\n" in changed[16]["Note"]
    changed[11]["FirstName"] = "Renamed, on two lines' record"
    changed[13]["Email"] = "no at sign"
    changed[16]["Email"] = "still no at sign"
    changed[17]["LoyaltyPoints"] = "3"
    split_app.upload(path, _csv(changed))
    split_app.mark_sandbox_requests()

    second = run_in_process(split_app, "raw-lines")

    assert _filed_by_bytes(split_app, second) >= len(changed) - 10
    sent = _sent(split_app)
    assert sent["raw-00011"] == {
        "external_id": "raw-00011",
        "first_name": "Renamed, on two lines' record",
    }
    assert sent["raw-00017"] == {"external_id": "raw-00017", "loyalty_points": 3}
    rejected = split_app.rejected(second)
    assert [(r["line"], r["row"]["Email"]) for r in rejected] == [
        (_line_of(changed, 13), "no at sign"),
        (_line_of(changed, 16), "still no at sign"),
    ]
    # The records parsed together are remembered by their own bytes' digests: the next run
    # files them by their bytes (the rejected ones, never in the snapshot, are parsed again).
    changed[300]["FirstName"] = "Changed in the third run"
    split_app.upload(path, _csv(changed))
    third = run_in_process(split_app, "raw-lines")
    filed = _lines_filed_by_bytes(split_app, third)
    assert {_line_of(changed, 11), _line_of(changed, 17)} <= filed
    assert not {_line_of(changed, n) for n in (13, 16, 300)} & filed
    assert len(filed) == len(changed) - 3


def test_a_lone_quote_in_an_unquoted_value_reads_its_ranges_as_rows(split_app: App) -> None:
    """`5" screen` unquoted: the csv module reads the quote as text, so counting quotes cuts
    the records wrong; the ranges where that happens are read as rows, and nothing differs."""
    path = _define(split_app, "raw-lone")
    rows = [_row(n) for n in range(2_000)]
    lines = _csv(rows).split(b"\r\n")
    for n in (300, 301, 1_200, 1_201):  # two lone quotes in a row close each other's count
        fields = lines[n + 1].split(b",")
        lines[n + 1] = b",".join([*fields[:2], b'5" screen', *fields[3:]])
    data = b"\r\n".join(lines)
    split_app.upload(path, data)
    first = run_in_process(split_app, "raw-lone")
    assert first.profiles_accepted == 2_000, first.message
    assert split_app.braze_users()["raw-00300"]["first_name"] == '5" screen'

    lines[1_800 + 1] = lines[1_800 + 1].replace(b"@example.com", b"@example.org")
    split_app.upload(path, b"\r\n".join(lines))
    split_app.mark_sandbox_requests()
    second = run_in_process(split_app, "raw-lone")

    assert list(_sent(split_app)) == ["raw-01800"]
    assert second.profiles_unchanged == 1_999 and second.rows_rejected == 0
    users = split_app.braze_users()
    assert users["raw-01200"]["first_name"] == '5" screen'
    assert users["raw-01800"]["email"] == "user.1800@example.org"


def test_a_stale_index_costs_a_reread_not_a_wrong_profile(split_app: App) -> None:
    """Entries the snapshot lost while its index kept them (a crash between the two writes):
    their rows are read again from the source and sent as the new profiles they are."""
    path = _define(split_app, "raw-stale")
    rows = [_row(n) for n in range(2_000)]
    split_app.upload(path, _csv(rows))
    first = run_in_process(split_app, "raw-stale")
    container = split_app.services.storage.container(SNAPSHOTS_CONTAINER)
    dropped = []
    for partition in range(first.partitions):
        written = split_app.services.snapshots.partition(
            "raw-stale", "sandbox", first.run_id, partition
        )
        dropped.append(json.loads(written.ids[0]))
        keep = np.ones(len(written), dtype=bool)
        keep[0] = False
        name = f"raw-stale/sandbox/{first.run_id}/part-{partition:04d}.jsonl"
        container.upload_blob(name, written.select(keep).to_blob(), overwrite=True)

    rows[5]["FirstName"] = "Changed"
    split_app.upload(path, _csv(rows))
    split_app.mark_sandbox_requests()
    second = run_in_process(split_app, "raw-stale")

    sent = _sent(split_app)
    assert set(sent) == {*dropped, "raw-00005"} and len(dropped) == first.partitions
    assert all(sent[i]["email"] == f"user.{int(i[4:])}@example.com" for i in dropped)
    assert second.profiles_new == len(dropped) and second.profiles_removed == 0
    assert split_app.services.snapshots.current("raw-stale", "sandbox").profiles == 2_000  # type: ignore[union-attr]


def test_a_diff_on_other_code_reads_filed_rows_again_and_sends_only_what_changed(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment between the split and the diff: the rows filed by their bytes are read
    again from the source and validated by the code that diffs them."""
    path = _define(split_app, "raw-code")
    rows = [_row(n) for n in range(600)]
    split_app.upload(path, _csv(rows))
    run_in_process(split_app, "raw-code")
    rows[9]["IsVip"] = "true" if rows[9]["IsVip"] == "false" else "false"
    split_app.upload(path, _csv(rows))
    monkeypatch.setattr(diff_partition, "code_digest", lambda: "another deployment")
    split_app.mark_sandbox_requests()

    second = run_in_process(split_app, "raw-code")

    assert _filed_by_bytes(split_app, second) >= 590
    assert list(_sent(split_app)) == ["raw-00009"]
    assert second.profiles_unchanged == 599 and second.rows_valid == 600


def test_json_lines_deltas_are_filed_by_their_bytes_too(split_app: App) -> None:
    rows = [
        {"CustomerId": f"j-{n:05d}", "Email": f"j{n}@example.com", "FirstName": "Zoë\n🎉"}
        for n in range(2_500)
    ]
    mapping = {
        "customer_id": "CustomerId",
        "email": "Email",
        "attributes": [{"column": "FirstName", "attribute": "first_name"}],
    }
    split_app.define([export_definition("raw-jl", "raw/rows.jsonl", "J", mapping=mapping)])

    def upload() -> None:
        lines = [json.dumps(row, ensure_ascii=False) for row in rows]
        split_app.upload("raw/rows.jsonl", ("\n".join(lines) + "\n").encode())

    upload()
    run_in_process(split_app, "raw-jl")
    rows[2_000]["FirstName"] = "Ann"
    del rows[10]
    upload()
    split_app.mark_sandbox_requests()
    second = run_in_process(split_app, "raw-jl")

    assert set(_sent(split_app)) == {"j-02000", "j-00010"}
    assert (second.profiles_changed, second.profiles_removed) == (1, 1)
    assert _filed_by_bytes(split_app, second) == len(rows) - 1


def test_a_byte_order_mark_inside_a_file_is_read_in_a_delta_as_in_a_first_export(
    split_app: App,
) -> None:
    """Only the file's first line may start with a byte order mark: on a later line U+FEFF
    is part of the record, a JSON line that is then no JSON. A delta's changed records are
    parsed joined (`_gathered`): the first of a block must not be taken for a file's start."""
    rows = [{"CustomerId": f"b-{n:05d}", "Email": f"b{n}@example.com"} for n in range(1_000)]
    mapping = {"customer_id": "CustomerId", "email": "Email", "attributes": []}
    split_app.define([export_definition("raw-bom", "raw/bom.jsonl", "B", mapping=mapping)])
    lines = [json.dumps(row) for row in rows]
    split_app.upload("raw/bom.jsonl", ("\n".join(lines) + "\n").encode())
    run_in_process(split_app, "raw-bom")
    lines[600] = "\ufeff" + json.dumps({**rows[600], "Email": "changed@example.com"})
    split_app.upload("raw/bom.jsonl", ("\n".join(lines) + "\n").encode())
    split_app.mark_sandbox_requests()

    second = run_in_process(split_app, "raw-bom")

    rejected = split_app.rejected(second)
    assert [(r["line"], r["codes"]) for r in rejected] == [(601, ["malformed_row"])]
    assert "changed@example.com" not in json.dumps(split_app.sandbox_requests())
    assert _filed_by_bytes(split_app, second) == len(rows) - 1


def test_a_full_refresh_parses_and_sends_every_row(split_app: App) -> None:
    path = _define(split_app, "raw-full")
    rows = [_row(n) for n in range(1_000)]
    split_app.upload(path, _csv(rows))
    run_in_process(split_app, "raw-full")
    rows[3]["FirstName"] = "Changed"
    split_app.upload(path, _csv(rows))
    split_app.mark_sandbox_requests()

    again = run_in_process(split_app, "raw-full", full_refresh=True)

    assert _filed_by_bytes(split_app, again) == 0
    assert len(_sent(split_app)) == 1_000 and again.profiles_accepted == 1_000


def test_a_snapshot_too_large_to_hold_as_an_index_has_its_rows_parsed(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A split holds the whole index; past `INDEX_MAX_PROFILES` it parses every row instead,
    with the same outcome."""
    monkeypatch.setattr(run_source, "INDEX_MAX_PROFILES", 999)
    path = _define(split_app, "raw-large")
    rows = [_row(n) for n in range(1_000)]
    split_app.upload(path, _csv(rows))
    run_in_process(split_app, "raw-large")
    rows[3]["FirstName"] = "Changed"
    split_app.upload(path, _csv(rows))
    split_app.mark_sandbox_requests()

    again = run_in_process(split_app, "raw-large")

    assert _filed_by_bytes(split_app, again) == 0
    assert list(_sent(split_app)) == ["raw-00003"] and again.profiles_unchanged == 999


def _snapshot_entries(app: App, export: str) -> dict[str, str]:
    """Every profile of the export's current snapshot: customer id as JSON -> its line."""
    manifest = app.services.snapshots.current(export, "sandbox")
    assert manifest is not None
    entries: dict[str, str] = {}
    for partition in range(manifest.partitions):
        part = app.services.snapshots.partition(export, "sandbox", manifest.run_id, partition)
        entries |= {part.ids[at]: part.line(at) for at in range(len(part))}
    return entries


def _raw_index(app: App, export: str) -> list[list[bytes]]:
    """Each partition's raw digests in the export's current snapshot index, sorted."""
    manifest = app.services.snapshots.current(export, "sandbox")
    assert manifest is not None
    index = []
    for partition in range(manifest.partitions):
        name = f"{export}/sandbox/{manifest.run_id}/part-{partition:04d}.raw"
        data = app.services.storage.read_bytes(SNAPSHOTS_CONTAINER, name)
        index.append(sorted(data[i : i + 8] for i in range(0, len(data), 8)))
    return index


def test_rows_taken_in_bulk_give_what_the_row_by_row_path_gives(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exports of the same segment and file, one diffed with the matched records taken in
    bulk and one row by row (`_take_in_bulk` switched off): the same profiles sent, the same
    counts, the same rejected rows (duplicates with their objects) and the same snapshot, for a
    delta full of the cases the bulk path must leave to the row by row one: repeated rows in
    the same range and ranges apart, a changed row before and after an unchanged row of its
    id, an invalid row before an unchanged one, a changed row naming the first line of a
    snapshot partition, and a row the snapshot lacks."""
    definitions = [
        export_definition(name, f"raw/{name}.csv", "Raw bulk", chunk_size=500)
        for name in ("raw-bulk", "raw-rows")
    ]
    split_app.define(definitions)
    rows = [_row(n) for n in range(3_000)]
    for name in ("raw-bulk", "raw-rows"):
        split_app.upload(f"raw/{name}.csv", _csv(rows))
        run_in_process(split_app, name)
    manifest = split_app.services.snapshots.current("raw-bulk", "sandbox")
    assert manifest is not None
    first_ids = split_app.services.snapshots.partition(
        "raw-bulk", "sandbox", manifest.run_id, 0
    ).ids
    first_of_partition = json.loads(first_ids[0])  # the snapshot's entry 0 of partition 0

    line_0 = int(first_of_partition.removeprefix("raw-"))
    before = {  # rows put in before the row at that index
        0: dict(rows[line_0], FirstName="Renamed at line 0"),  # changed, before its own row
        5: dict(rows[1_200], LoyaltyPoints="99"),  # changed, before its own row
        7: dict(rows[1_600], Email="not an email"),  # invalid, before its own row
        20: dict(rows[20]),  # the same bytes twice in a row
    }
    changed = []
    for n, row in enumerate(rows):
        if n in before:
            changed.append(before[n])
        if row["CustomerId"] not in {"raw-00100", "raw-02222"}:  # leaving
            changed.append(dict(row, Note='changed, "quoted"\nand multi-line') if n == 10 else row)
    changed.append(dict(rows[1_400], LoyaltyPoints="98"))  # changed, after its own row
    changed.append(dict(rows[2_500]))  # the same bytes ranges apart
    changed.append(_row(7_000))  # new
    outcomes = {}
    bulk_calls: list[bool] = []
    take_in_bulk = diff_partition._take_in_bulk

    def counted(*args: Any) -> Any:
        taken = take_in_bulk(*args)
        bulk_calls.append(taken is not None)
        return taken

    for name in ("raw-bulk", "raw-rows"):
        monkeypatch.setattr(
            diff_partition, "_take_in_bulk", counted if name == "raw-bulk" else lambda *a: None
        )
        split_app.upload(f"raw/{name}.csv", _csv(changed))
        split_app.mark_sandbox_requests()
        run = run_in_process(split_app, name)
        outcomes[name] = (
            _sent(split_app),
            run_counts(run),
            split_app.rejected(run),
            _snapshot_entries(split_app, name),
            _raw_index(split_app, name),
        )
    assert bulk_calls and all(bulk_calls)
    bulk, row_by_row = outcomes["raw-bulk"], outcomes["raw-rows"]
    assert bulk[0] == row_by_row[0]
    assert set(bulk[0]) == {
        first_of_partition,
        "raw-00010",
        "raw-01200",
        "raw-00100",
        "raw-02222",
        "raw-07000",
    }
    assert bulk[0]["raw-01200"] == {"external_id": "raw-01200", "loyalty_points": 99}
    assert bulk[1] == row_by_row[1]
    assert bulk[1]["profiles_unchanged"] == 3_000 - 2 - 3
    assert bulk[2] == row_by_row[2]
    codes = sorted(r["codes"][0] for r in bulk[2])
    assert codes == ["duplicate_customer_id"] * 5 + ["email_invalid"]
    assert bulk[3] == row_by_row[3]
    assert len(bulk[3]) == 3_000 - 2 + 1
    # The index the next run looks rows up in: the same digests, one per profile.
    assert bulk[4] == row_by_row[4]
    assert sum(len(digests) for digests in bulk[4]) == 3_000 - 2 + 1


def test_a_delta_is_cut_into_ranges_a_few_times_as_large(split_app: App) -> None:
    """A split files most of a delta's rows by the index without parsing them, so a delta's
    ranges are `INDEXED_RANGE_FACTOR` times as large (fewer split jobs, fewer pieces per diff);
    a full refresh, which parses every row, is cut as a first export is."""
    path = _define(split_app, "raw-ranges")
    rows = [_row(n) for n in range(3_000)]
    data = _csv(rows)
    split_app.upload(path, data)
    first = run_in_process(split_app, "raw-ranges")
    rows[7]["FirstName"] = "Changed"
    split_app.upload(path, _csv(rows))
    split_app.mark_sandbox_requests()
    delta = run_in_process(split_app, "raw-ranges")
    sent = list(_sent(split_app))
    full = run_in_process(split_app, "raw-ranges", full_refresh=True)

    range_bytes = int(SPLIT_MIB * 1024 * 1024)
    assert first.splits == math.ceil(len(data) / range_bytes) >= 6
    larger = range_bytes * run_source.INDEXED_RANGE_FACTOR
    assert delta.splits == math.ceil(len(data) / larger) and 1 < delta.splits <= first.splits // 2
    assert _filed_by_bytes(split_app, delta) == 3_000 - 1
    assert sent == ["raw-00007"] and delta.profiles_unchanged == 2_999
    assert full.splits == first.splits and full.profiles_accepted == 3_000

    # Past one range, a delta is cut in two at least: split inline, it would not use the index.
    small_path, small_rows = _define(split_app, "raw-ranges-small"), rows[:300]
    assert range_bytes < len(_csv(small_rows)) < larger
    split_app.upload(small_path, _csv(small_rows))
    run_in_process(split_app, "raw-ranges-small")
    small_rows[5]["FirstName"] = "Changed too"
    split_app.upload(small_path, _csv(small_rows))
    small_delta = run_in_process(split_app, "raw-ranges-small")
    assert small_delta.splits == 2 and _filed_by_bytes(split_app, small_delta) == 300 - 1


def test_the_first_delta_after_a_deployment_is_cut_as_a_first_export_is(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code seeds the raw digests, so after a deployment the snapshot's index holds none
    of the rows: the first delta parses every row and is cut into ranges as a first export is
    (not into a few times larger ones, which would leave most workers idle); the delta after
    it, on the same code, files rows by the index again, in the larger ranges."""
    path = _define(split_app, "raw-deploy")
    rows = [_row(n) for n in range(3_000)]
    data = _csv(rows)
    split_app.upload(path, data)
    first = run_in_process(split_app, "raw-deploy")
    for module in (run_source, plan_export, diff_partition):
        monkeypatch.setattr(module, "code_digest", lambda: "a later deployment")
    rows[9]["FirstName"] = "Changed after the deployment"
    split_app.upload(path, _csv(rows))
    split_app.mark_sandbox_requests()
    after_deployment = run_in_process(split_app, "raw-deploy")
    sent_after_deployment = _sent(split_app)
    rows[10]["FirstName"] = "Changed again"
    split_app.upload(path, _csv(rows))
    split_app.mark_sandbox_requests()
    next_delta = run_in_process(split_app, "raw-deploy")

    assert first.splits >= 6 and after_deployment.splits == first.splits
    assert _filed_by_bytes(split_app, after_deployment) == 0  # every row parsed
    assert after_deployment.code_version == "a later deployment"
    assert after_deployment.previous_code_version == first.code_version
    manifest = split_app.services.snapshots.current("raw-deploy", "sandbox")
    assert manifest is not None and manifest.code_version == "a later deployment"
    assert list(sent_after_deployment) == ["raw-00009"]
    assert after_deployment.profiles_unchanged == 2_999
    larger = int(SPLIT_MIB * 1024 * 1024) * run_source.INDEXED_RANGE_FACTOR
    assert next_delta.splits == math.ceil(len(data) / larger) < first.splits
    assert _filed_by_bytes(split_app, next_delta) == 3_000 - 1
    assert list(_sent(split_app)) == ["raw-00010"]


def test_a_runs_split_jobs_load_the_snapshot_index_once_per_process(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each split job looks its records up in the whole index: a worker loads it once per
    snapshot, not once per job (the next snapshot's index is loaded afresh)."""
    path = _define(split_app, "raw-once")
    rows = [_row(n) for n in range(4_000)]
    split_app.upload(path, _csv(rows))
    run_in_process(split_app, "raw-once")
    loads: list[str] = []
    read_many = Storage.read_many

    def counted(storage: Storage, container: str, names: Any) -> Any:
        if container == SNAPSHOTS_CONTAINER:
            loads.append(names[0])
        return read_many(storage, container, names)

    monkeypatch.setattr(Storage, "read_many", counted)
    for n in (3, 4):
        rows[n]["FirstName"] = f"Changed {n}"
        split_app.upload(path, _csv(rows))
        second = run_in_process(split_app, "raw-once")
        assert second.splits >= 3 and second.profiles_changed == 1
    assert len(loads) == 2 and loads[0] != loads[1]  # one per snapshot


def test_a_row_read_again_that_names_a_customer_taken_in_bulk_is_a_duplicate(
    split_app: App,
) -> None:
    """An index that disagrees with its snapshot (a crash between the two writes): customer
    X's unchanged row is taken in bulk, and a later changed row of X, whose digest the stale
    index holds, is read again and names X. The partition goes row by row instead, so the
    first row counts and the later one is reported as the duplicate it is: nothing sent, and X
    once in the snapshot."""
    path = _define(split_app, "raw-twice")
    rows = [_row(n) for n in range(2_000)]
    split_app.upload(path, _csv(rows))
    first = run_in_process(split_app, "raw-twice")
    later = dict(rows[700], FirstName="Changed, later")
    record = _csv([later]).split(b"\r\n")[1]  # its bytes, as the split digests them
    seed = raw_digest_seed(first.code_version, first.mapping_fingerprint, "csv", HEADER)
    (block,) = raw_blocks([record + b"\r\n"], offset=0, first_line=1, quoted=True, limit=1 << 20)
    (digest,) = digest_records(block, seed)
    partition = partition_of("raw-00700", first.partitions)
    index = f"raw-twice/sandbox/{first.run_id}/part-{partition:04d}.raw"
    stale = split_app.services.storage.read_bytes(SNAPSHOTS_CONTAINER, index) + digest
    split_app.services.storage.write_bytes(SNAPSHOTS_CONTAINER, index, stale, "x/y")

    split_app.upload(path, _csv([*rows, later]))
    split_app.mark_sandbox_requests()
    second = run_in_process(split_app, "raw-twice")

    assert _filed_by_bytes(split_app, second) == 2_001  # the later row too: the index held it
    assert _sent(split_app) == {}
    rejected = split_app.rejected(second)
    line = _line_of([*rows, later], 2_000)
    assert [(r["codes"], r["line"]) for r in rejected] == [(["duplicate_customer_id"], line)]
    assert rejected[0]["object"]["first_name"] == "Changed, later"
    assert second.profiles_unchanged == 2_000 and second.profiles_new == 0
    assert len(_snapshot_entries(split_app, "raw-twice")) == 2_000


def test_each_job_counts_the_results_and_only_the_last_reads_them(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every split and every diff asks whether it was the last one; reading every result each
    time would cost the square of their count (256 partitions at 50M rows). They count the
    results instead, and only the release reads them whole (a diff reads where its pieces
    are, `split_pieces`, not the splits' results)."""
    runs = split_app.services.runs
    reads = {"split": 0, "partition": 0}
    split_results, partition_results = runs.split_results, runs.partition_results

    def counted(kind: str, read: Any) -> Any:
        def reading(run_id: str) -> Any:
            reads[kind] += 1
            return read(run_id)

        return reading

    monkeypatch.setattr(runs, "split_results", counted("split", split_results))
    monkeypatch.setattr(runs, "partition_results", counted("partition", partition_results))
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 16 * 1024)
    path = _define(split_app, "raw-counts")
    split_app.upload(path, _csv([_row(n) for n in range(3_000)]))
    run = run_in_process(split_app, "raw-counts")

    assert run.profiles_accepted == 3_000 and run.splits >= 10 and run.partitions >= 16
    assert reads["split"] <= 3 and reads["partition"] <= 4, reads


def test_a_header_whose_quotes_run_into_the_first_row_reads_that_range_as_rows(
    split_app: App,
) -> None:
    """A header naming a column `Size"` (a lone quote, text to the csv module) and a first row
    with a lone quote of its own: counting quotes makes the two one record. The range is read
    as rows, so that first row is read, not dropped with the header."""
    path = _define(split_app, "raw-header-quote")
    rows = [_row(n) for n in range(2_000)]
    lines = _csv(rows).rstrip(b"\r\n").split(b"\r\n")
    lines[0] += b',Size"'
    lines[1:] = [line + (b',5" screen' if n == 0 else b",M") for n, line in enumerate(lines[1:])]
    split_app.upload(path, b"\r\n".join(lines) + b"\r\n")

    run = run_in_process(split_app, "raw-header-quote")

    assert run.splits > 1 and run.rows_read == 2_000
    assert run.profiles_accepted == 2_000 and "raw-00000" in split_app.braze_users()


@pytest.mark.parametrize(
    "encoding", [None, "gzip"], ids=["gzip-named-csv", "stored-with-content-encoding"]
)
def test_a_gzip_file_without_its_extension_is_read_whole_not_cut(
    split_app: App, encoding: str | None
) -> None:
    """Gzip is told by its stored bytes, as the reader tells it: a large compressed file named
    `.csv` is not cut into ranges (its later ranges would be no text), and is read whole. So is
    a blob kept compressed with `Content-Encoding: gzip`, which reads decoded but whose byte
    ranges would be slices of the gzip."""
    name = f"raw-gzip-{encoding or 'named-csv'}"
    path = _define(split_app, name)
    rows = [_row(n, Note=random.Random(n).randbytes(24).hex()) for n in range(2_000)]
    data = gzip.compress(_csv(rows))
    assert len(data) > 2 * SPLIT_MIB * 1024 * 1024
    split_app.upload(
        path, data, ContentSettings(content_type="text/csv", content_encoding=encoding)
    )

    run = run_in_process(split_app, name)

    assert (run.splits, run.profiles_accepted) == (1, 2_000), run.message


def test_a_plain_file_named_gz_is_cut_and_its_unchanged_rows_filed_by_their_bytes(
    split_app: App,
) -> None:
    """Gzip is told by the bytes, not the name: a plain CSV named `.csv.gz` is cut into ranges
    like any plain file, and a re-run files its unchanged rows by their raw digest."""
    name, path = "raw-plain-named-gz", "raw/raw-plain-named-gz.csv.gz"
    split_app.define([export_definition(name, path, "Raw plain gz", chunk_size=500)])
    rows = [_row(n) for n in range(2_000)]
    split_app.upload(path, _csv(rows))
    first = run_in_process(split_app, name)
    assert first.splits > 1 and first.profiles_accepted == 2_000, first.message

    rows[5]["FirstName"] = "Zoë-Renamed"
    split_app.upload(path, _csv(rows))
    split_app.mark_sandbox_requests()
    second = run_in_process(split_app, name)

    assert second.splits > 1 and _filed_by_bytes(split_app, second) >= 1_900
    assert _sent(split_app) == {
        "raw-00005": {"external_id": "raw-00005", "first_name": "Zoë-Renamed"}
    }


def test_a_gzip_file_without_its_extension_gets_the_partitions_of_its_text(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition holds about `PARTITION_TARGET_BYTES` of text (a diff's memory follows it):
    a gzip file is counted at `GZIP_RATIO` times its size whatever its name, as when it is
    named `.gz`, not at its compressed size."""
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 16 * 1024)
    rows = [_row(n, Note=f'Zoë, "{n}" 🎉') for n in range(3_000)]
    data = gzip.compress(_csv(rows))
    assert partition_count(len(data), True) > partition_count(len(data), False)
    found = {}
    for name in ("raw-gz-named-csv", "raw-gz-named-gz"):
        path = f"raw/{name}.csv" + (".gz" if name.endswith("gz") else "")
        quiet_app.define([export_definition(name, path, f"Raw {name}", chunk_size=500)])
        quiet_app.upload(path, data)
        run = run_in_process(quiet_app, name)
        assert run.profiles_accepted == 3_000, run.message
        found[name] = run.partitions
    assert found == dict.fromkeys(found, partition_count(len(data), True))


def test_members_taken_in_bulk_count_against_the_array_cap(
    split_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta's unchanged members are taken from the snapshot in bulk, not row by row: the
    array cap's count must still see them beside another export's segment."""
    taken_in_bulk: dict[str, int] = {}  # by run
    check = diff_partition._array_cap_check

    def counted(*args: Any) -> list[str]:
        run_id = args[0].run_id
        in_bulk = args[5]  # the previous snapshot partition's entries taken from it in bulk
        taken_in_bulk[run_id] = taken_in_bulk.get(run_id, 0) + len(in_bulk)
        return check(*args)

    monkeypatch.setattr(diff_partition, "_array_cap_check", counted)
    rows = [_row(n) for n in range(3_000)]
    path = "raw/capped.csv"
    split_app.define(
        [export_definition(f"capped-{n}", path, f"Capped {n}", chunk_size=500) for n in (1, 2)],
        array_element_cap=1,
    )
    split_app.upload(path, _csv(rows))
    run_in_process(split_app, "capped-1")
    first = run_in_process(split_app, "capped-2")
    assert first.array_cap_warnings == 3_000
    rows[7]["FirstName"] = "Capped-Changed"
    split_app.upload(path, _csv(rows))

    delta = run_in_process(split_app, "capped-2")

    assert _filed_by_bytes(split_app, delta) == 2_999  # all but the changed row
    assert taken_in_bulk[delta.run_id] == 2_999  # and taken in bulk
    assert delta.array_cap_warnings == 3_000
