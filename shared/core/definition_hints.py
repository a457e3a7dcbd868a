"""What to write instead, for a problem in the definitions document.

Worked out from the published JSON Schema (its fields, allowed values, bounds, defaults and
descriptions), so a new field gets its hints without code here. Values in hints are written as
JSON, ready to paste.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_WRONG_TYPE = re.compile(r"(int|float|bool|string|list|dict|model)_(type|parsing)")


def json_path(loc: Iterable[str | int]) -> str:
    """`exports[2].mapping.email` from pydantic's location of an error."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`did you mean "prod"?` when one of the choices is close to the word, else ''."""
    import difflib  # only when something is wrong

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {json.dumps(close[0])}?" if close else ""


def field_hint(schema: dict[str, Any], error: dict[str, Any]) -> str:
    """A hint for one pydantic error, from the schema of the field it is about ('' if none)."""
    loc, kind = tuple(error["loc"]), error["type"]
    field = _at(schema, loc)
    if kind == "extra_forbidden":
        known = sorted(_at(schema, loc[:-1]).get("properties", {}))
        listing = ", ".join(json.dumps(name) for name in known)
        return did_you_mean(str(loc[-1]), known) or f"the fields known here are {listing}"
    if kind == "missing":
        description = field.get("description", "")
        return f"add {json.dumps(loc[-1])}" + (f": {description}" if description else "")
    if "enum" in field:
        allowed = [str(value) for value in field["enum"]]
        return did_you_mean(str(error.get("input")), allowed) or f"use {one_of(allowed)}"
    if kind == "string_pattern_mismatch" and isinstance(error.get("input"), str):
        fixed = _fit(error["input"], error["ctx"]["pattern"])
        return f"for example {json.dumps(fixed)}" if fixed else ""
    if kind in _BOUNDS or _WRONG_TYPE.fullmatch(kind):
        return _range(field)
    if "default" in field and field["default"] is not None:
        return f"leave it out for the default, {json.dumps(field['default'])}"
    return ""


def _at(schema: dict[str, Any], loc: tuple[str | int, ...]) -> dict[str, Any]:
    """The schema of the value at `loc` ({} where the schema does not say)."""
    node = _resolved(schema, schema)
    for part in loc:
        node = node.get("items", {}) if isinstance(part, int) else node.get("properties", {})
        if isinstance(part, str):
            node = node.get(part, {})
        node = _resolved(schema, node)
    return node


def _resolved(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`, and take the non-null branch of an optional field (keeping its
    description and default)."""
    branches = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        node = {**{k: v for k, v in node.items() if k != "anyOf"}, **branches[0]}
    if "$ref" in node:
        target = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _range(field: dict[str, Any]) -> str:
    kind = field.get("type")
    if kind == "boolean":
        text = "use true or false"
    elif kind in ("integer", "number"):
        noun = "a whole number" if kind == "integer" else "a number"
        low, high = field.get("minimum"), field.get("maximum")
        if low is not None and high is not None:
            text = f"use {noun} from {low:g} to {high:g}"
        else:
            bounds = [
                f"{words} {field[key]:g}"
                for key, words in (
                    ("minimum", "at least"),
                    ("exclusiveMinimum", "above"),
                    ("maximum", "at most"),
                    ("exclusiveMaximum", "below"),
                )
                if key in field
            ]
            text = f"use {noun} {' and '.join(bounds)}".rstrip()
    else:
        return ""
    if field.get("default") is not None:
        text += f", or leave it out for the default, {json.dumps(field['default'])}"
    return text


def _fit(value: str, pattern: str) -> str:
    """The value made to fit a name pattern (lower-case, hyphens for anything else), when
    that works: `Weekly VIP` -> `weekly-vip`."""
    lower = value if re.search("A-Z", pattern) else value.lower()
    candidate = re.sub(r"-{2,}", "-", re.sub(r"[^0-9A-Za-z-]", "-", lower)).strip("-")
    return candidate if candidate != value and re.fullmatch(pattern, candidate) else ""


def one_of(values: list[str]) -> str:
    """`"a", "b" or "c"` ('' for none)."""
    quoted = [json.dumps(v) for v in values]
    return " or ".join(filter(None, [", ".join(quoted[:-1]), *quoted[-1:]]))
