"""Row validation: each Braze rule, with messy values, trimmed but otherwise untouched."""

import pytest

from shared.core.definitions import Mapping
from shared.core.validation import Profile, email_problem, record_validator, validate_record

MAPPING = Mapping.model_validate(
    {
        "customer_id": "id",
        "email": "email",
        "attributes": [
            {"column": "name", "attribute": "first_name"},
            {"column": "points", "attribute": "points", "type": "number"},
            {"column": "vip", "attribute": "vip", "type": "boolean"},
            {"column": "born", "attribute": "born", "type": "date"},
        ],
    }
)


def _row(**values: object) -> dict:
    row = {"id": "c-1", "email": "zoe@example.com", "name": "", "points": "", "vip": "", "born": ""}
    row.update(values)
    return row


def _codes(result: object) -> list[str]:
    assert not isinstance(result, Profile), result
    return [p.code for p in result]  # type: ignore[attr-defined]


def test_valid_row_is_trimmed_typed_and_blank_attributes_left_out() -> None:
    result = validate_record(
        _row(id="  c-1 ", email=" zoe@example.com\t", name=' Zoë "Z" 🎉, Jr. ', points=" 42 "),
        MAPPING,
    )
    assert result == Profile(
        "c-1", "zoe@example.com", {"first_name": 'Zoë "Z" 🎉, Jr.', "points": 42}
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"points": "-3.5"}, {"points": -3.5}),
        ({"points": "1e3"}, {"points": 1000.0}),
        ({"vip": "TRUE"}, {"vip": True}),
        ({"vip": "0"}, {"vip": False}),
        ({"born": "1990-05-17"}, {"born": "1990-05-17"}),
        ({"born": "2026-11-28T10:00:00Z"}, {"born": "2026-11-28T10:00:00Z"}),
        ({"born": "2026-11-28T10:00:00+01:00"}, {"born": "2026-11-28T10:00:00+01:00"}),
    ],
)
def test_type_conversions(values: dict, expected: dict) -> None:
    result = validate_record(_row(**values), MAPPING)
    assert isinstance(result, Profile)
    assert result.attributes == expected


@pytest.mark.parametrize(
    ("values", "code", "words"),
    [
        ({"id": "   "}, "customer_id_blank", "customer id (column 'id') is blank"),
        ({"id": None}, "customer_id_blank", "is blank"),
        ({"id": "é" * 494}, "customer_id_too_long", "988 bytes; Braze allows at most 987"),
        ({"id": 12.5}, "customer_id_type", "must be text, got a number"),
        ({"email": ""}, "email_blank", "email (column 'email') is blank"),
        ({"email": None}, "email_blank", "email (column 'email') is blank"),
        ({"email": "zoe smith@example.com"}, "email_invalid", "contains whitespace"),
        ({"email": "zoe@@example.com"}, "email_invalid", "exactly one @"),
        ({"email": "zoë@example.com"}, "email_invalid", "non-ASCII characters before the @"),
        ({"email": "zoe@bücher.de"}, "email_invalid", "Punycode"),
        ({"email": "zoe@example"}, "email_invalid", "invalid domain"),
        ({"email": "zoe@example.123"}, "email_invalid", "numeric top-level domain"),
        ({"email": "zoe..x@example.com"}, "email_invalid", "dots before the @"),
        ({"email": "zoe@-example.com"}, "email_invalid", "invalid domain"),
        ({"name": "x" * 256}, "attribute_too_long", "256 characters; Braze allows at most 255"),
        ({"points": "1,000"}, "attribute_not_number", "is not a number: '1,000'"),
        ({"points": "1_000"}, "attribute_not_number", "is not a number: '1_000'"),
        ({"points": "١٢٣"}, "attribute_not_number", "is not a number"),
        ({"points": "1e999"}, "attribute_not_number", "not a finite number"),
        ({"points": "9" * 5000}, "attribute_not_number", "too long to send (5000 digits)"),
        ({"born": "20260101"}, "attribute_not_date", "ISO 8601"),
        ({"born": "2026-W01-1"}, "attribute_not_date", "ISO 8601"),
        ({"born": "2026-01-01 10:00"}, "attribute_not_date", "ISO 8601"),
        ({"born": "2026-02-30"}, "attribute_not_date", "ISO 8601"),
        ({"points": "NaN"}, "attribute_not_number", "not a finite number"),
        ({"points": True}, "attribute_not_number", "got a boolean"),
        ({"vip": "maybe"}, "attribute_not_boolean", "true/false/1/0"),
        ({"born": "31/12/1990"}, "attribute_not_date", "ISO 8601"),
        ({"name": {"nested": 1}}, "attribute_type", "must be a single value, got an object"),
        ({"name": 7}, "attribute_not_string", "must be text, got a number"),
    ],
)
def test_each_rule_rejects_with_a_clear_reason(values: dict, code: str, words: str) -> None:
    result = validate_record(_row(**values), MAPPING)
    assert _codes(result) == [code]
    assert words in result[0].message  # type: ignore[index]


def test_a_record_without_the_id_or_email_key_says_it_is_missing() -> None:
    """A JSON Lines record may lack a key, or spell it in another case: "missing" says so,
    where "blank" would send the reader looking at a value. The codes stay the blank ones."""
    record = {"ID": "c-1", "Email": "zoe@example.com"}
    result = validate_record(record, MAPPING)
    assert _codes(result) == ["customer_id_blank", "email_blank"]
    assert [p.message for p in result] == [  # type: ignore[union-attr]
        "customer id (column 'id') is missing: the record has no 'id' key",
        "email (column 'email') is missing: the record has no 'email' key",
    ]
    assert record_validator(MAPPING)(record) == result  # the diffs' validator says the same


