"""Counters behind /_sandbox/stats that are not per API key (those live in the rate limiter)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class SandboxStats:
    """Totals since start or the last reset; only Braze API calls count, not the control API."""

    requests_total: int = 0
    responses_by_status: Counter[str] = field(default_factory=Counter)
    objects_applied: int = 0
    objects_rejected: int = 0
    data_points: int = 0
    faults_injected: Counter[str] = field(default_factory=Counter)
    # /users/track arrivals and 429s by epoch second: the timeline a benchmark plots.
    arrivals_per_second: Counter[int] = field(default_factory=Counter)
    throttled_per_second: Counter[int] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, object]:
        return {
            "requests_total": self.requests_total,
            "responses_by_status": dict(self.responses_by_status),
            "throttled_total": self.responses_by_status["429"],
            "objects_applied": self.objects_applied,
            "objects_rejected": self.objects_rejected,
            "data_points": self.data_points,
            "faults_injected": dict(self.faults_injected),
        }

    def timeline(self) -> dict[str, dict[str, int]]:
        """Counts by epoch second (as JSON object keys), oldest first."""
        return {
            "arrivals_per_second": _by_key(self.arrivals_per_second),
            "throttled_per_second": _by_key(self.throttled_per_second),
        }


def _by_key(counts: Counter[int]) -> dict[str, int]:
    return {str(second): count for second, count in sorted(counts.items())}
