"""`python -m shared` as a user runs it: exit codes, output, and the local host it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.processes import ROOT
from tests.integration.conftest import App, export_definition

HEADER = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note\n"


def _cli(app: App, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **app.env}
    return subprocess.run(
        [sys.executable, "-m", "shared", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def cli_app(app_env: App) -> App:
    """The CLI starts its own local host, as it does for a user (the session's host, if another
    test started it, consumes the same queues; either may do the work)."""
    app_env.reset_sandbox()
    return app_env


@pytest.mark.parametrize(
    ("rows", "code", "status"),
    [
        (HEADER + "c1,a@example.com,A,1,true,1990-01-01,\n", 0, "succeeded"),
        (HEADER + "c1,a@example.com,A,1,true,1990-01-01,\nc2,bad email,B,1,1,1990-01-01,\n", 1,
         "partially_succeeded"),
        (HEADER + "c1,bad email,A,1,true,1990-01-01,\n", 2, "failed"),
    ],
)  # fmt: skip
def test_export_exit_code_follows_the_run_status(
    cli_app: App, rows: str, code: int, status: str
) -> None:
    name = f"cli-{code}"
    cli_app.upload(f"cli/{name}.csv", rows.encode())
    cli_app.define([export_definition(name, f"cli/{name}.csv", "CLI")])

    result = _cli(cli_app, "export", name, "--host", "local", "--no-progress", "--timeout", "240")

    assert result.returncode == code, result.stderr
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["status"] == status
    assert report["counts"]["rows_read"] == rows.count("\n") - 1
    listing = _cli(cli_app, "runs", "--export", name)
    assert listing.returncode == 0 and report["run_id"] in listing.stdout
    shown = _cli(cli_app, "status", report["run_id"])
    assert shown.returncode == code and json.loads(shown.stdout)["status"] == status


def test_unknown_export_and_missing_file_are_errors_not_partial_success(cli_app: App) -> None:
    cli_app.define([export_definition("known", "cli/x.csv", "X")])
    unknown = _cli(cli_app, "export", "nope", "--host", "none")
    assert unknown.returncode == 2 and "no export named 'nope'" in unknown.stderr
    missing = _cli(cli_app, "validate", "--file", "/nonexistent/exports.json")
    assert missing.returncode == 2 and "No such file" in missing.stderr


def test_a_stopped_run_exits_3_then_teardown_and_replay_speak_plainly(cli_app: App) -> None:
    rows = [f"v{n},v{n}@example.com,A,1,true,1990-01-01,\n" for n in range(3)]
    cli_app.upload("cli/valve.csv", (HEADER + "".join(rows)).encode())
    cli_app.define([export_definition("cli-valve", "cli/valve.csv", "CLI")])
    args = ("--host", "local", "--no-progress", "--timeout", "240")
    assert _cli(cli_app, "export", "cli-valve", *args).returncode == 0

    cli_app.upload("cli/valve.csv", (HEADER + rows[0]).encode())  # two of three would leave
    stopped = _cli(cli_app, "export", "cli-valve", *args)
    assert stopped.returncode == 3, stopped.stderr
    report = json.loads(stopped.stdout[stopped.stdout.index("{") :])
    assert report["status"] == "stopped" and report["safety_valve"] == "max_removed_share"

    down = _cli(cli_app, "teardown", "cli-valve", *args)
    assert down.returncode == 0, down.stderr
    report = json.loads(down.stdout[down.stdout.index("{") :])
    assert report["counts"]["profiles_removed"] == 3 and report["trigger"] == "teardown"
    assert all(u["segments"] == [] for u in cli_app.braze_users().values())

    missing = _cli(cli_app, "replay", "cli-valve-nope", "--host", "none")
    assert missing.returncode == 2 and "no run 'cli-valve-nope'" in missing.stderr
    nothing = _cli(cli_app, "replay", report["run_id"], "--host", "none")
    assert nothing.returncode == 2 and "no rejected deliveries" in nothing.stderr


def test_validate_lists_exports_or_every_problem(cli_app: App, tmp_path: Path) -> None:
    cli_app.define([export_definition("ok-export", "cli/x.csv", "X")])
    good = _cli(cli_app, "validate")
    assert good.returncode == 0 and "ok: export 'ok-export'" in good.stdout

    bad = tmp_path / "exports.json"
    document = json.loads(cli_app.definitions_path.read_text())
    document["exports"][0].update(name="Bad Name", connection="nowhere")
    bad.write_text(json.dumps(document))
    result = _cli(cli_app, "validate", "--file", str(bad))
    assert result.returncode == 2
    assert "has 2 problem(s)" in result.stderr
    assert "exports[0] (Bad Name).name: must be lower-case" in result.stderr
    assert (
        "exports[0] (Bad Name).connection: 'nowhere' is not a defined connection" in result.stderr
    )
