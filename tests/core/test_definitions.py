"""The definitions document: accepted shapes, and every problem reported with its path."""

import json
import re
from pathlib import Path

import pytest

from shared.core.definitions import DefinitionsError, json_schema, parse_definitions

ROOT = Path(__file__).resolve().parents[2]


def _doc(**export_overrides: object) -> dict:
    export = {
        "name": "weekly-vip",
        "connection": "prod",
        "segment": "VIP – weekly 🎉",
        "source": {"container": "segments", "path": "ci/VIP/2026/vip_1.csv.gz"},
        "mapping": {
            "customer_id": "CustomerId",
            "email": "PrimaryEmail",
            "attributes": [{"column": "Points", "attribute": "loyalty_points", "type": "number"}],
        },
    }
    export.update(export_overrides)
    return {
        "connections": [
            {
                "name": "prod",
                "rest_endpoint": "https://rest.iad-03.braze.com/",
                "api_key_secret": "braze-prod-key",
            }
        ],
        "exports": [export],
    }


def test_valid_document_gets_defaults() -> None:
    definitions = parse_definitions(json.dumps(_doc()))
    export = definitions.export("weekly-vip")
    assert export.membership_attribute == "segments"
    assert export.create_missing_users is True
    assert export.source.resolved_format() == "csv"
    connection = definitions.connection("prod")
    assert connection.objects_per_request == 75
    assert connection.rest_endpoint == "https://rest.iad-03.braze.com"


def test_every_problem_is_reported_with_its_path() -> None:
    doc = _doc(name="Weekly VIP", chunk_size=10, surprise=True)
    doc["connections"][0]["rest_endpoint"] = "http://rest.iad-03.braze.com"
    doc["connections"][0]["objects_per_request"] = 100
    del doc["exports"][0]["mapping"]["email"]
    doc["exports"][0]["mapping"]["attributes"][0]["type"] = "money"
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(json.dumps(doc), "exports.json")
    problems = caught.value.problems
    assert len(problems) == 7, problems
    text = "\n".join(problems)
    assert "connections[0] (prod).rest_endpoint: must start with https://" in text
    assert "connections[0] (prod).objects_per_request:" in text
    assert "exports[0] (Weekly VIP).name: must be lower-case" in text
    assert "exports[0] (Weekly VIP).mapping.email: is required" in text
    assert "exports[0] (Weekly VIP).mapping.attributes[0].type:" in text
    assert "exports[0] (Weekly VIP).chunk_size:" in text
    assert "exports[0] (Weekly VIP).surprise: is not a known field" in text
    assert str(caught.value).startswith("exports.json has 7 problem(s)")


def test_cross_references_are_reported_with_field_errors_each_at_its_path() -> None:
    doc = _doc(connection="staging", chunk_size=1)
    doc["exports"].append(dict(doc["exports"][0], chunk_size=3000))
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(json.dumps(doc))
    assert caught.value.problems == [
        "exports[0] (weekly-vip).chunk_size: Input should be greater than or equal to 75",
        "exports[1] (weekly-vip).name: already used by exports[0]",
        "exports[0] (weekly-vip).connection: 'staging' is not a defined connection",
        "exports[1] (weekly-vip).connection: 'staging' is not a defined connection",
    ]


def test_reserved_and_clashing_attribute_names_are_both_refused() -> None:
    doc = _doc(membership_attribute="loyalty_points")
    doc["exports"][0]["mapping"]["attributes"].append({"column": "Mail", "attribute": "email"})
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(json.dumps(doc))
    assert caught.value.problems == [
        "exports[0] (weekly-vip).mapping.attributes[1].attribute: "
        "'email' is a reserved Braze field, not a custom attribute",
        "exports[0] (weekly-vip): attribute names used more than once: loyalty_points",
    ]


def test_schedule_and_drop_are_checked() -> None:
    doc = _doc(schedule="0 0 2 * *", drop={"container": "other", "path": "ci/*.csv"})
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(json.dumps(doc))
    text = "\n".join(caught.value.problems)
    assert "exports[0] (weekly-vip).schedule: is not a six-field NCRONTAB expression" in text
    assert "exports[0] (weekly-vip).drop.container: drops are watched in the 'segments'" in text
    ok = parse_definitions(json.dumps(_doc(schedule="0 0 2 * * *", drop={"path": "ci/*.csv"})))
    assert ok.exports[0].drop is not None and ok.exports[0].drop.container == "segments"


