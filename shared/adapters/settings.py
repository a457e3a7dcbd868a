"""Settings, read from the environment only when asked for."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from shared.core.access import AuthMode
from shared.core.resource_names import STORAGE_CONNECTION

AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)


class ConfigurationError(Exception):
    """A required setting is missing or malformed; the message names the setting."""


@dataclass(frozen=True)
class StorageSettings:
    """How to reach the storage account: a connection string locally, managed identity in Azure."""

    connection_string: str | None
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    client_id: str | None = None

    @property
    def is_local_emulator(self) -> bool:
        text = self.connection_string or ""
        return "devstoreaccount1" in text or text.strip() == "UseDevelopmentStorage=true"


@dataclass(frozen=True)
class Settings:
    """Everything the exporter reads from app settings (README: configuration reference)."""

    storage: StorageSettings
    definitions_path: str | None
    definitions_blob: str | None
    key_vault_url: str | None
    azure_client_id: str | None
    environ: Mapping[str, str]

    @property
    def max_dequeue_count(self) -> int:
        """Attempts the host makes before poisoning a queue message (host.json or override)."""
        override = self.environ.get("AzureFunctionsJobHost__extensions__queues__maxDequeueCount")
        if override:
            return int(override)
        host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
        return int(host.get("extensions", {}).get("queues", {}).get("maxDequeueCount", 5))

    @property
    def stall_after(self) -> timedelta:
        """How long a run may go without any progress before it is ended as stalled."""
        text = self.environ.get("EXPORT_STALL_MINUTES", "30")
        try:
            minutes = float(text)
        except ValueError:
            raise ConfigurationError(
                f"EXPORT_STALL_MINUTES must be a number of minutes, got {text!r}"
            ) from None
        return timedelta(minutes=minutes)

    @property
    def split_bytes(self) -> int:
        """Plain source files larger than this are cut into ranges of about this size, each
        split by its own job in parallel (EXPORT_SPLIT_MIB, default 8)."""
        text = self.environ.get("EXPORT_SPLIT_MIB", "8")
        try:
            mib = float(text)
        except ValueError:
            mib = 0.0
        if not mib > 0:
            raise ConfigurationError(f"EXPORT_SPLIT_MIB must be a positive number, got {text!r}")
        return max(1, int(mib * 1024 * 1024))

    @property
    def allow_loopback_endpoints(self) -> bool:
        """Local development only: connections to 127.0.0.1/localhost (the Braze sandbox) may
        receive their API key (EXPORT_ALLOW_LOOPBACK_ENDPOINTS=true)."""
        return self.environ.get("EXPORT_ALLOW_LOOPBACK_ENDPOINTS", "").lower() in ("true", "1")

    @property
    def api_auth(self) -> AuthMode:
        """Who the HTTP API trusts (EXPORT_API_AUTH): `function-key` (default), or `entra`, set
        only where App Service Authentication is in front, since only there is the caller's
        identity header the platform's and not whatever the caller sent. Any other value is
        refused rather than read as the weaker mode."""
        text = self.environ.get("EXPORT_API_AUTH") or AuthMode.FUNCTION_KEY.value
        try:
            mode = AuthMode(text.strip().lower())
        except ValueError:
            modes = " or ".join(f"'{mode.value}'" for mode in AuthMode)
            raise ConfigurationError(f"EXPORT_API_AUTH must be {modes}, got {text!r}") from None
        in_azure = bool(self.environ.get("WEBSITE_INSTANCE_ID"))
        easy_auth = self.environ.get("WEBSITE_AUTH_ENABLED", "").lower() == "true"
        if mode is AuthMode.ENTRA and in_azure and not easy_auth:
            # The platform sets WEBSITE_AUTH_ENABLED=True when App Service Authentication is on.
            # Without it, any key holder could forge the identity header: refuse every call.
            raise ConfigurationError(
                "EXPORT_API_AUTH is 'entra' but App Service Authentication is not enabled on "
                "this app (WEBSITE_AUTH_ENABLED); set API_CLIENT_ID and provision again"
            )
        return mode

    def local_secret(self, secret_name: str) -> str | None:
        """A Braze API key from the environment, used when no Key Vault is configured."""
        return self.environ.get(secret_env_name(secret_name))


def secret_env_name(secret_name: str) -> str:
    """`braze-prod-key` -> `BRAZE_SECRET_BRAZE_PROD_KEY` (secret names allow only [0-9A-Za-z-])."""
    return "BRAZE_SECRET_" + secret_name.upper().replace("-", "_")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from an environment mapping (the process environment by default)."""
    env = dict(os.environ if environ is None else environ)
    prefix = f"{STORAGE_CONNECTION}__"
    connection = env.get(STORAGE_CONNECTION)
    if connection and connection.strip() == "UseDevelopmentStorage=true":
        connection = AZURITE_CONNECTION_STRING
    storage = StorageSettings(
        connection_string=connection,
        blob_service_uri=env.get(prefix + "blobServiceUri"),
        queue_service_uri=env.get(prefix + "queueServiceUri"),
        table_service_uri=env.get(prefix + "tableServiceUri"),
        client_id=env.get(prefix + "clientId") or env.get("AZURE_CLIENT_ID"),
    )
    if not storage.connection_string and not (
        storage.blob_service_uri and storage.queue_service_uri and storage.table_service_uri
    ):
        raise ConfigurationError(
            f"storage is not configured: set {STORAGE_CONNECTION} to a connection string, or "
            f"{prefix}blobServiceUri, {prefix}queueServiceUri and {prefix}tableServiceUri "
            "for a managed identity"
        )
    return Settings(
        storage=storage,
        definitions_path=env.get("EXPORT_DEFINITIONS_PATH"),
        definitions_blob=env.get("EXPORT_DEFINITIONS_BLOB"),
        key_vault_url=env.get("KEY_VAULT_URL"),
        azure_client_id=env.get("AZURE_CLIENT_ID"),
        environ=env,
    )


def apply_local_settings(path: Path, environ: dict[str, str] | None = None) -> None:
    """Copy `Values` of a Core Tools local.settings.json into the environment; set ones win."""
    target = os.environ if environ is None else environ
    values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    for name, value in values.items():
        target.setdefault(name, str(value))
