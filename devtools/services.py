"""Start and stop the local services the demo uses: Azurite, the Braze sandbox, the local host.

They listen on fixed loopback ports (Azurite's defaults 10000-10002, the sandbox on 8480, the
local Functions host on Core Tools' 7071) and keep running after the demo so you can explore:
`python -m shared runs`, `curl localhost:7071/api/exports`, drop a file. `make stop` ends them.
The local host reads local.settings.json, which the demo creates from the sample.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from devtools.processes import AZURITE_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".local"
SANDBOX_PORT = 8480
SANDBOX_URL = f"http://127.0.0.1:{SANDBOX_PORT}"
SANDBOX_KEY = "demo-sandbox-key"
AZURITE_PORTS = (10000, 10001, 10002)
HOST_PORT = 7071
HOST_URL = f"http://127.0.0.1:{HOST_PORT}"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _spawn(
    name: str, command: list[str], ports: tuple[int, ...], env: dict[str, str] | None = None
) -> None:
    if all(_listening(p) for p in ports):
        print(f"{name}: already running")
        return
    STATE.mkdir(exist_ok=True)
    log = (STATE / f"{name}.log").open("ab")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    (STATE / f"{name}.pid").write_text(str(process.pid))
    deadline = time.monotonic() + 60
    while not all(_listening(p) for p in ports):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start; see {STATE / (name + '.log')}")
        time.sleep(0.1)
    print(f"{name}: started (pid {process.pid}, log {STATE / (name + '.log')})")


def start() -> None:
    _spawn(
        "azurite",
        [
            str(ROOT / "node_modules" / ".bin" / "azurite"),
            "--silent",
            *AZURITE_OPTIONS,
            f"--location={STATE / 'azurite'}",
        ],
        AZURITE_PORTS,
    )
    _spawn(
        "braze-sandbox",
        [
            sys.executable,
            "-m",
            "braze_sandbox",
            "--port",
            str(SANDBOX_PORT),
            "--api-key",
            SANDBOX_KEY,
        ],
        (SANDBOX_PORT,),
    )
    _spawn(
        "devhost",
        [sys.executable, "-m", "devhost", "--app-dir", str(ROOT), "--port", str(HOST_PORT)],
        (HOST_PORT,),
        {"MALLOC_ARENA_MAX": "2"},  # as infra/app/api.bicep sets it in Azure
    )


STOP_SECONDS = 10.0  # for a service to end on SIGTERM before it is killed


def stop() -> None:
    """End each service's process group: SIGTERM, then SIGKILL for one still there after
    `STOP_SECONDS` (Azurite closed its services on SIGTERM and stayed running while its
    telemetry, now disabled, waited to be sent). The local host ends first: at SIGTERM it waits
    for its invocations, which may still use Azurite and the sandbox (a queued chunk job whose
    chunk the demo's last run delivered at once); with them gone, it retried its storage calls
    until it was killed."""
    _stop(["devhost"])
    _stop(["braze-sandbox", "azurite"])


def _stop(names: list[str]) -> None:
    stopping = []
    for name in names:
        pid_file = STATE / f"{name}.pid"
        if not pid_file.exists():
            continue
        group = int(pid_file.read_text())
        pid_file.unlink()
        if _signal(group, signal.SIGTERM):
            stopping.append((name, group))
    deadline = time.monotonic() + STOP_SECONDS
    for name, group in stopping:
        while _signal(group, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _signal(group, signal.SIGKILL):
            print(f"{name}: killed, still running {STOP_SECONDS:g} s after SIGTERM")
        else:
            print(f"{name}: stopped")


def _signal(group: int, number: int) -> bool:
    """Send `number` to the process group; False when it has no process left."""
    try:
        os.killpg(group, number)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    {"start": start, "stop": stop}[sys.argv[1] if len(sys.argv) > 1 else "start"]()