def test_plain_http_only_for_loopback() -> None:
    doc = _doc()
    doc["connections"][0]["rest_endpoint"] = "http://127.0.0.1:8480"
    assert (
        parse_definitions(json.dumps(doc)).connections[0].rest_endpoint == "http://127.0.0.1:8480"
    )
    doc["connections"][0]["rest_endpoint"] = "https://rest.iad-03.braze.com/users/track"
    with pytest.raises(DefinitionsError, match="must be a bare host"):
        parse_definitions(json.dumps(doc))


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://rest.iad-01.braze.com",
        "https://rest.us-10.braze.com/",
        "https://rest.fra-02.braze.eu",
        "https://REST.KR-01.BRAZE.COM",
        "https://rest.au-01.braze.com:443",
        "https://localhost:9443",
        "http://[::1]:8480",
    ],
)
def test_braze_rest_hosts_and_loopback_are_accepted(endpoint: str) -> None:
    doc = _doc()
    doc["connections"][0]["rest_endpoint"] = endpoint
    connection = parse_definitions(json.dumps(doc)).connections[0]
    assert connection.rest_endpoint == endpoint.rstrip("/")
    assert connection.is_loopback == ("localhost" in endpoint or "[::1]" in endpoint)


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("https://rest.iad-01.braze.co", "must be a Braze REST endpoint"),  # a typo
        ("https://rest.iad-01.braze.com.evil.example", "must be a Braze REST endpoint"),
        ("https://rest.iad-01.braze.com@evil.example", "must be a bare host"),
        ("https://evil.example/?rest.iad-01.braze.com", "must be a bare host"),
        ("https://dashboard-01.braze.com", "must be a Braze REST endpoint"),
        ("https://sdk.iad-01.braze.com", "must be a Braze REST endpoint"),
        ("https://rest.iad-01.braze.com:8443", "must be a Braze REST endpoint"),
        ("https://10.0.0.5", "must be a Braze REST endpoint"),
        ("http://rest.fra-01.braze.eu", "must start with https://"),
        ("ftp://127.0.0.1", "must start with https://"),
        ("https://rest.iad-01.br\taze.com", "must not contain spaces"),  # urlsplit drops tabs
        (" https://rest.iad-01.braze.com", "must not contain spaces"),
        ("https://rest.iad-01.braze.com\n", "must not contain spaces"),
    ],
)
def test_other_endpoints_are_refused_with_the_reason(endpoint: str, problem: str) -> None:
    doc = _doc()
    doc["connections"][0]["rest_endpoint"] = endpoint
    with pytest.raises(DefinitionsError, match=f"rest_endpoint: {problem}"):
        parse_definitions(json.dumps(doc))


ROLE_VALUES = [
    ("Braze.Prod", True),
    ("braze:prod/eu_1~x", True),
    ("a" * 120, True),
    ("a" * 121, False),
    (".Braze", False),  # Entra refuses a value starting with a dot
    ("Braze Prod", False),
    ('Braze"Prod', False),
    ("Braze\\Prod", False),
    ("Braze.Prod\n", False),
    ("Bräze", False),
    ("", False),
]


@pytest.mark.parametrize(("role", "accepted"), ROLE_VALUES)
def test_allowed_roles_take_entra_app_role_values(role: str, accepted: bool) -> None:
    doc = _doc()
    doc["connections"][0]["allowed_roles"] = ["Braze.All", role]
    if accepted:
        connection = parse_definitions(json.dumps(doc)).connection("prod")
        assert connection.allowed_roles == ["Braze.All", role]
        return
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(json.dumps(doc))
    assert caught.value.problems == [
        "connections[0] (prod).allowed_roles[1]: must be an Entra app role value: 1-120 "
        "letters, digits and symbols (no spaces, quotes or backslashes), not starting with '.'"
    ]


def test_allowed_roles_are_optional_but_never_an_empty_list() -> None:
    assert parse_definitions(json.dumps(_doc())).connection("prod").allowed_roles is None
    doc = _doc()
    doc["connections"][0]["allowed_roles"] = []
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(json.dumps(doc))
    assert caught.value.problems == [
        "connections[0] (prod).allowed_roles: must list at least one app role (leave it out "
        "to let every caller with Exports.Run use the connection)"
    ]


