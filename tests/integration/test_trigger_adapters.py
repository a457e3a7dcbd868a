"""The three ways in, end to end through the local host: HTTP routes, the timer, blob drops."""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from devtools.sample import make_segment
from shared.core.report import RUN_ENDED
from shared.core.runs import Run, Status, utcnow
from shared.core.schedule import latest_slot, slot_run_id
from tests.integration.conftest import App, LocalHost, export_definition, wait_for


@pytest.fixture
def host(local_host: LocalHost, app: App) -> LocalHost:
    return local_host


@pytest.fixture
def segment(app: App) -> Any:
    sample = make_segment(200, invalid_every=1000, id_prefix="adapt")
    app.upload("adapt/seg.csv", sample.data)
    return sample


def _log_lines(host: LocalHost, pattern: str) -> list[str]:
    return [line for line in list(host.output) if re.search(pattern, line)]


# ---- HTTP ------------------------------------------------------------------------------------


def test_post_starts_a_run_that_can_be_followed(app: App, host: LocalHost, segment: Any) -> None:
    app.define([export_definition("http-ok", "adapt/seg.csv", "HTTP", schedule="0 0 2 * * *")])

    response = requests.post(
        f"{host.url}/api/exports/http-ok/runs", json={"dry_run": False}, timeout=30
    )

    assert response.status_code == 202, response.text
    started = response.json()
    assert started["status"] == "queued" and started["trigger"] == "http"
    assert response.headers["Location"] == f"/api/runs/{started['run_id']}"

    def finished() -> dict[str, Any] | None:
        body = requests.get(host.url + response.headers["Location"], timeout=30).json()
        return body if body["status"] in ("succeeded", "partially_succeeded", "failed") else None

    final = wait_for(finished, "the run to finish")
    assert final["status"] == "succeeded"
    assert final["profiles_accepted"] == len(segment.expected)
    assert final["links"]["report"].endswith(f"runs/{started['run_id']}/report.json")
    assert final["links"]["summary"].endswith(f"runs/{started['run_id']}/report.md")

    exports = requests.get(f"{host.url}/api/exports", timeout=30).json()["exports"]
    (listed,) = [e for e in exports if e["name"] == "http-ok"]
    assert listed["last_run"]["run_id"] == started["run_id"]
    assert listed["schedule"] == "0 0 2 * * *"
    assert datetime.fromisoformat(listed["next_due"]) > datetime.now(UTC)
    history = requests.get(f"{host.url}/api/exports/http-ok/runs?limit=1", timeout=30).json()
    assert [r["run_id"] for r in history["runs"]] == [started["run_id"]]


def test_a_failed_run_logs_the_line_the_alert_rule_fires_on(app: App, host: LocalHost) -> None:
    """infra/app/monitoring.bicep alerts on `<RUN_ENDED>: status=failed ` in the app's traces."""
    app.upload("adapt/nocol.csv", b"CustomerId,Mail\n1,a@example.com\n")
    app.define([export_definition("alerted", "adapt/nocol.csv", "S")])

    response = requests.post(f"{host.url}/api/exports/alerted/runs", timeout=30)
    run = app.wait_for_final(response.json()["run_id"])

    assert run.status == Status.FAILED
    expected = f"{RUN_ENDED}: status=failed run={run.run_id} export=alerted: planning failed"
    lines = wait_for(lambda: _log_lines(host, re.escape(expected)), "the run-end log line")
    assert len(lines) == 1
    assert "a@example.com" not in lines[0]


