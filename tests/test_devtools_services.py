"""`make stop` (devtools.services.stop) ends the demo's services, even one that ignores SIGTERM,
the local host before the storage and sandbox it may still use; Azurite ends on SIGTERM by
itself."""

from __future__ import annotations

import signal
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
# As the local host at SIGTERM: it ends once its invocation in flight has finished.
FINISHES_A_JOB = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


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


def test_stop_ends_the_local_host_before_the_services_it_may_still_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "STATE", tmp_path)
    host = _service(tmp_path, "devhost", FINISHES_A_JOB)
    others = [_service(tmp_path, name, WAITS) for name in ("braze-sandbox", "azurite")]
    signal_group = services._signal
    host_running_at: list[bool] = []

    def signalling(group: int, number: int) -> bool:
        if number == signal.SIGTERM and group != host.pid:
            host_running_at.append(signal_group(host.pid, 0))
        return signal_group(group, number)

    monkeypatch.setattr(services, "_signal", signalling)
    try:
        services.stop()

        assert host_running_at == [False, False]  # each signalled once the host had ended
        assert host.wait(timeout=30) == 0  # it finished its job
        assert [other.wait(timeout=30) for other in others] == [-15, -15]
    finally:
        for process in (host, *others):
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
