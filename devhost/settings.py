"""App settings as Core Tools assembles them, and the host's ways of reading them.

Core Tools exports local.settings.json `Values` as environment variables unless the variable is
already set, and the host reads settings case-insensitively (.NET configuration keys are).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

DEFAULT_CONNECTION = "Storage"
CONNECTION_PREFIX = "AzureWebJobs"
_SETTING_EXPRESSION = re.compile(r"%([^%]+)%")


class SettingsError(Exception):
    """A setting is missing or has a form devhost cannot use."""


def read_local_settings(path: Path) -> dict[str, str]:
    """The `Values` of a local.settings.json file, as strings."""
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise SettingsError(f"cannot read {path}: {error}") from error
    if document.get("IsEncrypted"):
        raise SettingsError(f"{path} is encrypted; devhost reads only plain-text settings")
    values = document.get("Values") or {}
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: 'Values' must be an object")
    return {
        str(name): value if isinstance(value, str) else json.dumps(value)
        for name, value in values.items()
    }


def merge_settings(local_values: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Local settings under the environment: a variable that is already set wins."""
    return {**local_values, **environ}


def lookup_setting(settings: Mapping[str, str], name: str) -> str | None:
    """A setting by name, ignoring case like .NET configuration does."""
    key = _setting_key(settings, name)
    return None if key is None else settings[key]


def resolve_setting_expressions(text: str, settings: Mapping[str, str]) -> str:
    """Replace each `%NAME%` with that app setting, failing like the host on unknown names."""

    def substitute(match: re.Match[str]) -> str:
        value = lookup_setting(settings, match.group(1))
        if value is None:
            raise SettingsError(f"'{match.group(0)}' does not resolve to a value")
        return value

    return _SETTING_EXPRESSION.sub(substitute, text)


def storage_connection_string(connection: str | None, settings: Mapping[str, str]) -> str:
    """The connection string a binding's `connection` names; see `connection_setting`."""
    return connection_setting(connection, settings)[1]


def connection_setting(connection: str | None, settings: Mapping[str, str]) -> tuple[str, str]:
    """The app setting a binding's `connection` names, as (setting name, connection string).

    The host tries `AzureWebJobs<name>` before `<name>`, and an empty name means the host's own
    storage (`AzureWebJobsStorage`). The name is the setting's key as stored, which is what the
    SDK-type extensions look up in the environment. Identity-based connections
    (`<name>__queueServiceUri`, ...) need Entra ID credentials that a local emulator has no use
    for, so they are refused clearly.
    """
    name = connection or DEFAULT_CONNECTION
    for candidate in (CONNECTION_PREFIX + name, name):
        key = _setting_key(settings, candidate)
        if key is not None and settings[key]:
            return key, settings[key]
        section = candidate.casefold() + "__"
        identity_keys = sorted(key for key in settings if key.casefold().startswith(section))
        if identity_keys:
            raise SettingsError(
                f"connection '{name}' is identity-based ({', '.join(identity_keys)}); devhost "
                f"needs a connection string: set '{candidate}' to e.g. UseDevelopmentStorage=true"
            )
    raise SettingsError(
        f"connection '{name}' is not set: add an app setting '{name}' (or "
        f"'{CONNECTION_PREFIX}{name}') holding a connection string, e.g. UseDevelopmentStorage=true"
    )


def _setting_key(settings: Mapping[str, str], name: str) -> str | None:
    if name in settings:
        return name
    folded = name.casefold()
    return next((key for key in settings if key.casefold() == folded), None)