def test_dry_run_then_teardown_over_http(app: App, host: LocalHost, segment: Any) -> None:
    app.define([export_definition("http-down", "adapt/seg.csv", "Down")])

    def run_to_end(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(f"{host.url}{path}", json=body, timeout=30)
        assert response.status_code == 202, response.text

        def finished() -> dict[str, Any] | None:
            url = host.url + response.headers["Location"]
            run = requests.get(url, timeout=30).json()
            return run if run["status"] not in ("queued", "planning", "delivering") else None

        result: dict[str, Any] = wait_for(finished, f"{path} to finish")
        return result

    dry = run_to_end("/api/exports/http-down/runs", {"dry_run": True})
    assert dry["status"] == "succeeded" and dry["requests_sent"] == 0
    assert dry["links"]["dry_run_requests"].endswith("dry-run/requests.jsonl")
    assert app.braze_users() == {}

    real = run_to_end("/api/exports/http-down/runs", {})
    assert real["profiles_accepted"] == len(segment.expected)
    down = run_to_end("/api/exports/http-down/teardown", {})
    assert down["trigger"] == "teardown" and down["teardown"] is True
    assert down["profiles_removed"] == len(segment.expected)
    assert all(user["segments"] == [] for user in app.braze_users().values())


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/api/exports/Bad_Name/runs", b"", 400, "invalid_name"),
        ("POST", "/api/exports/no-such-export/runs", b"", 404, "export_not_found"),
        ("POST", "/api/exports/http-err/runs", b"{not json", 400, "invalid_body"),
        ("POST", "/api/exports/http-err/runs", b'{"dry_run": "yes"}', 400, "invalid_body"),
        ("POST", "/api/exports/http-err/runs", b'{"surprise": true}', 400, "invalid_body"),
        ("POST", "/api/exports/http-err/runs", b"[1]", 400, "invalid_body"),
        ("POST", "/api/exports/http-err/runs", b" " * 20_000, 413, "body_too_large"),
        ("GET", "/api/runs/no-such-run", b"", 404, "run_not_found"),
        ("GET", "/api/runs/..%2F..%2Fetc", b"", 400, "invalid_run_id"),
        ("GET", "/api/exports/http-err/runs?limit=0", b"", 400, "invalid_limit"),
        ("GET", "/api/exports/http-err/runs?limit=many", b"", 400, "invalid_limit"),
        ("GET", "/api/exports/no-such-export/runs", b"", 404, "export_not_found"),
        ("POST", "/api/exports/http-err/teardown", b'{"full_refresh": true}', 400, "invalid_body"),
        ("POST", "/api/exports/no-such-export/teardown", b"", 404, "export_not_found"),
        ("POST", "/api/runs/no-such-run/replay", b"", 404, "run_not_found"),
        ("POST", "/api/runs/bad%20id/replay", b"", 400, "invalid_run_id"),
    ],
)
def test_bad_requests_get_the_documented_error_and_start_nothing(
    app: App, host: LocalHost, method: str, path: str, body: bytes, status: int, code: str
) -> None:
    app.define([export_definition("http-err", "adapt/seg.csv", "E")])
    response = requests.request(method, host.url + path, data=body, timeout=30)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] == code and payload["message"]
    assert app.services.runs.list_runs("http-err") == []


def test_busy_export_is_409_and_options_are_recorded(app: App, host: LocalHost) -> None:
    app.define([export_definition("http-busy", "adapt/seg.csv", "B")])
    held = Run("http-busy-held", "http-busy", "B", "sandbox", "segments/x.csv", "test")
    app.services.runs.claim_export("http-busy", held.run_id)
    held.status = Status.DELIVERING
    app.services.runs.create(held)

    response = requests.post(f"{host.url}/api/exports/http-busy/runs", timeout=30)

    assert response.status_code == 409
    assert response.json()["error"] == "export_busy"
    assert response.json()["active_run"]["run_id"] == "http-busy-held"
    assert [r.run_id for r in app.services.runs.list_runs("http-busy")] == ["http-busy-held"]


def test_dry_run_and_full_refresh_options_are_accepted(
    app: App, host: LocalHost, segment: Any
) -> None:
    app.define([export_definition("http-opts", "adapt/seg.csv", "O")])
    response = requests.post(
        f"{host.url}/api/exports/http-opts/runs",
        json={"dry_run": True, "full_refresh": True},
        timeout=30,
    )
    assert response.status_code == 202
    run = app.services.runs.get(response.json()["run_id"])
    assert run is not None and run.dry_run and run.full_refresh
    final = app.wait_for_final(run.run_id)
    # A dry run plans every profile (full refresh) and sends none of them.
    assert final.objects_planned > 0 and final.profiles_accepted == 0
    assert final.status is not Status.FAILED, final.message


# ---- Timer -----------------------------------------------------------------------------------


