"""The process-wide set of clients the triggers share, built lazily on first use.

Flex Consumption gives an app 30 seconds to start, so nothing here connects at import time;
the first invocation pays for the clients and later ones reuse them.
"""

from __future__ import annotations

import functools
import threading
from functools import cached_property
from pathlib import Path

from shared.adapters import telemetry
from shared.adapters.braze_client import BrazeClient, InFlightSizer
from shared.adapters.key_vault import SecretProvider
from shared.adapters.rate_governor import RateGovernor
from shared.adapters.run_store import RunStore
from shared.adapters.settings import ConfigurationError, Settings, load_settings
from shared.adapters.snapshot_store import SnapshotStore
from shared.adapters.storage import Storage
from shared.core.definitions import (
    IN_FLIGHT_HEADROOM,
    MAX_IN_FLIGHT,
    MIN_IN_FLIGHT,
    Connection,
    Definitions,
    parse_definitions,
)
from shared.core.resource_names import RATE_TABLE, RUNS_TABLE


class Services:
    """Storage, run store, definitions, secrets and Braze clients for one set of settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._braze: dict[str, BrazeClient] = {}  # by connection name, endpoint and secret
        self._lock = threading.Lock()
        self._resources_ready = False

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings.storage)

    @cached_property
    def runs(self) -> RunStore:
        return RunStore(self.storage.table(RUNS_TABLE))

    @cached_property
    def snapshots(self) -> SnapshotStore:
        return SnapshotStore(self.storage)

    @cached_property
    def secrets(self) -> SecretProvider:
        return SecretProvider(self.settings)

    def ensure_resources(self) -> None:
        """Create containers, queues and the table once per process (idempotent)."""
        if not self._resources_ready:
            self.storage.ensure_resources()
            self._resources_ready = True

    def definitions(self) -> Definitions:
        """Read the definitions fresh, so an edit applies to the next run without a restart;
        the same text is parsed and validated once (every chunk reads them)."""
        if self.settings.definitions_blob:
            container, _, name = self.settings.definitions_blob.partition("/")
            text = self.storage.read_bytes(container, name)
            return _parsed(text, f"blob {self.settings.definitions_blob}")
        if self.settings.definitions_path:
            path = Path(self.settings.definitions_path)
            return _parsed(path.read_bytes(), str(path))
        raise ConfigurationError(
            "no export definitions: set EXPORT_DEFINITIONS_PATH (a file) or "
            "EXPORT_DEFINITIONS_BLOB (container/name in the storage account)"
        )

    def check_endpoint(self, connection: Connection) -> None:
        """Refuse to send a key to a loopback endpoint outside local development."""
        if connection.is_loopback and not self.settings.allow_loopback_endpoints:
            raise ConfigurationError(
                f"connection '{connection.name}' points at {connection.rest_endpoint}, this "
                "machine rather than Braze; its API key is sent there only in local "
                "development (EXPORT_ALLOW_LOOPBACK_ENDPOINTS=true)"
            )

    def braze(self, connection: Connection) -> BrazeClient:
        """One client per connection, its threads sharing one governor that coordinates the
        connection's rate budget with every other process and instance through a table.

        The rate settings are part of the key, so an edited budget applies without a restart.
        """
        key = "|".join(
            str(part)
            for part in (
                connection.name,
                connection.rest_endpoint,
                connection.api_key_secret,
                connection.rate_limit_requests,
                connection.rate_limit_window_seconds,
                connection.rate_limit_share,
                connection.in_flight_per_worker(),
            )
        )
        self.check_endpoint(connection)
        with self._lock:
            client = self._braze.get(key)
            if client is None:
                secret = connection.api_key_secret
                governor = RateGovernor(
                    self.storage.table(RATE_TABLE),
                    connection.name,
                    requests_per_window=connection.rate_limit_requests,
                    window_seconds=connection.rate_limit_window_seconds,
                    share=connection.rate_limit_share,
                )
                client = BrazeClient(
                    connection.rest_endpoint,
                    lambda refresh: self.secrets.get(secret, refresh=refresh),
                    governor=governor,
                    in_flight=connection.max_in_flight
                    or InFlightSizer(
                        connection.requests_per_second(),
                        connection.expected_latency_ms / 1000,
                        low=MIN_IN_FLIGHT,
                        high=MAX_IN_FLIGHT,
                        headroom=IN_FLIGHT_HEADROOM,
                    ),
                )
                self._braze[key] = client
            return client


@functools.lru_cache(maxsize=4)
def _parsed(text: bytes, source: str) -> Definitions:
    return parse_definitions(text, source)


_services: Services | None = None
_services_lock = threading.Lock()


def app_services() -> Services:
    """The services for this process's environment (created on first call)."""
    global _services
    with _services_lock:
        if _services is None:
            settings = load_settings()
            telemetry.configure(settings.environ)
            _services = Services(settings)
        return _services
