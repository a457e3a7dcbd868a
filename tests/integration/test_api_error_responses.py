"""Error responses of the HTTP API never carry a secret, a stack trace, or more than a bounded
prefix of what the caller sent: hostile names and bodies, and internal failures (storage that
refuses the app's key or cannot be reached, a setting that is wrong, an error whose text holds
the API key, a Key Vault that is down), through the entry points on Azurite."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest
from azure.functions import HttpRequest

from devtools.sample import make_segment
from functions import http_api as routes
from shared.adapters.services import Services
from shared.adapters.settings import load_settings
from shared.core.messages import ExportJob
from shared.core.resource_names import JOBS_QUEUE
from shared.core.runs import Status
from shared.entrypoints import http_api as api
from shared.entrypoints.http_api import ECHO_CHARS, ApiResponse
from tests.integration.conftest import SANDBOX_KEY, App, export_definition, plan_in_process, take
from tests.integration.test_key_vault_runs import SECRET, vault_secrets
from tests.key_vault_double import KeyVaultDouble

TAIL = "END-OF-HOSTILE-INPUT"  # the end of every long input: never echoed
LONG = "a" * 20_000 + TAIL
LOOKS_SECRET = "sk_live_9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c"
BODY_BOUND = 1_000  # characters: a message names at most a prefix of the input and the rules


def assert_safe(response: ApiResponse, *secrets: str) -> None:
    """No trace, no secret, nothing past a bounded prefix of the input."""
    text = response.json()
    assert response.body["error"] and response.body["message"], text
    assert "Traceback" not in text and 'File "' not in text, text
    assert TAIL not in text and len(text) < BODY_BOUND, text[:300]
    for secret in (SANDBOX_KEY, LOOKS_SECRET, *secrets):
        assert secret not in text, text


@pytest.fixture
def hostile(quiet_app: App) -> App:
    quiet_app.upload("errors/seg.csv", make_segment(5, id_prefix="err").data)
    quiet_app.define([export_definition("err-ok", "errors/seg.csv", "Errors")])
    return quiet_app


Call = Callable[[Services], ApiResponse]


def _start(body: Any) -> Call:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda s: api.start_export_run(s, "err-ok", data, headers={})


HOSTILE = [
    pytest.param(
        lambda s: api.start_export_run(s, "../x", b"", headers={}), 400, "invalid_name",
        id="start-traversal",
    ),
    pytest.param(
        lambda s: api.start_export_run(s, "..%2Fx", b"", headers={}), 400, "invalid_name",
        id="start-encoded-traversal",
    ),
    pytest.param(
        lambda s: api.start_export_run(s, LONG, b"", headers={}), 400, "invalid_name",
        id="start-20kb-name",
    ),
    pytest.param(
        lambda s: api.start_teardown(s, "err-ok\n", b"", headers={}), 400, "invalid_name",
        id="teardown-newline",
    ),
    pytest.param(
        lambda s: api.list_export_runs(s, LONG, None, headers={}), 400, "invalid_name",
        id="runs-20kb-name",
    ),
    pytest.param(
        lambda s: api.list_export_runs(s, "err-ok", "9" * 20_000, headers={}), 400,
        "invalid_limit", id="runs-20kb-limit",
    ),
    pytest.param(
        lambda s: api.get_run(s, "../../etc/passwd", headers={}), 400, "invalid_run_id",
        id="run-traversal",
    ),
    pytest.param(
        lambda s: api.get_run(s, LONG, headers={}), 400, "invalid_run_id", id="run-20kb-id"
    ),
    pytest.param(
        lambda s: api.replay(s, LONG, headers={}), 400, "invalid_run_id", id="replay-20kb-id"
    ),
    pytest.param(_start(LONG.encode()), 413, "body_too_large", id="body-20kb"),
    pytest.param(_start({"dry_run": LOOKS_SECRET}), 400, "invalid_body", id="secret-value"),
    pytest.param(_start({"api_key": LOOKS_SECRET}), 400, "invalid_body", id="secret-option"),
    pytest.param(_start({"x" * 15_000 + TAIL: True}), 400, "invalid_body", id="15kb-option"),
    pytest.param(
        _start({f"o{n:03}-{'y' * 70}": 1 for n in range(150)}), 400, "invalid_body",
        id="150-options",
    ),
    pytest.param(
        _start(f'{{"dry_run": true, "{LOOKS_SECRET}"'.encode()), 400, "invalid_body",
        id="secret-in-broken-json",
    ),
    pytest.param(_start(b"[" * 16_000), 400, "invalid_body", id="nested-16k-deep"),
    pytest.param(
        _start(b"\xff\xfe{\x00" + LOOKS_SECRET.encode()), 400, "invalid_body", id="not-utf8"
    ),
    pytest.param(
        lambda s: api.start_teardown(s, "err-ok", b'{"full_refresh": true}', headers={}), 400,
        "invalid_body", id="teardown-option",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("call", "status", "code"), HOSTILE)
def test_hostile_names_and_bodies_get_a_bounded_error_and_start_nothing(
    hostile: App, call: Call, status: int, code: str
) -> None:
    response = call(hostile.services)

    assert (response.status, response.body["error"]) == (status, code), response.body
    assert_safe(response)
    assert hostile.services.runs.list_runs("err-ok") == []


def test_the_unknown_options_named_back_are_cut_short(hostile: App) -> None:
    body = json.dumps({"x" * 200: True, "api_key": LOOKS_SECRET}).encode()
    response = api.start_export_run(hostile.services, "err-ok", body, headers={})
    assert response.body["message"] == (
        f"unknown option(s) ['api_key', '{'x' * ECHO_CHARS}']; allowed: "
        "['dry_run', 'full_refresh', 'override_safety_valves']"
    )


# ---- internal failures ------------------------------------------------------------------------


def _assert_internal_error(
    response: ApiResponse, caplog: pytest.LogCaptureFixture, *secrets: str
) -> None:
    """A 500 naming a correlation id, which the log line holding the error carries too."""
    assert (response.status, response.body["error"]) == (500, "internal_error"), response.body
    assert_safe(response, *secrets)
    correlation_id = response.body["correlation_id"]
    assert correlation_id in response.body["message"]
    (record,) = [r for r in caplog.records if correlation_id in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None


def _every_route(services: Services, name: str) -> list[ApiResponse]:
    return [
        api.list_exports(services, headers={}),
        api.list_export_runs(services, name, None, headers={}),
        api.get_run(services, f"{name}-20261128T120000Z-abcdef", headers={}),
        api.start_export_run(services, name, b"", headers={}),
        api.start_teardown(services, name, b"", headers={}),
        api.replay(services, f"{name}-20261128T120000Z-abcdef", headers={}),
    ]


def _setting_part(app: App, pattern: str) -> str:
    found = re.search(pattern, app.env["AzureWebJobsStorage"])
    assert found is not None
    return found.group(1)


def _storage_changed(app: App, old: str, new: str) -> Services:
    """The app's services with `old` replaced by `new` in the storage connection string."""
    connection = app.env["AzureWebJobsStorage"].replace(old, new)
    return Services(load_settings({**app.env, "AzureWebJobsStorage": connection}))