def test_timer_fired_twice_and_concurrently_starts_one_run_per_slot(
    app: App, host: LocalHost, segment: Any
) -> None:
    schedule = "0 0 0 1 1 *"  # yearly: the host's own minute ticks cannot reach another slot
    app.define([export_definition("timed", "adapt/seg.csv", "T", schedule=schedule)])
    slot = latest_slot(schedule, utcnow())
    app.services.runs.set_last_slot("timed", slot.replace(year=slot.year - 1))  # app was "down"

    def fire() -> None:
        admin = f"{host.url}/admin/functions/schedule_exports"
        assert requests.post(admin, json={"input": ""}, timeout=30).status_code == 202

    # A tick that finds the slot already handled logs nothing for the export, so the ticks are
    # counted by the host's own lines (its minute ticks may add more, never another slot).
    executed = r"Executed 'Functions\.schedule_exports' \(Succeeded"
    before = len(_log_lines(host, executed))
    threads = [threading.Thread(target=fire) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fire()

    wait_for(lambda: len(_log_lines(host, executed)) >= before + 4, "4 ticks")
    outcomes = _log_lines(host, r"schedule: export timed -> ")
    assert sum("-> started" in line for line in outcomes) == 1, outcomes
    (run,) = app.services.runs.list_runs("timed")
    assert run.run_id == slot_run_id("timed", latest_slot(schedule, run.created_at))
    runs = [run]
    assert runs[0].trigger == "schedule"
    assert app.wait_for_final(runs[0].run_id).status == Status.SUCCEEDED


# ---- Blob drop -------------------------------------------------------------------------------


def _blob_event(app: App, name: str) -> list[dict[str, Any]]:
    url = app.services.storage.container("segments").get_blob_client(name).url
    props = app.services.storage.container("segments").get_blob_client(name).get_blob_properties()
    return [
        {
            "id": str(uuid.uuid4()),
            "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/"
            "storageAccounts/devstoreaccount1",
            "subject": f"/blobServices/default/containers/segments/blobs/{name}",
            "eventType": "Microsoft.Storage.BlobCreated",
            "eventTime": utcnow().isoformat(),
            "dataVersion": "",
            "metadataVersion": "1",
            "data": {
                "api": "PutBlob",
                "contentType": "text/csv",
                "contentLength": props.size,
                "blobType": "BlockBlob",
                "eTag": props.etag,
                "url": url,
                "sequencer": "0" * 32,
            },
        }
    ]


def _post_event(host: LocalHost, events: list[dict[str, Any]]) -> None:
    webhook = f"{host.url}/runtime/webhooks/blobs?functionName=Host.Functions.segment_dropped"
    response = requests.post(
        webhook, data=json.dumps(events), headers={"aeg-event-type": "Notification"}, timeout=30
    )
    assert response.status_code in (200, 202), response.text


def test_a_dropped_file_starts_its_export_with_that_file(
    app: App, host: LocalHost, segment: Any
) -> None:
    app.define(
        [export_definition("dropper", "adapt/seg.csv", "Drop", drop={"path": "adapt/in/*.csv"})]
    )
    app.upload("adapt/in/today.csv", segment.data)  # the local Event Grid stand-in notices it

    run = wait_for(lambda: app.services.runs.list_runs("dropper"), "a run from the drop")[0]
    assert (run.trigger, run.source) == ("blob", "segments/adapt/in/today.csv")
    assert app.wait_for_final(run.run_id).profiles_accepted == len(segment.expected)


def test_the_same_event_twice_and_an_unchanged_reupload_start_one_run(
    app: App, host: LocalHost, segment: Any
) -> None:
    app.define(
        [export_definition("twice", "adapt/seg.csv", "Twice", drop={"path": "adapt/twice/*"})]
    )
    app.upload("adapt/twice/a.csv", segment.data)
    event = _blob_event(app, "adapt/twice/a.csv")
    _post_event(host, event)
    _post_event(host, event)
    app.upload("adapt/twice/a.csv", segment.data)  # same bytes, new ETag

    pattern = r"drop segments/adapt/twice/a\.csv -> export twice: "
    wait_for(lambda: len(_log_lines(host, pattern)) >= 3, "three deliveries of the drop")
    outcomes = _log_lines(host, pattern)
    assert sum(line.rstrip().endswith("started") for line in outcomes) == 1, outcomes
    assert len(app.services.runs.list_runs("twice")) == 1


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("adapt/ign/empty.csv", b"", "it is empty"),
        ("adapt/ign/upload.csv.tmp", b"x", "temporary or hidden"),
        ("elsewhere/unmatched.csv", b"x", "no export's drop pattern matches it"),
    ],
)
def test_ignored_drops_say_why_and_start_nothing(
    app: App, host: LocalHost, name: str, data: bytes, reason: str
) -> None:
    app.define([export_definition("ignorer", "adapt/seg.csv", "I", drop={"path": "adapt/ign/*"})])
    app.upload(name, data)
    _post_event(host, _blob_event(app, name))
    line = wait_for(
        lambda: _log_lines(host, rf"ignored segments/{re.escape(name)}: "), "the ignore log line"
    )
    assert reason in line[0]
    assert app.services.runs.list_runs("ignorer") == []