def test_the_published_role_pattern_accepts_what_the_model_accepts() -> None:
    """Editors check the document against the schema: it must agree with the model."""
    schema = json.loads((ROOT / "schema" / "export-definitions.schema.json").read_text())
    field = schema["$defs"]["Connection"]["properties"]["allowed_roles"]["anyOf"][0]
    assert field["minItems"] == 1
    pattern = re.compile(field["items"]["pattern"])
    # fullmatch: Python's `$` alone lets a trailing newline through, JSON Schema's does not
    assert [(role, bool(pattern.fullmatch(role))) for role, _ in ROLE_VALUES] == ROLE_VALUES


def test_not_json_names_the_position() -> None:
    with pytest.raises(DefinitionsError, match=r"not valid JSON: .*line 1 column 18"):
        parse_definitions('{"connections": [}')


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.csv", "csv"),
        ("a.CSV.gz", "csv"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson.gz", "jsonl"),
        ("a.json", "jsonl"),
        ("ci/seg/model.json", "cdm"),
    ],
)
def test_format_is_inferred_from_the_name(path: str, expected: str) -> None:
    export = parse_definitions(json.dumps(_doc(source={"container": "seg", "path": path})))
    assert export.exports[0].source.resolved_format() == expected


def test_published_schema_is_current_and_accepts_the_example() -> None:
    published = json.loads((ROOT / "schema" / "export-definitions.schema.json").read_text())
    assert published == json_schema(), (
        "run: python -m shared schema > schema/export-definitions.schema.json"
    )
    example = (ROOT / "examples" / "exports.json").read_text()
    assert parse_definitions(example).exports[0].name == "demo-vip"


def test_each_problem_has_its_json_path_and_a_suggestion() -> None:
    doc = _doc(name="Weekly VIP", connection="prd", chunk_size="lots", membership="flag", extra=1)
    doc["connections"][0]["objects_per_requst"] = 50
    doc["connections"][0]["rate_limit_share"] = 0
    doc["exports"][0]["source"]["format"] = "jsn"
    del doc["exports"][0]["mapping"]["email"]
    doc["exports"][0]["mapping"]["attributes"][0]["type"] = "numbr"
    doc["exprots"] = []
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(json.dumps(doc))
    details = caught.value.details
    assert [p.text for p in details] == caught.value.problems
    suggestions = {p.path: p.suggestion for p in details}
    known = suggestions.pop("exports[0].extra")
    assert known.startswith('the fields known here are "chunk_size", "clear_attributes_on_leave"')
    assert suggestions == {
        "connections[0].objects_per_requst": 'did you mean "objects_per_request"?',
        "connections[0].rate_limit_share": (
            "use a number above 0 and at most 1, or leave it out for the default, 1.0"
        ),
        "exports[0].name": 'for example "weekly-vip"',
        "exports[0].connection": 'did you mean "prod"?',
        "exports[0].source.format": 'did you mean "jsonl"?',
        "exports[0].mapping.email": 'add "email": Column sent as the Braze email field.',
        "exports[0].mapping.attributes[0].type": 'did you mean "number"?',
        "exports[0].chunk_size": (
            "use a whole number from 75 to 100000, or leave it out for the default, 100000"
        ),
        "exports[0].membership": 'use "array" or "boolean"',
        "exprots": 'did you mean "exports"?',
    }


def test_cross_reference_and_syntax_problems_suggest_a_fix_too() -> None:
    doc = _doc(connection="staging", membership_attribute="loyalty_points")
    doc["exports"].append(dict(doc["exports"][0], membership_attribute="segments"))
    doc["exports"][0]["drop"] = {"container": "elsewhere", "path": "ci/*.csv"}
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(json.dumps(doc))
    assert [(p.path, p.suggestion) for p in caught.value.details] == [
        ("exports[0].drop.container", 'leave it out for the default, "segments"'),
        ("exports[1].name", "give each export a name of its own"),
        ("exports[0].connection", 'define it in connections, or use "prod"'),
        (
            "exports[0]",
            "give each mapped attribute, and membership_attribute, a name of its own",
        ),
        ("exports[1].connection", 'define it in connections, or use "prod"'),
    ]
    with pytest.raises(DefinitionsError) as broken:
        parse_definitions('{"connections": [}', "exports.json")
    (problem,) = broken.value.details
    assert problem.path == "" and problem.text.startswith("not valid JSON: ")
    assert problem.suggestion == "look for a missing comma, quote or bracket there or just before"
