"""Reading app settings and connections the way the host does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devhost.settings import (
    SettingsError,
    merge_settings,
    read_local_settings,
    resolve_setting_expressions,
    storage_connection_string,
)


def test_environment_wins_over_local_settings(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {"A": "file", "B": "file", "FLAG": True}}))

    settings = merge_settings(read_local_settings(path), {"B": "environment"})

    assert settings == {"A": "file", "B": "environment", "FLAG": "true"}


def test_encrypted_local_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": True, "Values": {}}))

    with pytest.raises(SettingsError, match="encrypted"):
        read_local_settings(path)


def test_setting_expressions_resolve_anywhere_in_a_name_ignoring_case() -> None:
    settings = {"ENVIRONMENT": "dev", "Queue_Name": "jobs"}

    assert resolve_setting_expressions("%queue_name%-%ENVIRONMENT%", settings) == "jobs-dev"


def test_unknown_setting_expressions_fail_like_the_host() -> None:
    with pytest.raises(SettingsError, match="'%MISSING%' does not resolve to a value"):
        resolve_setting_expressions("%MISSING%", {})


def test_connection_names_are_looked_up_with_the_azurewebjobs_prefix_first() -> None:
    settings = {"AzureWebJobsStorage": "host storage", "Exports": "exports", "AzureWebJobsX": "x"}

    assert storage_connection_string("", settings) == "host storage"
    assert storage_connection_string("AzureWebJobsStorage", settings) == "host storage"
    assert storage_connection_string("Storage", settings) == "host storage"
    assert storage_connection_string("Exports", settings) == "exports"
    assert storage_connection_string("X", settings) == "x"


def test_identity_based_connections_are_refused_with_a_way_out() -> None:
    settings = {"Exports__queueServiceUri": "https://account.queue.core.windows.net"}

    with pytest.raises(SettingsError, match=r"identity-based.*UseDevelopmentStorage=true"):
        storage_connection_string("Exports", settings)


def test_missing_connections_say_which_setting_to_add() -> None:
    with pytest.raises(SettingsError, match="connection 'Exports' is not set"):
        storage_connection_string("Exports", {})
