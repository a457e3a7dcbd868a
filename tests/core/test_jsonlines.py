"""The fast codec of the working files gives the standard library's exact results, so a faster
split changes no fingerprint in any existing snapshot and no byte sent to Braze."""

import json

import pytest

from shared.core import jsonlines
from shared.core.fingerprints import canonical_json, fingerprint

MESSY_VALUES = [
    "plain",
    "Zoë José 李 Nguyễn 🎉🚀",
    'quotes " and \\ backslash',
    "control \x00\x01\x1f\x7f and \n\t\r\b\f",
    "\u2028\u2029 line separators",
    "\ud800 lone surrogate",
    "",
    0,
    -3,
    2**63 - 1,
    2**63,
    10**30,
    1.5,
    1e16,
    1e-7,
    0.1 + 0.2,
    -0.0,
    True,
    None,
    {"add": ["VIP – Zoë's 🎉"]},
    {"b": 1, "a": [1, {"d": None, "c": "x"}]},
]


@pytest.mark.parametrize("value", MESSY_VALUES, ids=repr)
def test_fingerprints_are_those_of_the_standard_library(value: object) -> None:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert canonical_json(value) == text.encode("utf-8", "surrogatepass")
    assert fingerprint(value) == fingerprint(json.loads(text))


@pytest.mark.parametrize("value", MESSY_VALUES, ids=repr)
def test_lines_read_back_what_was_written(value: object) -> None:
    line = [123456789012, "cust-1", {"attribute": value}]
    text = jsonlines.dumps(line)
    assert json.loads(text) == line
    assert jsonlines.loads(text) == json.loads(text) == line
    assert type(jsonlines.loads(text)[2]["attribute"]) is type(value)
