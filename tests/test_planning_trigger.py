"""The planning trigger pauses the cyclic garbage collector while a partition's diff runs
(only then), and gives it back as it found it, however diffs overlap or end."""

import gc
import threading
from collections.abc import Iterator

import pytest
from azure.functions.queue import QueueMessage

import functions.planning as planning
from functions.planning import cyclic_gc_paused
from shared.core.messages import ExportJob, PartitionJob, SplitJob


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    assert planning._pauses == 0
    (gc.enable if was else gc.disable)()


def test_a_diff_runs_with_the_collector_paused_and_the_other_steps_without(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, bool] = {}

    class Settings:
        max_dequeue_count = 5

    class Services:
        settings = Settings()

    monkeypatch.setattr("shared.adapters.services.app_services", lambda: Services())
    for module, name in (
        ("plan_export", "plan_run"),
        ("split_source", "split_source"),
        ("diff_partition", "diff_partition"),
    ):
        monkeypatch.setattr(
            f"shared.pipeline.{module}.{name}",
            lambda job, services, *_, name=name: seen.update({name: gc.isenabled()}),
        )
    jobs = [
        ExportJob("r", "e"),
        SplitJob("r", "e", 0, 2, 4, 0, 10, 1),
        PartitionJob("r", "e", 1, 4),
    ]
    for job in jobs:
        planning.plan_export(QueueMessage(id="m", body=job.to_json().encode(), dequeue_count=1))
        assert gc.isenabled()
    assert seen == {"plan_run": True, "split_source": True, "diff_partition": False}


def test_a_step_that_raises_gives_the_collector_back() -> None:
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("the step failed")
    assert gc.isenabled()


def _other_step(entered: threading.Event, leave: threading.Event) -> threading.Thread:
    def run() -> None:
        with cyclic_gc_paused():
            entered.set()
            assert leave.wait(5)

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(5)
    return thread


def test_the_collector_stays_paused_until_the_last_of_overlapping_steps_ends() -> None:
    # The first step ends while the second still runs, then the other way round.
    entered, leave = threading.Event(), threading.Event()
    with cyclic_gc_paused():
        other = _other_step(entered, leave)
    assert not gc.isenabled()  # the first ended; the other still runs
    leave.set()
    other.join(5)
    assert not other.is_alive()
    assert gc.isenabled()

    entered, leave = threading.Event(), threading.Event()
    with cyclic_gc_paused():
        other = _other_step(entered, leave)
        leave.set()
        other.join(5)
        assert not other.is_alive()
        assert not gc.isenabled()  # the other ended; this one still runs
    assert gc.isenabled()


def test_a_collector_paused_by_someone_else_stays_paused() -> None:
    gc.disable()
    with cyclic_gc_paused():
        pass
    assert not gc.isenabled()
