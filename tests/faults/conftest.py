"""Processes of the fault suite's own: its Azurite and its Braze sandbox.

Nothing is shared with the other suites: a local host they leave running would otherwise pull
this suite's queue messages, and their sandbox keeps its own faults and users.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.processes import Azurite, Sandbox, start_azurite, start_sandbox

SANDBOX_KEY = "fault-sandbox-key"
REQUEST_LOG_SIZE = 1_000_000  # every /users/track body of the run, to check what was sent


@pytest.fixture(scope="module")
def fault_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    running = start_azurite(tmp_path_factory.mktemp("fault-azurite"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def fault_sandbox() -> Iterator[Sandbox]:
    running = start_sandbox(SANDBOX_KEY, "--request-log-size", str(REQUEST_LOG_SIZE))
    yield running
    running.stop()
