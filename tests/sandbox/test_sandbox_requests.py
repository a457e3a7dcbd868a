"""Whole-request checks of /users/track: auth, content type, syntax, object limit."""

from __future__ import annotations

from sandbox_support import SECOND_API_KEY, SandboxClient, attribute_batch

PARSE_ERROR = "Error while parsing request body. Please check your syntax."


def test_missing_malformed_or_unknown_key_is_401_and_applies_nothing(braze: SandboxClient) -> None:
    body = attribute_batch(1)
    no_header = braze.post_raw(
        "/users/track", b'{"attributes": []}', {"Content-Type": "application/json"}
    )
    wrong_scheme = braze.post_raw(
        "/users/track",
        b'{"attributes": [{"external_id": "user-0"}]}',
        {"Content-Type": "application/json", "Authorization": "Basic test-key"},
    )
    unknown_key = braze.track(body, api_key="not-a-key")
    for response in (no_header, wrong_scheme, unknown_key):
        assert response.status_code == 401
        assert response.json()["message"]
    assert braze.user("user-0") is None
    assert braze.track(body, api_key=SECOND_API_KEY).status_code == 201


def test_wrong_content_type_is_415(braze: SandboxClient) -> None:
    response = braze.post_raw(
        "/users/track",
        b'{"attributes": [{"external_id": "caf\\u00e9"}]}',
        {"Content-Type": "text/plain", "Authorization": "Bearer test-key"},
    )
    assert response.status_code == 415
    assert braze.user("café") is None


def test_content_type_with_charset_is_accepted(braze: SandboxClient) -> None:
    response = braze.post_raw(
        "/users/track",
        '{"attributes": [{"external_id": "café"}]}'.encode(),
        {"Content-Type": "application/json; charset=utf-8", "Authorization": "Bearer test-key"},
    )
    assert response.status_code == 201
    assert braze.user("café") is not None


def test_invalid_json_is_400_with_brazes_message(braze: SandboxClient) -> None:
    for raw in (b'{"attributes": [{"external_id": "x"}', b"\xff\xfe", b"[1, 2]", b"NaN"):
        response = braze.post_raw(
            "/users/track",
            raw,
            {"Content-Type": "application/json", "Authorization": "Bearer test-key"},
        )
        assert response.status_code == 400
        assert response.json() == {"message": PARSE_ERROR}
    assert braze.stats()["users"] == 0


def test_trailing_slash_is_403_like_braze(braze: SandboxClient) -> None:
    response = braze.track(attribute_batch(1), path="/users/track/")
    assert response.status_code == 403
    assert braze.user("user-0") is None


def test_75_objects_are_accepted(braze: SandboxClient) -> None:
    response = braze.track(attribute_batch(75))
    assert response.status_code == 201
    assert response.json() == {"message": "success", "attributes_processed": 75}
    assert braze.stats()["users"] == 75


def test_76_objects_are_rejected_whole(braze: SandboxClient) -> None:
    response = braze.track(attribute_batch(76))
    assert response.status_code == 400
    assert response.json()["message"] == "Max Input Length Exceeded"
    assert braze.stats()["users"] == 0


def test_object_limit_counts_attributes_events_and_purchases_together(
    braze: SandboxClient,
) -> None:
    events = [{"external_id": "evt-user", "name": "opened ✉️", "time": "2024-01-01T00:00:00Z"}] * 25
    purchases = [
        {"external_id": "buyer", "product_id": "crème", "currency": "EUR", "price": 1.5}
    ] * 10
    body = {**attribute_batch(40), "events": events, "purchases": purchases}
    assert braze.track(body).status_code == 201
    braze.reset()
    body["purchases"] = purchases + purchases[:1]
    response = braze.track(body)
    assert response.status_code == 400
    assert response.json()["message"] == "Max Input Length Exceeded"
    assert braze.stats()["users"] == 0


def test_objects_per_request_follows_the_configured_limit(braze: SandboxClient) -> None:
    braze.set_limits(objects_per_request=3)
    assert braze.track(attribute_batch(3)).status_code == 201
    assert braze.track(attribute_batch(4, prefix="other")).status_code == 400
    assert braze.user("other-0") is None


def test_missing_empty_or_non_list_arrays_are_400(braze: SandboxClient) -> None:
    bodies = [
        {},
        {"attributes": []},
        {"attributes": {"external_id": "x"}},
        {"attributes": [{"external_id": "x"}], "events": "nope"},
        {"partner": "sandbox"},
    ]
    for body in bodies:
        response = braze.track(body)
        assert response.status_code == 400, body
        assert response.json()["message"]
    assert braze.user("x") is None


def test_bodies_over_4_mb_are_413(braze: SandboxClient) -> None:
    padding = "x" * (4 * 1024 * 1024)
    response = braze.track({"attributes": [{"external_id": "huge", "bio": padding}]})
    assert response.status_code == 413
    assert response.headers["X-RateLimit-Remaining"] == "2999"
    assert braze.user("huge") is None
