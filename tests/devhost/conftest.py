"""Fixtures for devhost tests; the throwaway app and helpers live in devhost_testkit.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from devhost_testkit import FAST_POLLING, RecordingApp, write_app


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., RecordingApp]:
    """Write a recording app into this test's temporary directory."""

    def make(queues: dict[str, Any] | None = None, extra_functions: str = "") -> RecordingApp:
        return write_app(tmp_path / "app", {**FAST_POLLING, **(queues or {})}, extra_functions)

    return make


@pytest.fixture
def queue_name() -> Callable[[str], str]:
    """Unique queue names, so tests sharing the session's Azurite never see each other's work."""

    def name(purpose: str) -> str:
        return f"{purpose}-{uuid.uuid4().hex[:12]}"

    return name
