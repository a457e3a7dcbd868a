"""The export definitions document: connections and exports, validated as a whole on load.

Every problem is reported at once, each with its JSON path in plain words, so an operator fixes
the file in one pass instead of one error per deploy.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.core import schedule
from shared.core.access import ADMIN, RUN
from shared.core.definition_hints import did_you_mean, field_hint, json_path, one_of
from shared.core.resource_names import DROPS_CONTAINER

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Braze REST hosts: rest.iad-01.braze.com ... rest.us-10.braze.com, rest.fra-01.braze.eu, ...
BRAZE_REST_HOST = re.compile(r"rest\.[a-z]{2,4}-[0-9]{2}\.braze\.(?:com|eu)")
IN_FLIGHT_HEADROOM = 1.25  # latency varies: a little more in flight keeps the budget spent
MIN_IN_FLIGHT, MAX_IN_FLIGHT = 2, 128
RESERVED_ATTRIBUTES = {
    "external_id", "user_alias", "braze_id", "email", "phone", "_update_existing_only",
    "email_subscribe", "push_subscribe", "subscription_groups", "push_tokens",
}  # fmt: skip


SourceFormat = Literal["csv", "jsonl", "cdm"]

# An Entra app role's value: 1-120 letters, digits and symbols (no spaces, quotes or
# backslashes), not starting with a dot.
APP_ROLE_PATTERN = (
    r"^[0-9A-Za-z!#$%&'()*+,\-/:;<=>?@\[\]^_`{|}~]"
    r"[0-9A-Za-z!#$%&'()*+,\-./:;<=>?@\[\]^_`{|}~]{0,119}$"
)
AppRole = Annotated[str, Field(pattern=APP_ROLE_PATTERN)]

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
        description="Braze REST endpoint, https://rest.<cluster>.braze.com or .braze.eu, e.g. "
        "https://rest.iad-03.braze.com; a loopback address (the local sandbox, http allowed) "
        "receives its key only with EXPORT_ALLOW_LOOPBACK_ENDPOINTS=true."
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
    rate_limit_requests: int = Field(
        default=3000,
        ge=1,
        le=1_000_000,
        description="Requests Braze allows per window on /users/track (3,000 per 3 s by default).",
    )
    rate_limit_window_seconds: int = Field(
        default=3, ge=1, le=3600, description="Length of Braze's rate-limit window in seconds."
    )
    rate_limit_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Share of the window's budget this app may use across all its instances; "
        "lower it to leave room for other /users/track traffic to the workspace.",
    )
    expected_latency_ms: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Typical time Braze takes to answer a /users/track request from the app; "
        "with the budget it sizes how many requests each worker starts with in flight (then "
        "it follows the latency measured).",
    )
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Requests one worker process keeps in flight on this connection; by "
        "default the budget per second times the latency measured (Little's law), with "
        "headroom, starting from expected_latency_ms.",
    )
    array_element_cap: int = Field(
        default=25,
        ge=1,
        le=100,
        description="Most elements Braze keeps in an array attribute for this workspace "
        "(25 by default, up to 100 on request); the report warns before a membership array "
        "would pass it.",
    )
    allowed_roles: list[AppRole] | None = Field(
        default=None,
        min_length=1,
        description="Microsoft Entra app roles allowed to run exports through this connection "
        "over the HTTP API where EXPORT_API_AUTH is 'entra': starting, replaying or tearing "
        f"down then also needs one of these, besides {RUN} (or {ADMIN}). Omitted: any caller "
        f"with {RUN}. Not checked with function keys, nor for schedules, drops and the CLI.",
    )

    def requests_per_second(self) -> float:
        """This app's share of the budget, per second."""
        return self.rate_limit_requests * self.rate_limit_share / self.rate_limit_window_seconds

    def in_flight_per_worker(self) -> int:
        """Requests a worker starts with in flight: enough to spend the whole budget at the
        expected latency (budget/s x latency x 1.25), so concurrency, not latency, sets the
        pace; without `max_in_flight`, the client then follows the latency it measures."""
        if self.max_in_flight is not None:
            return self.max_in_flight
        wanted = math.ceil(
            self.requests_per_second() * self.expected_latency_ms / 1000 * IN_FLIGHT_HEADROOM
        )
        return max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, wanted))

    @field_validator("rest_endpoint")
    @classmethod
    def _endpoint_is_braze(cls, value: str) -> str:
        """Only Braze's REST hosts, so a typo or a hostile edit never receives the key; a
        loopback address (the local sandbox) parses, but its key is sent only in local
        development (`EXPORT_ALLOW_LOOPBACK_ENDPOINTS`, checked where the key is used)."""
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must not contain spaces, tabs, newlines or control characters")
        parts = urlsplit(value)
        bare = parts.path in ("", "/") and not (parts.query or parts.fragment or "@" in value)
        if not parts.hostname or not bare:
            raise ValueError("must be a bare host such as https://rest.iad-03.braze.com")
        if parts.hostname in LOOPBACK_HOSTS and parts.scheme in ("http", "https"):
            return value.rstrip("/")
        if parts.scheme != "https":
            raise ValueError("must start with https:// (plain http is allowed only for loopback)")
        if not BRAZE_REST_HOST.fullmatch(parts.hostname) or parts.port not in (None, 443):
            raise ValueError(
                "must be a Braze REST endpoint, https://rest.<cluster>.braze.com or "
                ".braze.eu, such as https://rest.iad-03.braze.com (the Braze dashboard shows "
                "yours under Settings > APIs and Identifiers)"
            )
        return value.rstrip("/")

    @property
    def is_loopback(self) -> bool:
        """Whether the endpoint is this machine (the local sandbox), not Braze."""
        return urlsplit(self.rest_endpoint).hostname in LOOPBACK_HOSTS


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

    def columns(self) -> list[str]:
        """The source columns the export reads: the id's, the email's, then each attribute's."""
        return [self.customer_id, self.email, *(a.column for a in self.attributes)]


