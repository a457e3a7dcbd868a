"""Braze objects, batching at the object limit, and error indexes mapped back to rows."""

import json

import pytest

from shared.adapters.braze_client import TrackOutcome, tracking_body
from shared.core.braze_objects import braze_attributes, removal
from shared.core.definitions import Export
from shared.core.jsonlines import dumpb
from shared.core.source_files import row_order, row_part
from shared.core.validation import Profile
from shared.pipeline.deliver_chunk import rejected_rows
from shared.pipeline.run_files import batches

EXPORT = {
    "name": "vip",
    "connection": "prod",
    "segment": "VIP – 🎉",
    "source": {"container": "segments", "path": "vip.csv"},
    "mapping": {"customer_id": "id", "email": "email"},
}


def test_object_carries_identity_email_attributes_and_membership() -> None:
    export = Export.model_validate(EXPORT)
    obj = braze_attributes(export)(Profile("c-1", "z@example.com", {"points": 3}))
    assert obj == {
        "external_id": "c-1",
        "email": "z@example.com",
        "points": 3,
        "segments": {"add": ["VIP – 🎉"]},
    }


def test_profiles_of_a_segment_share_one_membership_update_and_leavers_another() -> None:
    """A diff holds a partition's objects at once: one shared update instead of a dict and a
    list per profile; the values stay those of each export."""
    export = Export.model_validate(EXPORT)
    first = braze_attributes(export)(Profile("c-1", "a@example.com", {}))
    second = braze_attributes(export)(Profile("c-2", "b@example.com", {}))
    assert first["segments"] is second["segments"]
    other = braze_attributes(Export.model_validate({**EXPORT, "segment": "Other"}))(
        Profile("c-3", "c@example.com", {})
    )
    assert other["segments"] == {"add": ["Other"]} and first["segments"] == {"add": ["VIP – 🎉"]}
    leaving = removal("c-1", export, {})
    assert leaving["segments"] == {"remove": ["VIP – 🎉"]}
    assert json.loads(dumpb(first))["segments"] == {"add": ["VIP – 🎉"]}


def test_update_existing_only_and_custom_membership_attribute() -> None:
    export = Export.model_validate(
        {**EXPORT, "create_missing_users": False, "membership_attribute": "audiences"}
    )
    obj = braze_attributes(export)(Profile("c-1", "z@example.com", {}))
    assert obj["_update_existing_only"] is True
    assert obj["audiences"] == {"add": ["VIP – 🎉"]}
    assert "segments" not in obj


def test_encoded_objects_make_a_valid_body() -> None:
    objects = [dumpb({"external_id": f"é-{n}", "note": 'a "q",\n'}) for n in range(3)]
    body = json.loads(tracking_body(objects))
    assert [o["external_id"] for o in body["attributes"]] == ["é-0", "é-1", "é-2"]
    assert body["attributes"][0]["note"] == 'a "q",\n'


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [(0, 75, []), (1, 75, [1]), (75, 75, [75]), (150, 75, [75, 75]), (151, 75, [75, 75, 1]),
     (3000, 75, [75] * 40), (101, 50, [50, 50, 1])],
)  # fmt: skip
def test_batches_never_exceed_the_limit(count: int, size: int, expected: list[int]) -> None:
    items = [(n, f"o{n}") for n in range(count)]
    result = batches(items, size)
    assert [len(b) for b in result] == expected
    assert [item for batch in result for item in batch] == items


def _no_files() -> list[str]:
    raise AssertionError("a plain file's rows never need the CDM partition list")


def test_cdm_rows_name_their_partition_file() -> None:
    order = row_order(1, 42)
    outcome = TrackOutcome(201, {0: "EMAIL_BAD_FORMAT"})
    (rejected,) = rejected_rows([(order, 1, dumpb({"external_id": "x"}))], outcome,
                                lambda: ["c/p_1.csv", "c/p_2.csv"])  # fmt: skip
    assert (rejected["file"], rejected["line"], rejected["order"]) == ("c/p_2.csv", 42, order)
    assert row_part(order) == (1, 42) and row_part(42) == (None, 42)


def _batch(count: int) -> list[tuple[int, int, bytes]]:
    return [(100 + n, 1, dumpb({"external_id": f"id-{n}"})) for n in range(count)]


def test_object_errors_map_back_to_their_source_lines() -> None:
    outcome = TrackOutcome(201, {0: "EMAIL_BAD_FORMAT", 74: "BLACKLISTED_EXTERNAL_USER_ID"})
    rejected = rejected_rows(_batch(75), outcome, _no_files)
    assert [(r["line"], r["customer_id"], r["codes"]) for r in rejected] == [
        (100, "id-0", ["EMAIL_BAD_FORMAT"]),
        (174, "id-74", ["BLACKLISTED_EXTERNAL_USER_ID"]),
    ]
    assert rejected[0]["reasons"] == ["Braze rejected the profile: EMAIL_BAD_FORMAT"]
    assert rejected[0]["object"] == {"external_id": "id-0"}


def test_a_refused_request_rejects_every_row_keeping_specific_errors() -> None:
    outcome = TrackOutcome(400, {1: "EXTERNAL_USER_ID_TOO_LARGE"}, "Braze refused (HTTP 400): x")
    rejected = rejected_rows(_batch(3), outcome, _no_files)
    assert [r["codes"] for r in rejected] == [
        ["http_400"],
        ["EXTERNAL_USER_ID_TOO_LARGE"],
        ["http_400"],
    ]
    assert rejected[0]["reasons"] == ["Braze refused (HTTP 400): x"]


def test_no_errors_no_rejections() -> None:
    assert rejected_rows(_batch(5), TrackOutcome(201), _no_files) == []
