"""The status page through the local host, rendered by headless Chromium (Debian's `chromium`).

A run history is seeded in the test Azurite (run records and their files, plus one real run
over HTTP); the page is opened as a person would open it, with `?code=<function key>`, and
what Chromium built is checked: exports, runs and counts, the failed run marked, the chart,
the links to the report and the rejected rows (followed, with the key), nothing loaded from
elsewhere, hostile text shown as text. The screenshot is kept in tests/artifacts/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import pytest
import requests
from PIL import Image  # matplotlib's own dependency (requirements-dev.txt)

from devtools.processes import ROOT
from devtools.sample import make_segment
from shared.adapters.services import Services
from shared.adapters.settings import load_settings
from shared.core.access import READ, RUN
from shared.core.report import build_report
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import Run, Status, utcnow
from shared.entrypoints import dashboard
from shared.pipeline.run_files import rejected_blob_name, report_blob_name
from tests.core.test_access import principal
from tests.html_tree import Element, parse
from tests.integration.conftest import App, LocalHost, export_definition

ARTIFACTS = ROOT / "tests" / "artifacts"
KEY = "dGVzdA/k+e==y"  # function keys are base64: '/', '+' and '=' must survive the links
WINDOW = (1280, 1600)
BAR_BLUE = (0x52, 0x8B, 0xFF)  # --bar in shared/core/status_page.py
HOSTILE = "<script>document.title='owned'</script><img src=x onerror=alert(1)>"


def chromium(*arguments: str, profile: Path) -> str:
    """Run headless Chromium once (its own profile, so runs never share state); its stdout."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail(
            "Chromium is not installed, and the status page is tested in it: install Debian's "
            "package (`sudo apt-get install -y chromium`); .ci/run does that on a fresh machine"
        )
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # tests may run as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *arguments,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@dataclass
class History:
    """What was seeded: the runs of each export, newest first."""

    runs: dict[str, list[Run]]
    real: Run  # the run made over HTTP: its report and rejected rows are the pipeline's own
    running: Run


def _definitions(app: App, *extra: dict[str, Any]) -> None:
    app.define(
        [
            export_definition("vip-daily", "dash/vip.csv", "VIP Customers", schedule="0 0 6 * * *"),
            export_definition(
                "churn-weekly",
                "dash/churn.csv",
                "Churn risk",
                schedule="0 30 5 * * 1",
                drop={"path": "crm/churn/*.csv"},
            ),
            export_definition("web-signups", "dash/signups.csv", "Web signups"),
            *extra,
        ]
    )


def _seed(
    app: App,
    export: str,
    days_ago: float,
    status: Status,
    *,
    read: int,
    rejected: int = 0,
    sent: int = 0,
    removed: int = 0,
    braze_rejected: int = 0,
    minutes: float | None = 4,
    message: str = "",
    trigger: str = "schedule",
) -> Run:
    """A run record with counts that add up, and its report and rejected rows once finished."""
    created = utcnow().replace(microsecond=0) - timedelta(days=days_ago)
    delivered = minutes is not None and status != Status.STOPPED  # Braze answered all it got
    run = Run(
        f"{export}-{created:%Y%m%dT%H%M%SZ}-{int(days_ago * 100):04d}",
        export,
        "segment",
        "sandbox",
        f"segments/dash/{export}.csv",
        trigger,
        status=status,
        created_at=created,
        rows_read=read,
        rows_valid=read - rejected,
        rows_rejected=rejected,
        profiles_new=sent - removed,
        profiles_unchanged=read - rejected - (sent - removed),
        profiles_removed=removed,
        objects_planned=sent,
        profiles_accepted=sent - braze_rejected if delivered else 0,
        profiles_rejected_by_braze=braze_rejected,
        data_points_estimated=sent * 3,
        data_points_used=sent * 3 if delivered else 0,
        message=message,
    )
    if minutes is not None:
        run.finished_at = created + timedelta(minutes=minutes)
        run.report_blob = report_blob_name(run.run_id)
        run.rejected_blob = rejected_blob_name(run.run_id)
        storage = app.services.storage
        report = json.dumps(build_report(run), indent=2)
        storage.write_bytes(RUNS_CONTAINER, run.report_blob, report, "application/json")
        lines = "".join(
            json.dumps({"line": n + 2, "stage": "validation", "codes": ["email_invalid"]}) + "\n"
            for n in range(min(rejected + braze_rejected, 3))
        )
        storage.write_bytes(RUNS_CONTAINER, run.rejected_blob, lines, "application/x-ndjson")
    app.services.runs.create(run)
    return run


