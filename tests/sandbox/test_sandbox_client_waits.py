"""Per-client 429 accounting: a client that was told to wait must not send before the reset.

A client is an API key plus a User-Agent. A request before a told reset is early on the 429's
own connection (`requests_before_told_reset`) and in flight on the client's other connections
(`requests_in_flight_at_429`, with the most any one connection sent against any one 429). The
limiter is tested on its own with an explicit clock, where the order of arrivals and 429s is
exact; over HTTP, only sequences whose order the test itself fixes (one request after another,
each connection a session of its own) are asserted, so nothing depends on timing.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from sandbox_support import API_KEY, SECOND_API_KEY, SandboxClient, attribute_batch

from braze_sandbox.limits import RateLimiter

WINDOW_THAT_NEVER_ENDS = 10**9
ALICE = "braze-segment-exporter/0.1.0 (alice)"
BOB = "braze-segment-exporter/0.1.0 (bob)"
CONNECTION_1, CONNECTION_2, CONNECTION_3 = object(), object(), object()


def _client(limiter: RateLimiter, client: str = ALICE) -> dict[str, int]:
    per_client: dict[str, Any] = limiter.snapshot()["per_client"]  # type: ignore[assignment]
    return per_client[client]


def _early(limiter: RateLimiter, client: str = ALICE) -> int:
    return _client(limiter, client)["requests_before_told_reset"]


def _in_flight(limiter: RateLimiter, client: str = ALICE) -> tuple[int, int]:
    """(requests in flight at a 429, most of them on one connection against one 429)."""
    counts = _client(limiter, client)
    return counts["requests_in_flight_at_429"], counts["max_in_flight_per_connection_per_429"]


def test_a_request_on_the_429s_connection_before_its_reset_is_early() -> None:
    limiter = RateLimiter()
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 100.0)
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_1, reset=101.5)
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 101.4)
    assert _early(limiter) == 1
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 101.5)  # the reset: a wait served
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 105.0)
    assert _early(limiter) == 1
    assert _in_flight(limiter) == (0, 0)


def test_requests_that_arrived_before_the_429_was_written_count_nowhere() -> None:
    limiter = RateLimiter()
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 100.0)  # answered 429 later
    limiter.arrive(API_KEY, ALICE, CONNECTION_2, 100.1)  # already on its way
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_1, reset=101.2)
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_2, reset=101.3)
    assert (_early(limiter), _in_flight(limiter)) == (0, (0, 0))
    assert limiter.snapshot()["requests_before_told_reset"] == 0


def test_requests_on_other_connections_before_the_reset_are_in_flight() -> None:
    limiter = RateLimiter()
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 100.0)
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_1, reset=101.0)
    limiter.arrive(API_KEY, ALICE, CONNECTION_2, 100.1)  # one per other connection
    limiter.arrive(API_KEY, ALICE, CONNECTION_3, 100.1)
    assert (_early(limiter), _in_flight(limiter)) == (0, (2, 1))
    limiter.arrive(API_KEY, ALICE, CONNECTION_2, 100.2)  # a second one there: it sent again
    assert (_early(limiter), _in_flight(limiter)) == (0, (3, 2))
    limiter.arrive(API_KEY, ALICE, CONNECTION_2, 101.0)  # the reset: a wait served
    assert _in_flight(limiter) == (3, 2)


def test_the_in_flight_maximum_is_per_429() -> None:
    limiter = RateLimiter()
    for start in (100.0, 110.0):  # two 429s, each with one request in flight on connection 2
        limiter.arrive(API_KEY, ALICE, CONNECTION_1, start)
        limiter.told_to_wait(API_KEY, ALICE, CONNECTION_1, reset=start + 1.0)
        limiter.arrive(API_KEY, ALICE, CONNECTION_2, start + 0.1)
    assert _in_flight(limiter) == (2, 1)


def test_a_request_is_charged_to_every_429_it_arrived_before_the_reset_of() -> None:
    limiter = RateLimiter()
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_1, reset=103.0)  # no arrival needed first
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_2, reset=102.0)
    limiter.arrive(API_KEY, ALICE, CONNECTION_3, 100.0)
    limiter.arrive(API_KEY, ALICE, CONNECTION_3, 101.0)
    assert _in_flight(limiter) == (2, 2)  # two requests, not four
    limiter.arrive(API_KEY, ALICE, CONNECTION_3, 102.5)  # only the first 429's wait is left
    assert _in_flight(limiter) == (3, 3)


def test_an_early_request_on_its_own_connection_is_not_also_in_flight() -> None:
    limiter = RateLimiter()
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_1, reset=102.0)
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_2, reset=102.0)
    limiter.arrive(API_KEY, ALICE, CONNECTION_2, 101.0)
    assert (_early(limiter), _in_flight(limiter)) == (1, (0, 0))


def test_only_the_client_that_was_told_is_held_to_it() -> None:
    limiter = RateLimiter()
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 100.0)
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_1, reset=103.0)
    for connection in (CONNECTION_1, CONNECTION_2):
        limiter.arrive(API_KEY, BOB, connection, 101.0)  # another instance
        limiter.arrive(SECOND_API_KEY, ALICE, connection, 101.0)  # another key
    snapshot: dict[str, Any] = limiter.snapshot()
    assert snapshot["requests_before_told_reset"] == 0
    assert snapshot["requests_in_flight_at_429"] == 0
    assert snapshot["per_client"][BOB] == {
        "requests": 2,
        "told_to_wait": 0,
        "requests_before_told_reset": 0,
        "requests_in_flight_at_429": 0,
        "max_in_flight_per_connection_per_429": 0,
    }


def test_the_latest_reset_a_client_was_told_holds() -> None:
    limiter = RateLimiter()
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 100.0)
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_1, reset=103.0)
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 100.5)
    limiter.told_to_wait(API_KEY, ALICE, CONNECTION_1, reset=101.5)
    limiter.arrive(API_KEY, ALICE, CONNECTION_1, 102.0)  # before the first reset
    assert _early(limiter) == 2


def test_totals_per_key_per_client_and_clear() -> None:
    limiter = RateLimiter()
    for key, in_flight in ((API_KEY, 1), (SECOND_API_KEY, 2)):
        limiter.admit(key, 100.0, limit=10, window_seconds=3)
        limiter.arrive(key, ALICE, CONNECTION_1, 100.0)
        limiter.told_to_wait(key, ALICE, CONNECTION_1, reset=102.0)
        limiter.admit(key, 101.0, limit=10, window_seconds=3)
        limiter.arrive(key, ALICE, CONNECTION_1, 101.0)
        for _ in range(in_flight):
            limiter.arrive(key, ALICE, CONNECTION_2, 101.0)
    limiter.arrive(API_KEY, BOB, CONNECTION_3, 101.0)
    snapshot: dict[str, Any] = limiter.snapshot()
    assert snapshot["requests_before_told_reset"] == 2
    assert snapshot["requests_in_flight_at_429"] == 3
    assert snapshot["max_in_flight_per_connection_per_429"] == 2
    assert snapshot["per_key"][API_KEY]["requests_before_told_reset"] == 1
    assert snapshot["per_key"][SECOND_API_KEY]["requests_in_flight_at_429"] == 2
    assert snapshot["per_client"] == {
        ALICE: {
            "requests": 7,
            "told_to_wait": 2,
            "requests_before_told_reset": 2,
            "requests_in_flight_at_429": 3,
            "max_in_flight_per_connection_per_429": 2,  # the largest over keys, not a sum
        },
        BOB: {
            "requests": 1,
            "told_to_wait": 0,
            "requests_before_told_reset": 0,
            "requests_in_flight_at_429": 0,
            "max_in_flight_per_connection_per_429": 0,
        },
    }
    limiter.clear()
    assert limiter.snapshot()["per_client"] == {}
    assert limiter.snapshot()["max_in_flight_per_connection_per_429"] == 0


# --- over HTTP --------------------------------------------------------------------------------


def _track(braze: SandboxClient, client: str, session: requests.Session | None = None) -> int:
    """One request as `client`; a separate session is a separate connection."""
    response = (session or braze.session).post(
        braze.url + "/users/track",
        json=attribute_batch(1),
        headers={"Authorization": f"Bearer {API_KEY}", "User-Agent": client},
        timeout=10,
    )
    return response.status_code


def _rate(braze: SandboxClient) -> dict[str, Any]:
    return braze.stats()["rate_limit"]


def _in_flight_over_http(braze: SandboxClient) -> tuple[int, int]:
    rate = _rate(braze)
    return rate["requests_in_flight_at_429"], rate["max_in_flight_per_connection_per_429"]


def _counts(**counts: int) -> dict[str, int]:
    """A per_client entry: the given counts, zero for the rest."""
    return {
        "requests": 0,
        "told_to_wait": 0,
        "requests_before_told_reset": 0,
        "requests_in_flight_at_429": 0,
        "max_in_flight_per_connection_per_429": 0,
        **counts,
    }


@pytest.fixture
def one_per_window(braze: SandboxClient) -> SandboxClient:
    """One request per window that outlasts the test: the second one is always a 429."""
    braze.set_limits(rate_limit=1, rate_window_seconds=WINDOW_THAT_NEVER_ENDS)
    return braze


@pytest.fixture
def told_then_unblocked(braze: SandboxClient) -> SandboxClient:
    """ALICE was told by a 429 on `braze.session` to wait ten minutes, and the burst behind it
    is over: requests are answered again, yet every one ALICE sends comes before her reset."""
    braze.set_faults(fault_429_burst=1.0, fault_429_burst_seconds=600)
    assert _track(braze, ALICE) == 429
    braze.set_faults(fault_429_burst=0.0)  # the burst ends, but ALICE cannot know that
    return braze


def test_only_a_client_that_was_told_counts_while_the_old_metric_counts_everyone(
    one_per_window: SandboxClient,
) -> None:
    braze = one_per_window
    assert [_track(braze, ALICE) for _ in range(3)] == [201, 429, 429]
    assert _track(braze, BOB) == 429  # BOB never heard of ALICE's 429
    rate = _rate(braze)
    assert rate["requests_before_told_reset"] == 1
    assert rate["requests_in_flight_at_429"] == 0
    assert rate["per_client"] == {
        ALICE: _counts(requests=3, told_to_wait=2, requests_before_told_reset=1),
        BOB: _counts(requests=1, told_to_wait=1),
    }
    assert rate["per_key"][API_KEY]["requests_before_told_reset"] == 1
    assert rate["requests_while_blocked"] == 2  # the key was blocked for BOB too


def test_what_a_client_was_told_outlives_a_change_of_faults(
    told_then_unblocked: SandboxClient,
) -> None:
    braze = told_then_unblocked
    assert _track(braze, ALICE) == 201
    rate = _rate(braze)
    assert rate["requests_before_told_reset"] == 1
    assert rate["requests_while_blocked"] == 0


def test_requests_on_the_clients_other_connections_are_in_flight_not_early(
    told_then_unblocked: SandboxClient,
) -> None:
    braze = told_then_unblocked
    with requests.Session() as second, requests.Session() as third:
        assert _track(braze, ALICE, second) == 201
        assert _track(braze, ALICE, third) == 201
        assert _in_flight_over_http(braze) == (2, 1)
        assert _track(braze, ALICE, second) == 201  # a second one on that connection
        assert _in_flight_over_http(braze) == (3, 2)
        assert _rate(braze)["requests_before_told_reset"] == 0
        assert _track(braze, ALICE) == 201  # the 429's own connection: it had read the 429
    rate = _rate(braze)
    assert rate["per_client"] == {
        ALICE: _counts(
            requests=5,
            told_to_wait=1,
            requests_before_told_reset=1,
            requests_in_flight_at_429=3,
            max_in_flight_per_connection_per_429=2,
        )
    }
    assert rate["per_key"][API_KEY]["requests_in_flight_at_429"] == 3


def test_a_429_on_another_connection_makes_the_next_request_there_early(
    one_per_window: SandboxClient,
) -> None:
    braze = one_per_window
    with requests.Session() as second:
        assert [_track(braze, ALICE) for _ in range(2)] == [201, 429]
        assert _track(braze, ALICE, second) == 429  # in flight at the first 429, told itself
        assert _track(braze, ALICE, second) == 429  # sent after reading its own 429
    rate = _rate(braze)
    assert rate["per_client"][ALICE] == _counts(
        requests=4,
        told_to_wait=3,
        requests_before_told_reset=1,
        requests_in_flight_at_429=1,
        max_in_flight_per_connection_per_429=1,
    )


def test_other_clients_and_keys_are_not_held_to_a_429_they_were_not_told(
    told_then_unblocked: SandboxClient,
) -> None:
    braze = told_then_unblocked
    with requests.Session() as second:
        for session in (braze.session, second):
            assert _track(braze, BOB, session) == 201
            response = session.post(
                braze.url + "/users/track",
                json=attribute_batch(1),
                headers={"Authorization": f"Bearer {SECOND_API_KEY}", "User-Agent": ALICE},
                timeout=10,
            )
            assert response.status_code == 201
    rate = _rate(braze)
    assert rate["requests_before_told_reset"] == 0
    assert rate["requests_in_flight_at_429"] == 0
    assert rate["per_client"][BOB] == _counts(requests=2)


def test_a_sandbox_reset_forgets_what_clients_were_told(
    told_then_unblocked: SandboxClient,
) -> None:
    braze = told_then_unblocked
    with requests.Session() as second:
        assert _track(braze, ALICE) == 201
        assert _track(braze, ALICE, second) == 201
        rate = _rate(braze)
        assert (rate["requests_before_told_reset"], rate["requests_in_flight_at_429"]) == (1, 1)
        braze.reset()
        assert _track(braze, ALICE) == 201
        assert _track(braze, ALICE, second) == 201
    rate = _rate(braze)
    assert rate["requests_before_told_reset"] == 0
    assert rate["requests_in_flight_at_429"] == 0
    assert rate["max_in_flight_per_connection_per_429"] == 0
    assert rate["per_client"] == {ALICE: _counts(requests=2)}


def test_a_client_that_waits_out_its_retry_after_is_not_early(braze: SandboxClient) -> None:
    braze.set_faults(fault_429_burst=1.0, fault_429_burst_seconds=0.1)
    response = braze.session.post(
        braze.url + "/users/track",
        json=attribute_batch(1),
        headers={"Authorization": f"Bearer {API_KEY}", "User-Agent": ALICE},
        timeout=10,
    )
    assert response.status_code == 429
    braze.set_faults(fault_429_burst=0.0)
    time.sleep(int(response.headers["X-Ratelimit-Retry-After"]))  # never returns early
    assert _track(braze, ALICE) == 201
    assert _rate(braze)["requests_before_told_reset"] == 0


def test_requests_without_a_user_agent_are_one_anonymous_client(
    one_per_window: SandboxClient,
) -> None:
    braze = one_per_window
    for _ in range(3):
        braze.session.post(
            braze.url + "/users/track",
            json=attribute_batch(1),
            headers={"Authorization": f"Bearer {API_KEY}", "User-Agent": ""},
            timeout=10,
        )
    assert _rate(braze)["per_client"][""]["requests_before_told_reset"] == 1