def test_all_problems_of_a_row_are_reported() -> None:
    result = validate_record(_row(id="", email="bad", points="x", vip="?"), MAPPING)
    assert _codes(result) == [
        "customer_id_blank",
        "email_invalid",
        "attribute_not_number",
        "attribute_not_boolean",
    ]


def test_id_of_exactly_987_bytes_is_accepted() -> None:
    result = validate_record(_row(id="é" * 493 + "x"), MAPPING)
    assert isinstance(result, Profile)
    assert len(result.customer_id.encode()) == 987


def test_numeric_json_ids_become_text_and_huge_values_are_not_echoed() -> None:
    result = validate_record(_row(id=123456), MAPPING)
    assert isinstance(result, Profile) and result.customer_id == "123456"
    rejected = validate_record(_row(points="9" * 100_000 + "x"), MAPPING)
    assert len(rejected[0].message) < 200  # type: ignore[index]


@pytest.mark.parametrize(
    "address",
    ["a@b.co", "first.last+tag@sub.example.co.uk", "o'brien@example.ie", "x@xn--bcher-kva.de"],
)
def test_valid_emails(address: str) -> None:
    assert email_problem(address) is None


def test_blank_in_any_unicode_whitespace_is_left_out() -> None:
    result = validate_record(_row(name=" \t\u00a0\u2003\u3000 ", points="\n", born=""), MAPPING)
    assert result == Profile("c-1", "zoe@example.com", {})


def test_a_repeated_date_is_judged_the_same_each_time() -> None:
    """Valid dates are remembered (a bounded cache); an invalid one never is."""
    dates = ["1990-05-17", " 1990-05-17 ", "2026-02-30", "2024-02-29", "2023-02-29"]
    for date_text in [f"19{n:02d}-01-01" for n in range(100)] * 200 + dates * 3:
        result = validate_record(_row(born=date_text), MAPPING)
        if date_text.endswith(("02-30", "2023-02-29")):
            assert _codes(result) == ["attribute_not_date"]
        else:
            assert isinstance(result, Profile)
            assert result.attributes == {"born": date_text.strip()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("007", 7),
        ("+12", 12),
        ("-0", 0),
        (" 42 ", 42),
        ("12345678901234567890", 12345678901234567890),
    ],
)
def test_integers_in_every_spelling(text: str, expected: int) -> None:
    result = validate_record(_row(points=text), MAPPING)
    assert isinstance(result, Profile)
    assert result.attributes["points"] == expected and type(result.attributes["points"]) is int


# Rows the per-partition validator must judge exactly as `validate_record` does: the plain
# shapes it converts itself, and every near miss it must leave to the full checks.
MESSY_ROWS = [
    _row(),
    _row(id="  c-1 ", email=" zoe@example.com\t", name=' Zoë "Z" 🎉, Jr. ', points=" 42 "),
    _row(name="line one\nline two, with a comma", points="007", vip=" True ", born="1990-05-17"),
    _row(born="1990-05-17"),  # seen before: the quick path knows it now
    _row(born="1990-02-30"),
    _row(name="x" * 255),
    _row(name="x" * 256),
    _row(name=" " * 300),
    _row(id="é" * 246),  # 492 bytes: quick
    _row(id="x" * 300),  # over the quick length, under Braze's bytes: full checks
    _row(id="🎉" * 247),  # 988 bytes: too long
    _row(id=" "),
    _row(id="\ufeffc-1"),
    _row(email="Zoë@example.com"),
    _row(email="zoe@example"),
    _row(email="zoe@exa_mple.com"),
    _row(email="zoe@-example.com"),
    _row(email="a" * 65 + "@example.com"),
    _row(email="zoe@" + "a" * 250 + ".com"),
    _row(email="first last@example.com"),
    _row(email=""),
    _row(points="+42"),
    _row(points="-42"),
    _row(points="4.5e2"),
    _row(points="١٢"),
    _row(points="9" * 18),
    _row(points="9" * 19),
    _row(points="9" * 5000),  # past what int() reads
    _row(points="12abc"),
    _row(points="NaN"),
    _row(vip="yes"),
    _row(vip="FALSE"),
    _row(born="2026-11-28T10:00:00Z"),
    _row(born="28/11/2026"),
    {"id": "c-1", "email": "zoe@example.com"},  # columns absent (JSON Lines)
    {"id": 17, "email": "zoe@example.com", "points": 42, "vip": True, "born": None},
    {"id": "c-1", "email": "zoe@example.com", "points": 4.5, "name": {"first": "Zoë"}},
    {"id": True, "email": ["zoe@example.com"], "name": 3},
]


def test_the_per_partition_validator_judges_every_row_as_the_full_checks_do() -> None:
    validate = record_validator(MAPPING)
    for row in MESSY_ROWS:
        assert validate(row) == validate_record(row, MAPPING), row
    valid = [row for row in MESSY_ROWS if isinstance(validate_record(row, MAPPING), Profile)]
    assert len(valid) == 18  # both paths are exercised: valid rows and rejected ones
