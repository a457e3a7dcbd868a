"""The JSON codec of the run's working files (partitions, snapshots, chunks, rejected rows),
and how error messages name a JSON value's type.

Planning encodes and decodes every profile several times, so this uses orjson, which is several
times faster than the standard library, while reading back exactly what the standard library
would: what orjson refuses to write (a lone surrogate, an integer past 64 bits) is written by
the standard library, and a line holding a number orjson would read inexactly (an integer past
64 bits becomes a float there) is read by the standard library. The text differs from
the standard library's only in how a float's exponent is spelled (`1e-7`, not `1e-07`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

_LONG_DIGITS = re.compile(r"[0-9]{19}")


def dumps(value: Any) -> str:
    """Compact JSON with UTF-8 kept as is (`dumpb`, as text)."""
    return dumpb(value).decode("utf-8", "surrogatepass")


def dumpb(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact JSON as UTF-8 bytes, orjson's own where it writes what the standard library
    reads back: it writes NaN and the infinities as null, which would turn a value validation
    must reject into a blank one, and refuses integers past 64 bits and lone surrogates; those
    take the standard library's path (`NaN`, `Infinity`, every digit; a lone surrogate passes
    through as it would in `json.dumps`' text)."""
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _standard_json(value, sort_keys)
    if data.find(b"null") >= 0 and has_non_finite(value):  # find: cheaper than `in` here
        return _standard_json(value, sort_keys)
    return data


def _standard_json(value: Any, sort_keys: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
    return text.encode("utf-8", "surrogatepass")


def loads(text: str) -> Any:
    """The value of one JSON text, exactly as `json.loads` reads it.

    orjson reads an integer of up to 64 bits exactly and a longer one as a float, so only a
    value holding a float can be inexact; then a run of 19 digits sends the text to the standard
    library (the search costs several parses, so it runs only then).
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. a lone surrogate, which json reads
        return json.loads(text)
    if has_float(value) and _LONG_DIGITS.search(text):
        return json.loads(text)
    return value


def loads_strings(text: str) -> Any:
    """The value of a JSON text that holds no numbers (a CSV row's values, all strings): orjson
    reads it exactly, so the float check of `loads` (which costs more than the parse) is
    skipped."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. a lone surrogate, which json reads
        return json.loads(text)


def has_float(value: Any) -> bool:
    """Whether a decoded JSON value holds a float anywhere (written for speed: it runs per line)."""
    kind = type(value)
    if kind is float:
        return True
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return False
    for item in value:
        kind = type(item)
        if kind is float or ((kind is dict or kind is list) and has_float(item)):
            return True
    return False


def has_non_finite(value: Any) -> bool:
    """Whether a JSON value holds NaN or an infinity anywhere (the standard library reads them)."""
    kind = type(value)
    if kind is float:
        return not math.isfinite(value)
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return False
    return any(has_non_finite(item) for item in value)


JSON_KINDS: dict[type, str] = {
    str: "a string",
    bool: "true or false",
    list: "an array",
    dict: "an object",
}


def kind_of(value: Any) -> str:
    """How an error message names a value's JSON type: "a number", "an array", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return JSON_KINDS.get(type(value), type(value).__name__)
