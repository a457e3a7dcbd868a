"""Common Data Model (CDM) folders: a model.json and the CSV partitions it lists.

Dynamics 365 Customer Insights exports segments this way. model.json is the only authority on
where the rows are and how they are written: older runs' folders stay beside the current one,
so partitions are never found by listing, and partitions carry no header row unless the model
says so, so column names and order come from the entity's attributes.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

from shared.core.jsonlines import JSON_KINDS, kind_of
from shared.core.source_files import RecordProblem, RecordReader, SourceError, open_lines

ReadChunks = Callable[[str, str], Iterable[bytes]]


"""(container, blob name) -> the blob's bytes in pieces, as `Storage.read_chunks`."""


_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_SERVICE_HOST = re.compile(
    r"^(?P<account>[a-z0-9]{3,24})\.(?:blob|dfs)"
    r"\.core\.(?:windows\.net|chinacloudapi\.cn|usgovcloudapi\.net)$"
)


_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_QUOTE_STYLES = {"QuoteStyle.Csv": True, "QuoteStyle.None": False}
_CSV_STYLES = {"CsvStyle.QuoteAlways", "CsvStyle.QuoteAfterDelimiter"}


@dataclass(frozen=True, slots=True)
class CsvSettings:
    """How one partition is written (its `fileFormatSettings`), with the CDM defaults.

    `quoting` is QuoteStyle.Csv (RFC 4180 quotes, "" for a quote); False is QuoteStyle.None.
    Both csvStyle values are accepted and read the same way: quotes open a field only at its
    start, which is how every quoted field of a well-formed export begins.
    """

    column_headers: bool = False
    delimiter: str = ","
    quoting: bool = True


@dataclass(frozen=True, slots=True)
class CdmPartition:
    """One CSV file of an entity, mapped from its absolute URL onto a container and blob."""

    account: str
    container: str
    blob: str
    snapshot: str | None
    csv: CsvSettings


@dataclass(frozen=True, slots=True)
class CdmEntity:
    """A table of the model: its columns in file order and the partitions to read, in order.

    `skipped` says which listed partitions are not read (hidden, or no location) and why.
    """

    name: str
    columns: tuple[str, ...]
    partitions: tuple[CdmPartition, ...]
    skipped: tuple[str, ...] = ()

    def require_columns(self, needed: Iterable[str]) -> None:
        """Fail before anything is read when a mapped column is not an attribute of the entity."""
        missing = [c for c in needed if c not in self.columns]
        if missing:
            raise SourceError(
                f"mapped column(s) {missing} not in entity '{self.name}' of the model; "
                f"its columns are {list(self.columns)}"
            )


@dataclass(frozen=True, slots=True)
class CdmModel:
    """The entities of a model.json; `culture` is how numbers and dates are written, if set."""

    source: str
    culture: str | None
    entities: tuple[CdmEntity, ...]

    def entity(self, name: str | None = None) -> CdmEntity:
        """The entity to export: the named one, or the only one when no name is given."""
        names = [e.name for e in self.entities]
        if name is None:
            if len(self.entities) != 1:
                raise SourceError(
                    f"{self.source} has {len(names)} entities {names}: name the one to export "
                    'with "entity" in the export\'s source'
                )
            chosen = self.entities[0]
        else:
            found = [e for e in self.entities if e.name == name]
            if not found:
                raise SourceError(
                    f"{self.source} has no entity named '{name}'; its entities are {names}"
                )
            chosen = found[0]
        if not chosen.partitions:
            skipped = f" (skipped: {'; '.join(chosen.skipped)})" if chosen.skipped else ""
            raise SourceError(
                f"{self.source}: entity '{chosen.name}' has no partition to read{skipped}"
            )
        return chosen


# Not frozen: one is made per row, and a frozen dataclass costs four times as much to create.
@dataclass(slots=True)
class CdmRecord:
    """One row and where it came from: line numbers count from 1 in each partition file."""

    partition: str
    line: int
    values: dict[str, Any]
    problem: RecordProblem | None = None

    @property
    def where(self) -> str:
        return f"{self.partition}:line {self.line}"


def parse_model(document: bytes, source: str = "model.json") -> CdmModel:
    """Parse and check a model.json; every problem is a SourceError naming its JSON path.

    `source` starts each message, so pass the blob's own path when there is one. Keys the
    reader does not use (producer extensions such as `pbi:mashup`, annotations) are ignored.
    """
    return _Parser(source).model(document)