@pytest.fixture(scope="module")
def history(app_env: App, local_host: LocalHost) -> History:
    app = app_env
    _definitions(app)
    for name in ("vip-daily", "churn-weekly"):  # no slot of theirs starts while this runs
        app.services.runs.set_last_slot(name, utcnow() + timedelta(days=3650))
    vip = [
        _seed(
            app,
            "vip-daily",
            0.08,
            Status.FAILED,
            read=0,
            minutes=0.4,
            message=(
                "planning failed: the source has no column 'CustomerId' (its header: customer_id, "
                "email, first_name); fix the file or the mapping and run again"
            ),
        ),
        _seed(
            app,
            "vip-daily",
            1.08,
            Status.PARTIALLY_SUCCEEDED,
            read=1_204_331,
            rejected=1_873,
            sent=48_210,
            removed=2_045,
            braze_rejected=12,
            minutes=6.2,
            message="48,198 of 48,210 profiles sent were accepted by Braze; 1,873 rows "
            "rejected by validation, 12 by Braze",
        ),
        _seed(
            app,
            "vip-daily",
            2.08,
            Status.SUCCEEDED,
            read=1_201_950,
            rejected=1_802,
            sent=35_114,
            removed=1_540,
            minutes=5.1,
            message="all 35,114 profiles sent were accepted by Braze",
        ),
        _seed(
            app,
            "vip-daily",
            3.08,
            Status.SUCCEEDED,
            read=1_199_003,
            rejected=1_790,
            sent=1_197_213,
            removed=0,
            minutes=21.5,
            message="all 1,197,213 profiles sent were accepted by Braze (full refresh)",
        ),
        _seed(
            app,
            "vip-daily",
            4.08,
            Status.SUCCEEDED,
            read=1_198_620,
            rejected=1_781,
            sent=29_870,
            removed=1_102,
            minutes=4.8,
            message="all 29,870 profiles sent were accepted by Braze",
        ),
    ]
    churn = [
        _seed(
            app,
            "churn-weekly",
            0.1,
            Status.DELIVERING,
            read=310_422,
            sent=91_003,
            minutes=None,
            trigger="blob",
        ),
        _seed(
            app,
            "churn-weekly",
            7.1,
            Status.STOPPED,
            read=305_118,
            sent=0,
            minutes=1.2,
            message="stopped by a safety valve: 61,020 profiles (21%) would leave the "
            "segment, more than max_removed_share 20%; nothing was sent",
        ),
        _seed(
            app,
            "churn-weekly",
            14.1,
            Status.SUCCEEDED,
            read=289_004,
            rejected=15,
            sent=18_230,
            removed=3_211,
            minutes=3.3,
            message="all 18,230 profiles sent were accepted by Braze",
        ),
    ]
    sample = make_segment(400, invalid_every=50, id_prefix="dash", segment="Web signups")
    app.upload("dash/signups.csv", sample.data)
    started = requests.post(f"{local_host.url}/api/exports/web-signups/runs", timeout=30)
    assert started.status_code == 202, started.text
    real = app.wait_for_final(started.json()["run_id"])
    assert real.status == Status.PARTIALLY_SUCCEEDED and real.rows_rejected > 0, real.message
    return History({"vip-daily": vip, "churn-weekly": churn, "web-signups": [real]}, real, churn[0])


@dataclass
class Page:
    url: str
    response: requests.Response  # the page as the host sent it
    dom: Element  # the page as Chromium built it
    screenshot: Path


@pytest.fixture(scope="module")
def page(history: History, local_host: LocalHost, tmp_path_factory: pytest.TempPathFactory) -> Page:
    url = f"{local_host.url}/api/dashboard?code={quote(KEY, safe='')}"
    response = requests.get(url, timeout=60)
    assert response.status_code == 200, response.text
    profile = tmp_path_factory.mktemp("chromium")
    dom = chromium("--dump-dom", url, profile=profile)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard.html").write_text(dom)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    chromium(
        f"--screenshot={screenshot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url, profile=profile
    )
    return Page(url, response, parse(dom), screenshot)


