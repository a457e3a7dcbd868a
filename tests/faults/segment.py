"""A messy segment whose outcome is known, for the fault-injection suite.

`make_segment` writes rows full of what real exports contain (a BOM, CRLF line ends, quotes,
commas and newlines inside fields, accents and emoji, padding, blanks, values at the length
limits) and, among them, rows that each break exactly one rule. `expected_outcome` then decides
what Braze must end up holding from the documented rules alone, written out here rather than
taken from shared.core.validation, so the suite checks the pipeline against the contract and not
against itself.
"""

from __future__ import annotations

import csv
import io
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HEADER = ("CustomerId", "Email", "FirstName", "City", "Note")
# Mapped string columns and the Braze attributes they become (see `export_definition`).
ATTRIBUTES = (("FirstName", "first_name"), ("City", "city"), ("Note", "note"))
MEMBERSHIP_ATTRIBUTE = "segments"

# The rules, from Braze's documentation and the exporter's README.
MAX_ID_BYTES = 987
MAX_STRING_CHARS = 255
_WHITESPACE = re.compile(r"\s")

FIRST_NAMES = ["Zoë", "José", "O'Brien", "Łukasz", "李雷", "Amélie 🎉", "  Ann  ", "", "Nguyễn"]
CITIES = ["Saint-Denis, Réunion", 'The "Big" Apple', "København", "", "  Zürich\t", "東京"]
NOTES = [
    "plain",
    'says "hello", twice',
    "multi\nline, with comma",
    "emoji 🎉🚀 and ünïcödé",
    "  padded  ",
    "semi;colon|pipe\ttab",
    "   ",
    "",
    "trailing newline\n",
]
INVALID_EVERY = 37  # about 2.7% of rows break a rule
INVALID_KINDS = (
    "customer_id_blank",
    "customer_id_too_long",
    "email_blank",
    "email_whitespace",
    "email_no_at",
    "email_no_tld",
    "email_two_at",
    "attribute_too_long",
    "duplicate_customer_id",
    "invalid_then_valid",  # an invalid row does not claim its id; the next valid one does
)


@dataclass(frozen=True)
class Row:
    """One record as written: the line it starts on (the header is line 1) and its fields."""

    line: int
    values: dict[str, str]


@dataclass(frozen=True)
class Segment:
    data: bytes
    rows: list[Row]


def make_segment(count: int, *, seed: int) -> Segment:
    """A CSV of `count` records; every INVALID_EVERY-th record breaks one rule, kinds in turn."""
    rng = random.Random(seed)
    records: list[dict[str, str]] = []
    valid_ids: list[str] = []
    invalid_made = 0
    while len(records) < count:
        n = len(records) + 1
        row = _valid_row(n, rng)
        if n % INVALID_EVERY == 0 and valid_ids:
            kind = INVALID_KINDS[invalid_made % len(INVALID_KINDS)]
            invalid_made += 1
            _break(row, kind, n, rng.choice(valid_ids))
            records.append(row)
            if kind == "invalid_then_valid" and len(records) < count:
                records.append({**_valid_row(n, rng), "CustomerId": row["CustomerId"]})
            continue
        valid_ids.append(row["CustomerId"].strip())
        records.append(row)
    return _write(records)


def _valid_row(n: int, rng: random.Random) -> dict[str, str]:
    """A valid record; its id and email vary in shape with `n`, all unique per `n`."""
    ids = (
        f"cust-{n:06d}",
        f"  cust-{n:06d}\t",  # trimmed
        f"Zoë-{n}-🎉",
        f'ac"me, {n}',
        f"MiXeD-{n}",
        f"mixed-{n - 1}",  # ids are case-sensitive: not a duplicate of MiXeD-{n - 1}
    )
    emails = (
        f"user.{n}+tag@example{n % 7}.com",
        f"First.Last{n}@Example.CO.uk",
        f"  o'brien.{n}@sub.example.org ",
        f"x{n}@a-b.example.io",
    )
    note = rng.choice(NOTES)
    if n % 101 == 0:
        note = "  " + "ø" * 249 + f"{n:06d}" + " "  # exactly 255 characters once trimmed
    return {
        "CustomerId": ids[n % len(ids)] if n % 97 else "é" * 490 + f"{n:07d}",  # 987 bytes
        "Email": emails[n % len(emails)],
        "FirstName": rng.choice(FIRST_NAMES),
        "City": rng.choice(CITIES),
        "Note": note,
    }


