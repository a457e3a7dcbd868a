"""Runtime-adjustable sandbox settings, validated the same way from the CLI and the control API."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """Base for settings that the control API patches field by field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def patched(self, changes: dict[str, Any]) -> Self:
        """Return a copy with `changes` applied, validated as a whole so no half-update sticks."""
        return self.model_validate({**self.model_dump(), **changes})


class LimitConfig(Settings):
    """Braze's contract limits; defaults are Braze's defaults for /users/track."""

    objects_per_request: int = Field(75, ge=1)
    rate_limit: int = Field(3000, ge=1)
    rate_window_seconds: int = Field(3, ge=1)
    reset_header: Literal["epoch", "seconds"] = "epoch"
    array_cap: int = Field(25, ge=1)
    blocklist: frozenset[str] = frozenset()


class FaultConfig(Settings):
    """Failure modes to simulate; all off by default so the sandbox behaves like a healthy Braze."""

    fault_5xx: float = Field(0.0, ge=0.0, le=1.0)
    fault_429_burst: float = Field(0.0, ge=0.0, le=1.0)
    fault_429_burst_seconds: float = Field(1.0, gt=0.0)
    fault_drop: float = Field(0.0, ge=0.0, le=1.0)
    fault_drop_after_apply: float = Field(0.0, ge=0.0, le=1.0)
    latency_ms: float = Field(0.0, ge=0.0)
    latency_jitter_ms: float = Field(0.0, ge=0.0)
    seed: int | None = None
