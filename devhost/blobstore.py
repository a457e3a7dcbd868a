"""Blob clients by connection, as the host keeps one service client per storage account."""

from __future__ import annotations

from collections.abc import Mapping

from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry

from devhost.settings import storage_connection_string

HOST_CONTAINER = "azure-webjobs-hosts"


class BlobStorage:
    """Blob service clients for the connections bindings name (an empty name: host storage)."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._settings = settings
        self._services: dict[str, BlobServiceClient] = {}

    def service(self, connection: str) -> BlobServiceClient:
        connection_string = storage_connection_string(connection, self._settings)
        if connection_string not in self._services:
            # Short retries, so a stopped Azurite shows up in seconds rather than minutes.
            retry = ExponentialRetry(
                initial_backoff=1, increment_base=2, retry_total=2, random_jitter_range=1
            )
            self._services[connection_string] = BlobServiceClient.from_connection_string(
                connection_string, retry_policy=retry
            )
        return self._services[connection_string]

    def container(self, connection: str, name: str) -> ContainerClient:
        return self.service(connection).get_container_client(name)

    def close(self) -> None:
        for service in self._services.values():
            service.close()
