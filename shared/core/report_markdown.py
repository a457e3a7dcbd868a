"""The run report as a short Markdown summary: what an operator reads first, and can paste
into a ticket or a chat as it is.

It is built from the JSON report alone, and only from its names, counts, timings and row
positions: no email, customer id or field value ever reaches it. The reasons are this module's
own words for each code, not the rejected rows' reasons, which quote the values they refuse.
The terminal view of `python -m shared status` shows the same parts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.core.source_files import MALFORMED_ROW, MAX_RECORD_TEXT, ROW_TOO_LONG

TOP_REASONS = 10

REASONS = {
    "customer_id_blank": "the customer id is missing or blank",
    "customer_id_type": "the customer id is not text (JSON integers are accepted)",
    "customer_id_too_long": "the customer id is over 987 UTF-8 bytes (Braze's external_id limit)",
    "email_blank": "the email is missing or blank",
    "email_type": "the email is not text",
    "email_invalid": "the email is not a valid address (a space, not exactly one @, a bad "
    "domain, or too long)",
    "attribute_too_long": "a text attribute is over 255 characters (Braze drops those)",
    "attribute_not_string": "a text attribute is not text (a JSON number or boolean)",
    "attribute_not_number": "a number attribute is not a number such as 42, -3.5 or 1e3",
    "attribute_not_boolean": "a boolean attribute is not true, false, 1 or 0",
    "attribute_not_date": "a date attribute is not an ISO 8601 date such as 1990-05-17",
    "attribute_type": "an attribute holds an object or a list",
    MALFORMED_ROW: "the row could not be read (a CSV row with more or fewer fields than the "
    "header, or a JSON Lines line that is not an object)",
    ROW_TOO_LONG: f"the row is over {MAX_RECORD_TEXT}, too long to be a profile",
    "duplicate_customer_id": "an earlier valid row had the same customer id (the first wins)",
    "delivery_failed": "its chunk failed every retry or stalled; replay the run once the cause "
    "is fixed",
}
HTTP_REASONS = {
    "http_400": "Braze refused the whole request as malformed (HTTP 400)",
    "http_401": "Braze refused the API key (HTTP 401): check the Key Vault secret",
    "http_403": "the API key lacks the users.track permission (HTTP 403)",
    "http_404": "the REST endpoint has no /users/track (HTTP 404): check rest_endpoint",
    "http_413": "Braze refused the request as too large (HTTP 413)",
    "http_415": "Braze refused the request's content type (HTTP 415)",
}
# A redirect is not followed: the endpoint is the wrong one (rejected.jsonl names the target).
REDIRECT_REASON = (
    "Braze redirected the request (HTTP {status}): check rest_endpoint; rejected.jsonl names "
    "where it pointed"
)


def reason_text(code: str) -> str:
    """What a rejection code means, in words that quote no value."""
    if code in REASONS:
        return REASONS[code]
    if code.startswith("http_"):
        if code[5:6] == "3":
            return REDIRECT_REASON.format(status=code[5:])
        return HTTP_REASONS.get(code, f"Braze refused the whole request (HTTP {code[5:]})")
    return "Braze rejected the profile with this error type"


def positions_text(positions: list[dict[str, Any]]) -> str:
    """`lines 3, 17` (with the file first for a CDM partition), or the profiles leaving the
    segment, which have no line."""
    by_file: dict[str, list[str]] = {}
    leaving = 0
    for position in positions:
        if position.get("left_segment"):
            leaving += 1
        else:
            by_file.setdefault(str(position.get("file", "")), []).append(str(position["line"]))
    parts = [
        f"{f'{file} ' if file else ''}line{'s' if len(lines) > 1 else ''} {', '.join(lines)}"
        for file, lines in by_file.items()
    ]
    if leaving:
        parts.append(f"{leaving} leaving the segment (no line)")
    return "; ".join(parts)


def top_rejections(report: dict[str, Any], limit: int = TOP_REASONS) -> list[list[str]]:
    """`[code, rows, first rows, reason]` for the most frequent reasons."""
    examples = report.get("rejection_examples", {})
    return [
        [code, f"{count:,}", positions_text(examples.get(code, [])), reason_text(code)]
        for code, count in list(report["rejections_by_reason"].items())[:limit]
    ]


def count_rows(report: dict[str, Any]) -> list[list[str]]:
    """`[what, how many]` for the counts an operator checks, in the order they add up."""
    counts, points = report["counts"], report["data_points"]
    rows = [
        ("Rows read", counts["rows_read"]),
        ("Valid", counts["rows_valid"]),
        ("Rejected by validation", counts["rows_rejected_by_validation"]),
        *(
            [("Not validated (planning failed first)", counts["rows_not_validated"])]
            if counts.get("rows_not_validated")
            else []
        ),
        ("New", counts["profiles_new"]),
        ("Changed", counts["profiles_changed"]),
        ("Unchanged", counts["profiles_unchanged"]),
        ("Removed (left the segment)", counts["profiles_removed"]),
        ("Sent to Braze", counts["profiles_sent"]),
        ("Accepted by Braze", counts["profiles_accepted_by_braze"]),
        ("Rejected by Braze", counts["profiles_rejected_by_braze"]),
        ("Data points (estimated / used)", f"{points['estimated']:,} / {points['used']:,}"),
        (
            "Requests (planned / sent)",
            f"{counts['requests_planned']:,} / {counts['requests_sent']:,}",
        ),
    ]
    return [[label, f"{value:,}" if isinstance(value, int) else value] for label, value in rows]


def timing_rows(report: dict[str, Any]) -> list[list[str]]:
    """`[what, when]`: start, end, and how long it took."""
    timings = report["timings"]
    total, planning = timings["total_seconds"], timings["planning_seconds"]
    duration = duration_text(total) if total is not None else "still running"
    if planning is not None:
        duration += f" (planning {duration_text(planning)})"
    if timings["profiles_per_second"]:
        duration += f", {timings['profiles_per_second']:,} profiles/s"
    return [
        ["Started", when_text(timings["created_at"])],
        ["Finished", when_text(timings["finished_at"]) if timings["finished_at"] else "-"],
        ["Duration", duration],
    ]


def file_rows(report: dict[str, Any]) -> list[list[str]]:
    """`[blob, what it holds]` for the run's files that exist."""
    blobs = report["blobs"]
    rows = [
        (blobs.get("summary"), "the summary (Markdown, no personal data)"),
        (blobs["report"], "the full report (JSON)"),
        (
            blobs["rejected_rows"],
            "every rejected row with its reasons and values (personal data)",
        ),
        (blobs.get("dry_run_requests"), "the requests the dry run would have sent"),
    ]
    return [[name, what] for name, what in rows if name]


