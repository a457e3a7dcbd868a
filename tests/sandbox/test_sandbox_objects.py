"""Per-object validation and identifier resolution: bad objects are reported by index while
the others in the same request still apply."""

from __future__ import annotations

from typing import Any

from sandbox_support import SandboxClient

MULTI_BYTE_ID_987 = "é" * 493 + "a"  # 493 * 2 + 1 = 987 UTF-8 bytes: the maximum
MULTI_BYTE_ID_988 = "é" * 494  # 988 bytes, although only 494 characters


def error_triples(response_json: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(e["type"], e["input_array"], e["index"]) for e in response_json.get("errors", [])]


def test_invalid_objects_are_reported_by_index_and_the_rest_apply(braze: SandboxClient) -> None:
    attributes = [
        {"external_id": "zoë-1", "first_name": "Zoë", "motto": 'say "cheese" 🧀'},
        {"first_name": "nobody"},
        {"external_id": MULTI_BYTE_ID_988},
        {"external_id": "dummy-user", "tier": "gold"},
        {"external_id": "ws-1", "email": "jean luc@example.com"},
        {"external_id": "at-1", "email": "no-at-sign.example.com"},
        {"external_id": "dom-1", "email": "josé@exämple.com"},
        {"external_id": "sub-1", "email_subscribe": "maybe"},
        {"external_id": "two-1", "braze_id": "000000000000000000000001"},
        {"external_id": MULTI_BYTE_ID_987, "email": "josé.niño@xn--exmple-cua.com"},
        {"external_id": "👻 ghost"},
        {"external_id": "dom-2", "email": "a@example.123"},
        {"external_id": "dom-3", "email": "a@-example.com"},
        {"external_id": "dom-4", "email": "a@example-.com"},
    ]
    response = braze.track({"attributes": attributes})
    assert response.status_code == 201
    body = response.json()
    assert error_triples(body) == [
        (
            "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required",
            "attributes",
            1,
        ),
        ("EXTERNAL_USER_ID_TOO_LARGE", "attributes", 2),
        ("BLACKLISTED_EXTERNAL_USER_ID", "attributes", 3),
        ("EMAIL_BAD_FORMAT", "attributes", 4),
        ("EMAIL_BAD_FORMAT", "attributes", 5),
        ("EMAIL_BAD_FORMAT", "attributes", 6),
        ("BAD_EMAIL_SUBSCRIPTION_STATE", "attributes", 7),
        ("only one of 'external_id', 'user_alias' or 'braze_id' is allowed", "attributes", 8),
        ("BLACKLISTED_EXTERNAL_USER_ID", "attributes", 10),
        ("EMAIL_BAD_FORMAT", "attributes", 11),
        ("EMAIL_BAD_FORMAT", "attributes", 12),
        ("EMAIL_BAD_FORMAT", "attributes", 13),
    ]
    assert body["attributes_processed"] == 2
    assert body["message"] == "success"
    assert braze.attributes("zoë-1") == {"first_name": "Zoë", "motto": 'say "cheese" 🧀'}
    assert braze.attributes(MULTI_BYTE_ID_987) == {"email": "josé.niño@xn--exmple-cua.com"}
    for rejected in ("dummy-user", "ws-1", "at-1", "dom-1", "sub-1", "two-1", MULTI_BYTE_ID_988):
        assert braze.user(rejected) is None, rejected
    assert braze.stats()["users"] == 2
    assert braze.stats()["objects_rejected"] == 12


def test_errors_index_within_each_input_array(braze: SandboxClient) -> None:
    body = {
        "attributes": [{"external_id": "ok-ä"}, {"external_id": ""}],
        "events": [
            {"external_id": "ok-ä", "name": "viewed 📺", "time": "2024-05-01T10:00:00Z"},
            {"external_id": "ok-ä", "time": "2024-05-01T10:00:00Z"},
        ],
        "purchases": [{"external_id": "ok-ä", "currency": "EUR", "price": 3}],
    }
    response = braze.track(body)
    assert response.status_code == 201
    json = response.json()
    assert [(e["input_array"], e["index"]) for e in json["errors"]] == [
        ("attributes", 1),
        ("events", 1),
        ("purchases", 0),
    ]
    assert json["attributes_processed"] == 1
    assert json["events_processed"] == 1
    assert json["purchases_processed"] == 0
    assert braze.user("ok-ä")["events"] == {"viewed 📺": 1}


