"""Braze API keys: from Key Vault with the app's managed identity, or from the environment locally.

Key Vault is not built for a read per request, so values are cached; `refresh=True` re-reads a
key after Braze answered 401 (the key may have been rotated).
"""

from __future__ import annotations

import threading
import time
from functools import cached_property
from typing import Any

from shared.adapters.settings import ConfigurationError, Settings, secret_env_name

CACHE_SECONDS = 600.0


class SecretProvider:
    """Looks up secrets by Key Vault secret name."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    @cached_property
    def _client(self) -> Any:
        from azure.identity import DefaultAzureCredential
        from azure.keyvault.secrets import SecretClient

        credential = DefaultAzureCredential(
            managed_identity_client_id=self._settings.azure_client_id
        )
        return SecretClient(vault_url=self._settings.key_vault_url or "", credential=credential)

    def get(self, name: str, *, refresh: bool = False) -> str:
        if not self._settings.key_vault_url:
            value = self._settings.local_secret(name)
            if not value:
                raise ConfigurationError(
                    f"secret '{name}' not found: set KEY_VAULT_URL, or set "
                    f"{secret_env_name(name)} for local runs"
                )
            return value
        with self._lock:
            cached = self._cache.get(name)
            if cached and not refresh and time.monotonic() - cached[1] < CACHE_SECONDS:
                return cached[0]
        value = self._client.get_secret(name).value
        if not value:
            raise ConfigurationError(f"Key Vault secret '{name}' is empty")
        with self._lock:
            self._cache[name] = (value, time.monotonic())
        return value
