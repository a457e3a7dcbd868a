"""What changed since the last run: per-attribute fingerprints, deltas and data points.

A snapshot keeps, per profile, a short fingerprint of each attribute value that Braze accepted;
comparing fingerprints tells which attributes to send, so an unchanged profile costs no request
and a changed one costs only the attributes that changed (Braze bills every attribute written,
changed or not).
"""

from __future__ import annotations

import json
from hashlib import blake2b
from typing import Any

import orjson
from xxhash import xxh3_64_hexdigest

from shared.core.definitions import Connection, Export
from shared.core.jsonlines import has_float

# Keys that identify or steer an update; they are not attributes Braze bills or keeps.
CONTROL_KEYS = frozenset({"external_id", "_update_existing_only"})

Fingerprints = dict[str, str]


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8 as is: byte for byte what the standard library writes with
    those options, at orjson's speed. Floats (orjson writes `1e-7` where the standard library
    writes `1e-07`) and what orjson refuses (a lone surrogate, an integer past 64 bits) take the
    standard library's path, so every value keeps the fingerprint it had."""
    if not has_float(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


def fingerprint(value: Any) -> str:
    return blake2b(canonical_json(value), digest_size=8).hexdigest()


def row_digest(values_json: bytes, seed: int) -> str:
    """A digest of a row's mapped values as its piece carries them (`run_files.PieceLines`),
    seeded by what turns them into a profile (the code and the mapping, `row_digest_seed`): the
    same digest for the same customer id means the same profile as the one the snapshot
    remembers, so the diff need not validate the row again. Hashing the bytes the piece holds
    spares each row a second serialization; the same values in other bytes (a CSV header that
    put the columns in another order) only cost the row a validation.

    XXH3 (64 bits, as the snapshot keeps it), not a cryptographic hash: it runs for every row
    of every run, and nothing here needs more than a hash that spreads (the digest only tells a
    row the snapshot holds from one it does not; the source's writer controls the rows anyway).
    """
    return xxh3_64_hexdigest(values_json, seed)


def row_digest_seed(code_digest: str, mapping: str) -> int:
    """The seed of `row_digest`: a new deployment or mapping gives every row a new digest, so
    rows are validated again."""
    basis = blake2b(f"{code_digest}|{mapping}".encode(), digest_size=8).digest()
    return int.from_bytes(basis, "big")


# Most values repeat across a segment's profiles (names, dates, flags, the membership): their
# fingerprints are remembered by value, so a repeated one skips the hash. Each cache is emptied
# when full, which bounds its memory (a few MB: values are at most 255 characters after
# validation) whatever the values are.
CACHED_VALUES = 32_768
_string_prints: dict[str, str] = {}
_int_prints: dict[int, str] = {}  # ints only: True == 1 in a dict, but not in JSON
_json_prints: dict[str, str] = {}
_BOOLEAN_PRINTS = {True: fingerprint(True), False: fingerprint(False)}


def fingerprints(obj: dict[str, Any], shared: tuple[object, str] | None = None) -> Fingerprints:
    """Per attribute, a fingerprint of the value sent: what the snapshot remembers.

    This runs for every profile of a segment: a string, an integer or a boolean is looked up by
    itself (a string's canonical JSON is orjson's plain output), any other value without floats
    by its canonical JSON (orjson's sorted output, the bytes `fingerprint` hashes), so every
    value keeps exactly the fingerprint `fingerprint` gives it. `shared`: an object the caller's
    profiles all hold (the segment's membership update) and its fingerprint, made once: that
    very object is not serialized again per profile.
    """
    prints: Fingerprints = {}
    for key, value in obj.items():
        if key in CONTROL_KEYS:
            continue
        kind = type(value)
        if key == "email":  # one per customer: remembering it would only push out the rest
            found = _string_print(value) if kind is str else fingerprint(value)
        elif kind is str:
            found = _string_prints.get(value)
            if found is None:
                found = _remember(_string_prints, value, _string_print(value))
        elif kind is int:
            found = _int_prints.get(value)
            if found is None:
                found = _remember(_int_prints, value, _int_print(value))
        elif kind is bool:
            found = _BOOLEAN_PRINTS[value]
        elif shared is not None and value is shared[0]:
            found = shared[1]
        elif has_float(value):
            found = fingerprint(value)
        else:
            try:
                # Kept as text: orjson's bytes hold a 4 KiB buffer whatever their length.
                text = _sorted_json(value, option=_SORT_KEYS).decode()
            except TypeError:  # what orjson refuses
                prints[key] = fingerprint(value)
                continue
            found = _json_prints.get(text)
            if found is None:
                found = _remember(_json_prints, text, fingerprint(value))
        prints[key] = found
    return prints


def _string_print(text: str) -> str:
    """`fingerprint` of a string: its canonical JSON is orjson's output (a lone surrogate, which
    orjson refuses, takes the standard library's path)."""
    try:
        return blake2b(orjson.dumps(text), digest_size=8).hexdigest()
    except TypeError:
        return fingerprint(text)


def _int_print(number: int) -> str:
    """`fingerprint` of an integer (not a boolean): its canonical JSON is its decimal digits,
    whatever its size (one past Python's digit limit raises the ValueError `fingerprint` does)."""
    return blake2b(str(number).encode(), digest_size=8).hexdigest()


def _remember(cache: dict[Any, str], value: Any, digest: str) -> str:
    if len(cache) >= CACHED_VALUES:
        cache.clear()
    cache[value] = digest
    return digest


_sorted_json, _SORT_KEYS = orjson.dumps, orjson.OPT_SORT_KEYS


def delta(
    obj: dict[str, Any],
    old: Fingerprints | None,
    clearable: frozenset[str],
    full: bool,
    new: Fingerprints | None = None,
) -> dict[str, Any] | None:
    """The object to send for a profile in the segment, or None when nothing changed.

    A new profile (or a full refresh) sends everything; a known one only the attributes whose
    value changed, plus nulls for mapped attributes that became blank (Braze keeps a value until
    told otherwise). Identity and control keys always go along. `new` is `fingerprints(obj)`
    when the caller has it already.
    """
    if old is None:
        return obj
    cleared = {key: None for key in sorted(old.keys() & clearable) if key not in obj}
    if full:
        return {**obj, **cleared}
    new = fingerprints(obj) if new is None else new
    changed = {k: v for k, v in obj.items() if k not in CONTROL_KEYS and old.get(k) != new[k]}
    if not changed and not cleared:
        return None
    return {**_control(obj), **changed, **cleared}


def _control(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: obj[k] for k in obj if k in CONTROL_KEYS}


def data_points(obj: dict[str, Any]) -> int:
    """Braze bills each attribute written (an array update or a null counts one); not the
    identifier or the update-only flag."""
    return sum(1 for key in obj if key not in CONTROL_KEYS)


def mapping_fingerprint(export: Export, connection: Connection) -> str:
    """What a snapshot's fingerprints depend on; when it changes, the next run is a full one."""
    basis = {
        "endpoint": connection.rest_endpoint,
        "segment": export.segment,
        "mapping": export.mapping.model_dump(mode="json"),
        "membership": export.membership,
        "membership_attribute": export.membership_attribute,
        "create_missing_users": export.create_missing_users,
    }
    return fingerprint(basis)
