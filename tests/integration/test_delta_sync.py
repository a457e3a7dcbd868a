"""Delta sync on real parts: what a run sends depends on what Braze accepted before.

Runs are driven in process, stage by stage, against Azurite and the Braze sandbox over HTTP,
so every count is deterministic. The sandbox's users are compared with what a full export of
the newest file would hold.
"""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import timedelta
from typing import Any

import pytest
import requests

from devtools.sample import HEADER, expected_profile
from shared.core.messages import ChunkJob, ExportJob, PartitionJob
from shared.core.partitioning import partition_count, partition_of
from shared.core.resource_names import CHUNKS_QUEUE, JOBS_QUEUE
from shared.core.runs import Status, utcnow
from shared.core.snapshot_partition import MAGIC, SnapshotPartition
from shared.core.zstd_frames import MAGIC as FRAME_MAGIC
from shared.pipeline import diff_partition
from shared.pipeline.deliver_chunk import deliver_chunk
from shared.pipeline.release import RELEASE_LEASE, maybe_release
from shared.pipeline.run_files import (
    DamagedRunFile,
    dry_run_blob_name,
    json_lines,
    legacy_pending_snapshot_name,
    snapshot_fallbacks_name,
    unpacked_stream,
)
from shared.pipeline.start import start_run
from tests.integration.conftest import (
    BLOCKLISTED,
    App,
    export_definition,
    plan_in_process,
    released_whole,
    run_in_process,
    split_in_process,
    take,
)
from tests.snapshot_formats import version_1

NOTES = ['says "hi", twice', "multi\nline, comma", "emoji 🎉", "  padded  ", "Zoë; José"]


def _rows(count: int, prefix: str, seed: int = 1) -> dict[str, dict[str, str]]:
    rng = random.Random(seed)
    return {
        f"{prefix}-{n:05d}": {
            "CustomerId": f"{prefix}-{n:05d}",
            "Email": f"user.{n}@example.com",
            "FirstName": rng.choice(["Ann", "Łukasz", "O'Brien", "李"]),
            "LoyaltyPoints": str(rng.randint(0, 9999)),
            "IsVip": rng.choice(["true", "false"]),
            "BirthDate": f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
            "Note": rng.choice(NOTES),
        }
        for n in range(count)
    }


def _csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for row in rows:
        writer.writerow([row[name] for name in HEADER])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def _line_of(rows: list[dict[str, str]], index: int) -> int:
    """The physical line row `index` starts on (quoted newlines in notes add lines)."""
    return 2 + sum(1 + row["Note"].count("\n") for row in rows[:index])


def _export(app: App, name: str, rows: dict[str, dict[str, str]], **overrides: Any) -> None:
    app.upload(f"delta/{name}.csv", _csv(list(rows.values())))
    app.define([export_definition(name, f"delta/{name}.csv", "Delta Seg", **overrides)])


def _upload(app: App, name: str, rows: dict[str, dict[str, str]] | list[dict[str, str]]) -> None:
    values = list(rows.values()) if isinstance(rows, dict) else rows
    app.upload(f"delta/{name}.csv", _csv(values))


def _requests_total(app: App) -> int:
    response = requests.get(f"{app.sandbox.url}/_sandbox/stats", timeout=10)
    response.raise_for_status()
    return int(response.json()["requests_total"])


def _snapshot_run(app: App, name: str) -> str | None:
    manifest = app.services.snapshots.current(name, "sandbox")
    return manifest.run_id if manifest else None


def _snapshot_folders(app: App, name: str) -> set[str]:
    """The run folders under the export's snapshots: only the current one should remain."""
    container = app.services.storage.container("export-snapshots")
    names = (
        b.name.removeprefix(f"{name}/sandbox/")
        for b in container.list_blobs(name_starts_with=f"{name}/sandbox/")
    )
    return {n.split("/", 1)[0] for n in names if "/" in n}


def _assert_braze_holds(app: App, rows: dict[str, dict[str, str]], left: set[str]) -> None:
    """What a full export of `rows` would give, and no membership for those who left."""
    users = app.braze_users()
    for customer_id, row in rows.items():
        assert users[customer_id] == expected_profile(row, "Delta Seg"), customer_id
    for customer_id in left:
        assert "Delta Seg" not in users[customer_id].get("segments", []), customer_id
    assert set(users) == set(rows) | left


def test_an_unchanged_rerun_sends_nothing(quiet_app: App) -> None:
    """The same profiles in another order (other bytes) are read and diffed: nothing changed."""
    rows = _rows(300, "same")
    _export(quiet_app, "same", rows)
    first = run_in_process(quiet_app, "same")
    assert first.status == Status.SUCCEEDED and first.full_refresh_reason
    assert (first.profiles_new, first.profiles_accepted) == (300, 300)

    _upload(quiet_app, "same", list(reversed(rows.values())))
    before = _requests_total(quiet_app)
    second = run_in_process(quiet_app, "same")
    assert _requests_total(quiet_app) == before
    assert second.status == Status.SUCCEEDED and not second.full_refresh_reason
    assert (second.rows_read, second.unchanged_since) == (300, "")
    assert (second.profiles_unchanged, second.requests_sent, second.objects_planned) == (300, 0, 0)
    assert second.data_points_estimated == second.data_points_used == 0
    assert second.message.startswith("nothing changed")
    assert _snapshot_run(quiet_app, "same") == second.run_id


def test_the_same_bytes_written_again_are_not_read_again(quiet_app: App) -> None:
    """Same bytes (written again: a new ETag, as an export tool's every refresh gives), same
    definition, and Braze took everything: the run ends at once, keeps the snapshot, and says
    why; a full refresh or an edited definition reads the source again."""
    rows = _rows(300, "idle")
    _export(quiet_app, "idle", rows)
    first = run_in_process(quiet_app, "idle")
    assert first.status == Status.SUCCEEDED

    blob = quiet_app.services.storage.container("segments").get_blob_client("delta/idle.csv")
    etag = blob.get_blob_properties().etag
    _upload(quiet_app, "idle", rows)
    assert blob.get_blob_properties().etag != etag
    before = _requests_total(quiet_app)
    second = run_in_process(quiet_app, "idle")
    assert _requests_total(quiet_app) == before
    assert second.status == Status.SUCCEEDED and second.unchanged_since == first.run_id
    assert (second.partitions, second.splits, second.requests_sent) == (0, 0, 0)
    assert (second.rows_read, second.rows_valid, second.profiles_unchanged) == (300, 300, 300)
    assert second.message.startswith("nothing to send") and first.run_id in second.message
    assert _snapshot_run(quiet_app, "idle") == first.run_id
    report = json.loads(quiet_app.blob_text(second.report_blob))
    assert report["diff"]["unchanged_since"] == first.run_id

    forced = run_in_process(quiet_app, "idle", full_refresh=True)
    assert (forced.rows_read, forced.profiles_accepted, forced.unchanged_since) == (300, 300, "")

    quiet_app.define([export_definition("idle", "delta/idle.csv", "Delta Seg", chunk_size=250)])
    edited = run_in_process(quiet_app, "idle")
    assert (edited.rows_read, edited.profiles_unchanged, edited.requests_sent) == (300, 300, 0)


