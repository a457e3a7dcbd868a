"""The JSON codec of the run's working files (partitions, snapshots, chunks, rejected rows).

Planning encodes and decodes every profile several times, so this uses orjson, which is several
times faster than the standard library, while reading back exactly what the standard library
would: what orjson refuses to write (a lone surrogate, an integer past 64 bits) is written by
the standard library, and a line holding a number orjson would read inexactly (an integer of 19
digits or more becomes a float there) is read by the standard library. The text differs from
the standard library's only in how a float's exponent is spelled (`1e-7`, not `1e-07`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_DIGITS = re.compile(r"\d{19}")


def dumps(value: Any) -> str:
    """Compact JSON with UTF-8 kept as is."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def loads(text: str) -> Any:
    """The value of one JSON text, exactly as `json.loads` reads it."""
    if _LONG_DIGITS.search(text):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. a lone surrogate, which json reads
        return json.loads(text)
