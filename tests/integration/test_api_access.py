"""Who may use the HTTP API, through its entry points on Azurite: with EXPORT_API_AUTH=entra the
app roles in App Service Authentication's client-principal header decide, and a connection's
`allowed_roles` narrow who may run exports through it; with function keys no role is checked.

There is no local App Service Authentication, so the tests send the header Easy Auth would add.
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.functions import HttpRequest

from functions import http_api as routes
from shared.adapters.services import Services
from shared.adapters.settings import load_settings
from shared.core.access import ADMIN, READ, RUN
from shared.core.messages import ExportJob
from shared.core.resource_names import JOBS_QUEUE
from shared.core.runs import Run, Status
from shared.entrypoints import http_api as api
from shared.entrypoints.http_api import ApiResponse
from tests.core.test_access import principal
from tests.integration.conftest import App, export_definition, take

PRINCIPAL = "X-MS-CLIENT-PRINCIPAL"


def as_caller(*roles: str) -> dict[str, str]:
    return {PRINCIPAL: principal(*roles)}


@pytest.fixture
def entra(quiet_app: App) -> Services:
    """The app's services as deployed behind App Service Authentication."""
    return Services(load_settings({**quiet_app.env, "EXPORT_API_AUTH": "entra"}))


def _define(app: App, name: str, **connection: Any) -> None:
    app.upload(f"access/{name}.csv", b"CustomerId,Email\nc-1,c1@example.com\n")
    app.define([export_definition(name, f"access/{name}.csv", "Access")], **connection)


def _run_ids(app: App, name: str) -> list[str]:
    return [run.run_id for run in app.services.runs.list_runs(name)]


def _assert_started(app: App, name: str, response: ApiResponse) -> None:
    """202, and the run exists and its planning job is queued."""
    assert response.status == 202, response.body
    run_id = response.body["run_id"]
    assert _run_ids(app, name) == [run_id]
    assert [job.run_id for job in take(app, JOBS_QUEUE, ExportJob, run_id)] == [run_id]


def _assert_refused(response: ApiResponse, status: int, *named: str) -> None:
    assert response.status == status, response.body
    assert response.body["error"] == ("unauthenticated" if status == 401 else "forbidden")
    assert all(role in response.body["message"] for role in named), response.body
    # Nothing of the principal comes back: not its base64 (JSON objects encode as eyJ...), nor
    # the caller's name in it.
    assert "eyJ" not in response.json() and "Ada Operator" not in response.json()


def _finished_run(app: App, name: str) -> Run:
    """A finished run of the export, as a replay would find it."""
    run = Run(f"{name}-done", name, "Access", "sandbox", f"segments/access/{name}.csv", "test")
    app.services.runs.claim_export(name, run.run_id)
    run.status = Status.PARTIALLY_SUCCEEDED
    app.services.runs.create(run)
    return run


def test_a_reader_may_read_but_not_start_replay_or_tear_down(
    quiet_app: App, entra: Services
) -> None:
    _define(quiet_app, "acc-reader")
    done = _finished_run(quiet_app, "acc-reader")
    reader = as_caller(READ)

    assert api.list_exports(entra, headers=reader).status == 200
    history = api.list_export_runs(entra, "acc-reader", None, headers=reader)
    assert history.status == 200 and [r["run_id"] for r in history.body["runs"]] == [done.run_id]
    assert api.get_run(entra, done.run_id, headers=reader).body["status"] == done.status

    _assert_refused(api.start_export_run(entra, "acc-reader", b"", headers=reader), 403, RUN)
    _assert_refused(api.start_teardown(entra, "acc-reader", b"", headers=reader), 403, ADMIN)
    _assert_refused(api.replay(entra, done.run_id, headers=reader), 403, RUN)
    assert _run_ids(quiet_app, "acc-reader") == [done.run_id]
    after = quiet_app.services.runs.get(done.run_id)
    assert after is not None and (after.status, after.replay_round) == (done.status, 0)


def test_a_runner_holding_the_connections_role_starts_a_run(
    quiet_app: App, entra: Services
) -> None:
    _define(quiet_app, "acc-runner", allowed_roles=["Braze.Sandbox", "Braze.All"])

    response = api.start_export_run(
        entra, "acc-runner", b'{"dry_run": true}', headers=as_caller(RUN, "Braze.All")
    )

    _assert_started(quiet_app, "acc-runner", response)
    assert response.body["dry_run"] is True and response.body["trigger"] == "http"


