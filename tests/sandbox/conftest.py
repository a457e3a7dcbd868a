"""Fixtures: one shared sandbox process, and a client that finds it empty for every test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from sandbox_support import BLOCKLISTED_IDS, Sandbox, SandboxClient, start_sandbox


@dataclass(frozen=True)
class SharedSandbox:
    """The session's sandbox and the configuration it started with, restored for every test."""

    process: Sandbox
    faults: dict[str, Any]
    limits: dict[str, Any]


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[SharedSandbox]:
    """One sandbox with Braze's defaults plus a blocklist, shared so the suite stays fast."""
    blocklist_args = [
        arg for external_id in BLOCKLISTED_IDS for arg in ("--blocklist", external_id)
    ]
    process = start_sandbox(*blocklist_args)
    faults = requests.get(f"{process.url}/_sandbox/faults", timeout=10).json()
    limits = requests.get(f"{process.url}/_sandbox/limits", timeout=10).json()
    yield SharedSandbox(process, faults, limits)
    process.stop()


@pytest.fixture
def braze(shared_sandbox: SharedSandbox) -> Iterator[SandboxClient]:
    """A client on the shared sandbox, which starts empty and with its startup configuration."""
    with requests.Session() as session:
        client = SandboxClient(shared_sandbox.process.url, session)
        client.set_faults(**shared_sandbox.faults)
        client.set_limits(**shared_sandbox.limits)
        client.reset()
        yield client
