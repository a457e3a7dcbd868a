"""Braze keys from Key Vault in real runs: the real SecretClient on a local vault
(tests/key_vault_double), the sandbox and Azurite."""

from __future__ import annotations

import json

import pytest

from devtools.processes import Sandbox
from shared.adapters.braze_client import BrazeClient
from shared.adapters.key_vault import SecretProvider
from shared.adapters.settings import load_settings
from shared.core.runs import Status
from tests.integration.conftest import SANDBOX_KEY, App, export_definition, run_in_process
from tests.key_vault_double import KeyVaultDouble, StaticTokenCredential

SECRET = "braze-sandbox-key"  # the secret the test connection names


def vault_secrets(vault: KeyVaultDouble, env: dict[str, str]) -> SecretProvider:
    """The app's provider with KEY_VAULT_URL set, on the local vault (see test_key_vault)."""
    return SecretProvider(
        load_settings({**env, "KEY_VAULT_URL": vault.url}),
        credential=StaticTokenCredential(),
        client_options={
            "connection_verify": str(vault.cert_path),
            "verify_challenge_resource": False,
            "retry_total": 0,
        },
    )


def test_a_key_rotated_in_key_vault_is_used_after_braze_answers_401(
    vault: KeyVaultDouble, sandbox: Sandbox
) -> None:
    vault.set_secret(SECRET, "the-key-before-rotation")
    secrets = vault_secrets(vault, {"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    client = BrazeClient(sandbox.url, lambda refresh: secrets.get(SECRET, refresh=refresh))
    vault.set_secret(SECRET, SANDBOX_KEY)  # rotated after the client read (and cached) the key

    outcome = client.track(
        [json.dumps({"external_id": "rotated-1", "email": "r@example.com"}).encode()]
    )

    assert outcome.status == 201 and outcome.failure is None
    assert vault.secret_reads(SECRET) == 2  # the first read, and the re-read after the 401


def _messy_segment(app: App, path: str) -> None:
    rows = [
        "\ufeffCustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note",
        'kv-1,renee+vip@example.com,"Zoë, ""the"" boss",12,true,1980-01-31,"line one',
        'line two 🎉"',
        "kv-2,not-an-email,José,7,false,1990-02-01,",
        "kv-3,kv3@example.com,Ann,1,1,1970-01-01,plain",
    ]
    app.upload(path, ("\n".join(rows) + "\n").encode())


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("down", f"could not be reached to read secret '{SECRET}'"),
        ("missing", f"Key Vault secret '{SECRET}' does not exist"),
        ("garbled", "the Braze API key holds a line break or another control character"),
    ],
)
def test_an_unreadable_key_fails_the_run_at_release_with_nothing_sent(
    quiet_app: App,
    vault: KeyVaultDouble,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    expected: str,
) -> None:
    if fault == "down":
        vault.set_secret(SECRET, SANDBOX_KEY)
        vault.state.down = True
    if fault == "garbled":  # two lines pasted into the secret: the request's head would break
        vault.set_secret(SECRET, f"{SANDBOX_KEY}\nsecond line")
    name = f"kv-{fault}"
    _messy_segment(quiet_app, f"kv/{fault}.csv")
    quiet_app.define([export_definition(name, f"kv/{fault}.csv", "KV")])
    monkeypatch.setattr(quiet_app.services, "secrets", vault_secrets(vault, quiet_app.env))
    quiet_app.mark_sandbox_requests()

    final = run_in_process(quiet_app, name)

    assert final.status == Status.FAILED
    unusable = "cannot be used" if fault == "garbled" else "could not be read"
    assert final.message.startswith(f"the Braze API key {unusable}, so nothing was sent")
    assert expected in final.message and SANDBOX_KEY not in final.message
    assert final.rows_valid == 2 and final.requests_sent == 0
    assert quiet_app.sandbox_requests() == []
