"""Seeded fault injection, so a failure scenario replays identically when the seed is fixed."""

from __future__ import annotations

import enum
import random

from braze_sandbox.config import FaultConfig

SERVER_ERROR_STATUSES = (500, 502, 503, 504)


class Drop(enum.Enum):
    """Whether to close the connection without answering, and whether the update lands first."""

    NONE = enum.auto()
    BEFORE_APPLY = enum.auto()
    AFTER_APPLY = enum.auto()


class FaultInjector:
    """Draws every fault decision from one RNG; a draw happens only for faults that are enabled."""

    def __init__(self, config: FaultConfig) -> None:
        self.configure(config)

    def configure(self, config: FaultConfig) -> None:
        """Adopt a new config, restart the RNG from its seed and end any running 429 burst."""
        self.config = config
        self._rng = random.Random(config.seed)
        self._burst_until: dict[str, float] = {}

    def burst_seconds_left(self, api_key: str, now: float) -> float:
        """Seconds of 429 burst left for this key, possibly starting a new burst; 0 when none."""
        until = self._burst_until.get(api_key, 0.0)
        if now < until:
            return until - now
        rate = self.config.fault_429_burst
        if rate and self._rng.random() < rate:
            seconds = self.config.fault_429_burst_seconds
            self._burst_until[api_key] = now + seconds
            return seconds
        return 0.0

    def pick_drop(self) -> Drop:
        """Decide whether this request's connection is cut before a response is written."""
        config = self.config
        if not config.fault_drop or self._rng.random() >= config.fault_drop:
            return Drop.NONE
        if config.fault_drop_after_apply and self._rng.random() < config.fault_drop_after_apply:
            return Drop.AFTER_APPLY
        return Drop.BEFORE_APPLY

    def pick_server_error(self) -> int | None:
        """A random 5xx status for this request, or None to let it through."""
        rate = self.config.fault_5xx
        if rate and self._rng.random() < rate:
            return self._rng.choice(SERVER_ERROR_STATUSES)
        return None

    def pick_latency_seconds(self) -> float:
        """Extra response delay: the base latency plus uniform jitter."""
        config = self.config
        delay_ms = config.latency_ms
        if config.latency_jitter_ms:
            delay_ms += self._rng.uniform(0.0, config.latency_jitter_ms)
        return delay_ms / 1000.0
