"""End to end on real parts: Azurite, the local Functions host, and the Braze sandbox over HTTP."""

from __future__ import annotations

import gzip
import json
import threading
from itertools import chain, repeat

from devtools.sample import make_segment
from shared.adapters.run_store import chunk_row
from shared.core.resource_names import RUNS_TABLE
from shared.core.runs import ChunkResult, Run, Status
from shared.pipeline.finalize import maybe_finalize
from shared.pipeline.start import start_run
from tests.integration.conftest import BLOCKLISTED, App, export_definition


def test_messy_segment_lands_in_braze_exactly(app: App) -> None:
    sample = make_segment(1_300, invalid_every=23, segment="VIP – Zoë's 🎉")
    app.upload("e2e/vip.csv", sample.data)
    app.define([export_definition("vip", "e2e/vip.csv", sample.segment, chunk_size=200)])

    run = app.wait_for_final(start_run(app.services, "vip", "test").run.run_id)

    # Every valid profile is in Braze with exactly the mapped attributes and membership.
    users = app.braze_users()
    assert set(users) == set(sample.expected)
    for customer_id, expected in sample.expected.items():
        assert users[customer_id] == expected, customer_id

    # Every invalid row is reported with its line and reason; no valid row is.
    rejected = app.rejected(run)
    assert {r["line"]: r["codes"][0] for r in rejected} == sample.invalid_lines
    assert [r["line"] for r in rejected] == sorted(r["line"] for r in rejected)
    assert all(r["reasons"] and r["stage"] == "validation" for r in rejected)

    # Counts add up, and the report says the same as the run record.
    assert run.status == Status.PARTIALLY_SUCCEEDED
    assert run.rows_read == sample.rows == run.rows_valid + run.rows_rejected
    assert run.rows_valid == run.profiles_accepted + run.profiles_rejected_by_braze
    assert run.profiles_accepted == len(sample.expected)
    assert run.chunks_total == -(-run.rows_valid // 200)
    report = json.loads(app.blob_text(run.report_blob))
    assert report["counts"]["rows_read"] == sample.rows
    assert sum(report["rejections_by_reason"].values()) == len(sample.invalid_lines)

    # No request carried more than the combined-object limit.
    sizes = [len(body["attributes"]) for body in app.sandbox_requests()]
    assert max(sizes) == 75 and sum(sizes) == len(sample.expected)
    assert run.requests_sent == len(sizes)


def test_braze_per_object_errors_map_back_to_their_rows(app: App) -> None:
    rows = [
        "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note",
        "ok-1,ok1@example.com,Ann,1,true,1990-01-01,",
        f"{BLOCKLISTED},blocked@example.com,Bob,2,false,1990-01-02,",
        "ok-2,ok2@example.com,Cy,3,1,1990-01-03,",
    ]
    app.upload("e2e/blocked.csv", ("\n".join(rows) + "\n").encode())
    app.define([export_definition("blocked", "e2e/blocked.csv", "S")])

    run = app.wait_for_final(start_run(app.services, "blocked", "test").run.run_id)

    assert run.status == Status.PARTIALLY_SUCCEEDED
    assert (run.profiles_accepted, run.profiles_rejected_by_braze) == (2, 1)
    (entry,) = app.rejected(run)
    assert entry["line"] == 3 and entry["stage"] == "braze"
    assert entry["codes"] == ["BLACKLISTED_EXTERNAL_USER_ID"]
    assert entry["object"]["external_id"] == BLOCKLISTED
    assert set(app.braze_users()) == {"ok-1", "ok-2"}


def test_missing_column_fails_the_run_before_anything_is_sent(app: App) -> None:
    app.upload("e2e/nocol.csv", b"CustomerId,Mail\n1,a@example.com\n")
    app.define([export_definition("nocol", "e2e/nocol.csv", "S")])

    run = app.wait_for_final(start_run(app.services, "nocol", "test").run.run_id)

    assert run.status == Status.FAILED
    assert "['Email', 'FirstName'," in run.message and "(2 columns" in run.message
    assert app.sandbox_requests() == []


def test_a_file_without_its_header_row_fails_quoting_none_of_its_values(app: App) -> None:
    """The first data row stands where the header should be: the message (run record, report,
    status page, the run-end log line) says what is missing without quoting a customer."""
    row = "cust-001,jane.doe@example.com,Jane,42,true,1990-01-01,hi"
    app.upload("e2e/headerless.csv", f"{row}\ncust-002,john@example.com,John,7,false,,\n".encode())
    app.define([export_definition("headerless", "e2e/headerless.csv", "S")])

    run = app.wait_for_final(start_run(app.services, "headerless", "test").run.run_id)

    assert run.status == Status.FAILED
    assert run.message.startswith("planning failed: mapped column(s) ['CustomerId', 'Email'")
    assert "(7 columns, not quoted" in run.message and "is the header row missing" in run.message
    for value in row.split(","):
        assert value not in run.message.split("mapped column(s)")[1].split("]")[1], value
    assert app.sandbox_requests() == []


def test_a_long_run_message_is_clipped_to_fit_the_run_record() -> None:
    from shared.pipeline.finalize import _clip

    assert len(_clip("x" * 5000)) == 2001 and _clip("x" * 5000).endswith("…")
    assert _clip("short") == "short"


def test_a_50_mb_row_is_rejected_with_its_line_and_every_other_row_is_sent(app: App) -> None:
    """One 50 MB row in the middle of a CSV (made as it is uploaded, never held whole), read by
    parallel split jobs on the host: that row is rejected with its line and the cap, and every
    other row reaches Braze."""
    before = make_segment(600, segment="Big", invalid_every=10**6, bom=False, id_prefix="a")
    after = make_segment(600, segment="Big", invalid_every=10**6, bom=False, id_prefix="b")
    piece = b'a ""q"", \xf0\x9f\x8e\x89;xy' * (2**20 // 16)  # 1 MiB, sent 50 times
    opening, closing = b'huge-1,huge@example.com,H,1,true,1990-01-01,"', b'"\n'
    app.upload(
        "e2e/big.csv",
        chain([before.data, opening], repeat(piece, 50), [closing, after.data.split(b"\n", 1)[1]]),
    )
    app.define([export_definition("big", "e2e/big.csv", "Big", chunk_size=500)])

    run = app.wait_for_final(start_run(app.services, "big", "test").run.run_id)

    assert run.status == Status.PARTIALLY_SUCCEEDED and run.splits > 1
    assert app.braze_users() == {**before.expected, **after.expected}
    line = before.data.count(b"\n") + 1
    size = len(opening) + 50 * len(piece) + len(closing)
    (entry,) = app.rejected(run)
    assert (entry["line"], entry["stage"], entry["codes"], entry["row"]) == (
        line,
        "validation",
        ["row_too_long"],
        {},
    )
    assert entry["reasons"] == [
        f"row on line {line} is {size:,} bytes long; a record may have at most 1 MiB "
        "(1,048,576 bytes)"
    ]
    assert (run.rows_read, run.rows_rejected, run.rows_unidentified) == (1_201, 1, 1)
    report = json.loads(app.blob_text(run.report_blob))
    assert report["rejections_by_reason"] == {"row_too_long": 1}


def test_missing_source_blob_fails_with_its_name(app: App) -> None:
    app.define([export_definition("ghost", "e2e/does-not-exist.csv", "S")])
    run = app.wait_for_final(start_run(app.services, "ghost", "test").run.run_id)
    assert run.status == Status.FAILED
    assert "e2e/does-not-exist.csv" in run.message


def test_gzipped_json_lines_source(app: App) -> None:
    records = [
        {"CustomerId": 101, "Email": "a@example.com", "LoyaltyPoints": 7, "IsVip": True},
        {"CustomerId": "102", "Email": "b@example.com", "Note": 'line\nbreak, "quoted" ✓'},
        {"CustomerId": "103", "Email": "c@example.com", "LoyaltyPoints": {"x": 1}},
    ]
    data = gzip.compress("\n".join(json.dumps(r) for r in records).encode())
    app.upload("e2e/people.jsonl.gz", data)
    app.define([export_definition("jsonl", "e2e/people.jsonl.gz", "J")])

    run = app.wait_for_final(start_run(app.services, "jsonl", "test").run.run_id)

    assert run.status == Status.PARTIALLY_SUCCEEDED
    assert (run.rows_read, run.rows_valid, run.profiles_accepted) == (3, 2, 2)
    users = app.braze_users()
    assert users["101"]["loyalty_points"] == 7 and users["101"]["is_vip"] is True
    assert users["102"]["note"] == 'line\nbreak, "quoted" ✓'
    assert "103" not in users
    assert [r["codes"] for r in app.rejected(run)] == [["attribute_type"]]


def test_an_invalid_row_does_not_claim_its_id_for_the_duplicate_rule(app: App) -> None:
    rows = [
        "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note",
        "dup,not an email,First,1,true,1990-01-01,",
        "dup,second@example.com,Second,2,true,1990-01-01,",
        "dup,third@example.com,Third,3,true,1990-01-01,",
    ]
    app.upload("e2e/dups.csv", ("\n".join(rows) + "\n").encode())
    app.define([export_definition("dups", "e2e/dups.csv", "S")])

    run = app.wait_for_final(start_run(app.services, "dups", "test").run.run_id)

    assert app.braze_users()["dup"]["first_name"] == "Second"
    assert [(r["line"], r["codes"]) for r in app.rejected(run)] == [
        (2, ["email_invalid"]),
        (4, ["duplicate_customer_id"]),
    ]


def test_update_existing_only_does_not_create_users(app: App) -> None:
    header = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note\n"
    app.upload("e2e/first.csv", (header + "known,k@example.com,K,1,true,1990-01-01,\n").encode())
    app.upload(
        "e2e/update.csv",
        (
            header
            + "known,k@example.com,K2,1,true,1990-01-01,\nnew,n@example.com,N,1,1,1990-01-01,\n"
        ).encode(),
    )
    app.define(
        [
            export_definition("create", "e2e/first.csv", "A"),
            export_definition("update", "e2e/update.csv", "B", create_missing_users=False),
        ]
    )
    app.wait_for_final(start_run(app.services, "create", "test").run.run_id)
    run = app.wait_for_final(start_run(app.services, "update", "test").run.run_id)

    users = app.braze_users()
    assert set(users) == {"known"}
    assert users["known"]["first_name"] == "K2"
    assert users["known"]["segments"] == ["A", "B"]
    assert run.profiles_accepted == 2  # Braze accepts both; it silently skips the unknown one
    bodies = app.sandbox_requests()
    assert all(o["_update_existing_only"] is True for o in bodies[-1]["attributes"])


def test_a_chunk_outcome_recorded_by_the_version_before_is_read_with_its_partition(
    app: App,
) -> None:
    """That version delivered one partition per chunk and recorded it as `partition`: a run
    upgraded mid-delivery must still find which partitions Braze's rejections were in."""
    table = app.services.storage.table(RUNS_TABLE)
    old = {"chunk_index": 0, "rows": 3, "accepted": 2, "rejected": 1, "requests": 1}
    table.create_entity(
        {"PartitionKey": "old-chunk-1", "RowKey": chunk_row(0), **old, "partition": 5}
    )
    store = app.services.runs
    store.record_chunk("old-chunk-1", ChunkResult(chunk_index=1, rows=2, partitions=[6, 7]))
    store.record_chunk("old-chunk-1", ChunkResult(chunk_index=2, rows=2, partitions=[8]))
    results = store.chunk_results("old-chunk-1")
    assert [(r.chunk_index, r.partitions, r.rejected) for r in results] == [
        (0, [5], 1),
        (1, [6, 7], 0),
        (2, [8], 0),
    ]
    # And the other way: that version, finalizing a run this one delivered, reads `partition`;
    # a chunk of several partitions reads as a replay's (any partition: -1).
    legacy = [e["partition"] for e in table.query_entities("PartitionKey eq 'old-chunk-1'")]
    assert legacy == [5, -1, 8]


def test_finalization_happens_once_when_the_last_chunks_finish_together(app: App) -> None:
    store = app.services.runs
    run = Run("race-run-1", "race", "S", "sandbox", "segments/x.csv", "test")
    store.create(run)
    run.status, run.rows_read, run.rows_valid, run.chunks_total = Status.DELIVERING, 4, 4, 2
    run.objects_planned = 4
    store.update(run)
    store.record_chunk(
        run.run_id, ChunkResult(chunk_index=0, rows=2, accepted=2, rejected=0, requests=1)
    )
    store.record_chunk(
        run.run_id, ChunkResult(chunk_index=1, rows=2, accepted=2, rejected=0, requests=1)
    )

    results: list[bool] = []
    barrier = threading.Barrier(8)

    def finish() -> None:
        barrier.wait()
        results.append(maybe_finalize(run.run_id, app.services))

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results.count(True) == 1
    final = store.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert final.profiles_accepted == 4 and final.requests_sent == 2
    assert maybe_finalize(run.run_id, app.services) is False