def _runs_of(page: Page, export: str) -> list[Element]:
    return page.dom.one("section", "export", data_export=export).all("tbody", "run")


def _figures(run: Element) -> list[str]:
    return [td.text() for td in run.all("tr")[0].all("td")]


def test_the_page_lists_every_export_with_its_schedule_and_runs_newest_first(
    page: Page, history: History
) -> None:
    overview = page.dom.one("table", "overview")
    assert [row.attrs["data-export"] for row in overview.all("tr", "tone-bad")] == ["vip-daily"]
    rows = {row.attrs["data-export"]: row for row in overview.one("tbody").all("tr")}
    assert list(rows) == ["vip-daily", "churn-weekly", "web-signups"]
    assert "0 0 6 * * *" in rows["vip-daily"].text()
    assert "on demand" in rows["web-signups"].text()
    for export, runs in history.runs.items():
        assert [b.attrs["data-run-id"] for b in _runs_of(page, export)] == [r.run_id for r in runs]
    churn = page.dom.one("section", "export", data_export="churn-weekly").one("p", "meta").text()
    assert "schedule 0 30 5 * * 1 (next " in churn and "crm/churn/*.csv" in churn


def test_each_run_shows_its_status_duration_counts_data_points_and_message(
    page: Page, history: History
) -> None:
    partial = history.runs["vip-daily"][1]
    row = page.dom.one("tbody", data_run_id=partial.run_id)
    assert row.attrs["data-status"] == "partially_succeeded"
    assert _figures(row) == [
        "partially succeeded",
        f"{partial.created_at:%Y-%m-%d %H:%M}",
        "6 min 12 s",
        "schedule",
        "1,204,331",  # read
        "1,202,458",  # valid
        "1,885",  # rejected: by validation and by Braze
        "48,210",  # sent
        "48,198",  # accepted
        "2,045",  # removed
        "1,156,293",  # unchanged
        "144,630",  # data points
        "report · rejected",
    ]
    assert row.one("tr", "about").text() == f"{partial.run_id} {partial.message}"
    running = page.dom.one("tbody", data_run_id=history.running.run_id)
    assert _figures(running)[2].startswith("running ")
    assert _figures(running)[-1] == "–"  # no files before it finishes
    real = page.dom.one("tbody", data_run_id=history.real.run_id)
    assert _figures(real)[4] == f"{history.real.rows_read:,}"
    assert history.real.message in real.one("tr", "about").text()


def test_the_failed_run_stands_out_and_is_listed_as_needing_attention(
    page: Page, history: History
) -> None:
    failed = history.runs["vip-daily"][0]
    assert "tone-bad" in page.dom.one("tbody", data_run_id=failed.run_id).classes
    assert page.dom.one("tbody", data_run_id=failed.run_id).attrs["data-status"] == "failed"
    attention = page.dom.one("section", "attention").all("li")
    # Worst first: failed, then stopped (churn-weekly's last finished run), then partial.
    assert [item.attrs["data-export"] for item in attention] == [
        "vip-daily",
        "churn-weekly",
        "web-signups",
    ]
    assert failed.message in attention[0].text()
    assert [item.classes for item in attention] == [{"tone-bad"}, {"tone-warn"}, {"tone-warn"}]


def test_the_chart_is_drawn_with_a_bar_per_run_and_a_point_per_finished_run(
    page: Page, history: History
) -> None:
    for export, runs in history.runs.items():
        svg = page.dom.one("section", "export", data_export=export).one("svg", "chart")
        bars = svg.all("rect", "bar")
        assert [b.attrs["data-run-id"] for b in bars] == [r.run_id for r in reversed(runs)]
        assert all(float(b.attrs["height"]) >= 2 for b in bars)
        finished = [r.run_id for r in reversed(runs) if r.finished_at]
        assert [c.attrs["data-run-id"] for c in svg.all("circle", "duration")] == finished
    vip_bars = page.dom.one("section", "export", data_export="vip-daily").all("rect", "bar")
    assert "tone-bad" in vip_bars[-1].classes  # the newest, failed

    image = Image.open(page.screenshot).convert("RGB")
    assert image.size == WINDOW
    pixels = {colour: count for count, colour in image.getcolors(WINDOW[0] * WINDOW[1])}
    # The bars were painted: far more of their blue than the legends' 12x10 keys hold.
    assert pixels.get(BAR_BLUE, 0) > 1_500, pixels.get(BAR_BLUE)


