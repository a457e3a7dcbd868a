"""`python -m shared`: run, watch and inspect exports from a terminal.

`export` enqueues a run into the configured storage and follows it to the end. Against the
local emulator it also starts the local Functions host (`python -m devhost`) for the duration,
so one command runs the whole pipeline through the real queues.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from shared.adapters.services import Services
from shared.adapters.settings import ConfigurationError, apply_local_settings, load_settings
from shared.core.definitions import DefinitionsError, UnknownExport, json_schema, parse_definitions
from shared.core.report import build_report
from shared.core.runs import ExportBusy, Run, Status
from shared.pipeline.replay import NotReplayable, replay_run
from shared.pipeline.start import start_run

EXIT_CODES = {
    Status.SUCCEEDED: 0,
    Status.PARTIALLY_SUCCEEDED: 1,
    Status.FAILED: 2,
    Status.STOPPED: 3,
}


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="run one export end to end and print its report")
    export.add_argument("name")
    export.add_argument("--full-refresh", action="store_true", help="send every profile whole")
    export.add_argument(
        "--dry-run",
        action="store_true",
        help="work out and write the requests, send nothing, leave the snapshot as it is",
    )
    _add_run_options(export)
    teardown = commands.add_parser(
        "teardown",
        help="remove the export's membership from everyone in its snapshot (before deleting it)",
    )
    teardown.add_argument("name")
    teardown.add_argument("--dry-run", action="store_true", help="write the requests, send none")
    _add_run_options(teardown)
    runs = commands.add_parser("runs", help="list recent runs, newest first")
    runs.add_argument("--export", dest="export_name")
    runs.add_argument("--limit", type=int, default=20)
    status = commands.add_parser("status", help="show one run and its report")
    status.add_argument("run_id")
    replay = commands.add_parser(
        "replay",
        help="send a finished run's rejected deliveries (Braze rejections, failed chunks) again",
    )
    replay.add_argument("run_id")
    _add_follow_options(replay)
    validate = commands.add_parser("validate", help="check the export definitions document")
    validate.add_argument("--file", type=Path, help="a definitions file (default: from settings)")
    commands.add_parser("schema", help="print the JSON Schema of the definitions document")
    args = parser.parse_args(argv)

    local_settings = Path("local.settings.json")
    if local_settings.exists():
        apply_local_settings(local_settings)
    try:
        return _COMMANDS[args.command](args)
    except (ConfigurationError, DefinitionsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # exit 1 means "partially succeeded": never let a crash say that
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


def _add_run_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--override-safety-valves",
        action="store_true",
        help="send even if the run removes more of the segment or costs more data points than "
        "the export's max_removed_share and max_data_points allow",
    )
    _add_follow_options(command)


def _add_follow_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--host",
        choices=["auto", "local", "none"],
        default="auto",
        help="start the local Functions host for this run (auto: when storage is the emulator)",
    )
    command.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")


def _export(args: argparse.Namespace) -> int:
    services = Services(load_settings())
    teardown = args.command == "teardown"
    try:
        run = start_run(
            services,
            args.name,
            "teardown" if teardown else "cli",
            full_refresh=getattr(args, "full_refresh", False),
            dry_run=args.dry_run,
            override_safety_valves=args.override_safety_valves,
            teardown=teardown,
        ).run
    except UnknownExport as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    except ExportBusy as busy:
        print(f"error: {busy}; wait for it or follow it with `status`", file=sys.stderr)
        return 2
    print(f"run {run.run_id} queued for export '{run.export_name}' (segment '{run.segment}')")
    return _follow_to_end(services, run.run_id, args)


def _replay(args: argparse.Namespace) -> int:
    services = Services(load_settings())
    try:
        run = replay_run(services, args.run_id)
    except (LookupError, NotReplayable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"run {run.run_id}: replay round {run.replay_round} queued")
    return _follow_to_end(services, run.run_id, args)


def _follow_to_end(services: Services, run_id: str, args: argparse.Namespace) -> int:
    start_host = args.host == "local" or (
        args.host == "auto" and services.settings.storage.is_local_emulator
    )
    host = _start_local_host() if start_host else None
    try:
        final = _follow(services, run_id, args.timeout, host, not args.no_progress)
    finally:
        if host:
            host.terminate()
            host.wait(timeout=60)
    if final is None:
        return 2
    print(json.dumps(build_report(final), indent=2, ensure_ascii=False))
    return EXIT_CODES[Status(final.status)]


def _start_local_host() -> subprocess.Popen[bytes]:
    """Start `python -m devhost`, logging to .devhost.log, and wait until its listeners are up."""
    log_path = PROJECT_ROOT / ".devhost.log"
    with log_path.open("wb") as log_file:
        host = subprocess.Popen(
            [sys.executable, "-m", "devhost", "--app-dir", str(PROJECT_ROOT), "--port", "0"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=PROJECT_ROOT,
        )
    deadline = time.monotonic() + 120
    while b"devhost ready" not in log_path.read_bytes():
        if host.poll() is not None or time.monotonic() > deadline:
            host.kill()
            raise ConfigurationError(f"the local host did not start; see {log_path}")
        time.sleep(0.1)
    print(f"local Functions host started (log: {log_path})")
    return host


def _follow(
    services: Services,
    run_id: str,
    timeout: float,
    host: subprocess.Popen[bytes] | None,
    progress: bool,
) -> Run | None:
    """Poll the run until it is final, showing profiles delivered against profiles planned."""
    from tqdm import tqdm

    bar = tqdm(desc="profiles", unit=" profiles", disable=not progress, dynamic_ncols=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            run = services.runs.get(run_id)
            assert run is not None
            delivered = sum(r.rows for r in services.runs.chunk_results(run_id))
            if run.chunks_total is not None:
                bar.total = run.objects_planned
            bar.set_postfix_str(f"{run.status}, {run.rows_read} rows read")
            bar.n = delivered
            bar.refresh()
            if run.is_final:
                return run
            if host is not None and host.poll() is not None:
                print(
                    f"\nerror: the local host exited with code {host.returncode}", file=sys.stderr
                )
                return None
            if time.monotonic() > deadline:
                print(f"\nerror: run {run_id} not finished after {timeout:.0f}s", file=sys.stderr)
                return None
            time.sleep(0.5)
    finally:
        bar.close()


def _runs(args: argparse.Namespace) -> int:
    services = Services(load_settings())
    for run in services.runs.list_runs(args.export_name, args.limit):
        print(
            f"{run.run_id}  {run.status:<20} rows {run.rows_read:>9}  accepted "
            f"{run.profiles_accepted:>9}  {run.created_at:%Y-%m-%d %H:%M:%S}Z  {run.trigger}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    services = Services(load_settings())
    run = services.runs.get(args.run_id)
    if run is None:
        print(f"error: no run {args.run_id}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            build_report(run) if run.is_final else run.public(), indent=2, ensure_ascii=False
        )
    )
    return EXIT_CODES.get(Status(run.status), 0)


def _validate(args: argparse.Namespace) -> int:
    if args.file:
        definitions = parse_definitions(args.file.read_bytes(), str(args.file))
    else:
        definitions = Services(load_settings()).definitions()
    for export in definitions.exports:
        print(
            f"ok: export '{export.name}' -> connection '{export.connection}', "
            f"segment '{export.segment}'"
        )
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


_COMMANDS = {
    "export": _export,
    "teardown": _export,
    "replay": _replay,
    "runs": _runs,
    "status": _status,
    "validate": _validate,
    "schema": _schema,
}