class Source(_Strict):
    """Where the segment lives in the app's storage account: a file, or a CDM model.json."""

    container: str = Field(
        pattern=r"^[a-z0-9](?:[a-z0-9]|-[a-z0-9])+$",
        min_length=3,
        max_length=63,
        description="Blob container name (3-63 lower-case letters, digits, hyphens).",
    )
    path: str = Field(min_length=1, max_length=1024)
    format: SourceFormat | None = Field(
        default=None,
        description="Inferred from the name when omitted: model.json is a CDM folder, "
        ".jsonl/.ndjson JSON Lines, anything else CSV (each optionally .gz).",
    )
    entity: str | None = Field(
        default=None,
        description="CDM entity (segment) to read from model.json; needed when it has several.",
    )

    def resolved_format(self) -> SourceFormat:
        return self.format or format_of(self.path)


def format_of(path: str) -> SourceFormat:
    """The format a blob name implies."""
    name = path.lower().removesuffix(".gz")
    if name.rsplit("/", 1)[-1] == "model.json":
        return "cdm"
    return "jsonl" if name.endswith((".jsonl", ".ndjson", ".json")) else "csv"


class Drop(_Strict):
    """Where files dropped into storage start this export (Event Grid blob trigger)."""

    container: str = Field(
        default=DROPS_CONTAINER,
        description=f"Must be '{DROPS_CONTAINER}', the container the blob trigger watches.",
    )
    path: str = Field(
        min_length=1,
        max_length=1024,
        description="Glob pattern of blob names, e.g. 'ci/VIP/*.csv' or 'ci/VIP/model.json'.",
    )

    @field_validator("container")
    @classmethod
    def _watched_container(cls, value: str) -> str:
        if value != DROPS_CONTAINER:
            raise ValueError(
                f"drops are watched in the '{DROPS_CONTAINER}' container only (the blob "
                "trigger and its Event Grid subscription are bound to it)"
            )
        return value


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
        description="Custom attribute that records membership: an array receiving the segment "
        "name (membership 'array'), or a boolean set true on join and false on leave "
        "(membership 'boolean').",
    )
    membership: Literal["array", "boolean"] = Field(
        default="array",
        description="How membership is written: 'array' adds and removes the segment name in "
        "membership_attribute; 'boolean' sets membership_attribute true or false.",
    )
    clear_attributes_on_leave: bool = Field(
        default=False,
        description="When a profile leaves the segment, also set its mapped attributes to null "
        "(by default only the membership is removed).",
    )
    max_removed_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Safety valve: a run that would remove more than this share of the "
        "previous segment stops before sending anything, unless started with an override.",
    )
    max_data_points: int = Field(
        default=10_000_000,
        ge=0,
        description="Safety valve: a run whose estimated Braze data points exceed this stops "
        "before sending anything, unless started with an override.",
    )
    create_missing_users: bool = Field(
        default=True,
        description="false sends _update_existing_only, so only existing Braze users are updated.",
    )
    chunk_size: int = Field(
        default=100000,
        ge=75,
        le=100000,
        description="Most profiles per delivery job, the unit of parallel delivery: a "
        "partition's changes are cut into blobs of at most this many, and blobs travel together "
        "up to it. A worker sends one job at a time with many requests in flight, which drain "
        "at the job's end: the default (1,334 requests, about three partitions of a typical "
        "source) keeps them busy.",
    )
    schedule: str | None = Field(
        default=None,
        description="NCRONTAB with seconds, UTC, e.g. '0 0 2 * * *' for 02:00 daily.",
    )
    drop: Drop | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule_parses(cls, value: str | None) -> str | None:
        if value is not None and not schedule.is_valid(value):
            raise ValueError(
                "is not a six-field NCRONTAB expression "
                "({second} {minute} {hour} {day} {month} {day-of-week}, restricting day or "
                "day-of-week but not both), e.g. '0 0 2 * * *'"
            )
        return value


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

    def export(self, name: str) -> Export:
        for export in self.exports:
            if export.name == name:
                return export
        raise UnknownExport(f"no export named '{name}'")

    def connection(self, name: str) -> Connection:
        for connection in self.connections:
            if connection.name == name:
                return connection
        raise UnknownExport(f"no connection named '{name}'")


