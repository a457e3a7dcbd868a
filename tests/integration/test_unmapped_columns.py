"""Columns the mapping does not read stay in the source: planning's working files carry only
the mapped columns, and a rejected row is reported with those (its line finds the rest).

In process on Azurite against the sandbox over HTTP, with a source cut into several ranges; a
Customer Insights profile has many more columns than an export maps, some of them personal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import Run
from shared.pipeline.run_files import run_prefix
from tests.integration.conftest import (
    App,
    csv_bytes,
    export_definition,
    opened,
    run_in_process,
)

MAPPED = ["CustomerId", "Email", "FirstName", "LoyaltyPoints", "IsVip", "BirthDate", "Note"]
# Unmapped columns between and after the mapped ones, which are not in the mapping's order,
# with values a reader must keep apart.
HEADER = [
    "ContactId",
    "Email",
    "CustomerId",
    "Note",
    "PrimaryPhone",
    "FirstName",
    "LoyaltyPoints",
    "BirthDate",
    "IsVip",
    "StreetAddress",
]
MARK = "UNMAPPED-MARK"  # ASCII: found in any blob however its JSON escapes non-ASCII


def _row(n: int, **changes: str) -> dict[str, str]:
    row = {
        "ContactId": f"{MARK} contact {n}",
        "CustomerId": f"wide-{n:05d}",
        "Email": f"user.{n}@example.com",
        "FirstName": ["Zoë", "O'Brien", "José, Jr.", 'Ann "the" Great'][n % 4],
        "PrimaryPhone": f'+1 "555", {MARK}\n{n:04d} 📞 Ø',
        "LoyaltyPoints": str(n * 7),
        "IsVip": ["true", "false"][n % 2],
        "BirthDate": f"19{50 + n % 50}-0{1 + n % 9}-1{n % 10}",
        "Note": ["multi\nline, with comma", "Zoë 李 🎉", ""][n % 3],
        "StreetAddress": f"{MARK} 12 Rue de l'Église, Apt {n}" + "x" * (n % 7) * 300,
    }
    return {**row, **changes}


def _run_blobs(app: App, run_id: str) -> dict[str, bytes]:
    """The run's working files as their readers see them: chunks and pieces decompressed."""
    container = app.services.storage.container(RUNS_CONTAINER)
    names = [blob.name for blob in container.list_blobs(name_starts_with=run_prefix(run_id))]
    return {name: opened(app.services.storage.read_bytes(RUNS_CONTAINER, name)) for name in names}


def _rejected(app: App, run: Run) -> dict[int, dict[str, Any]]:
    return {entry["line"]: entry for entry in app.rejected(run) if entry.get("line")}


def test_planning_keeps_only_the_mapped_columns_and_reports_rejected_rows_with_them(
    split_app: App,
) -> None:
    rows = [_row(n) for n in range(1_500)]
    rows[40]["Email"] = "not an email"  # rejected by the diff's validation
    rows[41]["CustomerId"] = ""  # rejected by the split: no usable id
    path = "wide/profiles.csv"
    split_app.define([export_definition("wide", path, "Wide", chunk_size=500)])
    data = csv_bytes(rows, HEADER)
    assert data.count(MARK.encode()) == 3 * len(rows)
    last_line = 2 + len(rows) + sum(sum(v.count("\n") for v in row.values()) for row in rows)
    malformed = 'too-few,"fields, KEPT AS READ"\r\n'  # read as fields: reported whole
    split_app.upload(path, data + malformed.encode())

    run = run_in_process(split_app, "wide")

    assert run.splits > 1 and (run.profiles_accepted, run.rows_rejected) == (1_498, 3)
    blobs = _run_blobs(split_app, run.run_id)
    pieces = [data for name, data in blobs.items() if "/partitions/" in name]
    assert pieces and all(b'"wide-' in data for data in pieces)  # opened: their ids show
    assert [name for name, data in blobs.items() if MARK.encode() in data] == []
    users = split_app.braze_users()
    assert users["wide-00002"]["first_name"] == "José, Jr."
    assert not any(MARK in json.dumps(user, ensure_ascii=False) for user in users.values())

    rejected = _rejected(split_app, run)
    # Line 1 is the header; each row's line follows its predecessors' line breaks.
    breaks = [sum(value.count("\n") for value in row.values()) for row in rows]
    lines = {n: 2 + n + sum(breaks[:n]) for n in (40, 41)}
    invalid, unidentified = rejected[lines[40]], rejected[lines[41]]
    assert invalid["codes"] == ["email_invalid"] and invalid["stage"] == "validation"
    assert invalid["row"] == {column: rows[40][column] for column in MAPPED}
    assert list(invalid["row"]) == [c for c in HEADER if c in MAPPED]  # in the row's order
    assert unidentified["codes"][0].startswith("customer_id")
    assert unidentified["row"] == {column: rows[41][column] for column in MAPPED}
    unread = rejected[last_line]
    assert unread["row"] == {"field 1": "too-few", "field 2": "fields, KEPT AS READ"}


@pytest.mark.parametrize("column", ["ContactId", "StreetAddress"])
def test_an_unmapped_column_changed_alone_sends_nothing(split_app: App, column: str) -> None:
    """Only the mapped columns make a profile: a change elsewhere in the row is not sent (its
    row is read again, as its bytes changed, and found the same)."""
    rows = [_row(n) for n in range(600)]
    path = f"wide/{column}.csv"
    name = f"wide-{column.lower()}"
    split_app.define([export_definition(name, path, "Wide", chunk_size=500)])
    split_app.upload(path, csv_bytes(rows, HEADER))
    first = run_in_process(split_app, name)
    assert first.profiles_accepted == 600

    rows[7][column] = f'{MARK} moved, "again" 🚚'
    split_app.upload(path, csv_bytes(rows, HEADER))
    split_app.mark_sandbox_requests()
    second = run_in_process(split_app, name)

    assert (second.profiles_changed, second.profiles_unchanged) == (0, 600)
    assert split_app.sandbox_requests() == []


def test_a_json_lines_record_keyed_in_another_case_is_reported_with_that_key(
    quiet_app: App,
) -> None:
    """Keys are case-sensitive: a record keyed `EMAIL` has no `Email`, so it is rejected as
    missing it; its report keeps the lookalike key (and drops the unmapped ones) to show why."""
    good = {**_row(1), "Extra": {"nested": [MARK]}}
    shouted = {key.upper() if key == "Email" else key: value for key, value in _row(2).items()}
    path = "wide/profiles.jsonl"
    quiet_app.define([export_definition("wide-jsonl", path, "Wide")])
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in (good, shouted))
    quiet_app.upload(path, text.encode())

    run = run_in_process(quiet_app, "wide-jsonl")

    assert (run.profiles_accepted, run.rows_rejected) == (1, 1)
    (entry,) = _rejected(quiet_app, run).values()
    assert entry["codes"] == ["email_blank"]
    assert entry["reasons"] == ["email (column 'Email') is missing: the record has no 'Email' key"]
    assert entry["row"] == {
        column: shouted[column] for column in shouted if column in MAPPED or column == "EMAIL"
    }
    blobs = _run_blobs(quiet_app, run.run_id)
    pieces = [data for name, data in blobs.items() if "/partitions/" in name]
    assert pieces and all(b'"wide-' in data for data in pieces)  # opened: their ids show
    assert [name for name, data in blobs.items() if MARK.encode() in data] == []