def read_entity(
    entity: CdmEntity, read_chunks: ReadChunks, keep: Collection[str] | None = None
) -> Iterator[CdmRecord]:
    """Stream every row of the entity, partition after partition, one partition open at a time.

    Rows with the wrong number of fields come back with a `problem`, like `RecordReader`'s.
    Raises SourceError (prefixed with the partition's blob name) for a whole-file problem, such
    as a header row that differs from the model's columns, and lets `read_chunks`' own errors
    (BlobNotFound) through. Nothing is read until the first record is asked for.
    """
    for partition in entity.partitions:
        try:
            yield from _read_partition(entity, partition, read_chunks, keep)
        except SourceError as error:
            raise SourceError(f"{partition.blob}: {error}") from None


def _read_partition(
    entity: CdmEntity,
    partition: CdmPartition,
    read_chunks: ReadChunks,
    keep: Collection[str] | None,
) -> Iterator[CdmRecord]:
    chunks = read_chunks(partition.container, partition.blob)
    yield from read_partition_range(
        entity, partition, chunks, first_line=1, at_start=True, keep=keep
    )


def read_partition_range(
    entity: CdmEntity,
    partition: CdmPartition,
    chunks: Iterable[bytes],
    *,
    first_line: int,
    at_start: bool,
    keep: Collection[str] | None = None,
) -> Iterator[CdmRecord]:
    """The rows of a byte range of one partition file (`chunks`), which starts at a record
    start on line `first_line`; a header row, where the model says the file has one, is in the
    range at the file's start (`at_start`) and is checked against the model's columns. Raises
    SourceError as `read_entity` does, without the blob's name."""
    settings = partition.csv
    lines, delimiter, quoting = open_lines(chunks, first_line), settings.delimiter, settings.quoting
    if settings.column_headers and not at_start:  # after the header: its columns are known
        header = entity.columns
        reader = RecordReader(
            lines, "csv", header=header, delimiter=delimiter, quoting=quoting, keep=keep
        )
    else:
        columns = None if settings.column_headers else entity.columns
        reader = RecordReader(
            lines, "csv", columns=columns, delimiter=delimiter, quoting=quoting, keep=keep
        )
    if reader.columns != list(entity.columns):
        raise SourceError(
            f"the header row names the columns {reader.columns}, but entity '{entity.name}' of "
            f"the model has {list(entity.columns)} in that order"
        )
    for record in reader:
        yield CdmRecord(partition.blob, record.line, record.values, record.problem)


