"""A connection to this machine (the sandbox) receives its key only in local development."""

from __future__ import annotations

import pytest

from shared.adapters.services import Services
from shared.adapters.settings import ConfigurationError, load_settings
from shared.core.runs import Status
from tests.integration.conftest import App, export_definition, run_in_process

FLAG = "EXPORT_ALLOW_LOOPBACK_ENDPOINTS"
HEADER = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note\n"


def test_a_loopback_endpoint_outside_local_development_is_sent_nothing(
    quiet_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = (
        HEADER
        + 'lb-1,lb1@example.com,"Åsa, ""A""",5,true,2001-02-03,\nlb-2,lb2@example.com,Bo,,,,\n'
    )
    quiet_app.upload("allow-list/lb.csv", rows.encode())
    quiet_app.define([export_definition("loopback", "allow-list/lb.csv", "LB")])
    production = Services(load_settings({k: v for k, v in quiet_app.env.items() if k != FLAG}))
    monkeypatch.setattr(quiet_app, "services", production)
    quiet_app.mark_sandbox_requests()

    final = run_in_process(quiet_app, "loopback")

    assert final.status == Status.FAILED and final.requests_sent == 0
    assert f"points at {quiet_app.sandbox.url}, this machine rather than Braze" in final.message
    assert FLAG in final.message
    assert quiet_app.sandbox_requests() == []
    connection = production.definitions().connection("sandbox")
    with pytest.raises(ConfigurationError, match="only in local development"):
        production.braze(connection)  # the client (which reads the key) is never built


def test_the_same_run_is_delivered_in_local_development(quiet_app: App) -> None:
    rows = HEADER + "lb-3,lb3@example.com,Zoë,1,0,1999-12-31,🎉\n"
    quiet_app.upload("allow-list/dev.csv", rows.encode())
    quiet_app.define([export_definition("local-dev", "allow-list/dev.csv", "LB")])

    final = run_in_process(quiet_app, "local-dev")

    assert final.status == Status.SUCCEEDED and final.profiles_accepted == 1
    assert "lb-3" in quiet_app.braze_users()
