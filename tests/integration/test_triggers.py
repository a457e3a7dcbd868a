"""How runs start, on Azurite with the local host delivering: one trigger, one run."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from devtools.sample import make_segment
from shared.core.runs import ExportBusy, Run, Status, utcnow
from shared.core.schedule import latest_slot, slot_run_id
from shared.pipeline.finalize import maybe_finalize
from shared.pipeline.start import (
    blob_version,
    drop_run_id,
    handle_drop,
    schedule_tick,
    start_or_defer,
    start_run,
)
from tests.integration.conftest import App, export_definition, wait_for


def _concurrently(count: int, work: Any) -> list[Any]:
    results: list[Any] = []
    barrier = threading.Barrier(count)

    def call() -> None:
        barrier.wait()
        results.append(work())

    threads = [threading.Thread(target=call) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _runs_of(app: App, export_name: str) -> list[Run]:
    return app.services.runs.list_runs(export_name, limit=100)


@pytest.fixture
def small_segment(app: App) -> Any:
    sample = make_segment(300, invalid_every=1000, id_prefix="trig")
    app.upload("trig/seg.csv", sample.data)
    return sample


def test_a_missed_slot_runs_once_however_often_and_concurrently_the_timer_fires(
    app: App, small_segment: Any
) -> None:
    # Yearly, so the local host's own minute ticks see the same slot and cannot add another.
    yearly = "0 0 0 1 1 *"
    app.define([export_definition("yearly", "trig/seg.csv", "Yearly", schedule=yearly)])
    now = utcnow()
    first = schedule_tick(app.services, now)
    assert first.get("yearly") in ("baseline", None)  # None: the host's tick came first
    assert _runs_of(app, "yearly") == []

    # The app was "down": the state still says the slot before.
    slot = latest_slot(yearly, now)
    app.services.runs.set_last_slot("yearly", slot.replace(year=slot.year - 1))
    outcomes = _concurrently(6, lambda: schedule_tick(app.services, now))
    outcomes.append(schedule_tick(app.services, now + timedelta(seconds=30)))

    (run,) = _runs_of(app, "yearly")
    assert run.run_id == slot_run_id("yearly", slot)
    assert run.trigger == "schedule"
    assert [o.get("yearly") for o in outcomes].count("started") <= 1  # or the host's tick did
    assert app.wait_for_final(run.run_id).status == Status.SUCCEEDED
    assert len(app.braze_users()) == len(small_segment.expected)


def test_on_demand_start_is_refused_while_a_run_is_active(app: App, small_segment: Any) -> None:
    app.define([export_definition("busy", "trig/seg.csv", "Busy")])
    _hold_export(app, "busy")
    with pytest.raises(ExportBusy, match="already has run busy-held"):
        start_run(app.services, "busy", "cli")
    assert [r.run_id for r in _runs_of(app, "busy")] == ["busy-held"]


def test_concurrent_on_demand_starts_create_exactly_one_run(app: App, small_segment: Any) -> None:
    app.define([export_definition("race-start", "trig/seg.csv", "Race")])

    def attempt() -> str:
        try:
            return start_run(app.services, "race-start", "http").run.run_id
        except ExportBusy:
            return "busy"

    results = _concurrently(5, attempt)
    assert results.count("busy") == 4, results
    runs = _runs_of(app, "race-start")
    assert len(runs) == 1, [(r.run_id, r.trigger, r.created_at) for r in runs]
    (run,) = runs
    # The one run that was started is a normal run: it ends, and Braze took its profiles.
    final = app.wait_for_final(run.run_id)
    assert final.status is not Status.FAILED, final.message
    assert final.profiles_accepted > 0


def test_a_drop_while_busy_is_deferred_and_starts_when_the_run_ends(
    app: App, small_segment: Any
) -> None:
    app.define(
        [export_definition("defer", "trig/seg.csv", "Defer", drop={"path": "trig/drops/*.csv"})]
    )
    held = _hold_export(app, "defer")
    app.upload("trig/drops/new.csv", small_segment.data)

    outcome = handle_drop(
        app.services, "segments", "trig/drops/new.csv", 100, _version(app, "trig/drops/new.csv")
    )
    assert outcome == {"defer": "deferred"}
    assert len(_runs_of(app, "defer")) == 1

    # The active run ends: its finalization starts the deferred one. The local host's minute
    # tick nudges a delivering run whose chunks are all recorded (`stall_sweep`), so it may be
    # the one that finalizes it, and then starts the deferred run just after the held one ends.
    held.status, held.chunks_total = Status.DELIVERING, 0
    app.services.runs.update(held)

    def deferred_runs() -> list[Run]:
        return [r for r in _runs_of(app, "defer") if r.run_id != held.run_id]

    if maybe_finalize(held.run_id, app.services):
        deferred = deferred_runs()  # started by the finalizing, before it returned
    else:
        assert app.wait_for_final(held.run_id).status == Status.SUCCEEDED
        deferred = wait_for(deferred_runs, "the deferred run")
    assert [(r.trigger, r.source) for r in deferred] == [("blob", "segments/trig/drops/new.csv")]
    assert app.wait_for_final(deferred[0].run_id).profiles_accepted == len(small_segment.expected)
    assert app.services.runs.pending_start("defer") is None


def test_the_same_drop_twice_is_one_run(app: App, small_segment: Any) -> None:
    app.define([export_definition("dropped", "trig/seg.csv", "D", drop={"path": "trig/in/*.csv"})])
    app.upload("trig/in/a.csv", small_segment.data)  # the local host's watcher delivers it too
    version = _version(app, "trig/in/a.csv")
    outcomes = _concurrently(
        4, lambda: handle_drop(app.services, "segments", "trig/in/a.csv", 100, version)
    )
    assert [o["dropped"] for o in outcomes].count("started") <= 1  # or the watcher's event did
    (run,) = _runs_of(app, "dropped")
    assert run.run_id == drop_run_id("dropped", "segments", "trig/in/a.csv", version)
    app.wait_for_final(run.run_id)
    again = handle_drop(app.services, "segments", "trig/in/a.csv", 100, version)
    assert again == {"dropped": "duplicate"}
    assert len(_runs_of(app, "dropped")) == 1


def test_deferred_start_uses_the_newest_drop(app: App, small_segment: Any) -> None:
    app.define([export_definition("newest", "trig/seg.csv", "N", drop={"path": "trig/n/*.csv"})])
    _hold_export(app, "newest")
    for name in ("trig/n/1.csv", "trig/n/2.csv"):
        assert start_or_defer(app.services, "newest", "blob", run_id=f"newest-{name[-5]}") == (
            "deferred"
        )
    pending = app.services.runs.pending_start("newest")
    assert pending is not None and pending.run_id == "newest-2"


def _version(app: App, name: str) -> str:
    properties = (
        app.services.storage.container("segments").get_blob_client(name).get_blob_properties()
    )
    return blob_version(properties.content_settings.content_md5, properties.etag)


def _hold_export(app: App, export_name: str) -> Run:
    """An active run that never progresses, so the export stays busy for the test."""
    run = Run(f"{export_name}-held", export_name, "S", "sandbox", "segments/x.csv", "test")
    app.services.runs.claim_export(export_name, run.run_id)
    run.status = Status.PLANNING
    app.services.runs.create(run)
    return run
