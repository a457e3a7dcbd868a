"""Braze-style fixed-window rate limiting per API key, plus the accounting that tells whether
a client respected the budget (the exporter must never overrun a window or ignore a 429).

A "client" is one API key plus one User-Agent: the exporter names each of its instances in
its User-Agent, so a 429 told to one instance can be told apart from another's in-flight work.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

CLIENT_FIELDS = (
    "requests",
    "told_to_wait",
    "requests_before_told_reset",
    "requests_in_flight_at_429",
    "max_in_flight_per_connection_per_429",
)


@dataclass(slots=True)
class KeyRateState:
    """Counters for one API key; the window is identified by its start in epoch seconds.

    `requests_while_blocked` counts every request that arrives while the key is blocked,
    whoever sent it: requests other instances already had in flight when a 429 burst began
    count too, so independent workers cannot keep it at zero. ClientWaitState counts only
    requests from a client that had been told.
    """

    window_start: float = -1.0
    window_count: int = 0
    max_requests_in_window: int = 0
    windows_over_budget: int = 0
    blocked_until: float = 0.0
    requests_while_blocked: int = 0
    throttled: int = 0
    counts_by_window: Counter[float] = field(default_factory=Counter)  # window start -> requests


@dataclass(slots=True)
class ToldWait:
    """A 429 written to a client: the reset it told, the connection it went out on, and how
    many of the client's requests arrived on each of its other connections before that reset."""

    reset: float
    connection: object
    in_flight: Counter[object] = field(default_factory=Counter)


