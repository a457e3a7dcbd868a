"""Session-wide real local services: Azurite (storage emulator) and the Braze sandbox.

Both run as child processes on free loopback ports, so the suite never clashes with a
`make demo` that may be running on the default ports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass(frozen=True)
class Azurite:
    """Where the test Azurite listens."""

    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        base = "http://127.0.0.1"
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_ACCOUNT_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/devstoreaccount1;"
            f"QueueEndpoint={base}:{self.queue_port}/devstoreaccount1;"
            f"TableEndpoint={base}:{self.table_port}/devstoreaccount1;"
        )


def _wait_for_lines(
    proc: subprocess.Popen[str], pattern: re.Pattern[str], count: int
) -> list[re.Match[str]]:
    """Read a child's stdout until `count` lines match, then keep draining it in the background."""
    matches: list[re.Match[str]] = []
    seen: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if match := pattern.search(line):
            matches.append(match)
            if len(matches) == count:
                break
    if len(matches) < count:
        raise RuntimeError(f"{proc.args!r} exited before it was ready:\n{''.join(seen)}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return matches


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A fresh in-memory Azurite for the whole session."""
    binary = ROOT / "node_modules" / ".bin" / "azurite"
    if not binary.exists():
        pytest.fail("Azurite is not installed: run `make install` (npm ci) first")
    workdir = tmp_path_factory.mktemp("azurite")
    proc = subprocess.Popen(
        [
            str(binary),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--blobHost=127.0.0.1",
            "--queueHost=127.0.0.1",
            "--tableHost=127.0.0.1",
            "--blobPort=0",
            "--queuePort=0",
            "--tablePort=0",
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        listening = re.compile(
            r"Azurite (Blob|Queue|Table) service is successfully listening at .*:(\d+)"
        )
        ports = {m.group(1): int(m.group(2)) for m in _wait_for_lines(proc, listening, 3)}
        yield Azurite(ports["Blob"], ports["Queue"], ports["Table"])
    finally:
        _stop(proc)


@dataclass(frozen=True)
class Sandbox:
    """A running Braze sandbox process."""

    url: str
    api_key: str
    process: subprocess.Popen[str]


def start_sandbox(api_key: str, *extra_args: str) -> Sandbox:
    """Start a Braze sandbox on a free port and wait until it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "braze_sandbox", "--port", "0", "--api-key", api_key, *extra_args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    (match,) = _wait_for_lines(proc, re.compile(r"braze-sandbox listening on (http://\S+)"), 1)
    return Sandbox(match.group(1), api_key, proc)


def stop_sandbox(sandbox: Sandbox) -> None:
    _stop(sandbox.process)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Ask a child to stop; kill it if it lingers (Azurite waits on idle keep-alive sockets)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