def parse_blob_url(url: str) -> tuple[str, str, str, str | None]:
    """(account, container, blob name, snapshot) of an Azure Storage or Azurite blob URL.

    The URL only tells which blob to read from the app's own storage; it is never fetched.
    Raises ValueError saying what is wrong.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("expected https://<account>.blob.core.windows.net/<container>/<path>")
    if parts.fragment:
        raise ValueError("it has a #fragment")
    path = parts.path.removeprefix("/")
    service = _SERVICE_HOST.match(host)
    if service:
        account = service["account"]
    elif host in _LOOPBACK_HOSTS:
        account, _, path = path.partition("/")  # the emulator puts the account in the path
    else:
        raise ValueError(f"'{host}' is not an Azure Storage blob or dfs endpoint nor loopback")
    container, _, blob = path.partition("/")
    if not blob or blob.endswith("/"):
        raise ValueError("it names no file after the container")
    try:
        container, blob = unquote(container, errors="strict"), unquote(blob, errors="strict")
    except UnicodeDecodeError:
        raise ValueError("its percent-encoding is not UTF-8") from None
    if not _CONTAINER.match(container):
        raise ValueError(f"'{container}' is not a blob container name")
    query = parse_qs(parts.query, keep_blank_values=True)
    if set(query) - {"snapshot"}:
        raise ValueError(f"only ?snapshot= is understood, not {sorted(set(query) - {'snapshot'})}")
    snapshots = query.get("snapshot", [])
    if len(snapshots) > 1 or snapshots == [""]:
        raise ValueError("the snapshot must be given once, with a value")
    return account, container, blob, snapshots[0] if snapshots else None


class _Parser:
    """model.json checks; `fail` prefixes each message with the source and the JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        raise SourceError(
            f"{self.source} {path}: {message}" if path else f"{self.source}: {message}"
        )

    def model(self, document: bytes) -> CdmModel:
        try:
            data = json.loads(document.decode("utf-8-sig"))
        except UnicodeDecodeError as error:
            self.fail("", f"is not UTF-8 (byte {error.start + 1}: {error.reason})")
        except ValueError as error:
            self.fail("", f"is not valid JSON: {error}")
        root = self.object(data, "")
        version = root.get("version")
        if version != "1.0":
            found = "is missing" if version is None else f"is {json.dumps(version)}"
            self.fail("version", f'must be "1.0" (a model.json, not a *.cdm.json); it {found}')
        culture = self.optional(root, "culture", str, "")
        items = self.required(root, "entities", list, "")
        entities = [self.entity(item, f"entities[{i}]") for i, item in enumerate(items)]
        names = [e.name for e in entities]
        for index, name in enumerate(names):
            if name in names[:index]:
                self.fail(f"entities[{index}].name", f"'{name}' names two entities")
        return CdmModel(self.source, culture, tuple(entities))

    def entity(self, item: Any, path: str) -> CdmEntity:
        entity = self.object(item, path)
        name = self.required(entity, "name", str, path)
        if not name:
            self.fail(f"{path}.name", "must not be empty")
        path = f"{path} ({name})"
        kind = self.optional(entity, "$type", str, path) or "LocalEntity"
        if kind != "LocalEntity":
            self.fail(f"{path}.$type", f"'{kind}' is not supported, only LocalEntity")
        columns = []
        for index, attribute in enumerate(self.required(entity, "attributes", list, path)):
            where = f"{path}.attributes[{index}]"
            column = self.required(self.object(attribute, where), "name", str, where)
            if not column or column in columns:
                self.fail(f"{where}.name", f"{json.dumps(column)} is empty or used twice")
            columns.append(column)
        if not columns:
            self.fail(f"{path}.attributes", "lists no attribute, so the columns are unknown")
        partitions: list[CdmPartition] = []
        skipped: list[str] = []
        for index, value in enumerate(self.optional(entity, "partitions", list, path) or []):
            label = f"partitions[{index}]"
            partition = self.object(value, f"{path}.{label}")
            if isinstance(partition.get("name"), str):
                label += f" ({partition['name']})"
            where = f"{path}.{label}"
            location = self.optional(partition, "location", str, where)
            if self.optional(partition, "isHidden", bool, where):
                skipped.append(f"{label} is hidden")
            elif location is None:
                skipped.append(f"{label} has no location")
            else:
                partitions.append(self.partition(partition, location, where, partitions))
        return CdmEntity(name, tuple(columns), tuple(partitions), tuple(skipped))

    def partition(
        self, partition: dict[str, Any], location: str, path: str, earlier: Sequence[CdmPartition]
    ) -> CdmPartition:
        try:
            account, container, blob, snapshot = parse_blob_url(location)
        except ValueError as error:
            shown = location.partition("?")[0]  # a query could hold a SAS signature
            self.fail(f"{path}.location", f"not a blob URL ({error}): {shown}")
        if any((p.container, p.blob) == (container, blob) for p in earlier):
            self.fail(f"{path}.location", f"lists {container}/{blob} a second time")
        settings = self.csv(partition.get("fileFormatSettings"), f"{path}.fileFormatSettings")
        return CdmPartition(account, container, blob, snapshot, settings)

    def csv(self, value: Any, path: str) -> CsvSettings:
        if value is None:
            return CsvSettings()
        settings = self.object(value, path)
        kind = self.optional(settings, "$type", str, path) or "CsvFormatSettings"
        if kind != "CsvFormatSettings":
            self.fail(f"{path}.$type", f"'{kind}' is not supported, only CsvFormatSettings")
        encoding = self.optional(settings, "encoding", str, path) or "UTF-8"
        try:
            utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
        except LookupError:
            utf8 = False
        if not utf8:
            self.fail(
                f"{path}.encoding", f"'{encoding}' is not supported: re-export the data as UTF-8"
            )
        quote_style = self.optional(settings, "quoteStyle", str, path) or "QuoteStyle.Csv"
        if quote_style not in _QUOTE_STYLES:
            self.fail(f"{path}.quoteStyle", f"must be one of {sorted(_QUOTE_STYLES)}")
        csv_style = self.optional(settings, "csvStyle", str, path) or "CsvStyle.QuoteAlways"
        if csv_style not in _CSV_STYLES:
            self.fail(f"{path}.csvStyle", f"must be one of {sorted(_CSV_STYLES)}")
        quoting = _QUOTE_STYLES[quote_style]
        delimiter = self.optional(settings, "delimiter", str, path)
        delimiter = "," if delimiter is None else delimiter
        if len(delimiter) != 1 or delimiter in "\r\n" or (quoting and delimiter == '"'):
            self.fail(f"{path}.delimiter", f"{json.dumps(delimiter)} is not a usable delimiter")
        headers = self.optional(settings, "columnHeaders", bool, path) or False
        return CsvSettings(headers, delimiter, quoting)

    def object(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"must be a JSON object, not {kind_of(value)}")
        return value

    def required(self, parent: dict[str, Any], key: str, kind: type, path: str) -> Any:
        if parent.get(key) is None:
            self.fail(_join(path, key), "is required")
        return self.optional(parent, key, kind, path)

    def optional(self, parent: dict[str, Any], key: str, kind: type, path: str) -> Any:
        """The value, None when absent or null, or a failure when it has the wrong JSON type."""
        value = parent.get(key)
        if value is not None and not isinstance(value, kind):
            self.fail(_join(path, key), f"must be {JSON_KINDS[kind]}, not {kind_of(value)}")
        return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
