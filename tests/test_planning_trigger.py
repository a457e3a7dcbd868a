"""The planning trigger pauses the cyclic garbage collector while a step runs, and gives it
back as it found it, however steps overlap or end."""

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
    if not was:
        gc.disable()


def test_each_planning_step_runs_with_the_collector_paused_and_gets_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, bool] = {}

    class Settings:
        max_dequeue_count = 5

    class Services:
        settings = Settings()

    monkeypatch.setattr(planning, "app_services", lambda: Services())
    for name in ("plan_run", "split_source", "diff_partition"):
        monkeypatch.setattr(
            planning, name, lambda job, services, name=name: seen.update({name: gc.isenabled()})
        )
    jobs = [
        ExportJob("r", "e"),
        SplitJob("r", "e", 0, 2, 4, 0, 10, 1),
        PartitionJob("r", "e", 1, 4),
    ]
    for job in jobs:
        planning.plan_export(QueueMessage(id="m", body=job.to_json().encode(), dequeue_count=1))
        assert gc.isenabled()
    assert seen == {"plan_run": False, "split_source": False, "diff_partition": False}


def test_a_step_that_raises_gives_the_collector_back() -> None:
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("the step failed")
    assert gc.isenabled()


def test_overlapping_steps_keep_it_paused_until_the_last_ends() -> None:
    first_in, second_done = threading.Event(), threading.Event()
    during: list[bool] = []

    def other_step() -> None:
        with cyclic_gc_paused():
            first_in.wait(5)
        second_done.set()

    with cyclic_gc_paused():
        thread = threading.Thread(target=other_step)
        thread.start()
        first_in.set()
        second_done.wait(5)
        during.append(gc.isenabled())  # the other step ended; this one still runs
    thread.join(5)
    assert during == [False]
    assert gc.isenabled()


def test_a_collector_paused_by_someone_else_stays_paused() -> None:
    gc.disable()
    with cyclic_gc_paused():
        pass
    assert not gc.isenabled()