def test_a_source_with_rejected_rows_is_not_read_again_but_reported_again(
    quiet_app: App,
) -> None:
    """Rows rejected by validation (and duplicates) are rejected again by the same code from
    the same bytes: the next run of those bytes reads nothing, sends nothing, and reports the
    same rejected rows with the same counts; new bytes are read and judged afresh."""
    rows = _rows(50, "dirty")
    rows["dirty-00007"]["Email"] = "not an email"
    listed = [*rows.values(), {**rows["dirty-00003"], "FirstName": "Second"}]  # a duplicate id
    quiet_app.upload("delta/dirty.csv", _csv(listed))
    quiet_app.define([export_definition("dirty", "delta/dirty.csv", "Delta Seg")])
    first = run_in_process(quiet_app, "dirty")
    assert first.status == Status.PARTIALLY_SUCCEEDED and first.rows_rejected == 2
    first_rejected = quiet_app.blob_text(first.rejected_blob)

    quiet_app.upload("delta/dirty.csv", _csv(listed))
    before = _requests_total(quiet_app)
    second = run_in_process(quiet_app, "dirty")
    assert _requests_total(quiet_app) == before
    assert (second.status, second.unchanged_since) == (Status.PARTIALLY_SUCCEEDED, first.run_id)
    assert (second.rows_read, second.rows_rejected, second.profiles_unchanged) == (51, 2, 49)
    assert second.rejections == first.rejections == {"email_invalid": 1, "duplicate_customer_id": 1}
    assert "2 rejected rows are still in the source" in second.message
    assert quiet_app.blob_text(second.rejected_blob) == first_rejected
    rejected = [json.loads(line) for line in first_rejected.splitlines()]
    assert [(r["customer_id"], r["codes"]) for r in rejected] == [
        ("dirty-00007", ["email_invalid"]),
        ("dirty-00003", ["duplicate_customer_id"]),
    ]
    report = json.loads(quiet_app.blob_text(second.report_blob))
    assert report["diff"]["unchanged_since"] == first.run_id

    third = run_in_process(quiet_app, "dirty")  # carried from the run that read the source
    assert (third.unchanged_since, third.rows_rejected) == (first.run_id, 2)
    assert quiet_app.blob_text(third.rejected_blob) == first_rejected

    rows["dirty-00007"]["Email"] = "fixed@example.com"
    _upload(quiet_app, "dirty", rows)
    fixed = run_in_process(quiet_app, "dirty")
    assert (fixed.status, fixed.unchanged_since) == (Status.SUCCEEDED, "")
    assert (fixed.rows_read, fixed.rows_rejected, fixed.profiles_new) == (50, 0, 1)


def test_changes_joins_and_leaves_send_exactly_the_difference(quiet_app: App) -> None:
    rows = _rows(2000, "mix")
    _export(quiet_app, "mix", rows)
    run_in_process(quiet_app, "mix")

    ids = list(rows)
    changed, left = ids[:20], set(ids[20:30])  # 1% change, 0.5% leave
    new_rows = {k: dict(v) for k, v in rows.items() if k not in left}
    for customer_id in changed:
        new_rows[customer_id]["LoyaltyPoints"] = str(int(rows[customer_id]["LoyaltyPoints"]) + 1)
    blanked = ids[40]
    new_rows[blanked]["Note"] = ""  # a value that became blank is cleared in Braze
    joined = _rows(10, "joined", seed=2)  # 0.5% join
    new_rows.update(joined)
    _upload(quiet_app, "mix", new_rows)

    quiet_app.mark_sandbox_requests()
    run = run_in_process(quiet_app, "mix")

    sent = {o["external_id"]: o for b in quiet_app.sandbox_requests() for o in b["attributes"]}
    assert set(sent) == set(changed) | left | set(joined) | {blanked}
    for customer_id in changed:
        points = int(new_rows[customer_id]["LoyaltyPoints"])
        assert sent[customer_id] == {"external_id": customer_id, "loyalty_points": points}
    assert sent[blanked] == {"external_id": blanked, "note": None}
    for customer_id in left:
        assert sent[customer_id] == {
            "external_id": customer_id,
            "segments": {"remove": ["Delta Seg"]},
            "_update_existing_only": True,
        }
    for customer_id in joined:
        assert sent[customer_id]["segments"] == {"add": ["Delta Seg"]}
        assert sent[customer_id]["email"] == joined[customer_id]["Email"]

    assert (run.profiles_new, run.profiles_changed, run.profiles_removed) == (10, 21, 10)
    assert run.profiles_unchanged == 2000 - 10 - 21
    assert run.data_points_estimated == run.data_points_used == 20 + 1 + 10 + 10 * 7
    assert run.rows_valid == run.profiles_new + run.profiles_changed + run.profiles_unchanged
    assert run.profiles_accepted == run.objects_planned == 41
    _assert_braze_holds(quiet_app, new_rows, left)
    report = json.loads(quiet_app.blob_text(run.report_blob))
    assert report["counts"]["profiles_removed"] == 10
    assert report["data_points"] == {"estimated": 101, "used": 101}


