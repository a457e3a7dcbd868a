"""Rate limiting and the accounting that proves a client stayed within its budget.

No test waits for a window to pass. Windows are aligned to epoch multiples of their length, so
a 10**9-second window runs from 2001-09-09 to 2033-05-18 and never rolls over during a test;
tests with Braze's real 3-second window only assert what holds wherever a boundary falls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from sandbox_support import SECOND_API_KEY, SandboxClient, attribute_batch, start_sandbox

WINDOW_THAT_NEVER_ENDS = 10**9
WINDOW_END = 2 * 10**9
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@pytest.fixture
def limited(braze: SandboxClient) -> SandboxClient:
    braze.set_limits(rate_limit=5, rate_window_seconds=WINDOW_THAT_NEVER_ENDS)
    return braze


def test_headers_count_down_and_reset_is_the_window_end_in_epoch_seconds(
    limited: SandboxClient,
) -> None:
    for expected_remaining in (4, 3, 2, 1, 0):
        response = limited.track(attribute_batch(1))
        assert response.status_code == 201
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == str(expected_remaining)
        assert response.headers["X-RateLimit-Reset"] == str(WINDOW_END)


def test_reset_header_in_seconds_remaining_form(limited: SandboxClient) -> None:
    limited.set_limits(reset_header="seconds")
    response = limited.track(attribute_batch(1))
    assert abs(int(response.headers["X-RateLimit-Reset"]) - (WINDOW_END - time.time())) <= 5


def test_over_the_limit_is_429_with_retry_after_and_nothing_applied(
    limited: SandboxClient,
) -> None:
    for _ in range(5):
        assert limited.track(attribute_batch(1)).status_code == 201
    response = limited.track({"attributes": [{"external_id": "too-many 🚦"}]})
    assert response.status_code == 429
    assert abs(int(response.headers["X-Ratelimit-Retry-After"]) - (WINDOW_END - time.time())) <= 5
    for header in RATE_LIMIT_HEADERS:
        assert header not in response.headers
    assert limited.user("too-many 🚦") is None
    stats = limited.stats()
    assert stats["throttled_total"] == 1
    assert stats["rate_limit"]["windows_over_budget"] == 1
    assert stats["rate_limit"]["max_requests_in_window"] == 6


def test_every_request_after_a_429_before_reset_counts_as_blocked(limited: SandboxClient) -> None:
    for _ in range(5):
        limited.track(attribute_batch(1))
    statuses = [limited.track(attribute_batch(1)).status_code for _ in range(4)]
    assert statuses == [429] * 4
    rate = limited.stats()["rate_limit"]
    assert rate["requests_while_blocked"] == 3  # the first 429 was not sent while blocked
    assert rate["windows_over_budget"] == 1  # one window, however far it was overrun
    assert rate["max_requests_in_window"] == 9
    assert rate["per_key"]["test-key"]["throttled"] == 4


def test_a_client_within_budget_keeps_the_accounting_at_zero(limited: SandboxClient) -> None:
    for _ in range(5):
        limited.track(attribute_batch(1))
    rate = limited.stats()["rate_limit"]
    assert rate["windows_over_budget"] == 0
    assert rate["requests_while_blocked"] == 0
    assert rate["max_requests_in_window"] == 5


def test_limits_are_counted_per_api_key(limited: SandboxClient) -> None:
    for _ in range(6):
        limited.track(attribute_batch(1))
    other = limited.track(attribute_batch(1, prefix="other"), api_key=SECOND_API_KEY)
    assert other.status_code == 201
    assert other.headers["X-RateLimit-Remaining"] == "4"
    per_key = limited.stats()["rate_limit"]["per_key"]
    assert per_key["test-key"]["windows_over_budget"] == 1
    assert per_key[SECOND_API_KEY]["windows_over_budget"] == 0


def test_rejected_requests_also_carry_headers_and_count(limited: SandboxClient) -> None:
    response = limited.track({"attributes": []})
    assert response.status_code == 400
    assert response.headers["X-RateLimit-Remaining"] == "4"


def test_reset_clears_rate_windows(limited: SandboxClient) -> None:
    for _ in range(6):
        limited.track(attribute_batch(1))
    limited.reset()
    assert limited.track(attribute_batch(1)).headers["X-RateLimit-Remaining"] == "4"
    assert limited.stats()["rate_limit"]["windows_over_budget"] == 0


@pytest.fixture(scope="module")
def three_second_windows() -> Iterator[str]:
    """A sandbox configured from the CLI: Braze's 3 s windows, tiny budget, seconds form."""
    process = start_sandbox("--rate-limit", "5", "--reset-header", "seconds")
    yield process.url
    process.stop()


def test_cli_configured_three_second_windows(three_second_windows: str) -> None:
    responses: list[requests.Response] = []
    with requests.Session() as session:
        # Back-to-back requests overrun a budget of 5 per 3 s long before 100 are sent.
        while len(responses) < 100 and not any(r.status_code == 429 for r in responses):
            responses.append(
                session.post(
                    f"{three_second_windows}/users/track",
                    json=attribute_batch(1),
                    headers={"Authorization": "Bearer test-key"},
                    timeout=10,
                )
            )
    *accepted, throttled = responses
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["X-Ratelimit-Retry-After"]) <= 3
    assert "X-RateLimit-Remaining" not in throttled.headers
    for response in accepted:
        assert response.status_code == 201
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert 1 <= int(response.headers["X-RateLimit-Reset"]) <= 3
        assert 0 <= int(response.headers["X-RateLimit-Remaining"]) <= 4
    stats = requests.get(f"{three_second_windows}/_sandbox/stats", timeout=10).json()
    assert stats["rate_limit"]["windows_over_budget"] == 1
    assert stats["rate_limit"]["max_requests_in_window"] == 6
