"""Real local services: an in-memory Azurite on free loopback ports for the session, and a
wire-level Key Vault (tests/key_vault_double) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import Azurite, start_azurite
from tests.key_vault_double import KeyVaultDouble


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A fresh in-memory Azurite for the whole session, never the one `make demo` uses."""
    running = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield running
    running.stop()


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[KeyVaultDouble]:
    """A local HTTPS Key Vault speaking the secrets REST API, with a self-signed certificate."""
    running = KeyVaultDouble(tmp_path)
    yield running
    running.close()
