"""The Markdown summary a finished run writes next to its report, on the local Functions host:
where it is, what it says, and that no email, id or field value of the source reaches it."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from shared.core.runs import Status
from shared.pipeline.start import start_run
from tests.integration.conftest import BLOCKLISTED, App, export_definition

HEADER = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note"
ROWS = [  # line 2 onwards: every kind of rejection, each carrying an email, an id or a value
    "anna-7731,anna.private@example.com,Anna,10,true,1990-01-01,",
    "bert-8842,bert secret@example.org,Bert,11,true,1990-01-02,",  # 3: email_invalid
    "anna-7731,anna.again@example.net,Anna2,12,true,1990-01-03,",  # 4: duplicate_customer_id
    "carl-9953,carl@example.com,Carl,1,234,true,1990-01-04,",  # 5: malformed_row (a comma)
    "dora-1064,dora@example.com,Dora,twelve,true,1990-01-05,",  # 6: attribute_not_number
    f"{BLOCKLISTED},blocked.person@example.com,Bo,13,true,1990-01-06,",  # 7: Braze refuses it
    'evelyn-2175,evelyn@example.com,"Evelyn, ""the"" VIP",14,sometimes,1990-01-07,',  # 8: boolean
    "fay-3286,fay.private@example.com,Fay,15,true,1990-01-08,",
]
SECRETS = [
    "anna", "7731", "bert", "secret", "carl", "dora", "twelve", "blocked", "evelyn", "2175",
    "sometimes", "fay", "example.", "@",
]  # fmt: skip


def _summary(app: App, run_id: str) -> tuple[Any, dict[str, Any], str]:
    run = app.wait_for_final(run_id)
    report = json.loads(app.blob_text(run.report_blob))
    return run, report, app.blob_text(run.summary_blob)


def test_a_run_writes_its_summary_next_to_its_report_without_personal_data(app: App) -> None:
    app.upload("summary/messy.csv", ("\n".join([HEADER, *ROWS]) + "\n").encode())
    app.define([export_definition("summary-messy", "summary/messy.csv", "Summary")])

    started = start_run(app.services, "summary-messy", "test").run
    run, report, text = _summary(app, started.run_id)

    assert run.status == Status.PARTIALLY_SUCCEEDED
    assert run.summary_blob == f"runs/{run.run_id}/report.md"  # under the run's prefix
    assert report["blobs"]["summary"] == run.summary_blob
    assert run.public()["summary_blob"] == run.summary_blob
    assert report["rejection_examples"] == {
        "email_invalid": [{"line": 3}],
        "duplicate_customer_id": [{"line": 4}],
        "malformed_row": [{"line": 5}],
        "attribute_not_number": [{"line": 6}],
        "attribute_not_boolean": [{"line": 8}],
        "BLACKLISTED_EXTERNAL_USER_ID": [{"line": 7}],
    }
    assert text.startswith(f"# Export run `{run.run_id}`\n\n**Partially succeeded**: ")
    for row in (
        "| Rows read | 8 |",
        "| Rejected by validation | 5 |",
        "| Sent to Braze | 3 |",
        "| Accepted by Braze | 2 |",
        "| Rejected by Braze | 1 |",
        "| `email_invalid` | 1 | line 3 | the email is not a valid address",
        "| `duplicate_customer_id` | 1 | line 4 |",
        "| `malformed_row` | 1 | line 5 |",
        "| `attribute_not_number` | 1 | line 6 |",
        "| `BLACKLISTED_EXTERNAL_USER_ID` | 1 | line 7 | Braze rejected the profile",
        "| `attribute_not_boolean` | 1 | line 8 |",
        f"- `{run.rejected_blob}`: every rejected row",
        f"- `{run.report_blob}`: the full report (JSON)",
    ):
        assert row in text, row
    # The rejected rows hold the values; the summary holds none, in any spelling.
    assert "bert secret@example.org" in app.blob_text(run.rejected_blob)
    lowered = text.lower()
    leaks = [s for s in SECRETS if s in lowered or quote(s).lower() in lowered]
    assert leaks == ["@"] and lowered.count("@") == 1  # the reason's "exactly one @" alone
    assert "exactly one @" in text


def test_rows_of_a_cdm_folder_are_named_by_their_partition_file(app: App) -> None:
    base = app.services.storage.container("segments").url
    folder = "summary/cdm/Vip"
    parts = {
        f"{folder}/VIP/part-{n}.csv": "".join(
            f"vipcdm-{n}-{i},{'not an email' if i in (1, 3) else f'u{n}.{i}@example.com'}\r\n"
            for i in range(4)
        )
        for n in range(2)
    }
    model = {
        "name": "Vip",
        "version": "1.0",
        "entities": [
            {
                "$type": "LocalEntity",
                "name": "VIP",
                "attributes": [
                    {"name": name, "dataType": "string"} for name in ("CustomerId", "PrimaryEmail")
                ],
                "partitions": [
                    {"name": name.rsplit("/", 1)[-1], "location": f"{base}/{name}"}
                    for name in parts
                ],
            }
        ],
    }
    for name, rows in parts.items():
        app.upload(name, rows.encode())
    app.upload(f"{folder}/model.json", json.dumps(model).encode())
    mapping = {"customer_id": "CustomerId", "email": "PrimaryEmail", "attributes": []}
    app.define([export_definition("summary-cdm", f"{folder}/model.json", "CDM", mapping=mapping)])

    started = start_run(app.services, "summary-cdm", "test").run
    run, report, text = _summary(app, started.run_id)

    assert run.rows_rejected == 4
    files = [p["file"] for p in report["rejection_examples"]["email_invalid"]]
    assert [p["line"] for p in report["rejection_examples"]["email_invalid"]] == [2, 4, 2, 4]
    first, second = files[0], files[2]
    assert first.endswith("part-0.csv") and second.endswith("part-1.csv")
    assert f"| 4 | {first} lines 2, 4; {second} lines 2, 4 |" in text
    assert not [s for s in ("vipcdm", "example", "not an email") if s in text]
