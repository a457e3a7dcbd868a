"""`python -m devhost`: serve an app's triggers against Azurite until SIGTERM or Ctrl+C."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from devhost.host import HostStartError, LocalHost
from devhost.indexing import IndexingError
from devhost.queues import DEFAULT_MESSAGE_LEASE

READY_LINE = "devhost ready"
CORE_TOOLS_PORT = 7071


def message_lease(text: str) -> timedelta:
    seconds = int(text)
    if seconds < 1:
        raise argparse.ArgumentTypeError("must be at least 1 second")
    return timedelta(seconds=seconds)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost",
        description="Run a v2 Python function app's triggers locally, against Azurite.",
    )
    parser.add_argument(
        "--app-dir", type=Path, default=Path("."), help="directory holding function_app.py"
    )
    parser.add_argument(
        "--settings",
        type=Path,
        help="local.settings.json to read (default: APP_DIR/local.settings.json if present)",
    )
    parser.add_argument(
        "--functions",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help="comma-separated names of the only functions to load",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=CORE_TOOLS_PORT,
        help=f"port on 127.0.0.1 (default {CORE_TOOLS_PORT}, as Core Tools; 0: any free port)",
    )
    parser.add_argument(
        "--message-lease",
        type=message_lease,
        default=DEFAULT_MESSAGE_LEASE,
        metavar="SECONDS",
        help="how long a received queue message stays invisible, renewed at half-time while "
        "its function runs (default 600, as the host): what a killed host's messages wait",
    )
    return parser.parse_args(argv)


class JobFormatter(logging.Formatter):
    """Ends each line logged while handling a queue message with its run, export and chunk
    (stamped on the record by shared.adapters.telemetry.job_context)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        run_id = getattr(record, "run_id", "-")
        if run_id == "-":
            return line
        chunk = getattr(record, "chunk", "-")
        where = f" {chunk}" if chunk != "-" else ""
        return f"{line} [run={run_id} export={getattr(record, 'export_name', '-')}{where}]"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JobFormatter("[%(asctime)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("azure").setLevel(logging.WARNING)

    stop_requested = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop_requested.set())

    host = LocalHost(
        arguments.app_dir,
        settings_file=arguments.settings,
        functions=arguments.functions,
        port=arguments.port,
        message_lease=arguments.message_lease,
    )
    try:
        host.start()
    except (HostStartError, IndexingError) as error:
        logging.getLogger("devhost").error(
            "devhost cannot start: %s", error, exc_info=error.__cause__
        )
        return 1

    print("Functions:", *(f"  {function.describe()}" for function in host.functions), sep="\n")
    print(f"devhost http listening on {host.http_url}", flush=True)
    print(READY_LINE, flush=True)
    while not stop_requested.wait(timeout=1):
        pass

    logging.getLogger("devhost").info("Stopping: waiting for in-flight invocations")
    if not host.stop():
        # Threads still running user code would keep the interpreter from exiting.
        sys.stdout.flush()
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
