"""Braze-style fixed-window rate limiting per API key, plus the accounting that tells whether
a client respected the budget (the exporter must never overrun a window or ignore a 429)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(slots=True)
class KeyRateState:
    """Counters for one API key; the window is identified by its start in epoch seconds."""

    window_start: float = -1.0
    window_count: int = 0
    max_requests_in_window: int = 0
    windows_over_budget: int = 0
    blocked_until: float = 0.0
    requests_while_blocked: int = 0
    throttled: int = 0


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
        """Forget pending waits, e.g. when the faults that caused them are reconfigured."""
        for state in self._keys.values():
            state.blocked_until = 0.0

    def clear(self) -> None:
        self._keys.clear()

    def snapshot(self) -> dict[str, object]:
        """Totals across keys plus a per-key breakdown, for /_sandbox/stats."""
        per_key = {
            key: {
                "max_requests_in_window": state.max_requests_in_window,
                "windows_over_budget": state.windows_over_budget,
                "requests_while_blocked": state.requests_while_blocked,
                "throttled": state.throttled,
            }
            for key, state in self._keys.items()
        }
        states = self._keys.values()
        return {
            "max_requests_in_window": max((s.max_requests_in_window for s in states), default=0),
            "windows_over_budget": sum(s.windows_over_budget for s in states),
            "requests_while_blocked": sum(s.requests_while_blocked for s in states),
            "per_key": per_key,
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