def test_storage_refusing_the_apps_key_is_a_500_that_names_neither_key(
    hostile: App, caplog: pytest.LogCaptureFixture
) -> None:
    real_key = _setting_part(hostile, r"AccountKey=([^;]+)")
    wrong_key = base64.b64encode(f"not-the-storage-key-{LOOKS_SECRET}".encode()).decode()
    refused = _storage_changed(hostile, real_key, wrong_key)

    with caplog.at_level(logging.ERROR, logger=api.__name__):
        responses = _every_route(refused, "err-ok")

    for response in responses:
        _assert_internal_error(response, caplog, real_key, wrong_key)
    assert len({r.body["correlation_id"] for r in responses}) == len(responses)
    assert hostile.services.runs.list_runs("err-ok") == []


def test_unreachable_storage_is_a_500(hostile: App, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    table = _setting_part(hostile, r"TableEndpoint=(http://[^/;]+)")
    unreachable = _storage_changed(hostile, table, f"http://127.0.0.1:{closed}")

    with caplog.at_level(logging.ERROR, logger=api.__name__):
        response = api.get_run(unreachable, "err-ok-20261128T120000Z-abcdef", headers={})

    _assert_internal_error(response, caplog, f"127.0.0.1:{closed}")


def test_an_unknown_api_auth_mode_fails_closed(
    hostile: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in EXPORT_API_AUTH must not fall back to function keys: nothing is served."""
    mistyped = Services(load_settings({**hostile.env, "EXPORT_API_AUTH": "entra-id"}))

    with caplog.at_level(logging.ERROR, logger=api.__name__):
        responses = _every_route(mistyped, "err-ok")

    for response in responses:
        _assert_internal_error(response, caplog, "entra-id")
    assert "EXPORT_API_AUTH must be 'function-key' or 'entra'" in caplog.text
    assert hostile.services.runs.list_runs("err-ok") == []


def test_an_error_whose_text_holds_the_api_key_is_not_passed_on(
    hostile: App, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def leaky(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"Authorization: Bearer {SANDBOX_KEY} was refused")

    monkeypatch.setattr(hostile.services.runs, "list_runs", leaky)
    with caplog.at_level(logging.ERROR, logger=api.__name__):
        response = api.list_export_runs(hostile.services, "err-ok", "5", headers={})

    _assert_internal_error(response, caplog, "was refused")


def test_the_http_route_answers_the_500_as_json(
    hostile: App, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host never sees the exception: functions/http_api.py gets a response to send."""
    broken = Services(load_settings({**hostile.env, "EXPORT_DEFINITIONS_PATH": "/nonexistent"}))
    monkeypatch.setattr("shared.adapters.services.app_services", lambda: broken)
    request = HttpRequest("GET", "http://localhost/api/exports", headers={}, body=b"")

    with caplog.at_level(logging.ERROR, logger=api.__name__):
        response = routes.list_exports(request)

    assert response.status_code == 500 and response.mimetype == "application/json"
    body = json.loads(response.get_body())
    assert body["error"] == "internal_error" and body["correlation_id"] in caplog.text
    assert "/nonexistent" not in response.get_body().decode()


def test_a_run_failed_by_a_key_vault_that_is_down_is_reported_without_the_key(
    hostile: App, vault: KeyVaultDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API never reads the key itself (a run does, at release): the start is accepted,
    and the failed run it reads back names the vault and secret, never a value."""
    vault.set_secret(SECRET, SANDBOX_KEY)
    vault.state.down = True
    monkeypatch.setattr(hostile.services, "secrets", vault_secrets(vault, hostile.env))
    hostile.mark_sandbox_requests()

    started = api.start_export_run(hostile.services, "err-ok", b"", headers={})
    assert started.status == 202, started.body
    run_id = started.body["run_id"]
    run = hostile.services.runs.get(run_id)
    assert run is not None and take(hostile, JOBS_QUEUE, ExportJob, run_id)
    assert plan_in_process(hostile, run) == []  # the release read no key: nothing to deliver

    response = api.get_run(hostile.services, run_id, headers={})
    assert response.status == 200 and response.body["status"] == Status.FAILED
    assert f"could not be reached to read secret '{SECRET}'" in response.body["message"]
    text = response.json()
    assert SANDBOX_KEY not in text and "Traceback" not in text and 'File "' not in text
    assert hostile.sandbox_requests() == []