class UnknownExport(KeyError):
    """A name that the current definitions do not define (export or connection)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Problem:
    """One problem: its JSON path, how it is listed (the path with each item's name), and
    what to write instead when that can be worked out (`python -m shared validate` shows it)."""

    path: str
    text: str
    suggestion: str = ""


class DefinitionsError(Exception):
    """The document is invalid; `problems` lists every one with its location, `details` the
    same with their JSON paths and suggestions."""

    def __init__(self, source: str, details: list[Problem]) -> None:
        self.source, self.details = source, details
        self.problems = [p.text for p in details]
        listing = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(details)} problem(s):\n{listing}")


def parse_definitions(text: str | bytes, source: str = "export definitions") -> Definitions:
    """Parse and validate the whole document, or raise DefinitionsError naming every problem."""
    try:
        data = json.loads(text)
    except ValueError as error:
        hint = "look for a missing comma, quote or bracket there or just before"
        raise DefinitionsError(source, [Problem("", f"not valid JSON: {error}", hint)]) from None
    problems = []
    try:
        definitions = Definitions.model_validate(data)
    except ValidationError as error:
        schema = json_schema()
        problems = [
            Problem(json_path(e["loc"]), _describe(e, data), field_hint(schema, e))
            for e in error.errors()
        ]
    problems += _cross_reference_problems(data)
    if problems:
        raise DefinitionsError(source, problems)
    return definitions


def _cross_reference_problems(data: Any) -> list[Problem]:
    """Checks across items, run on the raw document so they are reported alongside field errors."""
    if not isinstance(data, dict):
        return []
    problems: list[Problem] = []
    groups = {kind: _dicts(data.get(f"{kind}s")) for kind in ("connection", "export")}
    for kind, items in groups.items():
        first_use: dict[str, int] = {}
        for index, item in items:
            name = item.get("name")
            if isinstance(name, str) and name in first_use:
                problems.append(
                    Problem(
                        f"{kind}s[{index}].name",
                        f"{kind}s[{index}] ({name}).name: already used by "
                        f"{kind}s[{first_use[name]}]",
                        f"give each {kind} a name of its own",
                    )
                )
            elif isinstance(name, str):
                first_use[name] = index
    known = {item.get("name") for _, item in groups["connection"]}
    for index, export in groups["export"]:
        where = f"exports[{index}] ({export.get('name')})"
        connection = export.get("connection")
        if isinstance(connection, str) and connection not in known:
            defined = sorted(n for n in known if isinstance(n, str))
            others = f", or use {one_of(defined)}" if defined else ""
            problems.append(
                Problem(
                    f"exports[{index}].connection",
                    f"{where}.connection: '{connection}' is not a defined connection",
                    did_you_mean(connection, defined) or f"define it in connections{others}",
                )
            )
        mapping = export.get("mapping") if isinstance(export.get("mapping"), dict) else {}
        names = [a.get("attribute") for _, a in _dicts(mapping.get("attributes"))]
        names.append(export.get("membership_attribute", "segments"))
        dupes = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
        if dupes:
            problems.append(
                Problem(
                    f"exports[{index}]",
                    f"{where}: attribute names used more than once: {', '.join(dupes)}",
                    "give each mapped attribute, and membership_attribute, a name of its own",
                )
            )
    return problems


def _dicts(value: Any) -> list[tuple[int, dict[str, Any]]]:
    return (
        [(i, v) for i, v in enumerate(value) if isinstance(v, dict)]
        if isinstance(value, list)
        else []
    )


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
        field = next((part for part in reversed(error["loc"]) if isinstance(part, str)), "")
        message = _PATTERN_WORDS.get(field, message)
    elif error["type"] == "too_short" and error["loc"][-1] == "allowed_roles":
        message = (
            f"must list at least one app role (leave it out to let every caller with {RUN} "
            "use the connection)"
        )
    return f"{path or 'document'}: {message}"


_PATTERN_WORDS = {
    "name": "must be lower-case letters, digits and inner hyphens (at most 63 characters)",
    "container": "must be a blob container name: lower-case letters, digits and single "
    "inner hyphens",
    "api_key_secret": "must be a Key Vault secret name: letters, digits and hyphens",
    "allowed_roles": "must be an Entra app role value: 1-120 letters, digits and symbols "
    "(no spaces, quotes or backslashes), not starting with '.'",
}


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.fullmatch(name))  # fullmatch: `$` alone lets a trailing newline in


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of the document (schema/export-definitions.schema.json)."""
    return Definitions.model_json_schema(by_alias=True)
