"""`python -m shared` as a user runs it: exit codes, what it prints for people and with
`--json` for scripts, the local host it starts, and errors in one sentence."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.processes import ROOT
from shared.pipeline.start import start_run
from tests.integration.conftest import BLOCKLISTED, App, export_definition

HEADER = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note\n"
FOLLOW = ("--host", "local", "--no-progress", "--timeout", "240")


def _cli(
    app: App, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "shared", *args],
        cwd=cwd,
        env=env or {**os.environ, **app.env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error sentence of a command that failed: exit 2, one `error:` line on stderr."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: "), line
    return line


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
def test_export_exit_code_follows_the_run_status_and_json_is_for_scripts(
    cli_app: App, rows: str, code: int, status: str
) -> None:
    name = f"cli-{code}"
    cli_app.upload(f"cli/{name}.csv", rows.encode())
    cli_app.define([export_definition(name, f"cli/{name}.csv", "CLI")])

    result = _cli(cli_app, "export", name, "--json", *FOLLOW)

    assert result.returncode == code, result.stderr
    report = json.loads(result.stdout)  # stdout is the report alone; the rest went to stderr
    assert report["status"] == status and f"run {report['run_id']} queued" in result.stderr
    assert report["counts"]["rows_read"] == rows.count("\n") - 1
    assert report["blobs"]["summary"] == f"runs/{report['run_id']}/report.md"
    listing = _cli(cli_app, "runs", "--export", name, "--json")
    assert listing.returncode == 0
    assert report["run_id"] in [run["run_id"] for run in json.loads(listing.stdout)["runs"]]
    shown = _cli(cli_app, "status", report["run_id"], "--json")
    assert shown.returncode == code and json.loads(shown.stdout) == report


def test_export_shows_progress_then_the_run_and_runs_and_status_are_for_people(
    cli_app: App,
) -> None:
    rows = [f"p{n},p{n}@example.com,A,{n},true,1990-01-01,\n" for n in range(40)]
    rows[6] = "p6,no email here,A,1,true,1990-01-01,\n"  # line 8
    rows[9] = f"{BLOCKLISTED},b@example.com,B,1,true,1990-01-01,\n"  # line 11
    cli_app.upload("cli/people.csv", (HEADER + "".join(rows)).encode())
    cli_app.define([export_definition("cli-people", "cli/people.csv", "People")])

    exported = _cli(cli_app, "export", "cli-people", "--host", "local", "--timeout", "240")

    assert exported.returncode == 1, exported.stderr
    assert "sending: 100%" in exported.stderr and "39/39" in exported.stderr
    assert "profiles/s" in exported.stderr  # tqdm's rate; it prints the time left beside it
    run_id = exported.stdout.split()[1]
    shown = _cli(cli_app, "status", run_id)
    assert shown.returncode == 1 and shown.stdout == exported.stdout
    view = shown.stdout
    assert f"run       {run_id}\n" in view and "status    partially_succeeded\n" in view
    assert "export    cli-people (connection sandbox)" in view
    for line in ("Rows read", "Valid", "Rejected by validation", "Accepted by Braze"):
        assert f"\n  {line}" in view, line
    rejections = view[view.index("\nrejections\n") :].split("\n\n")[0].splitlines()[2:]
    assert rejections[0].split() == ["CODE", "ROWS", "FIRST", "ROWS", "REASON"]
    by_code = {line.split()[0]: line for line in rejections[1:]}
    assert set(by_code) == {"email_invalid", "BLACKLISTED_EXTERNAL_USER_ID"}
    assert by_code["email_invalid"].split()[1:4] == ["1", "line", "8"]
    assert by_code["email_invalid"].endswith(
        "the email is not a valid address "
        + "(a space, not exactly one @, a bad domain, or too long)"
    )
    assert by_code["BLACKLISTED_EXTERNAL_USER_ID"].split()[1:4] == ["1", "line", "11"]
    assert f"runs/{run_id}/report.md" in view and f"runs/{run_id}/rejected.jsonl" in view
    assert "started   " in view and "duration  " in view

    table = _cli(cli_app, "runs", "--export", "cli-people").stdout.splitlines()
    assert table[0].split() == [
        "RUN", "STATUS", "TRIGGER", "STARTED", "(UTC)", "TOOK", "READ", "REJECTED", "ACCEPTED"
    ]  # fmt: skip
    assert table[1].split()[:3] == [run_id, "partially_succeeded", "cli"]
    assert table[1].split()[-3:] == ["40", "2", "38"]
    assert _cli(cli_app, "runs", "--export", "cli-none").stdout == "no runs of export 'cli-none'\n"


def test_status_of_a_run_on_its_way_shows_what_is_known_so_far(quiet_app: App) -> None:
    """No host listens to this storage: the run stays queued while the CLI looks at it."""
    quiet_app.define([export_definition("cli-waiting", "cli/waiting.csv", "Waiting")])
    run = start_run(quiet_app.services, "cli-waiting", "test").run

    shown = _cli(quiet_app, "status", run.run_id)

    assert shown.returncode == 4  # still on its way
    assert "status    queued\n" in shown.stdout and "duration  still running" in shown.stdout
    assert "\nsent " not in shown.stdout  # Braze's answers are counted once it sends
    assert "files" not in shown.stdout  # written when the run ends
    scripted = json.loads(_cli(quiet_app, "status", run.run_id, "--json").stdout)
    assert scripted["status"] == "queued" and scripted["chunks_total"] is None


def test_errors_are_one_sentence_and_never_a_traceback(cli_app: App, tmp_path: Path) -> None:
    cli_app.define([export_definition("known-export", "cli/x.csv", "X")])
    unknown = _one_error(_cli(cli_app, "export", "known-exprot", "--host", "none"))
    assert unknown == "error: no export named 'known-exprot'; did you mean \"known-export\"?"
    far = _one_error(_cli(cli_app, "export", "zzz", "--host", "none"))
    assert far == "error: no export named 'zzz'; the exports are known-export"
    no_run = _one_error(_cli(cli_app, "status", "known-export-nope"))
    assert no_run.startswith("error: no run 'known-export-nope'; `python -m shared runs` lists")
    missing = _one_error(_cli(cli_app, "validate", "--file", "/nonexistent/exports.json"))
    assert missing == "error: cannot read /nonexistent/exports.json: No such file or directory"

    cli_app.definitions_path.write_text('{"connections": [], "exports": [}')
    unreadable = _one_error(_cli(cli_app, "export", "known-export", "--host", "none"))
    assert unreadable == (
        f"error: {cli_app.definitions_path} has 1 problem(s); `python -m shared validate` "
        "explains each"
    )

    # No storage configured: run where no local.settings.json fills it in.
    bare = {k: v for k, v in os.environ.items() if k != "AzureWebJobsStorage"}
    bare["PYTHONPATH"] = str(ROOT)
    for command in (["runs"], ["status", "x"], ["runs", "--json"]):
        unset = _one_error(_cli(cli_app, *command, cwd=tmp_path, env=bare))
        assert unset.startswith("error: storage is not configured: set AzureWebJobsStorage")
    # Storage that does not answer (port 1: nothing listens there).
    connection = cli_app.env["AzureWebJobsStorage"]
    bare["AzureWebJobsStorage"] = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:1", connection)
    down = _one_error(_cli(cli_app, "runs", cwd=tmp_path, env=bare))
    assert down.startswith("error: cannot reach the storage account")


def test_a_stopped_run_exits_3_then_teardown_and_replay_speak_plainly(cli_app: App) -> None:
    rows = [f"v{n},v{n}@example.com,A,1,true,1990-01-01,\n" for n in range(3)]
    cli_app.upload("cli/valve.csv", (HEADER + "".join(rows)).encode())
    cli_app.define([export_definition("cli-valve", "cli/valve.csv", "CLI")])
    assert _cli(cli_app, "export", "cli-valve", *FOLLOW).returncode == 0

    cli_app.upload("cli/valve.csv", (HEADER + rows[0]).encode())  # two of three would leave
    stopped = _cli(cli_app, "export", "cli-valve", "--json", *FOLLOW)
    assert stopped.returncode == 3, stopped.stderr
    report = json.loads(stopped.stdout)
    assert report["status"] == "stopped" and report["safety_valve"] == "max_removed_share"

    down = _cli(cli_app, "teardown", "cli-valve", "--json", *FOLLOW)
    assert down.returncode == 0, down.stderr
    report = json.loads(down.stdout)
    assert report["counts"]["profiles_removed"] == 3 and report["trigger"] == "teardown"
    assert all(u["segments"] == [] for u in cli_app.braze_users().values())

    missing = _one_error(_cli(cli_app, "replay", "cli-valve-nope", "--host", "none"))
    assert "no run 'cli-valve-nope'" in missing
    nothing = _one_error(_cli(cli_app, "replay", report["run_id"], "--host", "none"))
    assert "no rejected deliveries" in nothing


def test_validate_lists_exports_or_every_problem_with_its_path_and_a_suggestion(
    cli_app: App, tmp_path: Path
) -> None:
    cli_app.define([export_definition("ok-export", "cli/x.csv", "X")])
    good = _cli(cli_app, "validate")
    assert good.returncode == 0 and "ok: export 'ok-export'" in good.stdout
    assert json.loads(_cli(cli_app, "validate", "--json").stdout) == {
        "valid": True,
        "exports": [{"name": "ok-export", "connection": "sandbox", "segment": "X"}],
    }

    bad = tmp_path / "exports.json"
    document = json.loads(cli_app.definitions_path.read_text())
    document["exports"][0].update(name="Bad Name", connection="sandbx", chunk_size=10)
    del document["exports"][0]["mapping"]["email"]
    bad.write_text(json.dumps(document))
    result = _cli(cli_app, "validate", "--file", str(bad))
    assert result.returncode == 2
    assert result.stderr == f"error: {bad} has 4 problem(s)\n"
    assert result.stdout.splitlines() == [
        "exports[0] (Bad Name).name: must be lower-case letters, digits and inner hyphens "
        "(at most 63 characters)",
        '  suggestion: for example "bad-name"',
        "exports[0] (Bad Name).mapping.email: is required",
        '  suggestion: add "email": Column sent as the Braze email field.',
        "exports[0] (Bad Name).chunk_size: Input should be greater than or equal to 75",
        "  suggestion: use a whole number from 75 to 100000, or leave it out for the default, "
        "100000",
        "exports[0] (Bad Name).connection: 'sandbx' is not a defined connection",
        '  suggestion: did you mean "sandbox"?',
    ]
    scripted = _cli(cli_app, "validate", "--file", str(bad), "--json")
    assert scripted.returncode == 2
    verdict = json.loads(scripted.stdout)
    assert verdict["valid"] is False
    assert [(p["path"], p["suggestion"]) for p in verdict["problems"]] == [
        ("exports[0].name", 'for example "bad-name"'),
        ("exports[0].mapping.email", 'add "email": Column sent as the Braze email field.'),
        (
            "exports[0].chunk_size",
            "use a whole number from 75 to 100000, or leave it out for the default, 100000",
        ),
        ("exports[0].connection", 'did you mean "sandbox"?'),
    ]
    assert verdict["problems"][3]["problem"].endswith("'sandbx' is not a defined connection")
