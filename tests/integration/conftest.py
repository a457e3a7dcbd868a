"""An app environment on the test Azurite, a Braze sandbox, and the local Functions host."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceExistsError

from devtools.processes import ROOT, Azurite, Sandbox, start_sandbox
from devtools.sample import demo_definitions
from shared.config import load_settings
from shared.runs import Run
from shared.services import Services

SANDBOX_KEY = "test-sandbox-key"
BLOCKLISTED = "blocked-id-1"
SEGMENT_CONTAINER = "segments"


class App:
    """The exporter's settings and services as the host would see them, plus test helpers."""

    def __init__(self, env: dict[str, str], definitions_path: Path, sandbox: Sandbox) -> None:
        self.env = env
        self.definitions_path = definitions_path
        self.sandbox = sandbox
        self.services = Services(load_settings(env))

    def define(self, exports: list[dict[str, Any]], **connection: Any) -> None:
        document = {
            "connections": [
                {
                    "name": "sandbox",
                    "rest_endpoint": self.sandbox.url,
                    "api_key_secret": "braze-sandbox-key",
                    **connection,
                }
            ],
            "exports": exports,
        }
        self.definitions_path.write_text(json.dumps(document, ensure_ascii=False))

    def upload(self, path: str, data: bytes) -> None:
        blobs = self.services.storage.blobs
        with contextlib.suppress(ResourceExistsError):
            blobs.create_container(SEGMENT_CONTAINER)
        blobs.get_blob_client(SEGMENT_CONTAINER, path).upload_blob(data, overwrite=True)

    def wait_for_final(self, run_id: str, timeout: float = 180) -> Run:
        """Poll until the run is final; the deadline only bounds a hang, it asserts no speed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.services.runs.get(run_id)
            if run and run.is_final:
                return run
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} did not finish: {self.services.runs.get(run_id)}")

    def braze_users(self) -> dict[str, dict[str, Any]]:
        response = requests.get(f"{self.sandbox.url}/_sandbox/users", timeout=30)
        response.raise_for_status()
        users = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return {
            u["external_id"]: {"external_id": u["external_id"], **u["attributes"]} for u in users
        }

    def sandbox_requests(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.sandbox.url}/_sandbox/requests?limit=100000", timeout=30)
        response.raise_for_status()
        return [entry["body"] for entry in response.json()["requests"]]

    def reset_sandbox(self) -> None:
        requests.post(f"{self.sandbox.url}/_sandbox/reset", timeout=10).raise_for_status()

    def blob_text(self, name: str) -> str:
        return self.services.storage.read_bytes("export-runs", name).decode("utf-8")


def export_definition(name: str, path: str, segment: str, **overrides: Any) -> dict[str, Any]:
    """The demo mapping on another source file, with overrides."""
    export = demo_definitions("http://unused", SEGMENT_CONTAINER, path, segment)["exports"][0]
    export.update(name=name, **overrides)
    return export


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    running = start_sandbox(SANDBOX_KEY, "--blocklist", BLOCKLISTED)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def app_env(azurite: Azurite, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> App:
    definitions = tmp_path_factory.mktemp("app") / "exports.json"
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "EXPORT_DEFINITIONS_PATH": str(definitions),
        "BRAZE_SECRET_BRAZE_SANDBOX_KEY": SANDBOX_KEY,
        # Poll fast so the suite is quick; correctness does not depend on it.
        "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.200",
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:00",
        "DEVHOST_BLOB_WATCH_SECONDS": "0.2",
    }
    app = App(env, definitions, sandbox)
    app.services.ensure_resources()
    return app


@dataclass
class LocalHost:
    """The running local host: its process, its HTTP base URL and everything it printed."""

    process: subprocess.Popen[str]
    url: str
    output: list[str]


@pytest.fixture(scope="session")
def local_host(app_env: App) -> Iterator[LocalHost]:
    """`python -m devhost` running function_app.py's triggers against the test Azurite."""
    env = {k: v for k, v in os.environ.items() if k != "AzureWebJobsStorage"}
    env.update(app_env.env, PYTHONUNBUFFERED="1")
    host = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--app-dir", str(ROOT), "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    url = ""
    assert host.stdout is not None
    for line in host.stdout:
        output.append(line)
        if line.startswith("devhost http listening on "):
            url = line.split()[-1]
        if line.strip() == "devhost ready":
            break
    else:
        raise RuntimeError("devhost did not start:\n" + "".join(output))
    threading.Thread(target=lambda: output.extend(host.stdout), daemon=True).start()  # type: ignore[arg-type]
    yield LocalHost(host, url, output)
    host.terminate()
    host.wait(timeout=60)


@pytest.fixture
def app(app_env: App, local_host: LocalHost) -> Iterator[App]:
    app_env.reset_sandbox()
    yield app_env