def test_links_carry_the_key_and_fetch_the_report_and_rejected_rows(
    page: Page, history: History, app_env: App
) -> None:
    real = page.dom.one("tbody", data_run_id=history.real.run_id)
    report, rejected = real.one("a", "report"), real.one("a", "rejected")
    fetched = {}
    for link in (report, rejected, real.one("a", "run-id")):
        href = link.attrs["href"]
        assert not urlsplit(href).scheme and not href.startswith("/")  # relative
        url = urljoin(page.url, href)
        assert parse_qs(urlsplit(url).query) == {"code": [KEY]}
        fetched[link.text()] = response = requests.get(url, timeout=60)
        assert response.status_code == 200, response.text
    assert urlsplit(urljoin(page.url, report.attrs["href"])).path == (
        f"/api/runs/{history.real.run_id}/report"
    )

    got_report = fetched["report"]
    assert got_report.headers["Content-Type"] == "application/json; charset=utf-8"
    assert got_report.text == app_env.blob_text(history.real.report_blob)
    assert got_report.json()["counts"]["rows_read"] == history.real.rows_read
    got_rows = fetched["rejected"]
    assert got_rows.headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert got_rows.headers["Content-Disposition"] == (
        f'attachment; filename="{history.real.run_id}-rejected.jsonl"'
    )
    assert got_rows.content == app_env.blob_text(history.real.rejected_blob).encode()
    assert len(got_rows.text.splitlines()) == history.real.rows_rejected
    assert fetched[history.real.run_id].json()["run_id"] == history.real.run_id


