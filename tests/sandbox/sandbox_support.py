"""Helpers for the sandbox tests: start real sandbox processes and talk to them over HTTP,
as the exporter will. (A module of its own, not conftest, so tests can import it by a
name no other test directory uses.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from devtools.processes import ROOT, Sandbox
from devtools.processes import start_sandbox as start_process

__all__ = ["ROOT", "Sandbox"]

API_KEY = "test-key"
SECOND_API_KEY = "second-key"
BLOCKLISTED_IDS = ("dummy-user", "👻 ghost")


def start_sandbox(*extra_args: str) -> Sandbox:
    """Start a sandbox with the two test keys on a free port; return once it is ready."""
    return start_process(API_KEY, "--api-key", SECOND_API_KEY, *extra_args)


@dataclass
class SandboxClient:
    """Thin helpers over the Braze and control endpoints of one sandbox."""

    url: str
    session: requests.Session

    def track(
        self,
        body: Any,
        *,
        api_key: str = API_KEY,
        path: str = "/users/track",
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        return self.session.post(
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {api_key}", **(headers or {})},
            timeout=10,
        )

    def post_raw(self, path: str, data: bytes, headers: dict[str, str]) -> requests.Response:
        return self.session.post(self.url + path, data=data, headers=headers, timeout=10)

    def export(self, body: Any, *, api_key: str = API_KEY) -> requests.Response:
        return self.session.post(
            self.url + "/users/export/ids",
            json=body,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        )

    def user(self, external_id: str) -> dict[str, Any] | None:
        response = self.session.get(
            f"{self.url}/_sandbox/users/{quote(external_id, safe='')}", timeout=10
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def attributes(self, external_id: str) -> dict[str, Any]:
        user = self.user(external_id)
        assert user is not None, f"user {external_id!r} does not exist"
        return user["attributes"]

    def stats(self) -> dict[str, Any]:
        return self.session.get(f"{self.url}/_sandbox/stats", timeout=10).json()

    def set_faults(self, **options: Any) -> dict[str, Any]:
        response = self.session.put(f"{self.url}/_sandbox/faults", json=options, timeout=10)
        response.raise_for_status()
        return response.json()

    def set_limits(self, **options: Any) -> dict[str, Any]:
        response = self.session.put(f"{self.url}/_sandbox/limits", json=options, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self.session.post(f"{self.url}/_sandbox/reset", timeout=10).raise_for_status()


def attribute_batch(count: int, prefix: str = "user") -> dict[str, Any]:
    """A /users/track body of `count` attribute objects for distinct users."""
    return {
        "attributes": [
            {"external_id": f"{prefix}-{i}", "email": f"{prefix}.{i}@example.com", "tier": "gold"}
            for i in range(count)
        ]
    }
