"""EXPORT_API_AUTH: `entra` is trusted in Azure only where App Service Authentication is on,
since elsewhere any key holder could forge the identity header."""

from __future__ import annotations

import pytest

from shared.adapters.settings import ConfigurationError, load_settings
from shared.core.access import AuthMode

STORAGE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, AuthMode.FUNCTION_KEY),
        ({"EXPORT_API_AUTH": " Entra "}, AuthMode.ENTRA),  # locally: no platform to ask
        (
            {
                "EXPORT_API_AUTH": "entra",
                "WEBSITE_INSTANCE_ID": "i-1",
                "WEBSITE_AUTH_ENABLED": "True",
            },
            AuthMode.ENTRA,
        ),
        ({"EXPORT_API_AUTH": "function-key", "WEBSITE_INSTANCE_ID": "i-1"}, AuthMode.FUNCTION_KEY),
    ],
)
def test_the_mode_read(environ: dict[str, str], expected: AuthMode) -> None:
    assert load_settings({**STORAGE, **environ}).api_auth is expected


def test_entra_in_azure_without_app_service_authentication_is_refused() -> None:
    settings = load_settings(
        {**STORAGE, "EXPORT_API_AUTH": "entra", "WEBSITE_INSTANCE_ID": "instance-1"}
    )
    with pytest.raises(ConfigurationError, match="App Service Authentication is not enabled"):
        _ = settings.api_auth


def test_an_unknown_mode_is_refused_not_read_as_the_weaker_one() -> None:
    with pytest.raises(ConfigurationError, match="EXPORT_API_AUTH must be"):
        _ = load_settings({**STORAGE, "EXPORT_API_AUTH": "keys"}).api_auth
