"""The fast codec of the working files gives the standard library's exact results, so a faster
split changes no fingerprint in any existing snapshot and no byte sent to Braze."""

import json
import tracemalloc

import pytest

from shared.core import fingerprints as fingerprints_module
from shared.core import jsonlines
from shared.core.fingerprints import (
    CACHED_VALUES,
    CONTROL_KEYS,
    canonical_json,
    fingerprint,
    fingerprints,
)

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


def _uncached(obj: dict[str, object]) -> dict[str, str]:
    return {key: fingerprint(value) for key, value in obj.items() if key not in CONTROL_KEYS}


def test_remembered_fingerprints_are_the_hashed_ones() -> None:
    """Values that Python finds equal (1, True, 1.0; "1" and 1) have different JSON, so each
    keeps its own fingerprint however often it repeats and in whatever order."""
    objects = [
        {"external_id": "c-1", "a": 1, "b": True, "c": 1.0, "d": "1", "e": [1], "f": {"x": 1}},
        {"external_id": "c-2", "a": True, "b": 1.0, "c": 1, "d": 1, "e": [True], "f": {"x": 1.0}},
        {"a": "1", "b": "true", "c": "1.0", "d": None, "e": [1.0], "f": {"x": True}},
        *({"m": value, "n": value} for value in MESSY_VALUES),
        *({"email": value, "n": value} for value in MESSY_VALUES),
    ]
    for obj in [*objects, *reversed(objects), *objects]:
        assert fingerprints(obj) == _uncached(obj)


def test_the_remembered_fingerprints_stay_bounded_in_count_and_memory() -> None:
    """Full caches are emptied; what they hold stays small (orjson's bytes would each keep a
    4 KiB buffer: 32,768 of them would be 128 MiB)."""
    fingerprints_module._string_prints.clear()
    fingerprints_module._json_prints.clear()
    tracemalloc.start()
    try:
        for n in range(CACHED_VALUES - 10):
            obj = {"nickname": f"user.{n}", "points": n, "tier": ["gold", n % 3]}
            fingerprints(obj)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 16 * 1024 * 1024, f"{held / 2**20:.0f} MiB held"
    for n in range(CACHED_VALUES - 10, CACHED_VALUES + 10):
        obj = {"nickname": f"user.{n}", "points": n, "tier": ["gold", n % 3]}
        assert fingerprints(obj) == _uncached(obj) or pytest.fail(f"profile {n}")
    assert len(fingerprints_module._string_prints) <= CACHED_VALUES
    assert 0 < len(fingerprints_module._json_prints) <= CACHED_VALUES


def test_emails_do_not_push_repeated_values_out_of_the_cache() -> None:
    """Every customer has an address of their own: remembering them would empty the cache of
    the values that do repeat (names, dates, flags) every 32,768 profiles."""
    fingerprints_module._string_prints.clear()
    fingerprints({"first_name": "Zoë"})
    for n in range(CACHED_VALUES + 10):
        obj = {"email": f"user.{n}@example.com"}
        assert fingerprints(obj) == _uncached(obj) or pytest.fail(f"profile {n}")
    assert "Zoë" in fingerprints_module._string_prints


def test_non_finite_numbers_are_written_as_the_standard_library_reads_them() -> None:
    """orjson would write NaN as null: a value validation rejects must not turn blank."""
    value = {"nan": float("nan"), "inf": [float("inf"), -float("inf")], "none": None}
    text = jsonlines.dumps(value)
    assert text == '{"nan":NaN,"inf":[Infinity,-Infinity],"none":null}'
    back = jsonlines.loads(text)
    assert back["nan"] != back["nan"] and back["inf"] == [float("inf"), -float("inf")]
    assert back["none"] is None


def test_a_row_of_strings_reads_back_exactly_without_the_float_check() -> None:
    """CSV values are strings: every messy one (a lone surrogate too) comes back as written."""
    row = {f"column {n}": value for n, value in enumerate(MESSY_VALUES) if isinstance(value, str)}
    row["digits"] = "1234567890123456789012345"  # 25 digits, but a string
    assert jsonlines.loads_strings(jsonlines.dumps(row)) == row
    assert json.loads(jsonlines.dumps(row)) == row


def test_integers_are_hashed_as_their_digits_whatever_their_size() -> None:
    """An integer's canonical JSON is its decimal digits, past 64 bits too (which orjson
    refuses); a boolean keeps its own; one past Python's digit limit fails as `fingerprint`
    does, rather than get a fingerprint of its own."""
    fingerprints_module._int_prints.clear()
    numbers = [0, -0, 7, -3, 2**63 - 1, 2**63, -(2**64) - 1, 10**30, 10**4000]
    for obj in [{"n": n, "flag": n % 2 == 1} for n in numbers] * 2:
        assert fingerprints(obj) == _uncached(obj)
    too_long = 10**5000
    with pytest.raises(ValueError, match="digits"):
        fingerprint(too_long)
    with pytest.raises(ValueError, match="digits"):
        fingerprints({"n": too_long})


def test_an_object_every_profile_shares_is_hashed_once_and_only_that_object() -> None:
    """The diff hashes its segment's membership update once per partition: that object takes
    the fingerprint given; an equal object made elsewhere is hashed as usual."""
    member = {"add": ["VIP – 🎉"]}
    given = "f" * 16
    assert fingerprints({"external_id": "c-1", "segments": member}, (member, given)) == {
        "segments": given
    }
    equal = {"add": ["VIP – 🎉"]}
    assert fingerprints({"segments": equal}, (member, given)) == {"segments": fingerprint(equal)}
