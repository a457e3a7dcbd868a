"""The status page as HTML: what failed stands out, every value is escaped, links carry the key,
the chart has a mark per run. (Rendered in a browser: tests/integration/test_dashboard.py.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devtools.sample import demo_definitions
from shared.core.definitions import Export, parse_definitions
from shared.core.runs import Run, Status
from shared.core.status_page import ExportStatus, format_duration, render
from tests.html_tree import Element, parse

NOW = datetime(2026, 12, 7, 7, 58, 3, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>&amp;\"'"


def definition(name: str = "vip-daily", segment: str = "VIP", **fields: Any) -> Export:
    document = demo_definitions("https://rest.iad-01.braze.com", "segments", "vip.csv", segment)
    document["exports"][0].update(name=name, **fields)
    return parse_definitions(json.dumps(document)).exports[0]


def run(number: int, status: str = Status.SUCCEEDED, **fields: Any) -> Run:
    """The `number`-th daily run, finished after 4 min 10 s unless told otherwise."""
    created = datetime(2026, 12, number, 6, 0, 0, tzinfo=UTC)
    values: dict[str, Any] = {
        "run_id": f"vip-daily-202612{number:02d}T060000Z-abc",
        "export_name": "vip-daily",
        "segment": "VIP",
        "connection": "sandbox",
        "source": "segments/vip.csv",
        "trigger": "schedule",
        "status": status,
        "created_at": created,
        "finished_at": created + timedelta(minutes=4, seconds=10),
        "rows_read": 1_234_567,
        "rows_valid": 1_230_000,
        "rows_rejected": 4_567,
        "objects_planned": 25_000 * number,
        "profiles_accepted": 25_000 * number,
        "profiles_unchanged": 1_205_000,
        "profiles_removed": 1_500,
        "data_points_used": 75_000,
        "data_points_estimated": 80_000,
        "report_blob": "r",
        "rejected_blob": "x",
        "message": f"run {number}",
    }
    return Run(**{**values, **fields})


def page(*exports: ExportStatus, **options: Any) -> Element:
    return parse(render(exports, NOW, **options))


def cells(element: Element) -> list[str]:
    return [td.text() for td in element.all("tr")[0].all("td")]


def test_runs_show_their_counts_with_separators_in_utc_newest_first() -> None:
    runs = [run(6), run(5)]
    doc = page(ExportStatus("vip-daily", runs, definition(), NOW + timedelta(hours=22)))

    listed = doc.all("tbody", "run")
    assert [b.attrs["data-run-id"] for b in listed] == [r.run_id for r in runs]
    assert cells(listed[0]) == [
        "succeeded",
        "2026-12-06 06:00",
        "4 min 10 s",
        "schedule",
        "1,234,567",  # read
        "1,230,000",  # valid
        "4,567",  # rejected
        "150,000",  # sent
        "150,000",  # accepted
        "1,500",  # removed
        "1,205,000",  # unchanged
        "75,000",  # data points used
        "report · rejected",
    ]
    assert listed[0].one("tr", "about").text() == f"{runs[0].run_id} run 6"
    headers = [th.text() for th in doc.one("table", "runs").all("th")]
    assert "Started (UTC)" in headers and "Data points" in headers
    assert "As of 2026-12-07 07:58:03 UTC" in doc.one("header").text()
    overview = doc.one("table", "overview").one("tr", data_export="vip-daily")
    assert "2026-12-08 05:58:03" in overview.text()  # next due


def test_a_failed_last_run_needs_attention_and_stands_out() -> None:
    failed = run(7, Status.FAILED, message="planning failed: no column CustomerId")
    good = ExportStatus("all-good", [run(7, run_id="all-good-1")], definition("all-good"))
    broken = ExportStatus("vip-daily", [failed, run(6)], definition())
    doc = page(good, broken)

    (item,) = doc.one("section", "attention").all("li")
    assert item.attrs["data-export"] == "vip-daily" and "tone-bad" in item.classes
    assert "failed" in item.text() and "planning failed: no column CustomerId" in item.text()
    assert item.one("a").attrs["href"] == "#export-vip-daily"
    assert "tone-bad" in doc.one("tbody", data_run_id=failed.run_id).classes
    assert "tone-good" in doc.one("tbody", data_run_id=run(6).run_id).classes
    assert "tone-bad" in doc.one("table", "overview").one("tr", data_export="vip-daily").classes
    assert "1 failed" in doc.one("header").text()


def test_a_running_run_after_a_failed_one_still_leaves_it_needing_attention() -> None:
    running = run(8, Status.DELIVERING, finished_at=None, created_at=NOW - timedelta(minutes=3))
    doc = page(ExportStatus("vip-daily", [running, run(7, Status.FAILED)], definition()))

    assert doc.one("section", "attention").one("li").attrs["data-export"] == "vip-daily"
    assert cells(doc.one("tbody", data_run_id=running.run_id))[2] == "running 3 min 00 s"


def test_nothing_to_look_at_says_so() -> None:
    doc = page(ExportStatus("vip-daily", [run(7)], definition()))
    assert "No export needs attention" in doc.one("section", "attention").text()


def test_every_value_is_escaped() -> None:
    hostile = run(7, Status.FAILED, message=HOSTILE, trigger=HOSTILE, run_id=HOSTILE)
    doc = page(ExportStatus("vip-daily", [hostile], definition(segment=HOSTILE)), problem=HOSTILE)

    assert doc.all("script") == [] and doc.all("img") == []
    assert all(not name.startswith("on") for e in doc.all() for name in e.attrs)
    assert HOSTILE in doc.one("section", "problem").text()
    assert HOSTILE in doc.one("section", "export").one("p", "meta").one("strong").text()
    assert doc.one("tbody", "run").attrs["data-run-id"] == HOSTILE
    assert HOSTILE in doc.one("tbody", "run").one("tr", "about").text()
    assert doc.one("rect", "bar").attrs["data-run-id"] == HOSTILE


def test_links_are_relative_and_carry_the_function_key() -> None:
    done = run(7)
    doc = page(ExportStatus("vip-daily", [done], definition()), key="k/e+y&=<")

    key = "?code=k%2Fe%2By%26%3D%3C"
    links = doc.one("tbody", data_run_id=done.run_id)
    assert links.one("a", "report").attrs["href"] == f"runs/{done.run_id}/report{key}"
    assert links.one("a", "rejected").attrs["href"] == f"runs/{done.run_id}/rejected{key}"
    assert links.one("a", "run-id").attrs["href"] == f"runs/{done.run_id}{key}"
    external = [
        e.attrs.get("href") or e.attrs.get("src")
        for e in doc.all()
        if ":" in (e.attrs.get("href") or e.attrs.get("src") or "")
    ]
    assert external == ["data:,"]  # the empty favicon: the page asks for nothing else


def test_without_a_key_links_have_no_query_and_files_only_once_written() -> None:
    clean = run(7, rows_rejected=0, profiles_rejected_by_braze=0)
    running = run(8, Status.PLANNING, finished_at=None, report_blob="", rejected_blob="")
    doc = page(ExportStatus("vip-daily", [running, clean], definition()))

    assert doc.one("tbody", data_run_id=clean.run_id).one("a", "report").attrs["href"] == (
        f"runs/{clean.run_id}/report"
    )
    assert doc.one("tbody", data_run_id=clean.run_id).all("a", "rejected") == []  # none
    assert doc.one("tbody", data_run_id=running.run_id).all("a", "report") == []


def test_the_chart_has_a_bar_per_run_and_a_point_per_finished_run() -> None:
    runs = [
        run(9, Status.DELIVERING, finished_at=None, objects_planned=0),
        run(8, Status.FAILED, objects_planned=0),
        run(7, Status.PARTIALLY_SUCCEEDED, objects_planned=100_000),
        run(6, objects_planned=50_000, finished_at=run(6).created_at + timedelta(minutes=2)),
    ]
    svg = page(ExportStatus("vip-daily", runs, definition())).one("svg", "chart")

    bars = svg.all("rect", "bar")
    assert [b.attrs["data-run-id"] for b in bars] == [r.run_id for r in reversed(runs)]
    assert [b.classes - {"bar"} for b in bars] == [
        {"tone-good"},
        {"tone-warn"},
        {"tone-bad"},
        {"tone-busy"},
    ]
    heights = [float(b.attrs["height"]) for b in bars]
    assert heights[1] == pytest.approx(2 * heights[0])  # 100,000 and 50,000 sent
    assert heights[2] == 2  # sent nothing, still seen
    points = svg.all("circle", "duration")
    assert [p.attrs["data-run-id"] for p in points] == [r.run_id for r in reversed(runs[1:])]
    assert len(svg.one("polyline", "duration-line").attrs["points"].split()) == 3
    labels = [t.text() for t in svg.all("text")]
    # Axes: 0, 50,000, 100,000 profiles; 0, 3 min, 6 min (runs of 2 min and 4 min 10 s).
    assert labels[:6] == ["0", "0 s", "50,000", "3 min", "100,000", "6 min"]
    assert "2026-12-06 06:00 UTC" in labels
    assert (
        bars[0].one("title").text()
        == "2026-12-06 06:00:00 UTC · succeeded · 50,000 sent · 2 min 00 s"
    )


def test_an_export_without_runs_has_no_chart() -> None:
    doc = page(ExportStatus("vip-daily", [], definition(schedule="0 0 6 * * *"), NOW))
    section = doc.one("section", "export")
    assert section.all("svg") == [] and "No runs yet." in section.text()
    assert "schedule 0 0 6 * * *" in section.one("p", "meta").text()


def test_unreadable_definitions_are_said_and_the_runs_found_still_listed() -> None:
    doc = page(ExportStatus("vip-daily", [run(7)]), problem="exports[0].name: is required")

    assert "exports[0].name: is required" in doc.one("section", "problem").text()
    assert doc.one("section", "export").one("p", "meta").text() == "not in the definitions as read"
    assert len(doc.one("svg", "chart").all("rect", "bar")) == 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0 s"), (4.25, "4.2 s"), (42.4, "42 s"), (187, "3 min 07 s"), (7500, "2 h 05 min")],
)
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
