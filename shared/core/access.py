"""Who may use the HTTP API when Microsoft Entra ID is in front of it.

App Service Authentication ("Easy Auth") validates the caller's token before the request reaches
the app and passes the caller on in the `X-MS-CLIENT-PRINCIPAL` header: base64 of the JSON
`{"auth_typ", "name_typ", "role_typ", "claims": [{"typ", "val"}, ...]}`, the app roles being
claims of type `role_typ` or `roles` (both are seen in practice). The platform drops a caller's
own copy of the header, so it is trustworthy only where Easy Auth is in front: anywhere else,
anyone could forge it. It is therefore read only in `entra` mode (EXPORT_API_AUTH), the
operator's statement that Easy Auth is configured; with function keys it is ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

PRINCIPAL_HEADER = "x-ms-client-principal"
ROLES_CLAIM = "roles"

# The app roles to define on the API's Entra app registration.
READ = "Exports.Read"  # list exports and runs, read a run
RUN = "Exports.Run"  # start a run, replay one (and read, to follow it)
ADMIN = "Exports.Admin"  # tear an export down (and everything else)
_GRANTED_BY = {READ: {READ, RUN, ADMIN}, RUN: {RUN, ADMIN}, ADMIN: {ADMIN}}

NO_IDENTITY = (
    "no caller identity: call with a Microsoft Entra ID access token for this API "
    "(App Service Authentication passes the caller on)"
)
UNREADABLE_IDENTITY = (
    "the caller identity App Service Authentication passed on could not be read; call with "
    "a Microsoft Entra ID access token for this API"
)


class AuthMode(StrEnum):
    """Who the HTTP API trusts (the EXPORT_API_AUTH setting)."""

    FUNCTION_KEY = "function-key"  # whoever holds a key; roles are not checked
    ENTRA = "entra"  # Easy Auth is in front: app roles from the client-principal header


class MalformedPrincipal(ValueError):
    """The client-principal header is there but is not what the platform writes."""


@dataclass(frozen=True)
class Refusal:
    """Why a caller is turned away: 401 without a readable identity, 403 without a role."""

    status: int
    code: str
    message: str

    @property
    def headers(self) -> dict[str, str]:
        """A 401 says how to authenticate (RFC 9110); a 403 needs nothing more."""
        return {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}


def principal_roles(headers: Mapping[str, str]) -> frozenset[str] | None:
    """The app roles in the client-principal header; None when there is no such header.

    Header names are matched in any case: hosts and frameworks pass them lower-cased or not.
    """
    encoded = next((v for k, v in headers.items() if k.lower() == PRINCIPAL_HEADER), "")
    text = encoded.strip()
    if not text:
        return None
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        principal = json.loads(decoded)
    except (binascii.Error, ValueError, RecursionError):
        raise MalformedPrincipal("the client principal is not base64-encoded JSON") from None
    if not isinstance(principal, dict) or not isinstance(principal.get("claims"), list):
        raise MalformedPrincipal("the client principal has no list of claims")
    role_types = {ROLES_CLAIM, _text(principal.get("role_typ")) or ROLES_CLAIM}
    return frozenset(
        claim["val"]
        for claim in principal["claims"]
        if isinstance(claim, dict)
        and _text(claim.get("typ")) in role_types
        and isinstance(claim.get("val"), str)
    )


def authorize(
    mode: AuthMode,
    headers: Mapping[str, str],
    needs: str,
    *,
    connection: str | None = None,
    connection_roles: Sequence[str] | None = None,
) -> Refusal | None:
    """None when the caller may go on; otherwise why not.

    `needs` is READ, RUN or ADMIN (a higher role grants the lower ones). A connection that
    lists `connection_roles` also needs one of them, whatever the caller's other roles.
    Messages name the missing role, never what the caller sent.
    """
    if mode is AuthMode.FUNCTION_KEY:
        return None
    try:
        roles = principal_roles(headers)
    except MalformedPrincipal:
        return Refusal(401, "unauthenticated", UNREADABLE_IDENTITY)
    if roles is None:
        return Refusal(401, "unauthenticated", NO_IDENTITY)
    granting = _GRANTED_BY[needs]
    if not roles & granting:
        others = sorted(granting - {needs})
        alternatives = f" (or {' or '.join(others)})" if others else ""
        return Refusal(403, "forbidden", f"this needs the app role {needs}{alternatives}")
    if connection_roles and not roles & set(connection_roles):
        listed = ", ".join(connection_roles)
        return Refusal(
            403,
            "forbidden",
            f"connection '{connection}' may be used only by callers holding one of the app "
            f"roles {listed}",
        )
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