def test_a_cdm_folder_starts_when_model_json_lands_not_on_partitions(
    app: App, host: LocalHost
) -> None:
    """A Customer Insights export: header-less partitions, then model.json pointing at them."""
    base = app.services.storage.container("segments").url  # Azurite's absolute blob URL
    folder = "cdm/CustomerInsights_1/VipExport"
    parts = {
        f"{folder}/VIP/2026/11/28/1433/VIP_1.csv": (
            'c-1,one@example.com,Zoë,"multi\nline, ""quoted"""\r\nc-2,not an email,Bob,x\r\n'
        ),
        f"{folder}/VIP/2026/11/28/1433/VIP_2.csv": (
            "\ufeffc-3,three@example.com,Ann,🎉\n" + "blocked-id-1,b@example.com,Blocked,\n"
        ),
    }
    model = {
        "name": "VipExport",
        "version": "1.0",
        "pbi:mashup": {"ignored": True},
        "entities": [
            {
                "$type": "LocalEntity",
                "name": "VIP",
                "attributes": [
                    {"name": "CustomerId", "dataType": "string"},
                    {"name": "PrimaryEmail", "dataType": "string"},
                    {"name": "FirstName", "dataType": "string"},
                    {"name": "Note", "dataType": "string"},
                ],
                "partitions": [
                    {"name": name.rsplit("/", 1)[-1], "location": f"{base}/{name}?snapshot=x"}
                    for name in parts
                ],
            }
        ],
    }
    export = export_definition(
        "cdm-vip",
        f"{folder}/model.json",
        "CDM VIP",
        drop={"path": "cdm/*"},
        mapping={
            "customer_id": "CustomerId",
            "email": "PrimaryEmail",
            "attributes": [
                {"column": "FirstName", "attribute": "first_name"},
                {"column": "Note", "attribute": "note"},
            ],
        },
    )
    app.define([export])
    for name, text in parts.items():
        app.upload(name, text.encode())
        _post_event(host, _blob_event(app, name))
    for name in parts:
        wait_for(
            lambda n=name: _log_lines(host, rf"{re.escape(n)} -> export cdm-vip: ignored: a CDM"),
            "the partition to be ignored",
        )
    assert app.services.runs.list_runs("cdm-vip") == []

    app.upload(f"{folder}/model.json", json.dumps(model).encode())
    run = wait_for(lambda: app.services.runs.list_runs("cdm-vip"), "the model.json run")[0]
    final = app.wait_for_final(run.run_id)

    assert final.source == f"segments/{folder}/model.json"
    assert (final.rows_read, final.rows_valid, final.profiles_accepted) == (4, 3, 2)
    users = app.braze_users()
    assert users["c-1"]["note"] == 'multi\nline, "quoted"'
    assert users["c-3"]["first_name"] == "Ann" and users["c-3"]["note"] == "🎉"
    rejected = [json.loads(x) for x in app.blob_text(final.rejected_blob).splitlines()]
    part1, part2 = (f"segments/{name}" for name in parts)
    assert [(r["file"], r["line"], r["codes"]) for r in rejected] == [
        (part1, 3, ["email_invalid"]),
        (part2, 2, ["BLACKLISTED_EXTERNAL_USER_ID"]),
    ]
