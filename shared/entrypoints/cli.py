"""`python -m shared`: run, watch and inspect exports from a terminal.

`export` enqueues a run into the configured storage and follows it to the end. Against the
local emulator it also starts the local Functions host (`python -m devhost`) for the duration,
so one command runs the whole pipeline through the real queues. Every command prints for
people, or JSON with `--json` for scripts; an error is one sentence on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from azure.core.exceptions import ServiceRequestError

from shared.adapters.services import Services
from shared.adapters.settings import ConfigurationError, apply_local_settings, load_settings
from shared.adapters.storage import BlobNotFound
from shared.core.definition_hints import did_you_mean
from shared.core.definitions import (
    Definitions,
    DefinitionsError,
    UnknownExport,
    json_schema,
    parse_definitions,
)
from shared.core.report import build_report
from shared.core.report_markdown import (
    count_rows,
    file_rows,
    option_names,
    timing_rows,
    top_rejections,
)
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import ExportBusy, Run, Status
from shared.pipeline.replay import NotReplayable, replay_run
from shared.pipeline.start import start_run

EXIT_CODES = {
    Status.SUCCEEDED: 0,
    Status.PARTIALLY_SUCCEEDED: 1,
    Status.FAILED: 2,
    Status.STOPPED: 3,
}
STILL_RUNNING = 4  # `status` of a run that has not finished
INTERRUPTED = 130  # what a shell reports for Ctrl-C


PROJECT_ROOT = Path(__file__).resolve().parents[2]


class CommandError(Exception):
    """A problem the command explains in one sentence (exit code 2)."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    local_settings = Path("local.settings.json")
    try:
        if local_settings.exists():
            apply_local_settings(local_settings)
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return _error("interrupted", INTERRUPTED)
    except Exception as error:  # exit 1 means "partially succeeded": never let a crash say that
        return _error(_sentence(error))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__)
    scripted = argparse.ArgumentParser(add_help=False)
    scripted.add_argument("--json", action="store_true", help="print JSON, for scripts")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export",
        parents=[scripted],
        help="run one export end to end, with a progress bar, and print its report",
    )
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
        parents=[scripted],
        help="remove the export's membership from everyone in its snapshot (before deleting it)",
    )
    teardown.add_argument("name")
    teardown.add_argument("--dry-run", action="store_true", help="write the requests, send none")
    _add_run_options(teardown)
    runs = commands.add_parser("runs", parents=[scripted], help="list recent runs, newest first")
    runs.add_argument("--export", dest="export_name")
    runs.add_argument("--limit", type=int, default=20)
    status = commands.add_parser(
        "status", parents=[scripted], help="show one run: counts, timings, rejections, files"
    )
    status.add_argument("run_id")
    replay = commands.add_parser(
        "replay",
        parents=[scripted],
        help="send a finished run's rejected deliveries (Braze rejections, failed chunks) again",
    )
    replay.add_argument("run_id")
    _add_follow_options(replay)
    validate = commands.add_parser(
        "validate",
        parents=[scripted],
        help="check the export definitions: every problem, with its path and a suggestion",
    )
    validate.add_argument("--file", type=Path, help="a definitions file (default: from settings)")
    commands.add_parser("schema", help="print the JSON Schema of the definitions document")
    return parser


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


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _sentence(error: Exception) -> str:
    """One line saying what went wrong, for any error a command lets through."""
    text = " ".join(str(error).split())
    if isinstance(error, DefinitionsError):
        return (
            f"{error.source} has {len(error.details)} problem(s); "
            "`python -m shared validate` explains each"
        )
    if isinstance(error, OSError) and error.filename:
        return f"cannot read {error.filename}: {error.strerror}"
    if isinstance(error, ServiceRequestError):
        return f"cannot reach the storage account (is it running, at that address?): {text}"
    if isinstance(error, CommandError | ConfigurationError | BlobNotFound):
        return text
    return f"{type(error).__name__}: {text}"


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
    except UnknownExport:
        raise CommandError(_unknown_export(services.definitions(), args.name)) from None
    except ExportBusy as busy:
        raise CommandError(f"{busy}; wait for it or follow it with `status`") from None
    _note(f"run {run.run_id} queued for export '{run.export_name}' (segment '{run.segment}')")
    return _follow_to_end(services, run.run_id, args)


