"""Fault injection: seeded so each scenario replays identically, switchable at runtime."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import requests
from sandbox_support import SandboxClient, attribute_batch, start_sandbox


def send_numbered(braze: SandboxClient, count: int) -> list[int]:
    """One single-user request per number; returns the statuses in order."""
    return [
        braze.track({"attributes": [{"external_id": f"n-{i}", "note": "ça va? 👍"}]}).status_code
        for i in range(count)
    ]


def test_5xx_rate_is_close_to_the_configured_fraction_and_nothing_applies(
    braze: SandboxClient,
) -> None:
    braze.set_faults(fault_5xx=0.3, seed=7)
    statuses = send_numbered(braze, 300)
    counts = Counter(statuses)
    server_errors = sum(n for status, n in counts.items() if status >= 500)
    assert 60 <= server_errors <= 120  # 90 expected
    assert set(counts) <= {201, 500, 502, 503, 504}
    assert len(set(counts) - {201}) >= 3  # the status is drawn among all four
    stats = braze.stats()
    assert stats["users"] == counts[201]
    for i, status in enumerate(statuses):
        assert (braze.user(f"n-{i}") is not None) == (status == 201)
    assert sum(stats["faults_injected"].values()) == server_errors


def test_same_seed_replays_the_same_faults(braze: SandboxClient) -> None:
    braze.set_faults(fault_5xx=0.5, seed=2024)
    first = send_numbered(braze, 40)
    braze.reset()  # restarts the fault RNG from the seed
    assert send_numbered(braze, 40) == first
    braze.set_faults(seed=2025)
    assert send_numbered(braze, 40) != first


def test_drop_closes_the_connection_without_applying(braze: SandboxClient) -> None:
    braze.set_faults(fault_drop=1.0)
    with pytest.raises(requests.ConnectionError):
        braze.track({"attributes": [{"external_id": "dropped-é"}]})
    braze.set_faults(fault_drop=0.0)
    assert braze.user("dropped-é") is None
    assert braze.stats()["responses_by_status"]["dropped"] == 1


def test_drop_after_apply_closes_the_connection_after_applying(braze: SandboxClient) -> None:
    braze.set_faults(fault_drop=1.0, fault_drop_after_apply=1.0)
    with pytest.raises(requests.ConnectionError):
        braze.track({"attributes": [{"external_id": "applied-ø", "tier": "gold"}]})
    braze.set_faults(fault_drop=0.0)
    assert braze.attributes("applied-ø") == {"tier": "gold"}
    assert braze.stats()["faults_injected"] == {"drop_after_apply": 1}


def test_drop_rates_split_between_lost_and_applied(braze: SandboxClient) -> None:
    braze.set_faults(fault_drop=0.5, fault_drop_after_apply=0.5, seed=11)
    outcomes: Counter[int | str] = Counter()
    for i in range(200):
        try:
            status = braze.track({"attributes": [{"external_id": f"d-{i}"}]}).status_code
        except requests.ConnectionError:
            status = "dropped"
        outcomes[status] += 1
    faults = braze.stats()["faults_injected"]
    assert 70 <= outcomes["dropped"] <= 130
    assert faults.get("drop", 0) + faults.get("drop_after_apply", 0) == outcomes["dropped"]
    assert 20 <= faults["drop_after_apply"] <= 80
    assert braze.stats()["users"] == outcomes[201] + faults["drop_after_apply"]


def test_429_burst_blocks_the_key_for_the_burst_length(braze: SandboxClient) -> None:
    braze.set_faults(fault_429_burst=1.0, fault_429_burst_seconds=30)
    first = braze.track({"attributes": [{"external_id": "burst"}]})
    second = braze.track({"attributes": [{"external_id": "burst"}]})
    for response in (first, second):
        assert response.status_code == 429
        assert 28 <= int(response.headers["X-Ratelimit-Retry-After"]) <= 30
        assert "X-RateLimit-Remaining" not in response.headers
    assert braze.user("burst") is None
    stats = braze.stats()
    assert stats["rate_limit"]["requests_while_blocked"] == 1
    assert stats["rate_limit"]["windows_over_budget"] == 0  # a fault, not an overrun
    assert stats["faults_injected"] == {"429": 2}
    braze.set_faults(fault_429_burst=0.0)  # ends the burst at once
    assert braze.track({"attributes": [{"external_id": "burst"}]}).status_code == 201
    assert braze.stats()["rate_limit"]["requests_while_blocked"] == 1


def test_latency_delays_responses(braze: SandboxClient) -> None:
    braze.set_faults(latency_ms=300)
    started = time.monotonic()
    assert braze.track(attribute_batch(1)).status_code == 201
    assert time.monotonic() - started >= 0.29  # a lower bound only: a sleep never ends early


def test_fault_config_is_validated_and_echoed(braze: SandboxClient) -> None:
    config = braze.set_faults(fault_5xx=0.25, latency_jitter_ms=5)
    assert config["fault_5xx"] == 0.25
    assert config["latency_jitter_ms"] == 5
    assert config["fault_drop"] == 0.0
    for bad in ({"fault_5xx": 1.5}, {"no_such_fault": 1}, {"latency_ms": -1}):
        response = braze.session.put(f"{braze.url}/_sandbox/faults", json=bad, timeout=10)
        assert response.status_code == 400, bad
    assert braze.session.get(f"{braze.url}/_sandbox/faults", timeout=10).json() == config


def test_faults_can_be_set_from_the_cli() -> None:
    process = start_sandbox("--fault-5xx", "1", "--seed", "3")
    try:
        response = requests.post(
            f"{process.url}/users/track",
            json=attribute_batch(1),
            headers={"Authorization": "Bearer test-key"},
            timeout=10,
        )
        assert response.status_code in {500, 502, 503, 504}
        assert "X-RateLimit-Remaining" in response.headers
    finally:
        assert process.stop() == 0
