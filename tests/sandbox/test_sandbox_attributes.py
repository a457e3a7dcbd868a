"""Attribute semantics: what an accepted update actually changes, and what it costs."""

from __future__ import annotations

from typing import Any

from sandbox_support import SandboxClient


def update(braze: SandboxClient, external_id: str, **attributes: Any) -> None:
    response = braze.track({"attributes": [{"external_id": external_id, **attributes}]})
    assert response.status_code == 201, response.text


def test_custom_attributes_keep_messy_values_exactly(braze: SandboxClient) -> None:
    values = {
        "nickname": "Ørjan \"the 'fox'\" Ødegård 🦊",
        "bio": "line one\nline two\ttabbed — «quoted» \\ backslash",
        "score": 42,
        "ratio": 0.125,
        "vip": False,
        "préférence": "thé 🍵",
    }
    update(braze, "messy-1", **values)
    assert braze.attributes("messy-1") == values


def test_null_removes_an_attribute(braze: SandboxClient) -> None:
    update(braze, "nulls", tier="gold", segments=["a"], first_name="Zoë")
    update(braze, "nulls", tier=None, segments=None, first_name=None, never_set=None)
    assert braze.attributes("nulls") == {}


def test_strings_over_255_characters_are_accepted_but_not_applied(braze: SandboxClient) -> None:
    exactly_255 = "é" * 255
    update(braze, "long", bio=exactly_255, tier="gold")
    response = braze.track(
        {"attributes": [{"external_id": "long", "bio": "x" * 256, "tier": "silver"}]}
    )
    assert response.json() == {"message": "success", "attributes_processed": 1}
    assert braze.attributes("long") == {"bio": exactly_255, "tier": "silver"}


def test_custom_keys_over_255_characters_are_not_applied(braze: SandboxClient) -> None:
    update(braze, "long-key", **{"k" * 256: "value", "k" * 255: "kept"})
    assert braze.attributes("long-key") == {"k" * 255: "kept"}


def test_plain_list_sets_the_whole_array(braze: SandboxClient) -> None:
    update(braze, "arr", segments=["old"])
    update(braze, "arr", segments=["Été ☀️", 'say "hi"'])
    assert braze.attributes("arr")["segments"] == ["Été ☀️", 'say "hi"']


def test_add_appends_moves_existing_values_to_the_end_and_dedupes(braze: SandboxClient) -> None:
    update(braze, "arr", segments=["a", "b", "c"])
    update(braze, "arr", segments={"add": ["a", "d", "d", "ü"]})
    assert braze.attributes("arr")["segments"] == ["b", "c", "a", "d", "ü"]


def test_add_to_a_missing_attribute_creates_the_array(braze: SandboxClient) -> None:
    update(braze, "fresh", segments={"add": ["seg_1"]})
    assert braze.attributes("fresh")["segments"] == ["seg_1"]


def test_remove_and_add_in_one_object(braze: SandboxClient) -> None:
    update(braze, "arr", segments=["spring", "summer", "🍂 autumn"])
    update(braze, "arr", segments={"remove": ["spring", "not-there"], "add": ["winter ❄️"]})
    assert braze.attributes("arr")["segments"] == ["summer", "🍂 autumn", "winter ❄️"]
    update(braze, "arr", segments={"add": ["summer"], "remove": ["summer"]})
    assert braze.attributes("arr")["segments"] == ["🍂 autumn", "winter ❄️", "summer"]


def test_arrays_over_the_cap_keep_the_most_recent_values(braze: SandboxClient) -> None:
    braze.set_limits(array_cap=3)
    update(braze, "capped", segments=["1", "2"])
    update(braze, "capped", segments={"add": ["3", "4", "5"]})
    assert braze.attributes("capped")["segments"] == ["3", "4", "5"]
    update(braze, "capped", segments={"add": ["3"]})
    assert braze.attributes("capped")["segments"] == ["4", "5", "3"]
    update(braze, "capped", history=["a", "b", "c", "d"])
    assert braze.attributes("capped")["history"] == ["b", "c", "d"]


def test_default_array_cap_is_25(braze: SandboxClient) -> None:
    update(braze, "cap25", segments={"add": [f"seg-{i}" for i in range(30)]})
    assert braze.attributes("cap25")["segments"] == [f"seg-{i}" for i in range(5, 30)]


def test_inc_increments_integers(braze: SandboxClient) -> None:
    update(braze, "counter", visits={"inc": 2})
    update(braze, "counter", visits={"inc": 3})
    assert braze.attributes("counter")["visits"] == 5


def test_data_points_are_counted_like_braze_bills_them(braze: SandboxClient) -> None:
    update(
        braze,
        "billing",
        email="bill@example.com",  # 1
        email_subscribe="opted_in",  # subscription states are free
        tier="gold",  # 1
        segments={"add": ["a", "b"], "remove": ["c"]},  # arrays: 1 per call
        bio="x" * 300,  # not applied, so not billed
    )
    assert braze.stats()["data_points"] == 3
    update(braze, "billing", tier=None, segments={"remove": ["zzz"]})  # null 1, no-op array 1
    assert braze.stats()["data_points"] == 5
    braze.track({"events": [{"external_id": "billing", "name": "e", "time": "2024-01-01"}]})
    assert braze.stats()["data_points"] == 6