def test_a_row_braze_rejected_is_sent_again_next_run_and_not_before(quiet_app: App) -> None:
    rows = _rows(5, "rej")
    rows[BLOCKLISTED] = {**rows["rej-00000"], "CustomerId": BLOCKLISTED}
    _export(quiet_app, "rej", rows)

    first = run_in_process(quiet_app, "rej")
    assert (first.profiles_accepted, first.profiles_rejected_by_braze) == (5, 1)
    sent_once = [
        o["external_id"] for b in quiet_app.sandbox_requests() for o in b["attributes"]
    ].count(BLOCKLISTED)
    assert sent_once == 1  # a per-object rejection is final for this run

    quiet_app.mark_sandbox_requests()
    second = run_in_process(quiet_app, "rej")
    sent = [o["external_id"] for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert sent == [BLOCKLISTED]  # only the rejected row is retried
    assert second.profiles_new == 1 and second.profiles_unchanged == 5

    quiet_app.set_sandbox_limits(blocklist=[])  # the operator fixed the cause in Braze
    try:
        third = run_in_process(quiet_app, "rej")
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    assert (third.profiles_accepted, third.status) == (1, Status.SUCCEEDED)
    quiet_app.mark_sandbox_requests()
    fourth = run_in_process(quiet_app, "rej")
    assert quiet_app.sandbox_requests() == [] and fourth.profiles_unchanged == 6


def test_a_member_whose_row_turned_invalid_is_not_removed(quiet_app: App) -> None:
    rows = _rows(50, "inv")
    _export(quiet_app, "inv", rows)
    run_in_process(quiet_app, "inv")
    broken = {k: dict(v) for k, v in rows.items()}
    broken["inv-00003"]["Email"] = "not an email"
    _upload(quiet_app, "inv", broken)

    quiet_app.mark_sandbox_requests()
    run = run_in_process(quiet_app, "inv")
    assert quiet_app.sandbox_requests() == []
    assert (run.profiles_removed, run.rows_rejected, run.status) == (
        0,
        1,
        Status.PARTIALLY_SUCCEEDED,
    )
    (entry,) = [json.loads(x) for x in quiet_app.blob_text(run.rejected_blob).splitlines()]
    assert entry["codes"] == ["email_invalid"] and entry["customer_id"] == "inv-00003"
    assert entry["line"] == _line_of(list(broken.values()), 3)
    # Fixed next time: it is still in the snapshot, so nothing needs sending.
    _upload(quiet_app, "inv", rows)
    assert run_in_process(quiet_app, "inv").objects_planned == 0


def test_duplicates_meet_in_their_partition_and_the_first_valid_row_wins(
    quiet_app: App,
) -> None:
    rows = _rows(30, "dup")
    listed = list(rows.values())
    invalid_first = {**listed[4], "Email": "broken"}
    duplicate = {**listed[2], "FirstName": "Second"}
    _export(quiet_app, "dup", rows)
    _upload(quiet_app, "dup", [invalid_first, *listed, duplicate])

    run = run_in_process(quiet_app, "dup")
    users = quiet_app.braze_users()
    assert users[listed[2]["CustomerId"]]["first_name"] == listed[2]["FirstName"]
    assert users[listed[4]["CustomerId"]]["email"] == listed[4]["Email"]
    rejected = [json.loads(x) for x in quiet_app.blob_text(run.rejected_blob).splitlines()]
    written = [invalid_first, *listed, duplicate]
    assert [(r["line"], r["codes"]) for r in rejected] == [
        (2, ["email_invalid"]),
        (_line_of(written, 31), ["duplicate_customer_id"]),
    ]
    assert run.rejections == {"email_invalid": 1, "duplicate_customer_id": 1}
    assert run.rows_read == 32 == run.rows_valid + run.rows_rejected


def test_the_removal_valve_stops_before_anything_is_sent_and_the_override_goes_through(
    quiet_app: App,
) -> None:
    rows = _rows(100, "valve")
    _export(quiet_app, "valve", rows)
    first = run_in_process(quiet_app, "valve")
    _upload(quiet_app, "valve", dict(list(rows.items())[:70]))  # 30% would leave

    before = _requests_total(quiet_app)
    held = run_in_process(quiet_app, "valve")
    assert held.status == Status.STOPPED and held.stopped_by == "max_removed_share"
    assert "30 of the 100 profiles" in held.message and "override" in held.message
    assert _requests_total(quiet_app) == before
    assert _snapshot_run(quiet_app, "valve") == first.run_id

    forced = run_in_process(quiet_app, "valve", override_safety_valves=True)
    assert forced.status == Status.SUCCEEDED and forced.profiles_removed == 30
    assert _requests_total(quiet_app) == before + 1


def test_an_empty_drop_cannot_wipe_the_segment(quiet_app: App) -> None:
    rows = _rows(20, "wipe")
    _export(quiet_app, "wipe", rows)
    run_in_process(quiet_app, "wipe")
    _upload(quiet_app, "wipe", [])
    held = run_in_process(quiet_app, "wipe")
    assert held.status == Status.STOPPED and held.profiles_removed == 20
    assert all("Delta Seg" in u["segments"] for u in quiet_app.braze_users().values())


def test_the_data_point_valve_stops_a_costly_run(quiet_app: App) -> None:
    rows = _rows(40, "cost")
    _export(quiet_app, "cost", rows, max_data_points=100)  # 40 new profiles x 7 attributes
    before = _requests_total(quiet_app)
    held = run_in_process(quiet_app, "cost")
    assert (held.status, held.stopped_by) == (Status.STOPPED, "max_data_points")
    assert held.data_points_estimated == 280 and "280" in held.message
    assert _requests_total(quiet_app) == before and _snapshot_run(quiet_app, "cost") is None
    assert run_in_process(quiet_app, "cost", override_safety_valves=True).profiles_accepted == 40


def test_a_dry_run_writes_the_exact_requests_and_touches_neither_braze_nor_the_snapshot(
    quiet_app: App,
) -> None:
    rows = _rows(200, "dry")
    _export(quiet_app, "dry", rows)
    base = run_in_process(quiet_app, "dry")
    changed = {k: dict(v) for k, v in rows.items()}
    for row in list(changed.values())[:100]:
        row["FirstName"] = "Renamed ✨"
    del changed["dry-00199"]
    _upload(quiet_app, "dry", changed)

    before, users = _requests_total(quiet_app), quiet_app.braze_users()
    dry = run_in_process(quiet_app, "dry", dry_run=True)
    assert _requests_total(quiet_app) == before and quiet_app.braze_users() == users
    assert _snapshot_run(quiet_app, "dry") == base.run_id
    assert _snapshot_folders(quiet_app, "dry") == {base.run_id}  # the dry run's is discarded
    assert dry.status == Status.SUCCEEDED and dry.dry_run_blob == dry_run_blob_name(dry.run_id)
    assert (dry.profiles_changed, dry.profiles_removed, dry.requests_planned) == (100, 1, 2)
    assert dry.data_points_estimated == 101 and dry.requests_sent == 0
    predicted = [json.loads(x) for x in quiet_app.blob_text(dry.dry_run_blob).splitlines()]

    quiet_app.mark_sandbox_requests()
    real = run_in_process(quiet_app, "dry")
    # The same bodies; several are in flight at once, so they may arrive in another order.
    assert sorted(map(json.dumps, quiet_app.sandbox_requests())) == sorted(
        map(json.dumps, predicted)
    )
    assert real.data_points_used == dry.data_points_estimated
    assert _snapshot_folders(quiet_app, "dry") == {real.run_id}  # the replaced one is deleted


def test_a_changed_mapping_forces_a_full_refresh_and_so_does_asking(quiet_app: App) -> None:
    rows = _rows(30, "remap")
    _export(quiet_app, "remap", rows)
    run_in_process(quiet_app, "remap")
    asked = run_in_process(quiet_app, "remap", full_refresh=True)
    assert asked.full_refresh_reason == "a full refresh was requested"
    assert (asked.objects_planned, asked.profiles_unchanged) == (30, 30)

    _export(quiet_app, "remap", rows, membership_attribute="audiences")
    remapped = run_in_process(quiet_app, "remap")
    assert "mapping" in remapped.full_refresh_reason and remapped.objects_planned == 30
    assert all(u["audiences"] == ["Delta Seg"] for u in quiet_app.braze_users().values())


def test_boolean_membership_is_true_on_join_and_false_on_leave(quiet_app: App) -> None:
    rows = _rows(10, "flag")
    _export(quiet_app, "flag", rows, membership="boolean", membership_attribute="in_flag_seg")
    run_in_process(quiet_app, "flag")
    assert all(u["in_flag_seg"] is True for u in quiet_app.braze_users().values())
    _upload(quiet_app, "flag", dict(list(rows.items())[:9]))
    run_in_process(quiet_app, "flag")
    users = quiet_app.braze_users()
    assert users["flag-00009"]["in_flag_seg"] is False
    assert users["flag-00009"]["first_name"] == rows["flag-00009"]["FirstName"]  # left alone
    assert all(users[k]["in_flag_seg"] is True for k in list(rows)[:9])


def test_clearing_attributes_on_leave_is_opt_in(quiet_app: App) -> None:
    rows = _rows(10, "clr")
    _export(quiet_app, "clr", rows, clear_attributes_on_leave=True)
    run_in_process(quiet_app, "clr")
    _upload(quiet_app, "clr", dict(list(rows.items())[:9]))
    run_in_process(quiet_app, "clr")
    gone = quiet_app.braze_users()["clr-00009"]
    assert gone == {"external_id": "clr-00009", "segments": []}


def test_teardown_removes_membership_from_everyone_in_the_snapshot(quiet_app: App) -> None:
    rows = _rows(120, "down")
    _export(quiet_app, "down", rows)
    run_in_process(quiet_app, "down")

    run = run_in_process(quiet_app, "down", teardown=True)
    assert run.status == Status.SUCCEEDED and run.profiles_removed == 120
    users = quiet_app.braze_users()
    assert all(u["segments"] == [] for u in users.values())
    assert users["down-00001"]["email"] == rows["down-00001"]["Email"]
    assert quiet_app.services.snapshots.current("down", "sandbox").profiles == 0  # type: ignore[union-attr]
    quiet_app.mark_sandbox_requests()
    assert run_in_process(quiet_app, "down", teardown=True).objects_planned == 0


def test_the_array_cap_warning_counts_other_exports_on_the_same_attribute(
    quiet_app: App,
) -> None:
    rows = _rows(6, "cap")
    quiet_app.upload("delta/cap.csv", _csv(list(rows.values())))
    exports = [export_definition(f"cap-{n}", "delta/cap.csv", f"Seg {n}") for n in range(3)]
    quiet_app.define(exports, array_element_cap=2)
    runs = [run_in_process(quiet_app, f"cap-{n}") for n in range(3)]
    assert [r.array_cap_warnings for r in runs] == [0, 0, 6]
    report = json.loads(quiet_app.blob_text(runs[2].report_blob))
    assert report["warnings"]["array_cap"]["profiles"] == 6
    assert len(report["warnings"]["array_cap"]["examples"]) == 5


def test_a_segment_that_grows_past_one_partition_still_diffs_against_the_old_snapshot(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _rows(400, "grow")
    _export(quiet_app, "grow", rows)
    first = run_in_process(quiet_app, "grow")
    assert first.partitions == 1
    # Small partitions: many of them.
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 4096)
    changed = {k: dict(v) for k, v in rows.items()}
    changed["grow-00007"]["IsVip"] = "true" if rows["grow-00007"]["IsVip"] == "false" else "false"
    del changed["grow-00008"]
    _upload(quiet_app, "grow", changed)

    quiet_app.mark_sandbox_requests()
    second = run_in_process(quiet_app, "grow")
    assert second.partitions >= 8
    sent = sorted(o["external_id"] for b in quiet_app.sandbox_requests() for o in b["attributes"])
    assert sent == ["grow-00007", "grow-00008"]
    assert (second.profiles_unchanged, second.profiles_changed, second.profiles_removed) == (
        398,
        1,
        1,
    )
    monkeypatch.undo()  # and back down to one partition
    quiet_app.mark_sandbox_requests()
    assert run_in_process(quiet_app, "grow").objects_planned == 0


def test_partition_counts_grow_with_the_source_in_powers_of_two() -> None:
    assert partition_count(0, False) == 1
    assert partition_count(4 * 1024 * 1024, False) == 1
    assert partition_count(4 * 1024 * 1024 + 1, False) == 2
    assert partition_count(100 * 1024 * 1024, False) == 32
    assert partition_count(100 * 1024 * 1024, True) == 128  # gzip holds about 5x its size
    assert partition_count(10**12, False) == 256


def test_an_unreadable_row_holds_back_removals_for_that_run(quiet_app: App) -> None:
    """A stray comma makes a row unreadable; it may be any member's, so nobody leaves."""
    rows = _rows(20, "torn")
    _export(quiet_app, "torn", rows)
    run_in_process(quiet_app, "torn")
    listed = list(rows.values())
    text = _csv(listed[:18]).decode("utf-8")  # two members missing, one of them torn:
    text += listed[18]["CustomerId"] + ",a,b,c\n"  # too few fields: whose row is this?
    quiet_app.upload("delta/torn.csv", text.encode("utf-8"))

    quiet_app.mark_sandbox_requests()
    held = run_in_process(quiet_app, "torn")
    assert quiet_app.sandbox_requests() == []
    assert (held.profiles_removed, held.removals_held, held.rows_unidentified) == (0, 2, 1)
    assert "were not removed" in held.message
    assert all("Delta Seg" in u["segments"] for u in quiet_app.braze_users().values())

    _upload(quiet_app, "torn", listed[:19])  # fixed: now only the 20th has really left
    fixed = run_in_process(quiet_app, "torn")
    assert (fixed.profiles_removed, fixed.removals_held) == (1, 0)


def test_a_cdm_folder_written_again_is_recognised_file_by_file(quiet_app: App) -> None:
    """Customer Insights writes the whole folder on every refresh: the same model and partition
    bytes end the run at once; one partition with other bytes is read again."""
    base = quiet_app.services.storage.container("segments").url
    folder = "delta/cdm/VipExport"
    parts = {
        f"{folder}/VIP/part-{n}.csv": "".join(
            f'cdm-{n}-{i},u{n}.{i}@example.com,Zoë {i},"a, ""b""\n{i}"\r\n' for i in range(20)
        )
        for n in range(3)
    }
    model = {
        "name": "VipExport",
        "version": "1.0",
        "entities": [
            {
                "$type": "LocalEntity",
                "name": "VIP",
                "attributes": [
                    {"name": name, "dataType": "string"}
                    for name in ("CustomerId", "PrimaryEmail", "FirstName", "Note")
                ],
                "partitions": [
                    {"name": name.rsplit("/", 1)[-1], "location": f"{base}/{name}"}
                    for name in parts
                ],
            }
        ],
    }
    mapping = {
        "customer_id": "CustomerId",
        "email": "PrimaryEmail",
        "attributes": [{"column": "Note", "attribute": "note"}],
    }

    def write_folder() -> None:
        for name, text in parts.items():
            quiet_app.upload(name, text.encode())
        quiet_app.upload(f"{folder}/model.json", json.dumps(model).encode())

    write_folder()
    quiet_app.define(
        [export_definition("cdm-again", f"{folder}/model.json", "CDM", mapping=mapping)]
    )
    first = run_in_process(quiet_app, "cdm-again")
    assert (first.status, first.profiles_accepted) == (Status.SUCCEEDED, 60)

    write_folder()
    again = run_in_process(quiet_app, "cdm-again")
    assert (again.unchanged_since, again.splits, again.requests_sent) == (first.run_id, 0, 0)

    parts[f"{folder}/VIP/part-1.csv"] = parts[f"{folder}/VIP/part-1.csv"].replace(
        "u1.7@", "u1.7.new@"
    )
    write_folder()
    changed = run_in_process(quiet_app, "cdm-again")
    assert (changed.unchanged_since, changed.rows_read, changed.profiles_changed) == ("", 60, 1)
    assert quiet_app.braze_users()["cdm-1-7"]["email"] == "u1.7.new@example.com"


def test_a_source_written_while_the_run_reads_it_is_read_again_next_time(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run digests version A, then B lands before the rows are read: Braze gets B, so the
    run must not vouch for A, or A written back would never be sent again."""
    rows_a = _rows(30, "race")
    rows_b = {k: {**v, "FirstName": "Changed"} for k, v in rows_a.items()}
    _export(quiet_app, "race", rows_a)
    storage = quiet_app.services.storage
    digest = storage.digest

    def digest_then_overwrite(container: str, name: str, scan: Any = None) -> tuple[str, str]:
        found = digest(container, name, scan)
        _upload(quiet_app, "race", rows_b)  # another writer, between the digest and the read
        return found

    monkeypatch.setattr(storage, "digest", digest_then_overwrite)
    first = run_in_process(quiet_app, "race")
    monkeypatch.undo()
    assert first.status == Status.SUCCEEDED
    assert quiet_app.braze_users()["race-00003"]["first_name"] == "Changed"
    assert quiet_app.services.snapshots.current("race", "sandbox").source_version == ""  # type: ignore[union-attr]

    _upload(quiet_app, "race", rows_a)  # A written back
    second = run_in_process(quiet_app, "race")
    assert (second.unchanged_since, second.profiles_changed) == ("", 30)
    _assert_braze_holds(quiet_app, rows_a, set())


def test_counts_carried_forward_add_up_when_a_member_row_is_invalid(quiet_app: App) -> None:
    """A member whose row turned invalid stays in the snapshot but is not a valid row: the
    carried counts are the reading run's, not the snapshot's size."""
    rows = _rows(20, "kept")
    _export(quiet_app, "kept", rows)
    run_in_process(quiet_app, "kept")
    rows["kept-00004"]["Email"] = "not an email"
    _upload(quiet_app, "kept", rows)
    read = run_in_process(quiet_app, "kept")
    _upload(quiet_app, "kept", rows)
    carried = run_in_process(quiet_app, "kept")
    assert carried.unchanged_since == read.run_id
    assert (carried.rows_read, carried.rows_valid, carried.rows_rejected) == (20, 19, 1)
    assert carried.profiles_unchanged == carried.rows_valid == read.rows_valid
    assert quiet_app.blob_text(carried.rejected_blob) == quiet_app.blob_text(read.rejected_blob)


def test_once_the_reading_runs_rejected_rows_are_deleted_the_source_is_read(
    quiet_app: App,
) -> None:
    """The retention rule deleted the snapshot run's files: its rejected rows cannot be
    reported again, so the run reads the source and reports them afresh."""
    rows = _rows(20, "gone")
    rows["gone-00002"]["Email"] = "not an email"
    _export(quiet_app, "gone", rows)
    first = run_in_process(quiet_app, "gone")
    carried = run_in_process(quiet_app, "gone")
    assert carried.unchanged_since == first.run_id
    runs = quiet_app.services.storage.container("export-runs")
    for blob in list(runs.list_blobs(name_starts_with=f"runs/{first.run_id}/")):
        runs.delete_blob(blob.name)

    after = run_in_process(quiet_app, "gone")
    assert (after.status, after.unchanged_since) == (Status.PARTIALLY_SUCCEEDED, "")
    assert (after.rows_read, after.rows_rejected, after.requests_sent) == (20, 1, 0)
    (entry,) = [json.loads(x) for x in quiet_app.blob_text(after.rejected_blob).splitlines()]
    assert entry["customer_id"] == "gone-00002"
    again = run_in_process(quiet_app, "gone")  # and the carry works from the new reading run
    assert again.unchanged_since == after.run_id


class _ValidationSpy:
    """Records the customer id of every row the diff validates (wrapping the real function:
    this counts work done, it changes none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ids: list[str] = []
        real = diff_partition.record_validator

        def spying_validator(mapping: Any) -> Any:
            validate = real(mapping)

            def spy(values: dict[str, Any]) -> Any:
                self.ids.append(values.get("CustomerId"))
                return validate(values)

            return spy

        monkeypatch.setattr(diff_partition, "record_validator", spying_validator)


def test_a_delta_validates_only_rows_the_snapshot_does_not_show_unchanged(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows whose mapped values are those Braze holds are not validated again; every other row
    is: changed, new, invalid and later duplicate rows, and rows of a full refresh."""
    rows = _rows(400, "dig")
    _export(quiet_app, "dig", rows)
    spy = _ValidationSpy(monkeypatch)
    first = run_in_process(quiet_app, "dig")
    assert sorted(spy.ids) == sorted(rows) and first.profiles_new == 400

    ids = list(rows)
    new_rows = {k: dict(v) for k, v in rows.items()}
    new_rows[ids[1]]["LoyaltyPoints"] = "not a number"  # turned invalid: kept, not removed
    new_rows[ids[2]]["Note"] = "changed, with a comma"
    new_rows[ids[3]]["Unmapped"] = "ignored"  # not a mapped column: same digest
    joined = _rows(2, "dig-new", seed=5)
    written = [*new_rows.values(), *joined.values(), {**rows[ids[4]], "FirstName": "Later"}]
    _upload(quiet_app, "dig", written)
    spy.ids.clear()
    quiet_app.mark_sandbox_requests()
    second = run_in_process(quiet_app, "dig")

    assert sorted(spy.ids) == sorted([ids[1], ids[2], *joined, ids[4]])
    sent = {o["external_id"]: o for b in quiet_app.sandbox_requests() for o in b["attributes"]}
    assert sent == {
        ids[2]: {"external_id": ids[2], "note": "changed, with a comma"},
        **{k: sent[k] for k in joined},
    }
    assert (second.profiles_new, second.profiles_changed, second.profiles_unchanged) == (2, 1, 398)
    assert second.profiles_removed == 0
    assert second.rejections == {"attribute_not_number": 1, "duplicate_customer_id": 1}
    rejected = [json.loads(x) for x in quiet_app.blob_text(second.rejected_blob).splitlines()]
    assert [(r["line"], r["codes"][0]) for r in rejected] == [
        (_line_of(written, 1), "attribute_not_number"),
        (_line_of(written, 402), "duplicate_customer_id"),
    ]
    assert rejected[0]["row"]["LoyaltyPoints"] == "not a number"
    assert rejected[1]["object"]["first_name"] == "Later"

    spy.ids.clear()
    _upload(quiet_app, "dig", list(reversed(written)))  # other bytes: the source is read
    assert run_in_process(quiet_app, "dig", full_refresh=True).objects_planned == 401
    assert len(spy.ids) == len(written)


def test_a_changed_profile_braze_rejected_is_compared_again_next_run(quiet_app: App) -> None:
    """The snapshot falls back to the previous row's digest with its fingerprints: the row that
    Braze refused is not taken for the one it holds."""
    rows = _rows(5, "back")
    rows[BLOCKLISTED] = {**rows["back-00000"], "CustomerId": BLOCKLISTED}
    _export(quiet_app, "back", rows)
    quiet_app.set_sandbox_limits(blocklist=[])
    try:
        assert run_in_process(quiet_app, "back").profiles_accepted == 6
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])

    changed = {k: dict(v) for k, v in rows.items()}
    changed[BLOCKLISTED]["FirstName"] = "Renamed"
    _upload(quiet_app, "back", changed)
    second = run_in_process(quiet_app, "back")
    assert (second.profiles_changed, second.profiles_rejected_by_braze) == (1, 1)

    quiet_app.set_sandbox_limits(blocklist=[])
    try:
        quiet_app.mark_sandbox_requests()
        third = run_in_process(quiet_app, "back")
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    sent = [o for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert sent == [{"external_id": BLOCKLISTED, "first_name": "Renamed"}]
    assert (third.profiles_changed, third.status) == (1, Status.SUCCEEDED)


@pytest.mark.parametrize("fallbacks", ["frames", "earlier plain lines"])
def test_a_rejected_change_falls_back_to_the_entry_kept_in_the_fallbacks(
    quiet_app: App, fallbacks: str
) -> None:
    """The fallbacks a delta's diff writes (a frame a block; an earlier version wrote the lines
    as they are, and a run diffed by it may be finalized by this one) hold the entry a changed
    profile had: Braze rejecting the change puts it back, so the next run sends the change
    again, and nothing else."""
    name = "fall" if fallbacks == "frames" else "fallplain"  # the storage is shared
    rows = _rows(5, name)
    rows[BLOCKLISTED] = {**rows[f"{name}-00000"], "CustomerId": BLOCKLISTED}
    _export(quiet_app, name, rows)
    quiet_app.set_sandbox_limits(blocklist=[])
    try:
        assert run_in_process(quiet_app, name).profiles_accepted == 6
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    changed = {k: dict(v) for k, v in rows.items()}
    changed[BLOCKLISTED]["FirstName"] = "Renamed ✓"
    _upload(quiet_app, name, changed)

    run = start_run(quiet_app.services, name, "test").run
    take(quiet_app, JOBS_QUEUE, ExportJob, run.run_id)
    jobs = plan_in_process(quiet_app, run)
    storage, container = quiet_app.services.storage, "export-runs"
    planned = quiet_app.services.runs.get(run.run_id)
    assert planned is not None
    held = []
    for partition in range(planned.partitions):
        blob = snapshot_fallbacks_name(run.run_id, partition)
        stored = storage.read_bytes(container, blob)
        assert stored.startswith(FRAME_MAGIC)  # a frame, even for a partition that sent nothing
        lines = b"".join(unpacked_stream(storage.read_chunks(container, blob)))
        held += lines.decode().splitlines()
        if fallbacks == "earlier plain lines":
            storage.write_bytes(container, blob, lines, "application/x-ndjson")
    assert [json.loads(line.split("\t")[0]) for line in held] == [BLOCKLISTED]
    for job in jobs:
        deliver_chunk(job, quiet_app.services)
    second = quiet_app.services.runs.get(run.run_id)
    assert second is not None and second.status == Status.FAILED  # all it sent was refused
    assert (second.profiles_changed, second.profiles_rejected_by_braze) == (1, 1)

    quiet_app.set_sandbox_limits(blocklist=[])
    try:
        quiet_app.mark_sandbox_requests()
        third = run_in_process(quiet_app, name)
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    sent = [o for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert sent == [{"external_id": BLOCKLISTED, "first_name": "Renamed ✓"}]
    assert (third.profiles_changed, third.status) == (1, Status.SUCCEEDED)


def test_damaged_fallbacks_fail_the_finalizing_naming_their_blob(quiet_app: App) -> None:
    """Fallbacks damaged in storage are not taken for no entries (which would drop the profile
    Braze rejected from the snapshot, and its change would never be sent again): finalizing
    stops, naming the blob, and the chunk's message is retried."""
    rows = _rows(3, "falldmg")
    rows[BLOCKLISTED] = {**rows["falldmg-00000"], "CustomerId": BLOCKLISTED}
    _export(quiet_app, "falldmg", rows)
    quiet_app.set_sandbox_limits(blocklist=[])
    try:
        run_in_process(quiet_app, "falldmg")
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    changed = {k: dict(v) for k, v in rows.items()}
    changed[BLOCKLISTED]["FirstName"] = "Renamed"
    _upload(quiet_app, "falldmg", changed)
    run = start_run(quiet_app.services, "falldmg", "test").run
    take(quiet_app, JOBS_QUEUE, ExportJob, run.run_id)
    (job,) = plan_in_process(quiet_app, run)
    storage, blob = quiet_app.services.storage, snapshot_fallbacks_name(run.run_id, 0)
    damaged = bytearray(storage.read_bytes("export-runs", blob))
    damaged[-6] ^= 0x01
    storage.write_bytes("export-runs", blob, bytes(damaged), "application/zstd")
    with pytest.raises(DamagedRunFile, match=rf"fallbacks blob {blob}: .*damaged"):
        deliver_chunk(job, quiet_app.services)
    after = quiet_app.services.runs.get(run.run_id)
    assert after is not None and not after.is_final


@pytest.mark.parametrize("earlier", ["columns uncompressed", "text lines", "before row digests"])
def test_a_snapshot_of_an_earlier_format_is_read_and_rewritten(
    quiet_app: App, earlier: str
) -> None:
    """Snapshots the earlier versions wrote (the version before: columns, uncompressed; before
    it as text, `customer id, row digest, fingerprints, raw digest` per line, and before that
    `[customer id, fingerprints]`) still diff: only what changed is sent, and the new snapshot
    is in this version's columns, with the digests."""
    rows = _rows(200, "old")
    _export(quiet_app, "old", rows)
    first = run_in_process(quiet_app, "old")
    snapshots = quiet_app.services.snapshots
    container = quiet_app.services.storage.container("export-snapshots")
    for partition in range(first.partitions):
        written = snapshots.partition("old", "sandbox", first.run_id, partition)
        lines = [written.line(at) for at in range(len(written))]
        assert all(len(written.digest(at)) == 16 for at in range(len(written)))
        name = f"old/sandbox/{first.run_id}/part-{partition:04d}.jsonl"
        if earlier == "columns uncompressed":
            container.upload_blob(name, version_1(written), overwrite=True)
            continue
        if earlier == "before row digests":
            lines = [
                json.dumps([json.loads(id_json), json.loads(prints_json)])
                for id_json, _, prints_json, _ in (line.split("\t") for line in lines)
            ]
        container.upload_blob(name, "".join(f"{line}\n" for line in lines), overwrite=True)

    changed = {k: dict(v) for k, v in rows.items()}
    changed["old-00007"]["IsVip"] = "false" if rows["old-00007"]["IsVip"] == "true" else "true"
    _upload(quiet_app, "old", changed)
    quiet_app.mark_sandbox_requests()
    second = run_in_process(quiet_app, "old")
    sent = [o for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert sent == [{"external_id": "old-00007", "is_vip": changed["old-00007"]["IsVip"] == "true"}]
    assert second.profiles_unchanged == 199
    blobs = [
        quiet_app.services.storage.read_bytes("export-snapshots", b.name)
        for b in container.list_blobs(name_starts_with=f"old/sandbox/{second.run_id}/")
        if b.name.endswith(".jsonl")
    ]
    assert blobs and all(blob.startswith(MAGIC + b'{"version": 2,') for blob in blobs)
    now = [SnapshotPartition.from_blob(blob) for blob in blobs]
    assert sum(len(part) for part in now) == 200
    assert all(len(part.digest(at)) == 16 for part in now for at in range(len(part)))


def test_a_removal_braze_rejected_is_sent_again_next_run(quiet_app: App) -> None:
    """A profile whose removal Braze refused stays in the snapshot, so it leaves next time."""
    rows = _rows(4, "refused")
    rows[BLOCKLISTED] = {**rows["refused-00000"], "CustomerId": BLOCKLISTED}
    _export(quiet_app, "refused", rows)
    quiet_app.set_sandbox_limits(blocklist=[])
    try:
        first = run_in_process(quiet_app, "refused")
        assert first.profiles_accepted == 5, first.message
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])

    remaining = {k: v for k, v in rows.items() if k != BLOCKLISTED}
    _upload(quiet_app, "refused", remaining)
    second = run_in_process(quiet_app, "refused", override_safety_valves=True)
    assert (second.profiles_removed, second.profiles_rejected_by_braze) == (1, 1)
    assert quiet_app.services.snapshots.current("refused", "sandbox").profiles == 5  # type: ignore[union-attr]

    quiet_app.set_sandbox_limits(blocklist=[])
    try:
        quiet_app.mark_sandbox_requests()
        third = run_in_process(quiet_app, "refused", override_safety_valves=True)
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    sent = [o for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert [o["external_id"] for o in sent] == [BLOCKLISTED]
    assert sent[0]["segments"] == {"remove": ["Delta Seg"]}
    assert (third.profiles_removed, third.status) == (1, Status.SUCCEEDED)
    assert quiet_app.services.snapshots.current("refused", "sandbox").profiles == 4  # type: ignore[union-attr]


def test_a_json_lines_delta_skips_records_whose_mapped_values_are_unchanged(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON values of every kind keep their digest from run to run, whatever the key order and
    whatever unmapped keys change; a changed value, a new record and a nested value are
    validated (the nested one rejected)."""
    records = [
        {
            "CustomerId": f"js-{n}",
            "Email": f"u{n}@example.com",
            "FirstName": ["Zoë 🎉", 'says "hi"', "line\u2028separator", "Ünïcödé"][n % 4],
            "LoyaltyPoints": [1.5e-7, 10**20, n, -0.0][n % 4],
            "IsVip": n % 2 == 0,
            "BirthDate": "1990-01-01",
            "Note": None if n % 3 else "tab\there",
            "Unmapped": {"deep": [n]},
        }
        for n in range(40)
    ]

    def upload(items: list[dict[str, Any]]) -> None:
        text = "\n".join(json.dumps(item, ensure_ascii=False) for item in items) + "\n"
        quiet_app.upload("delta/js.jsonl", text.encode("utf-8"))

    upload(records)
    quiet_app.define([export_definition("js", "delta/js.jsonl", "Delta Seg")])
    spy = _ValidationSpy(monkeypatch)
    first = run_in_process(quiet_app, "js")
    assert len(spy.ids) == 40 and first.rows_read == first.rows_valid + first.rows_rejected

    later = [dict(reversed(list(r.items()))) for r in records]  # every key order reversed
    for record in later:
        record["Unmapped"] = "changed, not mapped"
    later[5]["LoyaltyPoints"] = 6
    later[7]["LoyaltyPoints"] = float("nan")  # read as NaN: rejected, never sent as a blank
    later.append({**records[0], "CustomerId": "js-nested", "FirstName": {"nested": True}})
    upload(later)
    spy.ids.clear()
    quiet_app.mark_sandbox_requests()
    second = run_in_process(quiet_app, "js")
    assert sorted(spy.ids) == ["js-5", "js-7", "js-nested"]
    sent = [o for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert sent == [{"external_id": "js-5", "loyalty_points": 6}]
    assert (second.profiles_changed, second.profiles_new, second.profiles_removed) == (1, 0, 0)
    assert second.profiles_unchanged == first.rows_valid - 2
    assert second.rejections == {
        **first.rejections,
        "attribute_type": 1,
        "attribute_not_number": first.rejections.get("attribute_not_number", 0) + 1,
    }
    rejected = [json.loads(x) for x in quiet_app.blob_text(second.rejected_blob).splitlines()]
    (nan_row,) = [r for r in rejected if r["customer_id"] == "js-7"]
    assert "finite" in nan_row["reasons"][0]


def test_a_run_diffed_before_an_upgrade_is_finalized_after_it(quiet_app: App) -> None:
    """A diff of the version before row digests wrote a pending snapshot, not fallbacks; this
    version finalizes it: the profile Braze rejected stays out of the snapshot."""
    rows = _rows(6, "upg")
    rows[BLOCKLISTED] = {**rows["upg-00000"], "CustomerId": BLOCKLISTED}
    _export(quiet_app, "upg", rows)
    run = start_run(quiet_app.services, "upg", "test").run
    take(quiet_app, JOBS_QUEUE, ExportJob, run.run_id)
    jobs = plan_in_process(quiet_app, run)
    storage, container = quiet_app.services.storage, "export-runs"
    planned = quiet_app.services.runs.get(run.run_id)
    assert planned is not None
    for partition in range(planned.partitions):
        written = quiet_app.services.snapshots.partition("upg", "sandbox", run.run_id, partition)
        diffed = [written.line(at) for at in range(len(written))]
        name = snapshot_fallbacks_name(run.run_id, partition)
        sent = b"".join(unpacked_stream(storage.read_chunks(container, name))).decode()
        sent = sent.split("\n")
        sent_ids = {line.split("\t")[0] for line in sent if line}
        pending = []  # what the earlier version wrote: every profile sent is new here
        for line in diffed:
            id_json, _, prints_json, _ = line.split("\t")
            entry = [json.loads(id_json), json.loads(prints_json)]
            pending.append(json.dumps([*entry, None] if id_json in sent_ids else entry))
        storage.container(container).delete_blob(name)
        text = "".join(f"{line}\n" for line in pending)
        legacy = legacy_pending_snapshot_name(run.run_id, partition)
        storage.write_bytes(container, legacy, text, "application/x-ndjson")
    for job in jobs:
        deliver_chunk(job, quiet_app.services)
    final = quiet_app.services.runs.get(run.run_id)
    assert final is not None and final.status == Status.PARTIALLY_SUCCEEDED
    assert (final.profiles_accepted, final.profiles_rejected_by_braze) == (6, 1)
    assert quiet_app.services.snapshots.current("upg", "sandbox").profiles == 6  # type: ignore[union-attr]

    quiet_app.mark_sandbox_requests()
    again = run_in_process(quiet_app, "upg")
    sent_again = [o["external_id"] for b in quiet_app.sandbox_requests() for o in b["attributes"]]
    assert sent_again == [BLOCKLISTED] and again.profiles_unchanged == 6


def test_a_diff_on_other_code_than_the_plan_validates_every_row(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment between a run's split and its diff: the digests were seeded by the code
    that planned it, so the diff trusts none and remembers none; the next run validates every
    row once more, then skips them again."""
    rows = _rows(50, "code")
    _export(quiet_app, "code", rows)
    spy = _ValidationSpy(monkeypatch)
    run_in_process(quiet_app, "code")
    _upload(quiet_app, "code", list(reversed(rows.values())))  # other bytes: read again

    spy.ids.clear()
    with monkeypatch.context() as patch:
        patch.setattr(diff_partition, "code_digest", lambda: "a later deployment")
        assert run_in_process(quiet_app, "code").objects_planned == 0
    assert len(spy.ids) == 50

    for expected in (50, 0):  # once to remember the digests, then not at all
        _upload(quiet_app, "code", rows if expected else list(rows.values())[::-1])
        spy.ids.clear()
        assert run_in_process(quiet_app, "code").objects_planned == 0
        assert len(spy.ids) == expected


def test_a_delta_across_partitions_travels_as_one_chunk_and_its_rejections_stay_owed(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each partition's few changes would be a part-filled request of its own; grouped, the
    changes fill whole requests. Braze's rejections among them are listed in source order (the
    job's blobs come from several partitions) and put back in their own partitions of the
    snapshot, so the next run sends those again and nothing else."""
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 4096)
    rows = _rows(600, "grp")
    _export(quiet_app, "grp", rows)
    first = run_in_process(quiet_app, "grp")
    assert first.profiles_accepted == 600 and first.partitions >= 16

    changed = {k: dict(v) for k, v in rows.items()}
    renamed = [f"grp-{n:05d}" for n in range(0, 600, 6)]  # 100, in every partition
    for customer_id in renamed:
        changed[customer_id]["FirstName"] = "Renamed, twice"
    # Two refused: the earlier row's partition comes after the later row's, so the job holds
    # the later one first.
    earlier, later = next(
        (a, b)
        for a in renamed
        for b in renamed
        if a < b and partition_of(a, first.partitions) > partition_of(b, first.partitions)
    )
    _upload(quiet_app, "grp", changed)
    quiet_app.set_sandbox_limits(blocklist=[earlier, later])
    try:
        quiet_app.mark_sandbox_requests()
        second = run_in_process(quiet_app, "grp")
    finally:
        quiet_app.set_sandbox_limits(blocklist=[BLOCKLISTED])
    batches = quiet_app.sandbox_requests()
    assert (second.chunks_total, second.requests_planned) == (1, 2)  # 100 = 75 + 25
    assert sorted(len(b["attributes"]) for b in batches) == [25, 75]  # in flight together
    assert (second.profiles_changed, second.profiles_accepted) == (100, 98)
    refused = [e for e in json_lines(quiet_app.services, second.rejected_blob)]
    assert [e["customer_id"] for e in refused] == [earlier, later]
    assert refused[0]["line"] < refused[1]["line"]

    quiet_app.mark_sandbox_requests()
    third = run_in_process(quiet_app, "grp")
    sent = sorted(o["external_id"] for b in quiet_app.sandbox_requests() for o in b["attributes"])
    assert sent == [earlier, later]
    assert (third.profiles_changed, third.status) == (2, Status.SUCCEEDED)
    _assert_braze_holds(quiet_app, changed, set())


def test_only_the_last_partition_s_diff_reads_the_run_again_to_release_it(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every diff asks whether it was the last: the count of diffed partitions answers all but
    the last, which alone reads the run again and releases it (the run was read twice per
    partition before, a table read each)."""
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 4096)
    released_whole(monkeypatch)
    _export(quiet_app, "count", _rows(200, "count"))
    services = quiet_app.services
    run = start_run(services, "count", "test").run
    take(quiet_app, JOBS_QUEUE, ExportJob, run.run_id)
    split_in_process(quiet_app, run)
    reads: list[str] = []
    read = services.runs.get

    def counted(run_id: str) -> Any:
        reads.append(run_id)
        return read(run_id)

    monkeypatch.setattr(services.runs, "get", counted)
    reads_per_diff = []
    for job in take(quiet_app, JOBS_QUEUE, PartitionJob, run.run_id):
        reads.clear()
        diff_partition.diff_partition(job, services)
        reads_per_diff.append(len(reads))
    released = read(run.run_id)
    assert released is not None and released.status == Status.DELIVERING
    assert len(reads_per_diff) == released.partitions >= 4
    # The last: its own read, the release's, and finalizing's look for a run with nothing
    # left to send.
    assert reads_per_diff == [1] * (released.partitions - 1) + [3]
    assert len(take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)) == released.chunks_total


def test_a_releaser_taking_over_numbers_the_jobs_as_the_first_claim_did(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first releaser claimed the run when the chunk size was 75 and died; by the time
    another takes over, the definition says 100,000. Jobs already queued are numbered by the
    first claim, so the takeover must number them alike: one per blob, not one in all."""
    monkeypatch.setattr("shared.core.partitioning.PARTITION_TARGET_BYTES", 4096)
    released_whole(monkeypatch)
    rows = _rows(200, "take")
    _export(quiet_app, "take", rows)
    services = quiet_app.services
    run = start_run(services, "take", "test").run
    take(quiet_app, JOBS_QUEUE, ExportJob, run.run_id)
    monkeypatch.setattr(diff_partition, "maybe_release", lambda *_: None)
    plan_in_process(quiet_app, run)
    claimed = services.runs.get(run.run_id)
    assert claimed is not None and claimed.partitions >= 4
    claimed.chunk_size = 75
    claimed.release_claimed_at = utcnow() - RELEASE_LEASE - timedelta(seconds=1)
    services.runs.update(claimed)

    assert maybe_release(run.run_id, claimed.partitions, services) is not None
    released = services.runs.get(run.run_id)
    assert released is not None and released.chunk_size == 75
    jobs = take(quiet_app, CHUNKS_QUEUE, ChunkJob, run.run_id)
    assert len(jobs) == released.chunks_total == claimed.partitions  # 200 rows: each has some
    assert all(len(job.blob_names) == 1 for job in jobs)
    for job in jobs:
        deliver_chunk(job, services)
    final = services.runs.get(run.run_id)
    assert final is not None and final.status == Status.SUCCEEDED
    assert final.profiles_accepted == 200


def test_superseded_snapshots_are_deleted_after_the_run_is_recorded_or_by_the_next_run(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _rows(120, "sup")
    _export(quiet_app, "sup", rows)
    first = run_in_process(quiet_app, "sup")
    rows["sup-00001"]["FirstName"] = "Changed"
    _upload(quiet_app, "sup", rows)

    # A storage outage while deleting (no local equivalent: the call is made to fail).
    def outage(names: list[str]) -> None:
        raise ConnectionError("storage went away")

    snapshots = quiet_app.services.snapshots
    monkeypatch.setattr(snapshots, "delete", outage)
    second = run_in_process(quiet_app, "sup")
    assert second.status == Status.SUCCEEDED and second.profiles_changed == 1
    assert _snapshot_run(quiet_app, "sup") == second.run_id
    assert _snapshot_folders(quiet_app, "sup") == {first.run_id, second.run_id}

    monkeypatch.undo()
    rows["sup-00002"]["FirstName"] = "Changed too"
    _upload(quiet_app, "sup", rows)
    third = run_in_process(quiet_app, "sup")
    assert third.status == Status.SUCCEEDED and third.profiles_changed == 1
    assert _snapshot_folders(quiet_app, "sup") == {third.run_id}  # the leftover went too
    assert _snapshot_run(quiet_app, "sup") == third.run_id  # and the pointer to it stays