def option_names(report: dict[str, Any]) -> list[str]:
    return [name.replace("_", " ") for name, on in report["options"].items() if on]


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def when_text(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def report_markdown(report: dict[str, Any]) -> str:
    """The summary: the run, its counts, its top rejection reasons with the first rows of each,
    and where its files are."""
    status = report["status"].replace("_", " ")
    lines = [
        f"# Export run {_code(report['run_id'])}",
        "",
        f"**{status.capitalize()}**: {_inline(report['message'])}",
        "",
        f"- **Export:** {_code(report['export'])}, to connection {_code(report['connection'])}",
        f"- **Segment:** {_inline(report['segment'])}",
        f"- **Source:** {_code(report['source'])}",
        f"- **Trigger:** {_inline(report['trigger'])}",
    ]
    if options := option_names(report):
        lines.append(f"- **Options:** {', '.join(options)}")
    if report["safety_valve"]:
        lines.append(f"- **Stopped by the safety valve:** {_code(report['safety_valve'])}")
    lines += [f"- **{what}:** {value}" for what, value in timing_rows(report)]
    lines += ["", "## Counts", "", *_table(["", "Count"], count_rows(report), right={1})]
    notes = []
    if held := report["counts"]["removals_held"]:
        notes.append(
            f"{held:,} profiles missing from the source were not removed: some rows could not "
            "be read"
        )
    if capped := report["warnings"].get("array_cap", {}).get("profiles", 0):
        notes.append(f"{capped:,} profiles would pass Braze's array element cap (see report.json)")
    lines += ["", *(f"- {note}" for note in notes)] if notes else []
    reasons = report["rejections_by_reason"]
    lines += ["", "## Top rejection reasons", ""]
    if reasons:
        lines += _table(
            ["Code", "Rows", "First rows", "Reason"],
            top_rejections(report),
            right={1},
            code=frozenset({0}),
        )
        if len(reasons) > TOP_REASONS:
            rest = list(reasons.values())[TOP_REASONS:]
            lines += ["", f"{len(rest)} more reasons ({sum(rest):,} rows) are in report.json."]
    else:
        lines.append("No row was rejected.")
    lines += ["", "## Files", "", f"In the {_code(report['blobs']['container'])} container:", ""]
    lines += [f"- {_code(name)}: {what}" for name, what in file_rows(report)]
    return "\n".join(lines) + "\n"


def _table(
    header: list[str], rows: list[list[str]], right: set[int], code: frozenset[int] = frozenset()
) -> list[str]:
    cells = [[_code(c) if i in code else _inline(c) for i, c in enumerate(row)] for row in rows]
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    return ["| " + " | ".join(_cell(c) for c in row) + " |" for row in [header, rule, *cells]]


def _cell(text: str) -> str:
    """A pipe inside a cell would end it (GitHub's tables take the escape even in code)."""
    return text.replace("|", "\\|")


def _inline(value: Any) -> str:
    """Text that stays on its line."""
    return " ".join(str(value).split())


def _code(value: Any) -> str:
    """An inline code span; Braze's error types may hold any character."""
    return "`" + _inline(value).replace("`", "'") + "`"
