"""The run summary in Markdown: counts, timings, top reasons with their first rows, files, and
never a value from a row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.core.report import RejectionExamples, build_report
from shared.core.report_markdown import TOP_REASONS, positions_text, reason_text, report_markdown
from shared.core.runs import Run

STARTED = datetime(2026, 3, 1, 2, 0, 0, tzinfo=UTC)

# Rejected rows as rejected.jsonl holds them: values, ids and emails in every field.
MESSY = [
    {
        "order": 3,
        "line": 3,
        "customer_id": "cust-Ωmega-003",
        "stage": "validation",
        "codes": ["email_invalid", "attribute_not_number"],
        "reasons": [
            "email (column 'Email') has whitespace inside: 'broken leak@example.org'",
            "'points' (column 'Points') is not a number: '1,5'",
        ],
        "row": {
            "CustomerId": "cust-Ωmega-003",
            "Email": "broken leak@example.org",
            "Points": "1,5",
        },
    },
    {
        "order": 5,
        "line": 5,
        "customer_id": "cust-Ωmega-001",
        "stage": "validation",
        "codes": ["duplicate_customer_id"],
        "reasons": ["duplicate customer id 'cust-Ωmega-001': an earlier row with this id was kept"],
        "object": {"external_id": "cust-Ωmega-001", "email": "dup.leak@example.net"},
    },
    *(
        {
            "order": line,
            "line": line,
            "customer_id": f"person-{line}",
            "stage": "validation",
            "codes": ["email_invalid"],
            "reasons": [f"email (column 'Email') has no @: 'person{line}.example.com'"],
            "row": {"CustomerId": f"person-{line}", "Email": f"person{line}.example.com"},
        }
        for line in (8, 13, 21, 34, 55)
    ),
    {
        "order": 89,
        "line": 89,
        "customer_id": "blocked-id-1",
        "stage": "braze",
        "codes": ["BLACKLISTED_EXTERNAL_USER_ID"],
        "reasons": ["Braze rejected the profile: BLACKLISTED_EXTERNAL_USER_ID"],
        "object": {"external_id": "blocked-id-1", "email": "blocked.leak@example.com"},
    },
]
PERSONAL = {
    "@example",
    "example.",
    "cust-Ωmega",
    "person-",
    "person8",
    "blocked-id-1",
    "1,5",
    "leak",
}


def _run(**fields: Any) -> Run:
    run = Run(
        "vip-20260301T020000Z-abc123",
        "vip",
        "VIP – Zoë's 🎉",
        "prod",
        "segments/ci/vip.csv",
        "schedule",
        status="partially_succeeded",
        message="7 of 8 profiles sent were accepted by Braze; 7 rows rejected by validation, "
        "1 by Braze",
        created_at=STARTED,
        planning_started_at=STARTED + timedelta(seconds=1),
        planning_finished_at=STARTED + timedelta(seconds=4),
        finished_at=STARTED + timedelta(seconds=83),
        rows_read=15,
        rows_valid=8,
        rows_rejected=7,
        profiles_new=8,
        objects_planned=8,
        profiles_accepted=7,
        profiles_rejected_by_braze=1,
        requests_planned=1,
        requests_sent=1,
        data_points_estimated=32,
        data_points_used=28,
        rejections={
            "email_invalid": 6,
            "attribute_not_number": 1,
            "duplicate_customer_id": 1,
            "BLACKLISTED_EXTERNAL_USER_ID": 1,
        },
        report_blob="runs/vip-20260301T020000Z-abc123/report.json",
        summary_blob="runs/vip-20260301T020000Z-abc123/report.md",
        rejected_blob="runs/vip-20260301T020000Z-abc123/rejected.jsonl",
    )
    for name, value in fields.items():
        setattr(run, name, value)
    return run


def _examples(entries: list[dict[str, Any]]) -> RejectionExamples:
    examples = RejectionExamples()
    for entry in entries:
        examples.add(entry)
    return examples


def test_the_summary_has_the_run_its_counts_reasons_rows_and_files() -> None:
    text = report_markdown(build_report(_run(), None, _examples(MESSY)))

    assert text.startswith("# Export run `vip-20260301T020000Z-abc123`\n")
    assert "**Partially succeeded**: 7 of 8 profiles sent were accepted by Braze" in text
    assert "- **Export:** `vip`, to connection `prod`" in text
    assert "- **Segment:** VIP – Zoë's 🎉" in text
    assert "- **Started:** 2026-03-01 02:00:00 UTC" in text
    assert "- **Finished:** 2026-03-01 02:01:23 UTC" in text
    assert "- **Duration:** 1 min 23 s (planning 3.0 s), 0.1 profiles/s" in text
    for row in (
        "| Rows read | 15 |",
        "| Valid | 8 |",
        "| Rejected by validation | 7 |",
        "| Sent to Braze | 8 |",
        "| Accepted by Braze | 7 |",
        "| Rejected by Braze | 1 |",
        "| Removed (left the segment) | 0 |",
        "| Unchanged | 0 |",
        "| Data points (estimated / used) | 32 / 28 |",
        "| Requests (planned / sent) | 1 / 1 |",
    ):
        assert row in text, row
    # Most frequent first; the first five rows of each reason, by line.
    assert (
        f"| `email_invalid` | 6 | lines 3, 8, 13, 21, 34 | {reason_text('email_invalid')} |" in text
    )
    assert "| `attribute_not_number` | 1 | line 3 |" in text
    assert "| `duplicate_customer_id` | 1 | line 5 |" in text
    assert "| `BLACKLISTED_EXTERNAL_USER_ID` | 1 | line 89 | Braze rejected the profile" in text
    assert text.index("`email_invalid`") < text.index("`attribute_not_number`")
    assert "- `runs/vip-20260301T020000Z-abc123/report.json`: the full report (JSON)" in text
    assert "- `runs/vip-20260301T020000Z-abc123/rejected.jsonl`: every rejected row" in text
    assert "- `runs/vip-20260301T020000Z-abc123/report.md`: the summary" in text


def test_no_email_id_or_field_value_reaches_the_summary() -> None:
    report = build_report(
        _run(array_cap_warnings=2), None, _examples([*MESSY, {**MESSY[0], "file": "p/a.csv"}])
    )
    report["warnings"] = {"array_cap": {"profiles": 2, "examples": ["cust-Ωmega-002", "person-8"]}}

    text = report_markdown(report)

    assert "2 profiles would pass Braze's array element cap" in text
    assert not [value for value in PERSONAL if value in text], text


def test_cdm_rows_name_their_file_and_leaving_profiles_have_no_line() -> None:
    positions = [
        {"line": 2, "file": "ci/VIP/part-00001.csv"},
        {"line": 9, "file": "ci/VIP/part-00001.csv"},
        {"line": 4, "file": "ci/VIP/part-00002.csv"},
        {"left_segment": True},
    ]
    assert positions_text(positions) == (
        "ci/VIP/part-00001.csv lines 2, 9; ci/VIP/part-00002.csv line 4; "
        "1 leaving the segment (no line)"
    )
    assert positions_text([]) == ""


def test_examples_stop_at_five_per_reason_and_keep_only_positions() -> None:
    examples = _examples(
        [{"order": n, "line": n, "codes": ["email_blank"], "row": {"Email": ""}} for n in range(9)]
    )
    assert examples.by_code() == {"email_blank": [{"line": n} for n in range(5)]}


def test_codes_get_reasons_and_odd_braze_codes_stay_in_their_cell() -> None:
    assert reason_text("http_401").startswith("Braze refused the API key")
    assert reason_text("http_502") == "Braze refused the whole request (HTTP 502)"
    assert reason_text("http_308") == (
        "Braze redirected the request (HTTP 308): check rest_endpoint; rejected.jsonl names "
        "where it pointed"
    )
    assert reason_text("delivery_failed").startswith("its chunk failed every retry")
    odd = "bad | `type`\nhere"
    text = report_markdown(build_report(_run(rejections={odd: 1})))
    assert (
        "| `bad \\| 'type' here` | 1 |  | Braze rejected the profile with this error type |" in text
    )


def test_reasons_past_the_top_ten_are_summed_and_a_clean_run_says_so() -> None:
    many = {f"code_{n:02d}": 20 - n for n in range(13)}
    text = report_markdown(build_report(_run(rejections=many)))
    assert text.count("| `code_") == TOP_REASONS
    assert "3 more reasons (27 rows) are in report.json." in text
    clean = report_markdown(build_report(_run(rejections={}, status="succeeded")))
    assert "No row was rejected." in clean and "**Succeeded**" in clean


def test_options_valve_and_held_removals_are_stated() -> None:
    run = _run(
        status="stopped",
        stopped_by="max_removed_share",
        dry_run=True,
        full_refresh=True,
        removals_held=4,
        dry_run_blob="runs/x/dry-run/requests.jsonl",
    )
    text = report_markdown(build_report(run))
    assert "- **Options:** full refresh, dry run" in text
    assert "- **Stopped by the safety valve:** `max_removed_share`" in text
    assert "- 4 profiles missing from the source were not removed" in text
    assert "- `runs/x/dry-run/requests.jsonl`: the requests the dry run would have sent" in text