def _unknown_export(definitions: Definitions, name: str) -> str:
    names = [export.name for export in definitions.exports]
    hint = did_you_mean(name, names) or (
        f"the exports are {', '.join(names)}" if names else "the definitions define none"
    )
    return f"no export named '{name}'; {hint}"


def _replay(args: argparse.Namespace) -> int:
    services = Services(load_settings())
    try:
        run = replay_run(services, args.run_id)
    except (LookupError, NotReplayable) as error:
        raise CommandError(str(error)) from None
    _note(f"run {run.run_id}: replay round {run.replay_round} queued")
    return _follow_to_end(services, run.run_id, args)


def _note(text: str) -> None:
    """What happens on the way goes to stderr: stdout is the report, or JSON for scripts."""
    print(text, file=sys.stderr)


def _follow_to_end(services: Services, run_id: str, args: argparse.Namespace) -> int:
    start_host = args.host == "local" or (
        args.host == "auto" and services.settings.storage.is_local_emulator
    )
    host = _start_local_host() if start_host else None
    try:
        final = _follow(services, run_id, args.timeout, host, not args.no_progress)
    except KeyboardInterrupt:
        where = "once a Functions host runs" if host else "on the Functions host"
        return _error(
            f"stopped following run {run_id}, which goes on {where}: "
            f"`python -m shared status {run_id}` shows it",
            INTERRUPTED,
        )
    finally:
        if host:
            host.terminate()
            host.wait(timeout=60)
    if final is None:
        return 2
    _print_report(_final_report(services, final), args.json)
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
    _note(f"local Functions host started (log: {log_path})")
    return host


def _follow(
    services: Services,
    run_id: str,
    timeout: float,
    host: subprocess.Popen[bytes] | None,
    progress: bool,
) -> Run | None:
    """Poll the run until it is final. While it plans, the bar shows its status; once it
    sends, the profiles Braze has answered against those to send (a replay's are not known
    ahead), so tqdm shows their rate and the time left."""
    from tqdm import tqdm

    first = services.runs.get(run_id)
    assert first is not None
    # A replay's earlier rounds are answered already: the bar counts this round's profiles.
    baseline = services.runs.profiles_answered(run_id) if first.replay_round else 0
    bar = tqdm(
        desc=first.status,
        unit=" profiles",
        bar_format="{desc} [{elapsed}]",
        disable=not progress,
        dynamic_ncols=True,
    )
    sending = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            run = services.runs.get(run_id)
            assert run is not None
            answered = services.runs.profiles_answered(run_id) - baseline if progress else 0
            if not sending and (answered or run.status == Status.DELIVERING):
                sending = True
                bar.bar_format = None  # tqdm's own: count, total, rate and time left
                bar.set_description_str("sending", refresh=False)
                bar.reset(total=None if run.replay_round else run.objects_planned)
            if sending:
                bar.update(answered - bar.n)
            else:
                read = f", {run.rows_read:,} rows read" if run.rows_read else ""
                bar.set_description_str(f"{run.status}{read}")
            if run.is_final:
                return run
            if host is not None and host.poll() is not None:
                bar.close()
                _error(f"the local host exited with code {host.returncode}")
                return None
            if time.monotonic() > deadline:
                bar.close()
                _error(f"run {run_id} not finished after {timeout:.0f}s")
                return None
            time.sleep(0.5)
    finally:
        bar.close()


def _final_report(services: Services, run: Run) -> dict[str, Any]:
    """The report the run's finalizer wrote (it holds the first rows of each rejection
    reason); rebuilt from the run record if that blob is gone."""
    if run.report_blob:
        try:
            report: dict[str, Any] = json.loads(
                services.storage.read_bytes(RUNS_CONTAINER, run.report_blob)
            )
            return report
        except BlobNotFound:
            pass
    return build_report(run)


def _runs(args: argparse.Namespace) -> int:
    services = Services(load_settings())
    runs = services.runs.list_runs(args.export_name, args.limit)
    if args.json:
        print(json.dumps({"runs": [run.public() for run in runs]}, indent=2, ensure_ascii=False))
        return 0
    if not runs:
        print(f"no runs of export '{args.export_name}'" if args.export_name else "no runs yet")
        return 0
    header = ["RUN", "STATUS", "TRIGGER", "STARTED (UTC)", "TOOK", "READ", "REJECTED", "ACCEPTED"]
    rows = [
        [
            run.run_id,
            run.status,
            run.trigger,
            f"{run.created_at:%Y-%m-%d %H:%M}",
            _took(run),
            f"{run.rows_read:,}",
            f"{run.rows_rejected + run.profiles_rejected_by_braze:,}",
            f"{run.profiles_accepted:,}",
        ]
        for run in runs
    ]
    print("\n".join(_table(rows, header, right={4, 5, 6, 7})))
    return 0


