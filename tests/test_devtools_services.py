"""`make stop` (devtools.services.stop) ends the demo's services, even one that ignores SIGTERM;
Azurite ends on SIGTERM by itself."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from devtools import services

IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)
WAITS = "print('ready', flush=True)\nimport time\ntime.sleep(600)\n"


def _service(state: Path, name: str, code: str) -> subprocess.Popen[bytes]:
    """A service as `make demo` leaves it: its own process group, its pid file, and reaped as
    soon as it ends (by init, once the demo has exited; here by a thread)."""
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    (state / f"{name}.pid").write_text(str(process.pid))
    threading.Thread(target=process.wait, daemon=True).start()
    return process


def test_stop_ends_every_service_killing_one_that_outlives_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(services, "STATE", tmp_path)
    monkeypatch.setattr(services, "STOP_SECONDS", 3.0)  # the polite one ends well before
    stubborn = _service(tmp_path, "azurite", IGNORES_SIGTERM)
    polite = _service(tmp_path, "braze-sandbox", WAITS)
    try:
        services.stop()

        assert stubborn.wait(timeout=30) == -9  # SIGKILL, once SIGTERM left it running
        assert polite.wait(timeout=30) == -15  # SIGTERM was enough
        assert not list(tmp_path.glob("*.pid"))
        assert "azurite: killed, still running 3 s after SIGTERM" in capsys.readouterr().out
        services.stop()  # nothing left to stop
        assert capsys.readouterr().out == ""
    finally:  # a failure leaves no process behind
        for process in (stubborn, polite):
            if process.poll() is None:
                process.kill()


def test_azurite_ends_on_sigterm_after_serving_requests(tmp_path: Path) -> None:
    """Azurite with its telemetry on stayed running after SIGTERM, waiting to send it; with
    `--disableTelemetry` it ends by itself (exit code 0), and `stop` need not kill it (-9)."""
    from devtools.processes import start_azurite, stop
    from shared.adapters.settings import StorageSettings
    from shared.adapters.storage import Storage

    azurite = start_azurite(tmp_path)
    assert "--disableTelemetry" in azurite.process.args  # with internet, it would end anyway
    try:
        storage = Storage(StorageSettings(connection_string=azurite.connection_string))
        storage.ensure_resources()
        storage.write_bytes("export-runs", "zoë.txt", "héllo 🎉".encode(), "text/plain")
        assert storage.read_bytes("export-runs", "zoë.txt") == "héllo 🎉".encode()
    finally:
        code = stop(azurite.process)
    assert code == 0
