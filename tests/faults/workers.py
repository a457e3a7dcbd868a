"""Local Functions hosts as worker processes sharing one Azurite, as the instances of a
scaled-out app share one storage account: each pulls from the same queues, so any of them may
deliver any chunk, and one can be killed while the others carry on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import ROOT

READY_LINE = "devhost ready"
START_TIMEOUT_SECONDS = 120
DELIVERY = "deliver_chunk"

_LIST_QUEUE_FUNCTIONS = """
import json, sys
from pathlib import Path
from devhost import load_functions
functions = load_functions(Path(sys.argv[1]))
print(json.dumps([f.name for f in functions if f.trigger_type == "queueTrigger"]))
"""


def queue_functions() -> list[str]:
    """The app's queue-triggered functions, indexed in a child process (indexing here would
    import function_app into the test process, whose app object may be indexed only once)."""
    listing = subprocess.run(
        [sys.executable, "-c", _LIST_QUEUE_FUNCTIONS, str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(listing.stdout)


@dataclass
class Worker:
    """One `python -m devhost` process; everything it prints goes to `log`."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def deliveries_in_flight(self) -> int:
        """Chunk deliveries it has started and not finished, from the host's own log lines."""
        text = self.output()
        started = text.count(f"Executing 'Functions.{DELIVERY}'")
        return started - text.count(f"Executed 'Functions.{DELIVERY}'")

    def kill(self) -> int:
        """SIGKILL: no drain, no cleanup, its leased messages stay invisible until the lease
        ends; returns the exit status."""
        self.process.kill()
        return self.process.wait()

    def stop(self) -> None:
        """Stop as the platform would on scale-in, and kill it if it does not drain in time."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_workers(
    names: list[str],
    env: Mapping[str, str],
    log_dir: Path,
    functions: list[str],
    message_lease_seconds: int,
) -> list[Worker]:
    """Start the workers side by side and return once each says it is ready.

    Each gets its own instance id (the exporter names it in its User-Agent) and its own free
    HTTP port; only queue functions are loaded, so no worker runs the timer or the blob trigger.
    """
    base = {k: v for k, v in os.environ.items() if k != "AzureWebJobsStorage"}
    base.update(env, PYTHONUNBUFFERED="1")
    command = [
        sys.executable,
        "-m",
        "devhost",
        "--app-dir",
        str(ROOT),
        "--port",
        "0",
        "--functions",
        ",".join(functions),
        "--message-lease",
        str(message_lease_seconds),
    ]
    workers = []
    for name in names:
        log = log_dir / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**base, "WEBSITE_INSTANCE_ID": name},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        workers.append(Worker(name, process, log))
    try:
        for worker in workers:
            _wait_until_ready(worker)
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers


def _wait_until_ready(worker: Worker) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while READY_LINE not in worker.output():
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{worker.name} did not start:\n{worker.output()}")
        time.sleep(0.1)
