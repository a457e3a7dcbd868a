"""Helpers for the sandbox tests: start real sandbox processes and talk to them over HTTP,
as the exporter will. (A module of its own, not conftest, so tests can import it by a
name no other test directory uses.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key"
SECOND_API_KEY = "second-key"
BLOCKLISTED_IDS = ("dummy-user", "👻 ghost")
READY_LINE = re.compile(r"^braze-sandbox listening on (http://127\.0\.0\.1:\d+)$")


@dataclass
class SandboxProcess:
    """A running `python -m braze_sandbox` and where it listens."""

    url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=20)


def start_sandbox(*extra_args: str) -> SandboxProcess:
    """Start a sandbox on a free port and return once it printed its ready line."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "braze_sandbox",
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--api-key",
            SECOND_API_KEY,
            *extra_args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    output: list[str] = []
    for line in process.stdout:
        output.append(line)
        if match := READY_LINE.match(line.rstrip("\n")):
            # Keep draining so a chatty server never blocks on a full pipe.
            threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
            return SandboxProcess(match.group(1), process, output)
    process.wait(timeout=20)
    raise RuntimeError(f"sandbox exited before it was ready:\n{''.join(output)}")


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
