"""Deterministic sample segments with messy valid rows and known-invalid rows.

The generator records what it meant each row to be (the Braze profile it should become, or
the rule it breaks), so tests compare the pipeline against intent, not against its own logic.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from typing import Any

HEADER = ["CustomerId", "Email", "FirstName", "LoyaltyPoints", "IsVip", "BirthDate", "Note"]
FIRST_NAMES = ["Zoë", "José", "Ana María", "O'Brien", "Łukasz", "Søren", "李", "Amélie", "Nguyễn"]
NOTES = [
    "plain",
    'says "hello", twice',
    "multi\nline, with comma",
    "emoji 🎉🚀",
    "  padded  ",
    "semi;colon|pipe\ttab",
    "",
]
# Each invalid kind: (expected rejection code, how to break a row).
INVALID_KINDS = [
    "customer_id_blank",
    "email_invalid_whitespace",
    "email_invalid_no_at",
    "email_invalid_unicode_domain",
    "customer_id_too_long",
    "attribute_not_number",
    "attribute_not_boolean",
    "attribute_not_date",
    "attribute_too_long",
    "duplicate_customer_id",
    "malformed_row",
    "email_blank",
]


@dataclass
class SampleSegment:
    """The file and what it should produce."""

    data: bytes
    segment: str
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    invalid_lines: dict[int, str] = field(default_factory=dict)
    rows: int = 0


def make_segment(
    count: int,
    *,
    segment: str = "VIP Customers",
    invalid_every: int = 40,
    seed: int = 7,
    bom: bool = True,
    id_prefix: str = "cust",
) -> SampleSegment:
    """A CSV of `count` rows; every `invalid_every`-th row breaks one rule, in turn."""
    rng = random.Random(seed)
    parts = [_csv_line(HEADER)]
    sample = SampleSegment(b"", segment)
    line = 2
    invalid_made = 0
    valid_ids: list[str] = []
    for number in range(1, count + 1):
        customer_id = f"{id_prefix}-{number:07d}"
        row = {
            "CustomerId": customer_id,
            "Email": f"user.{number}+tag@example{number % 7}.com",
            "FirstName": rng.choice(FIRST_NAMES),
            "LoyaltyPoints": str(rng.randint(0, 50_000)),
            "IsVip": rng.choice(["true", "false", "1", "0", "TRUE"]),
            "BirthDate": f"19{rng.randint(50, 99)}-{rng.randint(1, 12):02d}-"
            f"{rng.randint(1, 28):02d}",
            "Note": rng.choice(NOTES),
        }
        kind = None
        if number % invalid_every == 0 and valid_ids:
            kind = INVALID_KINDS[invalid_made % len(INVALID_KINDS)]
            invalid_made += 1
            _break(row, kind, valid_ids, rng)
        fields = [row[name] for name in HEADER]
        if kind == "malformed_row":
            fields = fields[:3]
        written = _csv_line(fields)
        parts.append(written)
        if kind:
            sample.invalid_lines[line] = rejection_code(kind)
        else:
            valid_ids.append(customer_id)
            sample.expected[customer_id] = expected_profile(row, segment)
        line += written.count("\n")
        sample.rows += 1
    text = "".join(parts)
    sample.data = (("\ufeff" if bom else "") + text).encode("utf-8")
    return sample


def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


def rejection_code(kind: str) -> str:
    """The product's rejection code for an invalid kind (the email kinds share one)."""
    return "email_invalid" if kind.startswith("email_invalid") else kind


def expected_profile(row: dict[str, str], segment: str) -> dict[str, Any]:
    """What Braze should hold for a valid row under the demo mapping."""
    profile: dict[str, Any] = {
        "external_id": row["CustomerId"].strip(),
        "email": row["Email"].strip(),
        "first_name": row["FirstName"].strip(),
        "loyalty_points": int(row["LoyaltyPoints"]),
        "is_vip": row["IsVip"].strip().lower() in {"true", "1"},
        "birth_date": row["BirthDate"].strip(),
        "segments": [segment],
    }
    if row["Note"].strip():
        profile["note"] = row["Note"].strip()
    return profile


def _break(row: dict[str, str], kind: str, valid_ids: list[str], rng: random.Random) -> None:
    if kind == "customer_id_blank":
        row["CustomerId"] = "   "
    elif kind == "email_invalid_whitespace":
        row["Email"] = "first last@example.com"
    elif kind == "email_invalid_no_at":
        row["Email"] = "no-at-sign.example.com"
    elif kind == "email_invalid_unicode_domain":
        row["Email"] = "zoë@bücher.de"
    elif kind == "customer_id_too_long":
        row["CustomerId"] = "é" * 500
    elif kind == "attribute_not_number":
        row["LoyaltyPoints"] = "1,000"
    elif kind == "attribute_not_boolean":
        row["IsVip"] = "maybe"
    elif kind == "attribute_not_date":
        row["BirthDate"] = "31/12/1990"
    elif kind == "attribute_too_long":
        row["Note"] = "x" * 300
    elif kind == "duplicate_customer_id":
        row["CustomerId"] = rng.choice(valid_ids)
    elif kind == "email_blank":
        row["Email"] = ""


def demo_definitions(rest_endpoint: str, container: str, path: str, segment: str) -> dict[str, Any]:
    """Definitions for the sample file: the mapping `expected_profile` assumes."""
    return {
        "connections": [
            {
                "name": "sandbox",
                "rest_endpoint": rest_endpoint,
                "api_key_secret": "braze-sandbox-key",
            }
        ],
        "exports": [
            {
                "name": "demo-vip",
                "connection": "sandbox",
                "segment": segment,
                "source": {"container": container, "path": path},
                "mapping": {
                    "customer_id": "CustomerId",
                    "email": "Email",
                    "attributes": [
                        {"column": "FirstName", "attribute": "first_name"},
                        {
                            "column": "LoyaltyPoints",
                            "attribute": "loyalty_points",
                            "type": "number",
                        },
                        {"column": "IsVip", "attribute": "is_vip", "type": "boolean"},
                        {"column": "BirthDate", "attribute": "birth_date", "type": "date"},
                        {"column": "Note", "attribute": "note"},
                    ],
                },
            }
        ],
    }
