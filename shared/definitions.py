"""The export definitions document: connections and exports, validated as a whole on load.

Every problem is reported at once, each with its JSON path in plain words, so an operator fixes
the file in one pass instead of one error per deploy.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
RESERVED_ATTRIBUTES = {
    "external_id", "user_alias", "braze_id", "email", "phone", "_update_existing_only",
    "email_subscribe", "push_subscribe", "subscription_groups", "push_tokens",
}  # fmt: skip

Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="Lower-case letters, digits and inner hyphens, at most 63 characters. "
        "Used in blob paths, run ids and URLs.",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Connection(_Strict):
    """A Braze workspace: where to send, and which Key Vault secret holds the REST API key."""

    name: Name
    rest_endpoint: str = Field(
        description="Braze REST endpoint, e.g. https://rest.iad-03.braze.com "
        "(plain http only for loopback)."
    )
    api_key_secret: str = Field(
        pattern=r"^[0-9A-Za-z-]{1,127}$",
        description="Key Vault secret name holding the REST API key (needs users.track).",
    )
    objects_per_request: int = Field(
        default=75,
        ge=1,
        le=75,
        description="Profiles per /users/track request (Braze allows 75 combined; some plans 50).",
    )

    @field_validator("rest_endpoint")
    @classmethod
    def _endpoint_is_a_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        loopback = parts.hostname in LOOPBACK_HOSTS
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError("must start with https:// (plain http is allowed only for loopback)")
        if not parts.hostname or parts.query or parts.fragment or parts.path not in ("", "/"):
            raise ValueError("must be a bare host such as https://rest.iad-03.braze.com")
        return value.rstrip("/")


class AttributeMapping(_Strict):
    """One optional source column sent as a Braze custom attribute."""

    column: str = Field(min_length=1, description="Source column (CSV header) or JSON key.")
    attribute: str = Field(min_length=1, max_length=255, description="Braze custom attribute name.")
    type: Literal["string", "number", "boolean", "date"] = "string"

    @field_validator("attribute")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_ATTRIBUTES or value.startswith("$"):
            raise ValueError(f"'{value}' is a reserved Braze field, not a custom attribute")
        return value


class Mapping(_Strict):
    """Which source columns become the Braze identity, email and custom attributes."""

    customer_id: str = Field(min_length=1, description="Column sent as Braze external_id.")
    email: str = Field(min_length=1, description="Column sent as the Braze email field.")
    attributes: list[AttributeMapping] = Field(default_factory=list)


class Source(_Strict):
    """Where the segment file lives in the app's storage account."""

    container: str = Field(
        pattern=r"^[a-z0-9](?:[a-z0-9]|-[a-z0-9])+$",
        min_length=3,
        max_length=63,
        description="Blob container name (3-63 lower-case letters, digits, hyphens).",
    )
    path: str = Field(min_length=1, max_length=1024)
    format: Literal["csv", "jsonl"] | None = Field(
        default=None,
        description="Inferred from the name (.csv, .jsonl, .ndjson, optionally .gz) when omitted.",
    )

    def resolved_format(self) -> Literal["csv", "jsonl"]:
        if self.format:
            return self.format
        name = self.path.lower().removesuffix(".gz")
        return "jsonl" if name.endswith((".jsonl", ".ndjson", ".json")) else "csv"


class Export(_Strict):
    """One segment pushed to one Braze connection."""

    name: Name
    connection: str
    segment: str = Field(
        min_length=1,
        max_length=255,
        description="Segment name as it appears in Braze (the membership value).",
    )
    source: Source
    mapping: Mapping
    membership_attribute: str = Field(
        default="segments",
        min_length=1,
        max_length=255,
        description="Array custom attribute that receives the segment name.",
    )
    create_missing_users: bool = Field(
        default=True,
        description="false sends _update_existing_only, so only existing Braze users are updated.",
    )
    chunk_size: int = Field(
        default=3000,
        ge=75,
        le=50000,
        description="Profiles per chunk blob, the unit of parallel delivery.",
    )

    @model_validator(mode="after")
    def _attribute_names_are_distinct(self) -> Export:
        names = [a.attribute for a in self.mapping.attributes] + [self.membership_attribute]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"attribute names used more than once: {', '.join(dupes)}")
        return self


class Definitions(_Strict):
    """The whole document: a file locally, a blob in the config container on Azure."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"title": "Braze segment exporter definitions"},
    )

    schema_: str | None = Field(default=None, alias="$schema")
    connections: list[Connection]
    exports: list[Export]

    @model_validator(mode="after")
    def _references_resolve(self) -> Definitions:
        problems = []
        for kind, items in (("connection", self.connections), ("export", self.exports)):
            names = [item.name for item in items]
            problems += [
                f"{kind} name '{n}' is used twice" for n in sorted(set(names)) if names.count(n) > 1
            ]
        known = {c.name for c in self.connections}
        problems += [
            f"export '{e.name}' uses connection '{e.connection}', which is not defined"
            for e in self.exports
            if e.connection not in known
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def export(self, name: str) -> Export:
        for export in self.exports:
            if export.name == name:
                return export
        raise KeyError(f"no export named '{name}'")

    def connection(self, name: str) -> Connection:
        return next(c for c in self.connections if c.name == name)


class DefinitionsError(Exception):
    """The document is invalid; `problems` lists every one with its location."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{listing}")


def parse_definitions(text: str | bytes, source: str = "export definitions") -> Definitions:
    """Parse and validate the whole document, or raise DefinitionsError naming every problem."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise DefinitionsError(source, [f"not valid JSON: {error}"]) from None
    try:
        return Definitions.model_validate(data)
    except ValidationError as error:
        raise DefinitionsError(source, [_describe(e, data) for e in error.errors()]) from None


def _describe(error: Any, data: Any) -> str:
    """Turn a pydantic error into 'exports[1] (weekly-vip).mapping.email: field required'."""
    path, node = "", data
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                path += f" ({node['name']})"
        else:
            path += f".{part}" if path else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "is required"
    elif error["type"] == "extra_forbidden":
        message = "is not a known field"
    elif error["type"] == "string_pattern_mismatch":
        message = _PATTERN_WORDS.get(str(error["loc"][-1]), message)
    return f"{path or 'document'}: {message}"


_PATTERN_WORDS = {
    "name": "must be lower-case letters, digits and inner hyphens (at most 63 characters)",
    "container": "must be a blob container name: lower-case letters, digits and single "
    "inner hyphens",
    "api_key_secret": "must be a Key Vault secret name: letters, digits and hyphens",
}


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of the document (schema/export-definitions.schema.json)."""
    return Definitions.model_json_schema(by_alias=True)
