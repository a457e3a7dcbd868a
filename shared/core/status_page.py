"""The status page: exports, their schedule and last runs as one self-contained HTML page.

Built for the on-call look first thing in the morning: what failed is listed first and stands
out in red, runs are newest first, times are UTC, numbers have thousands separators, each run
says its message. The page loads nothing (no script, no font, no image, no stylesheet from
anywhere), so it renders offline and behind the strictest Content-Security-Policy; the chart is
SVG drawn here. Every value is escaped: segment names and run messages are free text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from shared.core.definitions import Export
from shared.core.runs import Run, Status

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Nothing may load from anywhere, and no script may run: the page needs neither."""

TONES: dict[str, str] = {
    Status.FAILED: "bad",
    Status.STOPPED: "warn",
    Status.PARTIALLY_SUCCEEDED: "warn",
    Status.SUCCEEDED: "good",
}
"""How a status looks; any other status is a run still on its way ("busy")."""

ATTENTION: tuple[str, ...] = (Status.FAILED, Status.STOPPED, Status.PARTIALLY_SUCCEEDED)

# The chart's canvas (SVG user units) and the plot area inside its axes' labels.
CHART_WIDTH, CHART_HEIGHT = 760, 190
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 76, 684, 14, 160


@dataclass(frozen=True)
class ExportStatus:
    """One export as the page shows it: its last runs, newest first, and its definition and
    next scheduled start (None when the definitions could not be read)."""

    name: str
    runs: Sequence[Run]
    export: Export | None = None
    next_due: datetime | None = None