def _break(row: dict[str, str], kind: str, n: int, earlier_id: str) -> None:
    """Make `row` break exactly the rule `kind` names; its other fields stay valid."""
    if kind == "customer_id_blank":
        row["CustomerId"] = "   "
    elif kind == "customer_id_too_long":
        row["CustomerId"] = "é" * 491 + f"{n:06d}"  # 988 bytes
    elif kind == "email_blank":
        row["Email"] = " "
    elif kind == "email_whitespace":
        row["Email"] = f"first last{n}@example.com"
    elif kind == "email_no_at":
        row["Email"] = f"nobody{n}.example.com"
    elif kind == "email_no_tld":
        row["Email"] = f"user{n}@localhost"
    elif kind == "email_two_at":
        row["Email"] = f"a{n}@b@example.com"
    elif kind == "attribute_too_long":
        row["Note"] = "x" * 250 + f"{n:06d}"  # 256 characters
    elif kind == "duplicate_customer_id":
        row["CustomerId"] = f" {earlier_id} "
        row["FirstName"] = "Should Not Win"
    elif kind == "invalid_then_valid":
        row["CustomerId"] = f"late-{n}"
        row["Email"] = f"late {n}@example.com"


def _write(records: list[dict[str, str]]) -> Segment:
    """UTF-8 with a BOM and CRLF line ends, as spreadsheet tools write it."""
    parts = ["\ufeff", _csv_record(HEADER)]
    rows = []
    line = 2
    for record in records:
        text = _csv_record([record[name] for name in HEADER])
        parts.append(text)
        rows.append(Row(line, record))
        line += text.count("\n")  # a newline inside a quoted field starts another line
    return Segment("".join(parts).encode("utf-8"), rows)


def _csv_record(fields: Sequence[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(fields)
    return out.getvalue()


def expected_outcome(
    rows: list[Row], segment: str
) -> tuple[dict[str, dict[str, Any]], dict[int, str]]:
    """What Braze must hold (external_id -> attributes, as the sandbox reads them back) and
    which lines must be rejected with which code."""
    expected: dict[str, dict[str, Any]] = {}
    rejected: dict[int, str] = {}
    for row in rows:
        outcome = _judge(row.values, segment)
        if isinstance(outcome, str):
            rejected[row.line] = outcome
        elif outcome["external_id"] in expected:
            rejected[row.line] = "duplicate_customer_id"  # the first valid row won
        else:
            expected[outcome["external_id"]] = outcome
    return expected, rejected


def _judge(values: dict[str, str], segment: str) -> dict[str, Any] | str:
    """The profile a record becomes, or the code of the rule it breaks."""
    external_id = values["CustomerId"].strip()
    if not external_id:
        return "customer_id_blank"
    if len(external_id.encode("utf-8")) > MAX_ID_BYTES:
        return "customer_id_too_long"
    email = values["Email"].strip()
    if not email:
        return "email_blank"
    if not _email_is_valid(email):
        return "email_invalid"
    profile: dict[str, Any] = {"external_id": external_id, "email": email}
    for column, attribute in ATTRIBUTES:
        value = values[column].strip()
        if len(value) > MAX_STRING_CHARS:
            return "attribute_too_long"
        if value:  # a blank optional value is not sent, so Braze holds nothing for it
            profile[attribute] = value
    profile[MEMBERSHIP_ATTRIBUTE] = [segment]
    return profile


def _email_is_valid(email: str) -> bool:
    """Braze's syntax, as far as these rows go: no whitespace, one @, local@domain.tld."""
    if _WHITESPACE.search(email) or email.count("@") != 1:
        return False
    local, domain = email.split("@")
    labels = domain.split(".")
    return bool(local) and len(labels) >= 2 and all(labels)


def export_definition(name: str, container: str, path: str, segment: str) -> dict[str, Any]:
    """The export that maps this segment's columns to the attributes `expected_outcome` uses."""
    return {
        "name": name,
        "connection": "sandbox",
        "segment": segment,
        "source": {"container": container, "path": path},
        "mapping": {
            "customer_id": "CustomerId",
            "email": "Email",
            "attributes": [{"column": c, "attribute": a} for c, a in ATTRIBUTES],
        },
        "membership_attribute": MEMBERSHIP_ATTRIBUTE,
    }
