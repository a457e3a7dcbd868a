"""A lookup that finds nothing (a run, a chunk's result, a chunk's progress, a fresh rate
window, a blob) or a write that another worker made first is an answer, not a failure: once
handled, the error the storage client raised for it must not keep the caller's frame, and so
its locals (a delivery job's whole chunk), alive until Python's cyclic collector happens to
run. Checked with the collector off, on Azurite."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.adapters.rate_governor import RateGovernor
from shared.adapters.storage import BlobNotFound
from shared.core.resource_names import RATE_TABLE, RUNS_CONTAINER
from shared.core.runs import Run, RunConflict, SplitResult
from tests.integration.conftest import App


class _Chunk:
    """Stands for what a delivery job holds while it asks (weakly referenceable)."""


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _lookups(app: App) -> dict[str, Callable[[], Any]]:
    runs = app.services.runs
    governor = RateGovernor(
        app.services.storage.table(RATE_TABLE),
        "missing-lookups",
        requests_per_window=3000,
        window_seconds=3,
    )
    return {
        "run": lambda: runs.get("no-such-run"),
        "chunk result": lambda: runs.chunk_done("no-such-run", 7),
        "chunk progress": lambda: runs.saved_progress("no-such-run", 7),
        "partition result": lambda: runs.partition_result("no-such-run", 3),
        "rate window": governor.acquire,
        "blob": lambda: app.services.storage.exists(RUNS_CONTAINER, "no/such/blob"),
        "blob read": lambda: _read_or_none(app, "no/such/blob"),
        "result already recorded": lambda: runs.record_split(
            "missing-lookups-recorded", SplitResult(0)
        ),
        "run changed meanwhile": lambda: _update_or_conflict(app),
    }


def _update_or_conflict(app: App) -> bool:
    """A run written by someone else since it was read."""
    stale, fresh = (
        app.services.runs.get("missing-lookups-changed"),
        app.services.runs.get("missing-lookups-changed"),
    )
    assert stale is not None and fresh is not None
    app.services.runs.update(fresh)
    try:
        app.services.runs.update(stale, if_unchanged=True)
    except RunConflict:
        return False
    raise AssertionError("the stale write went through")


def _read_or_none(app: App, name: str) -> bytes | None:
    try:
        return app.services.storage.read_bytes(RUNS_CONTAINER, name)
    except BlobNotFound:
        return None


@pytest.mark.parametrize(
    "lookup",
    [
        "run",
        "chunk result",
        "chunk progress",
        "partition result",
        "rate window",
        "blob",
        "blob read",
        "result already recorded",
        "run changed meanwhile",
    ],
)
def test_an_answer_the_storage_gave_as_an_error_lets_the_callers_locals_go(
    quiet_app: App, collector_off: None, lookup: str
) -> None:
    if not quiet_app.services.runs.get("missing-lookups-changed"):
        quiet_app.services.runs.create(
            Run("missing-lookups-changed", "x", "R", "sandbox", "segments/x", "t")
        )
    quiet_app.services.runs.record_split(
        "missing-lookups-recorded", SplitResult(0)
    )  # once, before the job
    ask = _lookups(quiet_app)[lookup]

    def job() -> weakref.ref[_Chunk]:
        chunk = _Chunk()
        ask()
        return weakref.ref(chunk)

    held = job()
    assert held() is None, f"{lookup}: the handled error kept the caller's frame alive"


def test_an_error_being_handled_around_the_lookup_keeps_its_traceback(quiet_app: App) -> None:
    """A lookup inside an `except` (a last attempt failing its run, say) lets its own error go
    but leaves the one being handled as it was: it is raised again, and logged whole."""

    def fail() -> None:
        try:
            raise KeyError("the cause")
        except KeyError as cause:
            raise ValueError("the step failed") from cause

    with pytest.raises(ValueError) as raised:
        try:
            fail()
        except ValueError:
            assert quiet_app.services.runs.get("no-such-run") is None
            raise
    error = raised.value
    assert error.__traceback__ is not None and error.__traceback__.tb_next is not None
    assert error.__cause__ is not None and error.__cause__.__traceback__ is not None