def _took(run: Run) -> str:
    if run.finished_at is None:
        return "-"
    seconds = (run.finished_at - run.created_at).total_seconds()
    return f"{seconds:.1f}s" if seconds < 60 else f"{seconds / 60:.1f}m"


def _status(args: argparse.Namespace) -> int:
    services = Services(load_settings())
    run = services.runs.get(args.run_id)
    if run is None:
        raise CommandError(f"no run '{args.run_id}'; `python -m shared runs` lists recent runs")
    if run.is_final:
        _print_report(_final_report(services, run), args.json)
    elif args.json:
        print(json.dumps(run.public(), indent=2, ensure_ascii=False))
    else:
        sending = run.status == Status.DELIVERING
        answered = services.runs.profiles_answered(run.run_id) if sending else None
        print("\n".join(_report_lines(build_report(run), answered)))
    return EXIT_CODES.get(Status(run.status), STILL_RUNNING)


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print("\n".join(_report_lines(report)))


def _report_lines(report: dict[str, Any], answered: int | None = None) -> list[str]:
    """The run for a terminal: what the Markdown summary holds, and where the files are."""
    fields = [
        ["run", report["run_id"]],
        ["export", f"{report['export']} (connection {report['connection']})"],
        ["segment", report["segment"]],
        ["source", f"{report['source']} (trigger {report['trigger']})"],
        ["status", report["status"]],
        ["message", report["message"] or "-"],
    ]
    if options := option_names(report):
        fields.append(["options", ", ".join(options)])
    if report["safety_valve"]:
        fields.append(["stopped by", report["safety_valve"]])
    fields += [[what.lower(), when] for what, when in timing_rows(report)]
    if answered is not None:
        fields.append(["sent", f"{answered:,} of {report['counts']['profiles_sent']:,} answered"])
    lines = [*_table(fields), "", "counts", *_table(count_rows(report), right={1}, indent=2)]
    if reasons := top_rejections(report):
        header = ["CODE", "ROWS", "FIRST ROWS", "REASON"]
        lines += ["", "rejections", *_table(reasons, header, right={1}, indent=2)]
    if files := file_rows(report):  # written when the run ends
        container = report["blobs"]["container"]
        lines += ["", f"files (container {container})", *_table(files, indent=2)]
    return lines


def _table(
    rows: list[list[str]],
    header: list[str] | None = None,
    right: set[int] | None = None,
    indent: int = 0,
) -> list[str]:
    """Columns two spaces apart, numbers (the `right` columns) aligned right."""
    every = [header, *rows] if header else rows
    widths = [max(len(row[i]) for row in every) for i in range(len(every[0]))]
    return [
        " " * indent
        + "  ".join(
            cell.rjust(width) if i in (right or set()) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in every
    ]


def _validate(args: argparse.Namespace) -> int:
    """Every problem with its path and a suggestion on stdout; the verdict on stderr."""
    try:
        if args.file:
            definitions = parse_definitions(args.file.read_bytes(), str(args.file))
        else:
            definitions = Services(load_settings()).definitions()
    except DefinitionsError as error:
        problems = [
            {"path": p.path, "problem": p.text, "suggestion": p.suggestion} for p in error.details
        ]
        if args.json:
            print(json.dumps({"valid": False, "problems": problems}, indent=2, ensure_ascii=False))
        else:
            for problem in problems:
                print(problem["problem"])
                if problem["suggestion"]:
                    print(f"  suggestion: {problem['suggestion']}")
        return _error(f"{error.source} has {len(problems)} problem(s)")
    exports = [
        {"name": e.name, "connection": e.connection, "segment": e.segment}
        for e in definitions.exports
    ]
    if args.json:
        print(json.dumps({"valid": True, "exports": exports}, indent=2, ensure_ascii=False))
    else:
        for export in exports:
            print(
                f"ok: export '{export['name']}' -> connection '{export['connection']}', "
                f"segment '{export['segment']}'"
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
