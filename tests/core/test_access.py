"""Reading the caller's app roles from App Service Authentication's client-principal header,
and deciding who may do what."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from shared.core.access import (
    ADMIN,
    READ,
    RUN,
    AuthMode,
    MalformedPrincipal,
    authorize,
    principal_roles,
)

LONG_ROLE_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"


def encoded(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


def principal(*roles: str, role_typ: str = "roles", typ: str = "roles") -> str:
    """A principal as Easy Auth writes it for an Entra ID token."""
    return encoded(
        {
            "auth_typ": "aad",
            "name_typ": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
            "role_typ": role_typ,
            "claims": [
                {"typ": "aud", "val": "api://exporter"},
                {"typ": "name", "val": "Ada Operator"},
                *({"typ": typ, "val": role} for role in roles),
            ],
        }
    )


def test_the_roles_are_the_claims_of_the_role_type() -> None:
    headers = {"X-MS-CLIENT-PRINCIPAL": principal(READ, "Braze.Prod")}
    assert principal_roles(headers) == {READ, "Braze.Prod"}


@pytest.mark.parametrize(
    ("role_typ", "typ"),
    [
        (LONG_ROLE_TYPE, LONG_ROLE_TYPE),  # claims mapped to the role_typ the principal names
        (LONG_ROLE_TYPE, "roles"),  # role_typ says the URI, the claims still say `roles`
    ],
)
def test_a_role_claim_type_other_than_roles_is_read_too(role_typ: str, typ: str) -> None:
    headers = {"x-ms-client-principal": principal(RUN, role_typ=role_typ, typ=typ)}
    assert principal_roles(headers) == {RUN}


def test_claims_of_other_types_are_not_roles() -> None:
    headers = {"x-ms-client-principal": principal(ADMIN, typ="scp")}
    assert principal_roles(headers) == frozenset()


@pytest.mark.parametrize(
    "name", ["X-MS-CLIENT-PRINCIPAL", "x-ms-client-principal", "X-Ms-Client-Principal"]
)
def test_header_names_are_matched_in_any_case(name: str) -> None:
    assert principal_roles({name: principal(ADMIN)}) == {ADMIN}


def test_padding_may_be_left_off() -> None:
    value = principal(RUN).rstrip("=")
    assert principal_roles({"x-ms-client-principal": value}) == {RUN}


@pytest.mark.parametrize("headers", [{}, {"x-ms-client-principal": "  "}, {"x-other": "x"}])
def test_no_principal_is_none(headers: dict[str, str]) -> None:
    assert principal_roles(headers) is None


@pytest.mark.parametrize(
    "value",
    [
        "not base64!",
        base64.b64encode(b"{not json").decode(),
        base64.b64encode(b"\xff\xfe\x00").decode(),
        encoded(["roles", ADMIN]),  # JSON, not an object
        encoded({"auth_typ": "aad", "role_typ": "roles"}),  # no claims
        encoded({"claims": {"typ": "roles", "val": ADMIN}}),  # claims not a list
        base64.b64encode(b"[" * 5000).decode(),  # nested too deeply to decode
    ],
    ids=["bad-base64", "bad-json", "bad-utf8", "not-object", "no-claims", "claims-object", "deep"],
)
def test_a_malformed_principal_is_refused(value: str) -> None:
    with pytest.raises(MalformedPrincipal):
        principal_roles({"x-ms-client-principal": value})


def test_claims_that_are_not_typ_and_val_strings_grant_nothing() -> None:
    value = encoded(
        {
            "role_typ": ["roles"],
            "claims": [
                "roles",
                {"typ": "roles"},
                {"typ": "roles", "val": [ADMIN]},
                {"typ": ["roles"], "val": ADMIN},
                {"typ": "roles", "val": READ},
            ],
        }
    )
    assert principal_roles({"x-ms-client-principal": value}) == {READ}


# ---- decisions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "needs", "allowed"),
    [
        ({READ}, READ, True),
        ({READ}, RUN, False),
        ({READ}, ADMIN, False),
        ({RUN}, READ, True),  # a runner follows the run it started
        ({RUN}, RUN, True),
        ({RUN}, ADMIN, False),
        ({ADMIN}, READ, True),
        ({ADMIN}, RUN, True),
        ({ADMIN}, ADMIN, True),
        ({"Braze.Prod"}, READ, False),  # a connection role alone grants no route
        (set(), READ, False),
    ],
)
def test_a_role_grants_itself_and_the_roles_below_it(
    roles: set[str], needs: str, allowed: bool
) -> None:
    headers = {"X-MS-CLIENT-PRINCIPAL": principal(*roles)}
    refusal = authorize(AuthMode.ENTRA, headers, needs)
    if allowed:
        assert refusal is None
    else:
        assert refusal is not None and (refusal.status, refusal.code) == (403, "forbidden")
        assert needs in refusal.message


def test_a_connection_listing_roles_needs_one_of_them_whatever_else_the_caller_holds() -> None:
    listed = ["Braze.Prod", "Braze.All"]

    def decide(*roles: str) -> int | None:
        headers = {"x-ms-client-principal": principal(*roles)}
        refusal = authorize(
            AuthMode.ENTRA, headers, RUN, connection="prod", connection_roles=listed
        )
        return refusal.status if refusal else None

    assert decide(RUN, "Braze.All") is None
    assert decide(ADMIN, "Braze.Prod") is None
    assert decide(RUN) == 403
    assert decide(ADMIN, "Braze.Staging") == 403
    assert decide("Braze.Prod") == 403  # the connection's role without Exports.Run
    headers = {"x-ms-client-principal": principal(RUN)}
    refusal = authorize(AuthMode.ENTRA, headers, RUN, connection="prod", connection_roles=listed)
    assert refusal is not None
    assert refusal.message == (
        "connection 'prod' may be used only by callers holding one of the app roles "
        "Braze.Prod, Braze.All"
    )


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        ({}, "no caller identity"),
        ({"X-MS-CLIENT-PRINCIPAL": "forged-admin!"}, "could not be read"),
        ({"x-ms-client-principal": encoded({"role_typ": "roles"})}, "could not be read"),
    ],
)
def test_without_a_readable_principal_entra_mode_answers_401(
    headers: dict[str, str], what: str
) -> None:
    refusal = authorize(AuthMode.ENTRA, headers, READ)
    assert refusal is not None and (refusal.status, refusal.code) == (401, "unauthenticated")
    assert what in refusal.message
    assert all(value not in refusal.message for value in headers.values())


def test_function_key_mode_checks_no_roles_and_ignores_a_forged_header() -> None:
    forged = {"X-MS-CLIENT-PRINCIPAL": principal(READ)}
    for headers in ({}, forged, {"X-MS-CLIENT-PRINCIPAL": "garbage"}):
        assert authorize(AuthMode.FUNCTION_KEY, headers, ADMIN) is None
        assert (
            authorize(
                AuthMode.FUNCTION_KEY, headers, RUN, connection="p", connection_roles=["X.Only"]
            )
            is None
        )