def test_a_runner_without_the_connections_role_starts_and_replays_nothing(
    quiet_app: App, entra: Services
) -> None:
    _define(quiet_app, "acc-other", allowed_roles=["Braze.Prod"])
    done = _finished_run(quiet_app, "acc-other")
    runner = as_caller(RUN, "Braze.Staging")

    _assert_refused(
        api.start_export_run(entra, "acc-other", b"", headers=runner),
        403,
        "'sandbox'",
        "Braze.Prod",
    )
    _assert_refused(api.replay(entra, done.run_id, headers=runner), 403, "Braze.Prod")
    # Exports.Admin does not stand in for the connection's role.
    admin = as_caller(ADMIN)
    _assert_refused(api.start_teardown(entra, "acc-other", b"", headers=admin), 403, "Braze.Prod")

    assert _run_ids(quiet_app, "acc-other") == [done.run_id]
    after = quiet_app.services.runs.get(done.run_id)
    assert after is not None and (after.status, after.replay_round) == (done.status, 0)


def test_an_admin_tears_down_and_a_runner_may_not(quiet_app: App, entra: Services) -> None:
    _define(quiet_app, "acc-admin")

    refused = api.start_teardown(entra, "acc-admin", b"", headers=as_caller(RUN))
    _assert_refused(refused, 403, ADMIN)
    assert _run_ids(quiet_app, "acc-admin") == []

    response = api.start_teardown(entra, "acc-admin", b"", headers=as_caller(ADMIN))
    _assert_started(quiet_app, "acc-admin", response)
    assert response.body["teardown"] is True


def test_replaying_a_teardown_needs_admin_as_the_teardown_did(
    quiet_app: App, entra: Services
) -> None:
    _define(quiet_app, "acc-replay-teardown")
    done = _finished_run(quiet_app, "acc-replay-teardown")
    done.teardown = True
    quiet_app.services.runs.update(done)

    _assert_refused(api.replay(entra, done.run_id, headers=as_caller(RUN)), 403, ADMIN)
    stored = quiet_app.services.runs.get(done.run_id)
    assert stored is not None and stored.status == Status.PARTIALLY_SUCCEEDED
    assert stored.replay_round == 0


@pytest.mark.parametrize(
    ("case", "headers"),
    [
        ("none", {}),
        ("no-claims", {PRINCIPAL: "eyJmb3JnZWQiOiB0cnVlfQ=="}),  # {"forged": true}
        ("not-base64", {PRINCIPAL: "%%% not base64 %%%"}),
    ],
)
def test_without_a_valid_principal_every_route_is_401_in_entra_mode(
    quiet_app: App, entra: Services, case: str, headers: dict[str, str]
) -> None:
    name = f"acc-anon-{case}"
    _define(quiet_app, name)
    done = _finished_run(quiet_app, name)

    responses = [
        api.list_exports(entra, headers=headers),
        api.list_export_runs(entra, name, None, headers=headers),
        api.get_run(entra, done.run_id, headers=headers),
        api.start_export_run(entra, name, b"", headers=headers),
        api.start_teardown(entra, name, b"", headers=headers),
        api.replay(entra, done.run_id, headers=headers),
    ]

    for response in responses:
        _assert_refused(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert all(value not in response.json() for value in headers.values())
    assert _run_ids(quiet_app, name) == [done.run_id]


def test_function_key_mode_ignores_a_forged_principal(quiet_app: App) -> None:
    """Without Easy Auth in front the header is whatever the caller sent: it neither grants
    nor refuses anything, and a connection's allowed_roles are not enforced."""
    _define(quiet_app, "acc-keys", allowed_roles=["Braze.Prod"])
    forged = as_caller(READ)

    response = api.start_export_run(quiet_app.services, "acc-keys", b"", headers=forged)

    _assert_started(quiet_app, "acc-keys", response)


def test_the_http_routes_pass_the_request_headers_on(
    quiet_app: App, entra: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through functions/http_api.py, as the host calls it (header names in any case)."""
    monkeypatch.setattr("shared.adapters.services.app_services", lambda: entra)
    _define(quiet_app, "acc-route", allowed_roles=["Braze.Sandbox"])

    def post(headers: dict[str, str]) -> Any:
        request = HttpRequest(
            "POST",
            "http://localhost/api/exports/acc-route/runs",
            headers=headers,
            route_params={"name": "acc-route"},
            body=b"",
        )
        return routes.start_export_run(request)

    anonymous = post({})
    assert anonymous.status_code == 401 and anonymous.mimetype == "application/json"
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert post({"x-ms-client-principal": principal(READ)}).status_code == 403
    assert _run_ids(quiet_app, "acc-route") == []

    started = post({"X-Ms-Client-Principal": principal(RUN, "Braze.Sandbox")})
    assert started.status_code == 202
    assert len(_run_ids(quiet_app, "acc-route")) == 1