def test_the_page_loads_nothing_from_elsewhere(page: Page) -> None:
    headers = page.response.headers
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy  # no script at all
    assert (headers["X-Content-Type-Options"], headers["Cache-Control"]) == ("nosniff", "no-store")
    assert headers["Referrer-Policy"] == "no-referrer"  # the links carry the key
    sources = [
        value
        for element in page.dom.all()
        for name, value in element.attrs.items()
        if name in ("src", "href", "srcset", "action", "data", "poster")
    ]
    assert sources and all(
        value == "data:," or value.startswith(("runs/", "#")) for value in sources
    ), sources
    assert page.dom.all("script") == [] and page.dom.all("iframe") == []


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/runs/bad%20id/report", 400, "invalid_run_id"),
        ("/api/runs/..%2F..%2Fetc/rejected", 400, "invalid_run_id"),
        ("/api/runs/no-such-run/report", 404, "run_not_found"),
        ("/api/runs/no-such-run/rejected", 404, "run_not_found"),
    ],
)
def test_run_files_refuse_bad_and_unknown_run_ids(
    history: History, local_host: LocalHost, path: str, status: int, code: str
) -> None:
    response = requests.get(local_host.url + path, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def test_run_files_of_a_running_or_expired_run_say_why_they_are_missing(
    history: History, local_host: LocalHost, app_env: App
) -> None:
    running = requests.get(f"{local_host.url}/api/runs/{history.running.run_id}/report", timeout=30)
    assert running.status_code == 404 and running.json()["error"] == "not_written_yet"
    assert "delivering" in running.json()["message"]

    expired = history.runs["churn-weekly"][-1]
    app_env.services.storage.container(RUNS_CONTAINER).delete_blob(expired.rejected_blob)
    gone = requests.get(f"{local_host.url}/api/runs/{expired.run_id}/rejected", timeout=30)
    assert gone.status_code == 404 and gone.json()["error"] == "file_not_found"
    assert expired.rejected_blob in gone.json()["message"]


@pytest.fixture
def hostile(history: History, app_env: App) -> Iterator[Run]:
    """An export whose segment name and run message are markup; the definitions are put back
    after, so the other tests see theirs whatever the order."""
    _definitions(app_env, export_definition("web-hostile", "dash/h.csv", HOSTILE))
    run = _seed(app_env, "web-hostile", 0.5, Status.FAILED, read=1, rejected=1, message=HOSTILE)
    yield run
    _definitions(app_env)


def test_hostile_names_and_messages_are_shown_as_text(
    hostile: Run, local_host: LocalHost, tmp_path: Path
) -> None:
    dom = parse(chromium("--dump-dom", f"{local_host.url}/api/dashboard", profile=tmp_path))

    section = dom.one("section", "export", data_export="web-hostile")
    assert HOSTILE in section.one("p", "meta").text()
    assert HOSTILE in section.one("tbody", data_run_id=hostile.run_id).one("tr", "about").text()
    assert dom.all("script") == [] and dom.all("img") == []
    assert dom.one("head").one("title").text() == "Export status · Braze segment exporter"


# ---- In process: the entry point's other answers ---------------------------------------------


def _services(app: App, **env: str) -> Services:
    return Services(load_settings({**app.env, **env}))


def test_with_entra_the_page_and_report_need_read_and_the_rejected_rows_run(
    history: History, app_env: App
) -> None:
    services = _services(app_env, EXPORT_API_AUTH="entra")
    reader = {"X-MS-CLIENT-PRINCIPAL": principal(READ)}
    report = history.real.run_id

    anonymous = dashboard.dashboard(services, params={}, headers={})
    assert anonymous.status == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert b"Microsoft Entra ID" in anonymous.body
    assert dashboard.dashboard(services, params={}, headers=reader).status == 200
    refused = dashboard.run_file(services, report, dashboard.REPORT, headers={})
    assert refused.status == 401 and json.loads(refused.body)["error"] == "unauthenticated"
    stranger = {"X-MS-CLIENT-PRINCIPAL": principal("Someone.Else")}
    forbidden = dashboard.run_file(services, report, dashboard.REPORT, headers=stranger)
    assert forbidden.status == 403 and READ in json.loads(forbidden.body)["message"]
    assert dashboard.run_file(services, report, dashboard.REPORT, headers=reader).status == 200
    # The rejected rows hold customers' data: a reader may not download them, a runner may.
    rows = dashboard.run_file(services, report, dashboard.REJECTED_ROWS, headers=reader)
    assert rows.status == 403 and RUN in json.loads(rows.body)["message"]
    runner = {"X-MS-CLIENT-PRINCIPAL": principal(RUN)}
    assert (
        dashboard.run_file(services, report, dashboard.REJECTED_ROWS, headers=runner).status == 200
    )


def test_broken_definitions_are_said_and_the_runs_recorded_still_listed(
    history: History, app_env: App, tmp_path: Path
) -> None:
    broken = tmp_path / "exports.json"
    broken.write_text('{"connections": [], "exports": [')
    services = _services(app_env, EXPORT_DEFINITIONS_PATH=str(broken))

    response = dashboard.dashboard(services, params={}, headers={})

    assert response.status == 200
    doc = parse(response.body.decode())
    assert "not valid JSON" in doc.one("section", "problem").text()
    listed = doc.one("section", "export", data_export="vip-daily").all("tbody", "run")
    assert [b.attrs["data-run-id"] for b in listed] == [r.run_id for r in history.runs["vip-daily"]]


def test_a_file_too_large_to_send_is_refused_naming_its_blob(
    history: History, app_env: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "MAX_FILE_BYTES", 10)
    run = history.real
    response = dashboard.run_file(app_env.services, run.run_id, dashboard.REPORT, headers={})
    assert response.status == 409
    body = json.loads(response.body)
    assert body["error"] == "file_too_large" and run.report_blob in body["message"]


def test_an_unexpected_error_is_a_500_naming_only_a_correlation_id(
    app_env: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    services = _services(app_env)

    def broken(*_: Any) -> list[Run]:
        raise RuntimeError("secret host name db-7.internal")

    monkeypatch.setattr(services.runs, "list_runs", broken)
    response = dashboard.dashboard(services, params={}, headers={})

    assert response.status == 500 and b"db-7" not in response.body
    assert b"correlation id" in response.body
    assert "db-7.internal" in caplog.text