def test_request_where_every_object_fails_is_400_with_errors(braze: SandboxClient) -> None:
    response = braze.track({"attributes": [{"tier": "gold"}, {"external_id": "dummy-user"}]})
    assert response.status_code == 400
    assert [e["index"] for e in response.json()["errors"]] == [0, 1]
    assert braze.stats()["users"] == 0


def test_update_existing_only_does_not_create_but_updates(braze: SandboxClient) -> None:
    response = braze.track(
        {
            "attributes": [
                {"external_id": "ghost-new", "_update_existing_only": True, "tier": "gold"},
                {"external_id": "exists", "tier": "silver"},
            ]
        }
    )
    assert response.json()["attributes_processed"] == 2  # accepted is not applied
    assert braze.user("ghost-new") is None
    braze.track(
        {"attributes": [{"external_id": "exists", "_update_existing_only": True, "tier": "🥇"}]}
    )
    assert braze.attributes("exists") == {"tier": "🥇"}


def test_alias_profiles_are_created_only_when_asked(braze: SandboxClient) -> None:
    alias = {"alias_name": "crm-Ünïcode-42", "alias_label": "crm_id"}
    braze.track({"attributes": [{"user_alias": alias, "tier": "gold"}]})
    export = braze.export({"user_aliases": [alias]}).json()
    assert export["users"] == []
    braze.track(
        {"attributes": [{"user_alias": alias, "_update_existing_only": False, "tier": "gold"}]}
    )
    braze.track({"attributes": [{"user_alias": alias, "segment": "vip"}]})
    (user,) = braze.export({"user_aliases": [alias]}).json()["users"]
    assert user["user_aliases"] == [alias]
    assert user["custom_attributes"] == {"tier": "gold", "segment": "vip"}


def test_email_only_objects_create_then_find_the_same_profile(braze: SandboxClient) -> None:
    braze.track({"attributes": [{"email": "Renée@example.fr", "first_name": "Renée"}]})
    braze.track({"attributes": [{"email": "renée@EXAMPLE.fr", "city_custom": "Montréal"}]})
    stats = braze.stats()
    assert stats["users"] == 1
    (line,) = braze.session.get(f"{braze.url}/_sandbox/users", timeout=10).text.splitlines()
    assert '"city_custom":"Montréal"' in line
    assert '"first_name":"Renée"' in line


def test_email_lookup_prefers_the_profile_with_an_external_id(braze: SandboxClient) -> None:
    braze.track({"attributes": [{"email": "shared@example.com", "origin": "email-only"}]})
    braze.track({"attributes": [{"external_id": "known", "email": "shared@example.com"}]})
    braze.track({"attributes": [{"email": "shared@example.com", "note": "→ known"}]})
    assert braze.attributes("known")["note"] == "→ known"
    assert braze.stats()["users"] == 2
    braze.track({"attributes": [{"external_id": "known", "email": "moved@example.com"}]})
    braze.track({"attributes": [{"email": "shared@example.com", "note": "→ email-only"}]})
    braze.track({"attributes": [{"email": "moved@example.com", "note": "→ known again"}]})
    assert braze.attributes("known")["note"] == "→ known again"
    assert braze.stats()["users"] == 2


def test_braze_id_updates_an_existing_profile_but_never_creates(braze: SandboxClient) -> None:
    braze.track({"attributes": [{"external_id": "has-braze-id"}]})
    braze_id = braze.user("has-braze-id")["braze_id"]
    braze.track(
        {
            "attributes": [
                {"braze_id": braze_id, "tier": "platinum"},
                {"braze_id": "ffffffffffffffffffffffff", "tier": "nobody"},
            ]
        }
    )
    assert braze.attributes("has-braze-id") == {"tier": "platinum"}
    assert braze.stats()["users"] == 1


def test_events_and_purchases_are_counted_per_user(braze: SandboxClient) -> None:
    event = {"external_id": "shopper", "name": "added_to_cart", "time": "2024-01-01T00:00:00Z"}
    purchase = {"external_id": "shopper", "product_id": "naïve-tea", "currency": "EUR", "price": 4}
    response = braze.track({"events": [event, event], "purchases": [purchase]})
    assert response.json() == {
        "message": "success",
        "events_processed": 2,
        "purchases_processed": 1,
    }
    user = braze.user("shopper")
    assert user["events"] == {"added_to_cart": 2}
    assert user["purchases"] == {"naïve-tea": 1}
