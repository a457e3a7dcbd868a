"""Fixtures shared by the adapter tests."""

from __future__ import annotations

import pytest
from azure.core.pipeline.transport import RequestsTransport


@pytest.fixture
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits a Table client's retries ask for, recorded instead of slept (no test waits on
    a clock)."""
    asked: list[float] = []
    monkeypatch.setattr(RequestsTransport, "sleep", lambda _, seconds: asked.append(seconds))
    return asked
