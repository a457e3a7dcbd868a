"""Braze API keys: from Key Vault with the app's managed identity, or from the environment locally.

Key Vault is not built for a read per request, so values are cached for `CACHE_SECONDS`;
`refresh=True` re-reads a key after Braze answered 401 (the key may have been rotated). Errors
name the vault and the secret, never a value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from shared.adapters.settings import ConfigurationError, Settings, secret_env_name

CACHE_SECONDS = 600.0


class SecretUnavailable(ConfigurationError):
    """Key Vault could not be read (unreachable, refused, failing): retry later or fix access."""


class SecretProvider:
    """Looks up secrets by Key Vault secret name.

    `credential` and `client_options` (keyword arguments of `SecretClient`) are for tests,
    which point the real client at a local vault; the app uses `DefaultAzureCredential` with
    its user-assigned identity (`AZURE_CLIENT_ID`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        credential: Any = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._credential = credential
        self._client_options = dict(client_options or {})
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    @cached_property
    def _client(self) -> Any:
        from azure.keyvault.secrets import SecretClient

        credential = self._credential
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(
                managed_identity_client_id=self._settings.azure_client_id
            )
        return SecretClient(
            vault_url=self._settings.key_vault_url or "",
            credential=credential,
            **self._client_options,
        )

    def get(self, name: str, *, refresh: bool = False) -> str:
        vault = self._settings.key_vault_url
        if not vault:
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
        value = self._read(vault, name)
        with self._lock:
            self._cache[name] = (value, time.monotonic())
        return value

    def _read(self, vault: str, name: str) -> str:
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
        )

        try:
            value = self._client.get_secret(name).value
        except ResourceNotFoundError:
            raise ConfigurationError(
                f"Key Vault secret '{name}' does not exist in {vault}: set it with "
                f"`az keyvault secret set --vault-name <vault> --name {name} --file key.txt`"
            ) from None
        except (ClientAuthenticationError, HttpResponseError) as error:
            status = getattr(error, "status_code", None)
            hint = (
                ": the app's identity needs the 'Key Vault Secrets User' role on the vault"
                if status in (401, 403)
                else ""
            )
            raise SecretUnavailable(
                f"Key Vault {vault} refused to read secret '{name}' "
                f"(HTTP {status or 'error'}, {type(error).__name__}){hint}"
            ) from None
        except AzureError as error:  # unreachable, TLS, timeouts, after the SDK's retries
            raise SecretUnavailable(
                f"Key Vault {vault} could not be reached to read secret '{name}' "
                f"({type(error).__name__})"
            ) from None
        if not value:
            raise ConfigurationError(f"Key Vault secret '{name}' in {vault} is empty")
        return value
