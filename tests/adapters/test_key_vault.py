"""The real `SecretClient` against a local Key Vault at the wire level (tests/key_vault_double)."""

from __future__ import annotations

import pytest

from shared.adapters.key_vault import SecretProvider, SecretUnavailable
from shared.adapters.settings import ConfigurationError, load_settings
from tests.key_vault_double import KeyVaultDouble, StaticTokenCredential

SECRET = "braze-prod-key"
VALUE = "k3y-ÿ-" + "x" * 40  # what must never show up in an error


def provider(
    vault: KeyVaultDouble, credential: StaticTokenCredential | None = None
) -> SecretProvider:
    """The app's provider on the local vault: the real SecretClient, trusting its certificate.

    The challenge names the vault's own origin as its resource, which the SDK's domain check
    (made for *.vault.azure.net) cannot match on 127.0.0.1, so that one check is off here.
    No retries, so the outage cases are quick (the app keeps the SDK's default of three).
    """
    settings = load_settings(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "KEY_VAULT_URL": vault.url}
    )
    return SecretProvider(
        settings,
        credential=credential or StaticTokenCredential(),
        client_options={
            "connection_verify": str(vault.cert_path),
            "verify_challenge_resource": False,
            "retry_total": 0,
        },
    )


def test_first_read_answers_the_challenge_and_returns_the_secret(vault: KeyVaultDouble) -> None:
    vault.set_secret(SECRET, VALUE)
    credential = StaticTokenCredential()

    assert provider(vault, credential).get(SECRET) == VALUE

    seen = vault.state.seen
    assert [bool(s.authorization) for s in seen] == [False, True]  # challenge, then the read
    assert all(s.path.rstrip("/") == f"/secrets/{SECRET}" for s in seen)
    assert all(s.query.get("api-version") for s in seen)
    assert credential.scopes == [(f"{vault.url}/.default",)]


def test_a_cached_secret_is_not_read_again_until_refreshed(vault: KeyVaultDouble) -> None:
    vault.set_secret(SECRET, "old-key")
    secrets = provider(vault)
    assert secrets.get(SECRET) == "old-key"
    vault.set_secret(SECRET, "rotated-key")

    assert secrets.get(SECRET) == "old-key"  # the cache: Key Vault is not read per request
    assert vault.secret_reads(SECRET) == 1
    assert secrets.get(SECRET, refresh=True) == "rotated-key"  # what a Braze 401 asks for
    assert secrets.get(SECRET) == "rotated-key"
    assert vault.secret_reads(SECRET) == 2


def test_a_missing_secret_is_named_and_no_other_value_shown(vault: KeyVaultDouble) -> None:
    vault.set_secret("another-key", VALUE)

    with pytest.raises(ConfigurationError) as raised:
        provider(vault).get(SECRET)

    message = str(raised.value)
    assert f"'{SECRET}' does not exist in {vault.url}" in message
    assert VALUE not in message and not isinstance(raised.value, SecretUnavailable)


def test_a_refused_read_names_the_role_the_identity_needs(vault: KeyVaultDouble) -> None:
    vault.set_secret(SECRET, VALUE)
    vault.state.forbidden = True

    with pytest.raises(SecretUnavailable) as raised:
        provider(vault).get(SECRET)

    message = str(raised.value)
    assert "HTTP 403" in message and "Key Vault Secrets User" in message and SECRET in message
    assert VALUE not in message


def test_an_unreachable_vault_fails_clearly_and_caches_nothing(vault: KeyVaultDouble) -> None:
    vault.set_secret(SECRET, VALUE)
    vault.state.down = True
    secrets = provider(vault)

    with pytest.raises(SecretUnavailable) as raised:
        secrets.get(SECRET)
    assert f"{vault.url} could not be reached to read secret '{SECRET}'" in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__

    vault.state.down = False  # the vault is back: the next read succeeds
    assert secrets.get(SECRET) == VALUE
