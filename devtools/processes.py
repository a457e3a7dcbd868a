"""Child processes on free loopback ports: an in-memory Azurite and a Braze sandbox.

Used by the tests and the benchmarks, so neither clashes with a `make demo` on the default ports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_AZURITE_READY = re.compile(
    r"Azurite (Blob|Queue|Table) service is successfully listening at .*:(\d+)"
)
_SANDBOX_READY = re.compile(r"braze-sandbox listening on (http://\S+)")


@dataclass(frozen=True)
class Azurite:
    """A running Azurite and where it listens."""

    blob_port: int
    queue_port: int
    table_port: int
    process: subprocess.Popen[str]

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

    def stop(self) -> None:
        stop(self.process)


@dataclass(frozen=True)
class Sandbox:
    """A running Braze sandbox process."""

    url: str
    api_key: str
    process: subprocess.Popen[str]

    def stop(self) -> int:
        return stop(self.process)


# How every Azurite here runs (`make demo` too): on loopback, accepting the SDK's newest API
# versions, and without the telemetry it sends Microsoft by default (it stayed running after
# SIGTERM, waiting to send it). Idle keep-alive connections are kept 10 minutes, not 5 s: at 5 s
# Azurite closed one now and then as the client reused it, and a write the SDK does not send
# again failed its step (three full test runs on 2026-12-07, each once, in a slow hour).
AZURITE_OPTIONS = (
    "--disableTelemetry",
    "--skipApiVersionCheck",
    "--loose",
    "--blobHost=127.0.0.1",
    "--queueHost=127.0.0.1",
    "--tableHost=127.0.0.1",
    "--blobKeepAliveTimeout=600",
    "--queueKeepAliveTimeout=600",
    "--tableKeepAliveTimeout=600",
)


def start_azurite(workdir: Path) -> Azurite:
    """An in-memory Azurite on free ports; `workdir` receives any files it writes."""
    binary = ROOT / "node_modules" / ".bin" / "azurite"
    if not binary.exists():
        raise RuntimeError("Azurite is not installed: run `make install` (npm ci) first")
    proc = subprocess.Popen(
        [
            str(binary),
            "--inMemoryPersistence",
            *AZURITE_OPTIONS,
            "--blobPort=0",
            "--queuePort=0",
            "--tablePort=0",
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ports = {m.group(1): int(m.group(2)) for m in _wait_for_lines(proc, _AZURITE_READY, 3)}
    return Azurite(ports["Blob"], ports["Queue"], ports["Table"], proc)


def start_sandbox(api_key: str, *extra_args: str, cpu: int | None = None) -> Sandbox:
    """A Braze sandbox on a free port, optionally pinned to one CPU (for benchmarks)."""
    command = [sys.executable, "-m", "braze_sandbox", "--port", "0", "--api-key", api_key]
    proc = subprocess.Popen(
        [*command, *extra_args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    (match,) = _wait_for_lines(proc, _SANDBOX_READY, 1)
    return Sandbox(match.group(1), api_key, proc)


def stop(proc: subprocess.Popen[str]) -> int:
    """Ask a child to stop and return its exit code; kill it if it lingers (Azurite did, with
    its telemetry on, waiting to send it: it now runs with `--disableTelemetry`)."""
    proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


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