def render(
    exports: Sequence[ExportStatus],
    now: datetime,
    *,
    key: str | None = None,
    problem: str | None = None,
) -> str:
    """The whole page. `key` is the function key the page was opened with (`?code=`): its links
    carry it on, since a browser following a link sends no `x-functions-key` header. `problem`
    says why the definitions could not be read (the page then shows the runs it found)."""
    links = _Links(key)
    body = [
        _header(exports, now),
        _problem(problem),
        _attention(exports),
        _overview(exports, now),
        *(_export_section(status, now, links) for status in exports),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        '<link rel="icon" href="data:,">'
        "<title>Export status · Braze segment exporter</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


class _Links:
    """Relative links to the API's routes (this page is `<prefix>/dashboard`, they are
    `<prefix>/runs/...`), so they work behind any route prefix or gateway path."""

    def __init__(self, key: str | None) -> None:
        self._query = f"?code={quote(key, safe='')}" if key else ""

    def run(self, run: Run, file: str = "") -> str:
        path = f"runs/{quote(run.run_id, safe='')}"
        return escape(f"{path}/{file}{self._query}" if file else f"{path}{self._query}")


def _header(exports: Sequence[ExportStatus], now: datetime) -> str:
    latest = [status.runs[0] for status in exports if status.runs]
    counts: dict[str, int] = {}
    for run in latest:
        counts[run.status] = counts.get(run.status, 0) + 1
    order = [*ATTENTION, Status.SUCCEEDED]
    tally = ", ".join(
        f'<span class="count tone-{_tone(s)}">{counts[s]} {escape(_status_label(s))}</span>'
        for s in [*order, *sorted(set(counts) - set(order))]
        if s in counts
    )
    return (
        "<header><h1>Export status</h1>"
        f'<p class="meta">As of <time datetime="{now.isoformat()}">{_utc(now)} UTC</time> · '
        f"{len(exports)} export{'s' if len(exports) != 1 else ''}"
        f"{' · latest runs: ' + tally if tally else ''} · times are UTC</p></header>"
    )


def _problem(problem: str | None) -> str:
    if not problem:
        return ""
    return (
        '<section class="problem tone-bad"><h2>The export definitions could not be read</h2>'
        f'<p class="message">{escape(problem)}</p><p>Listed below: the runs recorded, by export. '
        "Until the definitions are fixed, no export can start.</p></section>"
    )


def _latest_finished(status: ExportStatus) -> Run | None:
    return next((run for run in status.runs if run.is_final), None)


def _attention(exports: Sequence[ExportStatus]) -> str:
    """Exports whose last finished run failed, stopped or partially succeeded: what to look at
    first, worst first."""
    needing = [
        (status, run)
        for status in exports
        if (run := _latest_finished(status)) is not None and run.status in ATTENTION
    ]
    if not needing:
        return (
            '<section class="attention"><p class="all-good">No export needs attention: '
            "every last finished run succeeded.</p></section>"
        )
    needing.sort(key=lambda pair: ATTENTION.index(pair[1].status))
    items = "".join(
        f'<li class="tone-{_tone(run.status)}" data-export="{escape(status.name)}">'
        f'<a href="#{_anchor(status.name)}">{escape(status.name)}</a> '
        f"{_badge(run.status)} {_utc(run.created_at)}: "
        f'<span class="message">{escape(run.message) or "(no message)"}</span></li>'
        for status, run in needing
    )
    return f'<section class="attention"><h2>Needs attention</h2><ul>{items}</ul></section>'


def _overview(exports: Sequence[ExportStatus], now: datetime) -> str:
    if not exports:
        return '<section><p class="empty">No exports are defined.</p></section>'
    rows = []
    for status in exports:
        export, latest = status.export, status.runs[0] if status.runs else None
        tone = _tone(latest.status) if latest else "none"
        rows.append(
            f'<tr class="tone-{tone}" data-export="{escape(status.name)}">'
            f'<td><a href="#{_anchor(status.name)}">{escape(status.name)}</a></td>'
            f"<td>{escape(export.segment) if export else '–'}</td>"
            f"<td><code>{escape(export.schedule or 'on demand') if export else '–'}</code></td>"
            f"<td>{_utc(status.next_due) if status.next_due else '–'}</td>"
            f"<td>{_badge(latest.status) if latest else 'no runs yet'}</td>"
            f"<td>{_utc(latest.created_at) if latest else '–'}</td>"
            f'<td class="num">{_duration(latest, now) if latest else "–"}</td>'
            f'<td class="num">{_n(latest.objects_planned) if latest else "–"}</td>'
            f'<td class="recent">{_recent(status.runs)}</td></tr>'
        )
    return (
        '<section><h2>Exports</h2><table class="overview"><thead><tr><th>Export</th>'
        "<th>Segment</th><th>Schedule</th><th>Next due (UTC)</th><th>Latest run</th>"
        '<th>Started (UTC)</th><th class="num">Duration</th><th class="num">Sent</th>'
        f"<th>Last runs (oldest → newest)</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></section>"
    )


def _recent(runs: Sequence[Run]) -> str:
    return "".join(
        f'<span class="dot tone-{_tone(run.status)}" '
        f'title="{_utc(run.created_at)} UTC: {escape(_status_label(run.status))}"></span>'
        for run in reversed(runs)
    )


def _export_section(status: ExportStatus, now: datetime, links: _Links) -> str:
    export = status.export
    facts = []
    if export:
        facts += [
            f"segment <strong>{escape(export.segment)}</strong>",
            f"connection {escape(export.connection)}",
            f"source {escape(export.source.container)}/{escape(export.source.path)}",
            f"schedule <code>{escape(export.schedule)}</code> (next {_utc(status.next_due)} UTC)"
            if export.schedule and status.next_due
            else "no schedule",
        ]
        if export.drop:
            facts.append(f"starts on a drop matching <code>{escape(export.drop.path)}</code>")
    else:
        facts.append("not in the definitions as read")
    if not status.runs:
        history = '<p class="empty">No runs yet.</p>'
    else:
        history = (
            f"{chart(status.runs, now)}"
            '<p class="legend"><span class="key bar"></span> profiles sent (left axis) '
            '<span class="key line"></span> duration (right axis) · '
            '<span class="key bar tone-bad"></span> failed '
            '<span class="key bar tone-warn"></span> stopped or partially succeeded</p>'
            f"{_runs_table(status.runs, now, links)}"
        )
    return (
        f'<section class="export" id="{_anchor(status.name)}" data-export="{escape(status.name)}">'
        f'<h2>{escape(status.name)}</h2><p class="meta">{" · ".join(facts)}</p>{history}'
        "</section>"
    )


_RUN_COLUMNS = (
    ("Status", ""),
    ("Started (UTC)", ""),
    ("Duration", "num"),
    ("Trigger", ""),
    ("Read", "num"),
    ("Valid", "num"),
    ("Rejected", "num"),
    ("Sent", "num"),
    ("Accepted", "num"),
    ("Removed", "num"),
    ("Unchanged", "num"),
    ("Data points", "num"),
    ("Files", "files"),
)


def _runs_table(runs: Sequence[Run], now: datetime, links: _Links) -> str:
    head = "".join(
        f'<th class="{css}">{label}</th>' if css else f"<th>{label}</th>"
        for label, css in _RUN_COLUMNS
    )
    return (
        f'<table class="runs"><thead><tr>{head}</tr></thead>'
        f"{''.join(_run_rows(run, now, links) for run in runs)}</table>"
    )


def _run_rows(run: Run, now: datetime, links: _Links) -> str:
    """Two rows per run: its figures, then its id and message across the whole table."""
    rejected = run.rows_rejected + run.profiles_rejected_by_braze
    points = (
        f'<span title="estimated: a dry run sends nothing">~{_n(run.data_points_estimated)}</span>'
        if run.dry_run
        else f'<span title="estimated {_n(run.data_points_estimated)}">'
        f"{_n(run.data_points_used)}</span>"
    )
    files = []
    if run.report_blob:
        files.append(f'<a class="report" href="{links.run(run, "report")}">report</a>')
    if run.rejected_blob and rejected:
        files.append(
            f'<a class="rejected" href="{links.run(run, "rejected")}" '
            'title="the rejected rows, one JSON line each (a download)">rejected</a>'
        )
    cells = [
        _badge(run.status),
        f'<time datetime="{run.created_at.isoformat()}" title="{_utc(run.created_at)} UTC">'
        f"{_utc(run.created_at)[:16]}</time>",
        _duration(run, now),
        escape(_trigger(run)),
        _n(run.rows_read),
        _n(run.rows_valid),
        f'<span title="{_n(run.rows_rejected)} by validation, '
        f'{_n(run.profiles_rejected_by_braze)} by Braze">{_n(rejected)}</span>',
        _n(run.objects_planned),
        _n(run.profiles_accepted),
        _n(run.profiles_removed),
        _n(run.profiles_unchanged),
        points,
        " · ".join(files) or "–",
    ]
    figures = "".join(
        f'<td class="{css}">{cell}</td>' if css else f"<td>{cell}</td>"
        for cell, (_, css) in zip(cells, _RUN_COLUMNS, strict=True)
    )
    tone = _tone(run.status)
    return (
        f'<tbody class="run tone-{tone}" data-run-id="{escape(run.run_id)}" '
        f'data-status="{escape(run.status)}"><tr>{figures}</tr>'
        f'<tr class="about"><td colspan="{len(_RUN_COLUMNS)}">'
        f'<a class="run-id" href="{links.run(run)}">{escape(run.run_id)}</a> '
        f'<span class="message">{escape(run.message)}</span></td></tr></tbody>'
    )


def chart(runs: Sequence[Run], now: datetime) -> str:
    """Profiles sent (bars, left axis) and duration (points on a line, right axis) over the
    runs given newest first, drawn oldest to newest: one bar per run, coloured by its status,
    and a point per finished run."""
    ordered = list(reversed(runs))
    sent = [run.objects_planned for run in ordered]
    seconds = [_seconds(run) for run in ordered]
    sent_top = _nice_ceiling(max(sent))
    finished = [s for s in seconds if s is not None]
    seconds_top = _nice_seconds(max(finished, default=0))
    height = PLOT_BOTTOM - PLOT_TOP
    slot = (PLOT_RIGHT - PLOT_LEFT) / len(ordered)
    width = min(slot * 0.6, 36)
    parts = [
        f'<line class="grid" x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        for y in (PLOT_TOP, PLOT_TOP + height / 2, PLOT_BOTTOM)
    ]
    for share in (0.0, 0.5, 1.0):
        y = PLOT_BOTTOM - share * height
        if (sent_top * share).is_integer():  # an axis up to 1 has no middle label
            parts.append(_axis_label(PLOT_LEFT - 6, y, "end", _n(int(sent_top * share))))
        if finished:
            seconds_label = _short_duration(seconds_top * share) if share else "0 s"
            parts.append(_axis_label(PLOT_RIGHT + 6, y, "start", seconds_label))
    points = []
    for index, run in enumerate(ordered):
        center = PLOT_LEFT + slot * (index + 0.5)
        bar = max(sent[index] / sent_top * height, 2)  # a run that sent nothing is still seen
        tone = _tone(run.status)
        title = escape(
            f"{_utc(run.created_at)} UTC · {_status_label(run.status)} · "
            f"{_n(sent[index])} sent · {_duration_text(run, now)}"
        )
        parts.append(
            f'<rect class="bar tone-{tone}" data-run-id="{escape(run.run_id)}" '
            f'x="{center - width / 2:.1f}" y="{PLOT_BOTTOM - bar:.1f}" width="{width:.1f}" '
            f'height="{bar:.1f}"><title>{title}</title></rect>'
        )
        if (duration := seconds[index]) is not None:
            y = PLOT_BOTTOM - duration / seconds_top * height
            points.append((center, y, run, title))
    if len(points) > 1:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        parts.append(f'<polyline class="duration-line" points="{line}"/>')
    parts += [
        f'<circle class="duration" data-run-id="{escape(run.run_id)}" cx="{x:.1f}" '
        f'cy="{y:.1f}" r="4"><title>{title}</title></circle>'
        for x, y, run, title in points
    ]
    first, last = ordered[0].created_at, ordered[-1].created_at
    parts.append(_axis_label(PLOT_LEFT, PLOT_BOTTOM + 20, "start", f"{_utc(first)[:16]} UTC"))
    if len(ordered) > 1:
        parts.append(_axis_label(PLOT_RIGHT, PLOT_BOTTOM + 20, "end", f"{_utc(last)[:16]} UTC"))
    label = f"Profiles sent and duration of the last {len(ordered)} runs, oldest to newest"
    return (
        f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-label="{label}">{"".join(parts)}</svg>'
    )


def _axis_label(x: float, y: float, anchor: str, text: str) -> str:
    return (
        f'<text class="axis" x="{x:.1f}" y="{y + 4:.1f}" text-anchor="{anchor}">'
        f"{escape(text)}</text>"
    )


def _nice_ceiling(value: float, steps: tuple[float, ...] = (1, 2, 2.5, 5, 10)) -> float:
    """The smallest step times a power of ten at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    return next(step * magnitude for step in steps if value <= step * magnitude)


def _nice_seconds(value: float) -> float:
    """An axis top for durations: whole minutes, and a whole middle, once they are minutes."""
    if value <= 120:
        return _nice_ceiling(value)
    return _nice_ceiling(value / 60, (1, 2, 4, 6, 8, 10)) * 60


def _seconds(run: Run) -> float | None:
    if run.finished_at is None:
        return None
    return max((run.finished_at - run.created_at).total_seconds(), 0.0)


def _duration(run: Run, now: datetime) -> str:
    return escape(_duration_text(run, now))


def _duration_text(run: Run, now: datetime) -> str:
    seconds = _seconds(run)
    if seconds is not None:
        return format_duration(seconds)
    return f"running {format_duration(max((now - run.created_at).total_seconds(), 0.0))}"


def format_duration(seconds: float) -> str:
    """4.2 s, 42 s, 3 min 07 s, 2 h 05 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _short_duration(seconds: float) -> str:
    """An axis label: 2 h, 5 min, 30 s when whole, else as format_duration."""
    whole = round(seconds)
    if whole and whole == seconds and whole % 3600 == 0:
        return f"{whole // 3600} h"
    if whole and whole == seconds and whole % 60 == 0:
        return f"{whole // 60} min"
    return format_duration(seconds)


def _trigger(run: Run) -> str:
    flags = [
        label
        for label, on in (
            ("dry run", run.dry_run),
            ("full refresh", run.full_refresh),
            ("teardown", run.teardown and run.trigger != "teardown"),
            (f"replay {run.replay_round}", run.replay_round > 0),
        )
        if on
    ]
    return " · ".join([run.trigger, *flags])


def _tone(status: str) -> str:
    return TONES.get(status, "busy")


def _badge(status: str) -> str:
    tone = _tone(status)
    return f'<span class="badge tone-{tone}">{escape(_status_label(status))}</span>'


def _status_label(status: str) -> str:
    return status.replace("_", " ")


def _anchor(name: str) -> str:
    return escape(f"export-{name}")


def _utc(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "–"


def _n(value: int | None) -> str:
    return f"{value:,}" if value is not None else "–"


_STYLE = """
:root { --bad: #b42318; --bad-bg: #fef3f2; --warn: #b54708; --warn-bg: #fffaeb;
  --good: #067647; --busy: #175cd3; --ink: #101828; --muted: #475467; --rule: #d0d5dd;
  --bar: #528bff; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px 48px; color: var(--ink); background: #fff;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 4px; }
.meta { color: var(--muted); margin: 0 0 8px; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
a { color: #1849a9; }
table { border-collapse: collapse; width: 100%; margin: 6px 0; font-size: 12.5px; }
th, td { padding: 3px 6px; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid var(--rule); color: var(--muted); font-weight: 600;
  white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td time, td.num, td.files { white-space: nowrap; }
.badge { display: inline-block; padding: 0 8px; border-radius: 9px; font-size: 12px;
  font-weight: 600; white-space: nowrap; color: #fff; background: var(--busy); }
.badge.tone-bad { background: var(--bad); }
.badge.tone-warn { background: var(--warn); }
.badge.tone-good { background: var(--good); }
.count.tone-bad { color: var(--bad); font-weight: 600; }
.count.tone-warn { color: var(--warn); font-weight: 600; }
.count.tone-good { color: var(--good); }
.overview tbody tr { border-bottom: 1px solid var(--rule); }
.overview tr.tone-bad { background: var(--bad-bg); }
.overview tr.tone-warn { background: var(--warn-bg); }
.dot { display: inline-block; width: 10px; height: 10px; margin-right: 2px; border-radius: 2px;
  background: var(--busy); }
.dot.tone-bad { background: var(--bad); }
.dot.tone-warn { background: var(--warn); }
.dot.tone-good { background: var(--good); }
.runs tbody.run { border-bottom: 1px solid var(--rule); }
.runs tbody.tone-bad { background: var(--bad-bg); box-shadow: inset 4px 0 var(--bad); }
.runs tbody.tone-warn { background: var(--warn-bg); box-shadow: inset 4px 0 var(--warn); }
.runs tr.about td { padding-top: 0; color: var(--muted); }
.runs tbody.tone-bad tr.about .message { color: var(--bad); font-weight: 600; }
.message { white-space: pre-wrap; overflow-wrap: anywhere; }
.run-id { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  margin-right: 8px; }
.attention ul { margin: 4px 0; padding-left: 20px; }
.attention li { margin: 2px 0; }
.attention li.tone-bad .message { color: var(--bad); }
.all-good { color: var(--good); font-weight: 600; }
.problem { border: 2px solid var(--bad); background: var(--bad-bg); padding: 4px 12px;
  margin: 12px 0; }
.problem h2 { color: var(--bad); margin-top: 8px; }
.empty { color: var(--muted); font-style: italic; }
svg.chart { width: 100%; max-width: 760px; height: auto; display: block; margin-top: 6px; }
svg .grid { stroke: #eaecf0; stroke-width: 1; }
svg .axis { font-size: 11px; fill: var(--muted); }
svg .bar { fill: var(--bar); }
svg .bar.tone-bad { fill: var(--bad); }
svg .bar.tone-warn { fill: #f79009; }
svg .bar.tone-busy { fill: #b2ccff; }
svg .duration-line { fill: none; stroke: var(--ink); stroke-width: 1.5; }
svg .duration { fill: #fff; stroke: var(--ink); stroke-width: 2; }
.legend { color: var(--muted); font-size: 12px; margin: 0 0 4px; }
.key { display: inline-block; width: 12px; height: 10px; vertical-align: middle;
  margin-left: 6px; }
.key.bar { background: var(--bar); }
.key.bar.tone-bad { background: var(--bad); }
.key.bar.tone-warn { background: #f79009; }
.key.line { height: 2px; background: var(--ink); }
"""
