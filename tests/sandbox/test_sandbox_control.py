"""/users/export/ids, the /_sandbox read-back and control API, and the CLI process itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import requests
from sandbox_support import ROOT, SandboxClient, attribute_batch, start_sandbox


def test_export_ids_returns_known_users_and_lists_unknown_ids(braze: SandboxClient) -> None:
    braze.track(
        {
            "attributes": [
                {
                    "external_id": "exp-1",
                    "email": "ana@example.pt",
                    "first_name": "Ana",
                    "segments": ["São Paulo 🇧🇷"],
                }
            ]
        }
    )
    response = braze.export(
        {
            "external_ids": ["exp-1", "missing-ü"],
            "fields_to_export": ["external_id", "email", "custom_attributes"],
        }
    )
    assert response.status_code == 201
    assert response.json() == {
        "users": [
            {
                "external_id": "exp-1",
                "email": "ana@example.pt",
                "custom_attributes": {"segments": ["São Paulo 🇧🇷"]},
            }
        ],
        "invalid_user_ids": ["missing-ü"],
        "message": "success",
    }
    full = braze.export({"external_ids": ["exp-1"]}).json()["users"][0]
    assert full["first_name"] == "Ana"
    assert full["braze_id"] == braze.user("exp-1")["braze_id"]


def test_export_ids_checks_auth_and_size(braze: SandboxClient) -> None:
    assert braze.export({"external_ids": ["a"]}, api_key="wrong").status_code == 401
    assert braze.export({"external_ids": [f"id-{i}" for i in range(51)]}).status_code == 400
    assert braze.export({"external_ids": [f"id-{i}" for i in range(50)]}).status_code == 201
    assert braze.export({"external_ids": "exp-1"}).status_code == 400
    assert braze.export({}).status_code == 400


def test_read_back_of_one_user_and_404(braze: SandboxClient) -> None:
    external_id = "weird/id?with#chars 🧪 & spaces"
    braze.track({"attributes": [{"external_id": external_id, "tier": "gold"}]})
    user = braze.user(external_id)
    assert user is not None
    assert user["external_id"] == external_id
    assert user["attributes"] == {"tier": "gold"}
    assert len(user["braze_id"]) == 24
    assert braze.user("absent") is None


def test_all_users_stream_as_json_lines(braze: SandboxClient) -> None:
    braze.track(attribute_batch(75))
    braze.track(attribute_batch(30, prefix="second"))
    response = braze.session.get(f"{braze.url}/_sandbox/users", timeout=10)
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    users = [json.loads(line) for line in response.text.splitlines()]
    assert len(users) == 105
    assert {u["external_id"] for u in users} == {f"user-{i}" for i in range(75)} | {
        f"second-{i}" for i in range(30)
    }


def test_logged_requests_are_the_newest_bodies_in_order(braze: SandboxClient) -> None:
    bodies = [{"attributes": [{"external_id": f"log-{i}", "note": "naïve 📝"}]} for i in range(3)]
    for body in bodies:
        braze.track(body)
    braze.track({"attributes": []})
    response = braze.session.get(f"{braze.url}/_sandbox/requests?limit=3", timeout=10)
    logged = response.json()["requests"]
    assert [entry["body"] for entry in logged] == [bodies[1], bodies[2], {"attributes": []}]
    assert [entry["status"] for entry in logged] == [201, 201, 400]
    bad = braze.session.get(f"{braze.url}/_sandbox/requests?limit=-1", timeout=10)
    assert bad.status_code == 400


def test_request_log_is_bounded() -> None:
    process = start_sandbox("--request-log-size", "2")
    try:
        for i in range(4):
            requests.post(
                f"{process.url}/users/track",
                json=attribute_batch(1, prefix=f"b{i}"),
                headers={"Authorization": "Bearer test-key"},
                timeout=10,
            )
        logged = requests.get(f"{process.url}/_sandbox/requests?limit=10", timeout=10).json()
        external_ids = [e["body"]["attributes"][0]["external_id"] for e in logged["requests"]]
        assert external_ids == ["b2-0", "b3-0"]
    finally:
        process.stop()


def test_stats_count_requests_statuses_and_objects(braze: SandboxClient) -> None:
    braze.track(attribute_batch(10))
    braze.track({"attributes": [{"external_id": "ok"}, {"tier": "no id"}]})
    braze.track(attribute_batch(1), api_key="nope")
    braze.track(attribute_batch(1), path="/users/track/")
    stats = braze.stats()
    assert stats["requests_total"] == 4
    assert stats["responses_by_status"] == {"201": 2, "401": 1, "403": 1}
    assert stats["objects_applied"] == 11
    assert stats["objects_rejected"] == 1
    assert stats["users"] == 11
    assert stats["throttled_total"] == 0


def test_reset_clears_users_stats_and_request_log(braze: SandboxClient) -> None:
    braze.track(attribute_batch(5))
    braze.reset()
    stats = braze.stats()
    assert stats["users"] == 0
    assert stats["requests_total"] == 0
    assert stats["data_points"] == 0
    assert braze.user("user-0") is None
    logged = braze.session.get(f"{braze.url}/_sandbox/requests", timeout=10).json()
    assert logged == {"requests": []}


def test_limits_are_validated_and_echoed(braze: SandboxClient) -> None:
    limits = braze.set_limits(rate_limit=10, reset_header="seconds")
    assert limits["rate_limit"] == 10
    assert limits["reset_header"] == "seconds"
    assert sorted(limits["blocklist"]) == sorted(["dummy-user", "👻 ghost"])
    for bad in ({"reset_header": "minutes"}, {"rate_limit": 0}, {"objects": 5}):
        response = braze.session.put(f"{braze.url}/_sandbox/limits", json=bad, timeout=10)
        assert response.status_code == 400, bad


def test_sigterm_and_sigint_stop_the_server_cleanly() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        process = start_sandbox()
        process.process.send_signal(signum)
        assert process.process.wait(timeout=20) == 0


def test_invalid_options_are_rejected_before_listening() -> None:
    invalid = (
        ["--fault-5xx", "2"],
        ["--reset-header", "minutes"],
        ["--request-log-size", "-1"],
        [],
    )
    for args in invalid:
        command = [sys.executable, "-m", "braze_sandbox", "--port", "0", *args]
        if args:
            command += ["--api-key", "k"]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, args
        assert "listening" not in result.stdout
