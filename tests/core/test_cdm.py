"""CDM folders: model.json parsing, partition URLs, CSV settings and streaming across partitions.

These are pure-function tests: blobs come from an in-memory fake of `Storage.read_chunks`, fed
in small pieces so decoding across chunk boundaries is exercised. Reading a real CDM folder
from Azurite through plan_export and split_source is the integration suite's job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.storage import BlobNotFound
from shared.core.cdm import parse_blob_url, parse_model, read_entity
from shared.core.source_files import RecordProblem, SourceError

ACCOUNT = "https://contosoci.blob.core.windows.net"
FOLDER = "CustomerInsights_abcd1234/BlobExport"
SNAPSHOT = "2026-11-27T14:33:07.1234567Z"


def _model(entities: list[dict[str, Any]]) -> bytes:
    """A model.json as Customer Insights and the CDM SDK write it, producer extensions included."""
    document = {
        "name": "BlobExport",
        "description": "Customer Insights export",
        "version": "1.0",
        "culture": "en-US",
        "modifiedTime": "2026-11-27T14:33:09.000Z",
        "pbi:mashup": {"fastCombine": False, "allowNativeQueries": False},
        "annotations": [{"name": "pbi:QueryGroups", "value": "[]"}],
        "entities": entities,
    }
    return json.dumps(document, indent=2).encode()


def _entity(name: str, columns: list[str], partitions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "$type": "LocalEntity",
        "name": name,
        "description": "",
        "pbi:refreshPolicy": {"$type": "FullRefreshPolicy", "location": f"{name}.csv"},
        "annotations": [{"name": "pbi:QueryState", "value": "{}"}],
        "attributes": [{"name": c, "dataType": "string"} for c in columns],
        "partitions": partitions,
    }


def _partition(name: str, location: str | None, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "refreshTime": "2026-11-27T14:33:08.000Z",
        "location": location,
        "cdm:lastFileModifiedTime": "2026-11-27T14:33:08.000Z",
        "fileFormatSettings": {"$type": "CsvFormatSettings", **settings},
    }


HIGH_VALUE_COLUMNS = ["CustomerId", "FullName", "PrimaryEmail", "StreetAddress"]
HIGH_VALUE_DIR = f"{FOLDER}/High Value/2026/11/27/1433"  # blob names, as stored
HIGH_VALUE_URL = f"{ACCOUNT}/customerinsights/{HIGH_VALUE_DIR}".replace(" ", "%20")
DFS_URL = HIGH_VALUE_URL.replace(".blob.", ".dfs.")

CI_MODEL = _model(
    [
        _entity(
            "High Value",
            HIGH_VALUE_COLUMNS,
            [
                _partition(
                    "High Value_1",
                    f"{HIGH_VALUE_URL}/High%20Value_1.csv?snapshot={SNAPSHOT}",
                    columnHeaders=False,
                    delimiter=",",
                    quoteStyle="QuoteStyle.Csv",
                    csvStyle="CsvStyle.QuoteAlways",
                    encoding="UTF-8",
                ),
                _partition("High Value_2", f"{DFS_URL}/High%20Value_2.csv"),
                {
                    **_partition("High Value_old", f"{ACCOUNT}/customerinsights/old.csv"),
                    "isHidden": True,
                },
                _partition("High Value_schema", None),
                _partition(
                    "High Value_3", f"{HIGH_VALUE_URL}/High%20Value_3.csv", columnHeaders=True
                ),
            ],
        ),
        _entity(
            "ChurnRisk",
            ["CustomerId", "PrimaryEmail"],
            [_partition("ChurnRisk_1", f"{ACCOUNT}/customerinsights/{FOLDER}/ChurnRisk_1.csv")],
        ),
    ]
)

HIGH_VALUE_BLOBS = {
    # Header-less, RFC 4180 quoting: embedded comma, doubled quotes, a quoted CRLF, accents, emoji.
    f"{HIGH_VALUE_DIR}/High Value_1.csv": (
        '1,Zoë,zoe@example.com,"12 Rue de l\'Église, Paris"\r\n'
        '2,"Jean ""JJ"" Dupont",jj@example.com,"Flat 2\r\n10 High St"\r\n'
        "\r\n"
        "3,Ana 🎉,ana@example.com\r\n"
    ).encode(),
    # Second partition starts with a BOM; its line numbers restart at 1.
    f"{HIGH_VALUE_DIR}/High Value_2.csv": (
        "\ufeff4,Łukasz,lukasz@example.com,ul. Długa 5\n5,Øyvind,oyvind@example.com,\n"
    ).encode(),
    f"{HIGH_VALUE_DIR}/High Value_3.csv": (
        b"CustomerId,FullName,PrimaryEmail,StreetAddress\n6,Nadia,nadia@example.com,\n"
    ),
}


class FakeBlobs:
    """In-memory `read_chunks` that serves blobs in 5-byte pieces and records what was opened."""

    def __init__(self, container: str, blobs: dict[str, bytes]) -> None:
        self.container = container
        self.blobs = blobs
        self.opened: list[str] = []

    def read_chunks(self, container: str, name: str) -> Iterator[bytes]:
        if container != self.container or name not in self.blobs:
            raise BlobNotFound(f"blob '{name}' not found in container '{container}'")
        self.opened.append(name)
        data = self.blobs[name]
        return iter([data[i : i + 5] for i in range(0, len(data), 5)])


def _single(
    columns: list[str], data: bytes, keep: list[str] | None = None, **settings: Any
) -> list[Any]:
    """Read one partition of a one-entity model with the given fileFormatSettings."""
    location = f"{ACCOUNT}/segments/ci/Seg_1.csv"
    model = parse_model(
        _model([_entity("Seg", columns, [_partition("Seg_1", location, **settings)])])
    )
    blobs = FakeBlobs("segments", {"ci/Seg_1.csv": data})
    return list(read_entity(model.entity(), blobs.read_chunks, keep))


def _error(document: bytes, entity: str | None = None) -> str:
    with pytest.raises(SourceError) as caught:
        parse_model(document, "exports/model.json").entity(entity)
    return str(caught.value)


def test_model_lists_entities_columns_and_readable_partitions() -> None:
    model = parse_model(CI_MODEL)
    assert model.culture == "en-US"
    assert [e.name for e in model.entities] == ["High Value", "ChurnRisk"]
    entity = model.entity("High Value")
    assert entity.columns == tuple(HIGH_VALUE_COLUMNS)
    assert [(p.account, p.container, p.blob) for p in entity.partitions] == [
        ("contosoci", "customerinsights", f"{FOLDER}/High Value/2026/11/27/1433/High Value_1.csv"),
        ("contosoci", "customerinsights", f"{FOLDER}/High Value/2026/11/27/1433/High Value_2.csv"),
        ("contosoci", "customerinsights", f"{FOLDER}/High Value/2026/11/27/1433/High Value_3.csv"),
    ]
    assert [p.snapshot for p in entity.partitions] == [SNAPSHOT, None, None]
    assert [p.csv.column_headers for p in entity.partitions] == [False, False, True]
    assert entity.skipped == (
        "partitions[2] (High Value_old) is hidden",
        "partitions[3] (High Value_schema) has no location",
    )


def test_records_stream_across_partitions_in_order_with_their_lines() -> None:
    entity = parse_model(CI_MODEL).entity("High Value")
    blobs = FakeBlobs("customerinsights", HIGH_VALUE_BLOBS)
    records = list(read_entity(entity, blobs.read_chunks))
    one, two, three = (p.blob for p in entity.partitions)
    assert [r.where for r in records] == [
        f"{one}:line 1",
        f"{one}:line 2",
        f"{one}:line 5",
        f"{two}:line 1",
        f"{two}:line 2",
        f"{three}:line 2",
    ]
    assert records[0].values == {
        "CustomerId": "1",
        "FullName": "Zoë",
        "PrimaryEmail": "zoe@example.com",
        "StreetAddress": "12 Rue de l'Église, Paris",
    }
    assert records[1].values["FullName"] == 'Jean "JJ" Dupont'
    assert records[1].values["StreetAddress"] == "Flat 2\r\n10 High St"
    assert records[2].problem == RecordProblem("malformed_row", "has 3 fields but 4 are expected")
    assert records[2].values == {"field 1": "3", "field 2": "Ana 🎉", "field 3": "ana@example.com"}
    assert records[3].values["CustomerId"] == "4"  # the BOM is not part of the first value
    assert records[3].values["FullName"] == "Łukasz"
    assert records[3].values["StreetAddress"] == "ul. Długa 5"
    assert records[4].values["StreetAddress"] == ""
    assert records[5].values["CustomerId"] == "6"  # the header row is not a record
    assert all(r.problem is None for r in records if r is not records[2])
    assert blobs.opened == [one, two, three]  # the hidden partition is never read


def test_partitions_are_opened_only_when_reached() -> None:
    """Streaming: the first record needs only the first partition, and nothing before it."""
    entity = parse_model(CI_MODEL).entity("High Value")
    blobs = FakeBlobs("customerinsights", HIGH_VALUE_BLOBS)
    records = read_entity(entity, blobs.read_chunks)
    assert blobs.opened == []
    next(records)
    assert blobs.opened == [entity.partitions[0].blob]


def test_a_partition_is_streamed_not_read_whole() -> None:
    """Taking the first record of a large partition consumes only the first few pieces."""
    consumed: list[int] = []

    def read_chunks(container: str, name: str) -> Iterator[bytes]:
        for number in range(1000):
            consumed.append(number)
            yield f"{number},user{number}@example.com\n".encode() * 1000

    entity = parse_model(CI_MODEL).entity("ChurnRisk")
    first = next(read_entity(entity, read_chunks))
    assert first.values == {"CustomerId": "0", "PrimaryEmail": "user0@example.com"}
    assert len(consumed) < 200


def test_only_the_kept_columns_are_a_records_values() -> None:
    """An export maps a few of a profile's columns: the others are parsed, not kept; the
    header row is still checked against every column of the model, and a malformed row keeps
    all its fields."""
    entity = parse_model(CI_MODEL).entity("High Value")
    blobs = FakeBlobs("customerinsights", HIGH_VALUE_BLOBS)
    whole = list(read_entity(entity, blobs.read_chunks))
    records = list(read_entity(entity, blobs.read_chunks, keep=["PrimaryEmail", "CustomerId"]))
    assert [(r.where, r.problem) for r in records] == [(r.where, r.problem) for r in whole]
    kept = [r.values for r in records if r.problem is None]
    assert kept == [
        {"CustomerId": r.values["CustomerId"], "PrimaryEmail": r.values["PrimaryEmail"]}
        for r in whole
        if r.problem is None
    ]
    assert [list(values) for values in kept] == [["CustomerId", "PrimaryEmail"]] * 5
    assert kept[0] == {"CustomerId": "1", "PrimaryEmail": "zoe@example.com"}
    assert records[2].values == {"field 1": "3", "field 2": "Ana 🎉", "field 3": "ana@example.com"}
    with pytest.raises(SourceError, match="the header row names the columns"):
        header = b"Email,CustomerId\nx@example.com,1\n"
        _single(["CustomerId", "Email"], header, keep=["CustomerId"], columnHeaders=True)


def test_header_row_must_match_the_model_columns() -> None:
    with pytest.raises(SourceError) as caught:
        _single(["CustomerId", "Email"], b"Email,CustomerId\nx@example.com,1\n", columnHeaders=True)
    message = str(caught.value)
    assert message.startswith("ci/Seg_1.csv: the header row names the columns")
    assert "['Email', 'CustomerId']" in message and "['CustomerId', 'Email']" in message


def test_header_row_is_read_with_the_partition_delimiter() -> None:
    records = _single(
        ["id", "email"], b"id;email\n1;a@example.com\n", columnHeaders=True, delimiter=";"
    )
    assert [(r.line, r.values) for r in records] == [(2, {"id": "1", "email": "a@example.com"})]


def test_custom_delimiter_keeps_commas_in_values() -> None:
    records = _single(["id", "name"], b'1|Doe, Jane\n2|"A|B"\n', delimiter="|")
    assert [r.values["name"] for r in records] == ["Doe, Jane", "A|B"]


def test_quote_style_none_keeps_quotes_as_text() -> None:
    data = b'1,"Bob" Smith,x\n2,He said "hi,y\n'
    records = _single(["id", "name", "tag"], data, quoteStyle="QuoteStyle.None")
    assert [r.values["name"] for r in records] == ['"Bob" Smith', 'He said "hi']
    assert [r.line for r in records] == [1, 2]
    # The same bytes are malformed under the default QuoteStyle.Csv.
    with pytest.raises(SourceError, match=r"^ci/Seg_1\.csv: CSV syntax error .* at line 1"):
        _single(["id", "name", "tag"], data)


def test_invalid_utf8_in_a_partition_names_the_partition_and_line() -> None:
    with pytest.raises(SourceError, match=r"^ci/Seg_1\.csv: line 2 is not valid UTF-8"):
        _single(["id", "name"], "1,ok\n2,caf\xe9\n".encode("latin-1"))


def test_missing_partition_blob_is_reported_by_storage() -> None:
    model = parse_model(
        _model([_entity("Seg", ["id"], [_partition("p", f"{ACCOUNT}/segments/gone.csv")])])
    )
    with pytest.raises(BlobNotFound, match=r"'gone\.csv' not found in container 'segments'"):
        list(read_entity(model.entity(), FakeBlobs("segments", {}).read_chunks))


def test_entity_is_chosen_by_name_or_must_be_the_only_one() -> None:
    model = parse_model(CI_MODEL)
    assert model.entity("ChurnRisk").columns == ("CustomerId", "PrimaryEmail")
    assert _error(CI_MODEL) == (
        "exports/model.json has 2 entities ['High Value', 'ChurnRisk']: name the one to export "
        'with "entity" in the export\'s source'
    )
    assert _error(CI_MODEL, "Churn") == (
        "exports/model.json has no entity named 'Churn'; "
        "its entities are ['High Value', 'ChurnRisk']"
    )
    only = _model([_entity("Solo", ["id"], [_partition("Solo_1", f"{ACCOUNT}/c01/Solo_1.csv")])])
    assert parse_model(only).entity().name == "Solo"


def test_entity_without_readable_partitions_is_an_error() -> None:
    document = _model([_entity("Seg", ["id"], [_partition("Seg_1", None)])])
    assert _error(document) == (
        "exports/model.json: entity 'Seg' has no partition to read "
        "(skipped: partitions[0] (Seg_1) has no location)"
    )


def test_require_columns_names_the_entity_columns() -> None:
    entity = parse_model(CI_MODEL).entity("ChurnRisk")
    entity.require_columns(["CustomerId"])
    with pytest.raises(SourceError, match=r"\['Email'\] not in entity 'ChurnRisk'.*'PrimaryEmail'"):
        entity.require_columns(["CustomerId", "Email"])


def test_settings_default_to_cdm_defaults_when_absent() -> None:
    document = json.loads(
        _model([_entity("Seg", ["id"], [_partition("p", f"{ACCOUNT}/c01/p.csv")])])
    )
    del document["entities"][0]["partitions"][0]["fileFormatSettings"]
    settings = parse_model(json.dumps(document).encode()).entity().partitions[0].csv
    assert (settings.column_headers, settings.delimiter, settings.quoting) == (False, ",", True)


def test_utf8_spellings_are_accepted_and_other_encodings_refused() -> None:
    for spelling in ("utf-8", "UTF8"):
        assert [r.values for r in _single(["id"], b"1\n", encoding=spelling)] == [{"id": "1"}]
    document = _model(
        [_entity("Seg", ["id"], [_partition("p", f"{ACCOUNT}/c01/p.csv", encoding="UTF-16")])]
    )
    assert _error(document) == (
        "exports/model.json entities[0] (Seg).partitions[0] (p).fileFormatSettings.encoding: "
        "'UTF-16' is not supported: re-export the data as UTF-8"
    )


HV = "entities[0] (High Value)"
CHURN = "entities[1] (ChurnRisk)"
FIRST = f"{HV}.partitions[0] (High Value_1)"


def _set(entity: int, partition: int, **values: Any) -> Any:
    return lambda d: d["entities"][entity]["partitions"][partition].update(values)


def _settings(**values: Any) -> Any:
    return lambda d: d["entities"][0]["partitions"][0]["fileFormatSettings"].update(values)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            _set(0, 1, location="ftp://host/c/x.csv"),
            f"{HV}.partitions[1] (High Value_2).location: not a blob URL (expected "
            "https://<account>.blob.core.windows.net/<container>/<path>): ftp://host/c/x.csv",
        ),
        (
            _set(1, 0, location=f"{ACCOUNT}/Bad_Container/x.csv"),
            f"{CHURN}.partitions[0] (ChurnRisk_1).location: not a blob URL "
            "('Bad_Container' is not a blob container name)",
        ),
        (
            _set(0, 1, location=f"{ACCOUNT}/c01/x.csv?sv=1&sig=SECRET"),
            f"{HV}.partitions[1] (High Value_2).location: not a blob URL (only ?snapshot= is "
            f"understood, not ['sig', 'sv']): {ACCOUNT}/c01/x.csv",
        ),
        (
            _set(0, 4, location=f"{HIGH_VALUE_URL}/High%20Value_1.csv"),
            f"{HV}.partitions[4] (High Value_3).location: lists customerinsights/"
            f"{HIGH_VALUE_DIR}/High Value_1.csv a second time",
        ),
        (_set(0, 1, isHidden="no"), f"{HV}.partitions[1] (High Value_2).isHidden: must be true"),
        (
            lambda d: d.pop("version"),
            'version: must be "1.0" (a model.json, not a *.cdm.json); it is missing',
        ),
        (lambda d: d.pop("entities"), "entities: is required"),
        (lambda d: d["entities"][1].pop("attributes"), f"{CHURN}.attributes: is required"),
        (
            lambda d: d["entities"][1]["attributes"][1].update(name=7),
            f"{CHURN}.attributes[1].name: must be a string, not a number",
        ),
        (
            lambda d: d["entities"][1]["attributes"].append({"name": "CustomerId"}),
            f'{CHURN}.attributes[2].name: "CustomerId" is empty or used twice',
        ),
        (
            lambda d: d["entities"][1].update(name="High Value"),
            "entities[1].name: 'High Value' names two entities",
        ),
        (
            lambda d: d["entities"][1].update({"$type": "ReferenceEntity"}),
            f"{CHURN}.$type: 'ReferenceEntity' is not supported, only LocalEntity",
        ),
        (
            _settings(columnHeaders="yes"),
            f"{FIRST}.fileFormatSettings.columnHeaders: must be true or false, not a string",
        ),
        (
            _settings(delimiter="||"),
            f'{FIRST}.fileFormatSettings.delimiter: "||" is not a usable delimiter',
        ),
        (
            _settings(quoteStyle="Csv"),
            f"{FIRST}.fileFormatSettings.quoteStyle: must be one of "
            "['QuoteStyle.Csv', 'QuoteStyle.None']",
        ),
        (
            _settings(csvStyle="CsvStyle.Never"),
            f"{FIRST}.fileFormatSettings.csvStyle: must be one of",
        ),
    ],
)
def test_invalid_model_names_the_json_path(change: Any, expected: str) -> None:
    document = json.loads(CI_MODEL)
    change(document)
    with pytest.raises(SourceError) as caught:
        parse_model(json.dumps(document).encode(), "exports/model.json")
    assert str(caught.value).startswith(f"exports/model.json {expected}")
    assert "SECRET" not in str(caught.value)


def test_unreadable_documents() -> None:
    with pytest.raises(SourceError, match=r"^model\.json: is not valid JSON"):
        parse_model(b'{"version": "1.0",')
    with pytest.raises(SourceError, match=r"^model\.json: is not UTF-8"):
        parse_model(b'{"name": "caf\xe9"}')
    with pytest.raises(SourceError, match=r"^model\.json: must be a JSON object, not an array"):
        parse_model(b"[]")
    assert parse_model(b'\xef\xbb\xbf{"version": "1.0", "entities": []}').entities == ()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://contosoci.blob.core.windows.net/segments/a/High%20Value_1.csv",
            ("contosoci", "segments", "a/High Value_1.csv", None),
        ),
        (
            "https://contosoci.dfs.core.windows.net/segments/Caf%C3%A9%2B1.csv?snapshot=2026-01-01T00%3A00%3A00Z",
            ("contosoci", "segments", "Café+1.csv", "2026-01-01T00:00:00Z"),
        ),
        (
            "http://127.0.0.1:10000/devstoreaccount1/segments/ci/model%201.csv",
            ("devstoreaccount1", "segments", "ci/model 1.csv", None),
        ),
        (
            "https://govci.blob.core.usgovcloudapi.net/segments/x.csv",
            ("govci", "segments", "x.csv", None),
        ),
    ],
)
def test_blob_urls_map_to_container_and_blob(url: str, expected: tuple[str, ...]) -> None:
    assert parse_blob_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://example.com/segments/x.csv", "not an Azure Storage blob or dfs endpoint"),
        ("https://contosoci.blob.core.windows.net/segments/", "names no file"),
        ("https://contosoci.blob.core.windows.net/segments", "names no file"),
        ("https://contosoci.blob.core.windows.net/segments/x.csv#frag", "#fragment"),
        (
            "https://contosoci.blob.core.windows.net/segments/caf%E9.csv",
            "percent-encoding is not UTF-8",
        ),
        (
            "https://contosoci.blob.core.windows.net/segments/x.csv?snapshot=",
            "snapshot must be given",
        ),
        ("segments/x.csv", "expected https://"),
    ],
)
def test_bad_blob_urls_say_why(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_blob_url(url)