@dataclass(slots=True)
class ClientWaitState:
    """What 429s told one client (API key + User-Agent), and how often it sent regardless."""

    requests: int = 0
    told_to_wait: int = 0
    requests_before_told_reset: int = 0
    requests_in_flight_at_429: int = 0
    max_in_flight_per_connection_per_429: int = 0
    waits: list[ToldWait] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Outcome of counting one request: the header values, or the wait when throttled."""

    limit: int
    remaining: int
    window_end: float
    retry_after: int | None


class RateLimiter:
    """Fixed windows aligned to epoch multiples of the window length, as Braze documents."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyRateState] = {}
        self._clients: dict[tuple[str, str], ClientWaitState] = {}

    def arrive(self, api_key: str, client: str, connection: object, now: float) -> None:
        """Count a request as it arrives; call it before anything awaits, so `now` is real.

        Against each 429 this client was told whose reset is still ahead, a request is either
        early or in flight. On the 429's own connection it is early
        (`requests_before_told_reset`): HTTP/1.1 carries no request there before the client has
        read the response, so the client sent it knowing. On another of its connections it may
        have been sent before the client read the 429 (`requests_in_flight_at_429`); one such
        request per other connection is what a thread already on the wire can add, so the most
        charged to any one 429 on any one connection is kept too. A request that is early on
        its own connection is not also counted as in flight.
        """
        state = self._client(api_key, client)
        state.requests += 1
        state.waits = [wait for wait in state.waits if now < wait.reset]
        if not state.waits:
            return
        if any(wait.connection is connection for wait in state.waits):
            state.requests_before_told_reset += 1
            return
        state.requests_in_flight_at_429 += 1
        for wait in state.waits:
            wait.in_flight[connection] += 1
            state.max_in_flight_per_connection_per_429 = max(
                state.max_in_flight_per_connection_per_429, wait.in_flight[connection]
            )

    def told_to_wait(self, api_key: str, client: str, connection: object, reset: float) -> None:
        """A 429 was written to `client` on `connection`: it may send again from `reset`."""
        state = self._client(api_key, client)  # new if a reset came while the 429 was delayed
        state.told_to_wait += 1
        state.waits.append(ToldWait(reset, connection))

    def _client(self, api_key: str, client: str) -> ClientWaitState:
        state = self._clients.get((api_key, client))
        if state is None:
            state = self._clients[api_key, client] = ClientWaitState()
        return state

    def admit(self, api_key: str, now: float, limit: int, window_seconds: int) -> RateDecision:
        """Count a request (rejected ones too, since Braze counts what the client sent)."""
        state = self._keys.get(api_key)
        if state is None:
            state = self._keys[api_key] = KeyRateState()
        if now < state.blocked_until:
            state.requests_while_blocked += 1
        window_start = now - now % window_seconds
        if window_start != state.window_start:
            state.window_start = window_start
            state.window_count = 0
        state.window_count += 1
        state.counts_by_window[window_start] = state.window_count
        count = state.window_count
        if count > state.max_requests_in_window:
            state.max_requests_in_window = count
        window_end = window_start + window_seconds
        if count <= limit:
            return RateDecision(limit, limit - count, window_end, None)
        if count == limit + 1:
            state.windows_over_budget += 1
        state.throttled += 1
        state.blocked_until = max(state.blocked_until, window_end)
        return RateDecision(limit, 0, window_end, math.ceil(window_end - now))

    def block(self, api_key: str, until: float) -> None:
        """Mark the key as told to wait (e.g. by an injected 429) until `until`."""
        state = self._keys[api_key]
        state.throttled += 1
        state.blocked_until = max(state.blocked_until, until)

    def lift_blocks(self) -> None:
        """Forget pending waits, e.g. when the faults that caused them are reconfigured.

        What clients were told stays: a client cannot know the faults changed, so a request
        before the reset it was told is still early.
        """
        for state in self._keys.values():
            state.blocked_until = 0.0

    def clear(self) -> None:
        self._keys.clear()
        self._clients.clear()

    def windows(self) -> dict[str, dict[str, int]]:
        """Requests counted in each window (keyed by its start, epoch seconds), per API key,
        oldest window first."""
        return {
            key: {str(int(start)): count for start, count in sorted(s.counts_by_window.items())}
            for key, s in self._keys.items()
        }

    def snapshot(self) -> dict[str, object]:
        """Totals across keys, plus breakdowns per key and per client (User-Agent, summed over
        keys), for /_sandbox/stats."""
        early_by_key: Counter[str] = Counter()
        in_flight_by_key: Counter[str] = Counter()
        per_client: dict[str, dict[str, int]] = {}
        for (key, client), told in self._clients.items():
            early_by_key[key] += told.requests_before_told_reset
            in_flight_by_key[key] += told.requests_in_flight_at_429
            totals = per_client.setdefault(client, dict.fromkeys(CLIENT_FIELDS, 0))
            totals["requests"] += told.requests
            totals["told_to_wait"] += told.told_to_wait
            totals["requests_before_told_reset"] += told.requests_before_told_reset
            totals["requests_in_flight_at_429"] += told.requests_in_flight_at_429
            totals["max_in_flight_per_connection_per_429"] = max(
                totals["max_in_flight_per_connection_per_429"],
                told.max_in_flight_per_connection_per_429,
            )
        per_key = {
            key: {
                "max_requests_in_window": state.max_requests_in_window,
                "windows_over_budget": state.windows_over_budget,
                "requests_while_blocked": state.requests_while_blocked,
                "requests_before_told_reset": early_by_key[key],
                "requests_in_flight_at_429": in_flight_by_key[key],
                "throttled": state.throttled,
            }
            for key, state in self._keys.items()
        }
        states = self._keys.values()
        return {
            "max_requests_in_window": max((s.max_requests_in_window for s in states), default=0),
            "windows_over_budget": sum(s.windows_over_budget for s in states),
            "requests_while_blocked": sum(s.requests_while_blocked for s in states),
            "requests_before_told_reset": sum(early_by_key.values()),
            "requests_in_flight_at_429": sum(in_flight_by_key.values()),
            "max_in_flight_per_connection_per_429": max(
                (c["max_in_flight_per_connection_per_429"] for c in per_client.values()),
                default=0,
            ),
            "per_key": per_key,
            "per_client": per_client,
        }


def rate_limit_headers(
    decision: RateDecision, reset_form: Literal["epoch", "seconds"], now: float
) -> dict[str, str]:
    """Headers for a non-429 response; the reset is either epoch seconds or seconds remaining."""
    if reset_form == "epoch":
        reset = math.ceil(decision.window_end)
    else:
        reset = math.ceil(decision.window_end - now)
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(reset),
    }
