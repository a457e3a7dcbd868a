"""Session-wide real local services: an in-memory Azurite on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.processes import Azurite, start_azurite


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A fresh in-memory Azurite for the whole session, never the one `make demo` uses."""
    running = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield running
    running.stop()
