"""The rate governor against a real Azurite: one budget per window across threads, governor
objects and OS processes, shared blocks, and adaptation to what Braze reports.

Most tests use a clock that moves only when the governor sleeps, or a frozen clock whose
"sleep" raises: a worker that is refused a slot then stops instead of waiting, so how many
slots a window handed out is an exact, timing-free number. One test hammers the governor with
the real clock; it asserts only what must hold however the threads are scheduled.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from azure.data.tables import TableClient

from devtools.processes import Azurite
from shared.adapters.rate_governor import RateGovernor
from shared.adapters.settings import StorageSettings
from shared.adapters.storage import Storage
from shared.core.resource_names import RATE_TABLE

BUDGET = 40
WINDOW = 1.0
T0 = 1_800_000_000.25  # a quarter into a 1-second window
PROCESSES = 3


class WouldWait(Exception):
    """Raised by a frozen clock's sleep: the governor refused a slot in this window."""


def refuse_to_wait(seconds: float) -> None:
    raise WouldWait(seconds)


class FakeClock:
    """Epoch time that moves only when the governor sleeps, so waits are instant and visible."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds


def _table(connection_string: str) -> TableClient:
    storage = Storage(StorageSettings(connection_string=connection_string))
    storage.ensure_resources()
    return storage.table(RATE_TABLE)


def _governor(
    table: TableClient,
    key: str,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    *,
    share: float = 1.0,
    lease_fraction: float = 0.05,
    guard_seconds: float = 0.1,
) -> RateGovernor:
    return RateGovernor(
        table,
        key,
        requests_per_window=BUDGET,
        window_seconds=WINDOW,
        share=share,
        lease_fraction=lease_fraction,
        guard_seconds=guard_seconds,
        clock=clock,
        sleep=sleep,
    )


def _drain(governors: list[RateGovernor], threads_each: int) -> list[int]:
    """Take slots on every governor from several threads until each is refused; return the
    window of every slot granted."""
    windows: list[int] = []
    lock = threading.Lock()

    def take(governor: RateGovernor) -> None:
        while True:
            try:
                window = governor.acquire()
            except WouldWait:
                return
            with lock:
                windows.append(window)

    threads = [
        threading.Thread(target=take, args=(governor,))
        for governor in governors
        for _ in range(threads_each)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return windows


def _drain_in_process(connection_string: str, key: str, threads: int) -> int:
    """A worker process with its own governor on a frozen clock: how many slots it got."""
    governor = _governor(_table(connection_string), key, lambda: T0, refuse_to_wait)
    return len(_drain([governor], threads))


def _hammer_in_process(
    connection_string: str, key: str, threads: int, grants_each: int
) -> list[tuple[int, int, int]]:
    """A worker process taking `grants_each` slots per thread on the real clock; for each slot,
    the windows before the call, granted, and after it returned."""
    governor = _governor(_table(connection_string), key, time.time, time.sleep)
    grants: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(grants_each):
            before = int(time.time() // WINDOW)
            window = governor.acquire()
            after = int(time.time() // WINDOW)
            with lock:
                grants.append((before, window, after))

    workers = [threading.Thread(target=take) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return grants


@pytest.fixture(scope="module")
def table(azurite: Azurite) -> TableClient:
    return _table(azurite.connection_string)


@pytest.fixture
def key() -> str:
    """A connection of its own for each test, so no test sees another's windows."""
    return f"c-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def pool() -> Iterator[multiprocessing.pool.Pool]:
    """Separate OS processes, spawned so each has its own clients, as instances would."""
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as workers:
        yield workers


def test_threads_on_several_governors_share_one_budget(table: TableClient, key: str) -> None:
    governors = [_governor(table, key, lambda: T0, refuse_to_wait) for _ in range(3)]
    windows = _drain(governors, threads_each=4)
    assert Counter(windows) == {int(T0): BUDGET}


def test_processes_share_one_budget(azurite: Azurite, pool: multiprocessing.pool.Pool) -> None:
    """Every process wants the whole window; together they get exactly the budget."""
    key = f"c-{uuid.uuid4().hex[:12]}"
    jobs = [(azurite.connection_string, key, 4)] * PROCESSES
    granted = pool.starmap_async(_drain_in_process, jobs).get(timeout=120)
    assert sum(granted) == BUDGET


def test_the_check_catches_processes_that_do_not_coordinate(
    azurite: Azurite, pool: multiprocessing.pool.Pool
) -> None:
    """The same workers each on a budget of their own (a governor that shares nothing) take a
    budget each, so the assertion above would fail for them."""
    jobs = [(azurite.connection_string, f"c-{uuid.uuid4().hex[:12]}", 4) for _ in range(PROCESSES)]
    granted = pool.starmap_async(_drain_in_process, jobs).get(timeout=120)
    assert sum(granted) == PROCESSES * BUDGET


def test_real_clock_hammering_by_processes_and_threads_stays_within_every_window(
    azurite: Azurite, pool: multiprocessing.pool.Pool
) -> None:
    """Correct whatever the scheduling: the timing decides only how many windows it takes."""
    key = f"c-{uuid.uuid4().hex[:12]}"
    threads, grants_each = 3, 12
    jobs = [(azurite.connection_string, key, threads, grants_each)] * PROCESSES
    grants = [
        g for part in pool.starmap_async(_hammer_in_process, jobs).get(timeout=300) for g in part
    ]
    assert len(grants) == PROCESSES * threads * grants_each
    assert all(before <= window <= after for before, window, after in grants)
    per_window = Counter(window for _, window, _ in grants)
    assert max(per_window.values()) <= BUDGET


def test_a_share_lowers_the_cap(table: TableClient, key: str) -> None:
    governors = [_governor(table, key, lambda: T0, refuse_to_wait, share=0.25) for _ in range(2)]
    assert governors[0].budget == 10
    assert len(_drain(governors, threads_each=3)) == 10


def test_a_block_stops_another_governor_at_its_next_lease(table: TableClient, key: str) -> None:
    clock = FakeClock(T0)
    blocker = _governor(table, key, clock.time, clock.sleep)
    other = _governor(table, key, clock.time, clock.sleep)
    blocker.block_until(T0 + 5)
    window = other.acquire()
    assert clock.now >= T0 + 5
    assert window == int(T0 + 5)


def test_a_block_stops_local_threads_that_still_hold_slots(table: TableClient, key: str) -> None:
    clock = FakeClock(T0)
    governor = _governor(table, key, clock.time, clock.sleep, lease_fraction=0.5)
    for _ in range(4):  # leases of 1, 2 and 4 slots: three are still held
        assert governor.acquire() == int(T0)
    governor.block_until(T0 + 2.5)
    assert governor.acquire() == int(T0 + 2.5)
    assert clock.now >= T0 + 2.5


@pytest.mark.parametrize(
    ("reset", "until"), [(str(int(T0) + 3), int(T0) + 3.0), ("2", T0 + 2)], ids=["epoch", "seconds"]
)
def test_remaining_zero_blocks_everyone_until_reset(
    table: TableClient, key: str, reset: str, until: float
) -> None:
    clock = FakeClock(T0)
    told, other = (_governor(table, key, clock.time, clock.sleep) for _ in range(2))
    window = told.acquire()
    told.observe({"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}, window)
    other.acquire()
    assert clock.now == pytest.approx(until)


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [("5", 1 + 5), ("39", BUDGET), ("garbage", BUDGET)],
    ids=["other-traffic", "only-us", "unreadable"],
)
def test_remaining_below_our_accounting_lowers_the_cap_for_everyone(
    table: TableClient, key: str, remaining: str, expected: int
) -> None:
    """After one slot, Braze should have BUDGET - 1 left; less means other traffic on the key.

    The governor told lowers the shared cap at its next lease, so it drains first."""
    told, other = (_governor(table, key, lambda: T0, refuse_to_wait) for _ in range(2))
    window = told.acquire()
    told.observe({"X-RateLimit-Remaining": remaining}, window)
    granted = 1 + len(_drain([told], threads_each=2))
    assert granted + len(_drain([other], threads_each=2)) == expected


def test_remaining_below_the_slots_held_drops_them_and_nobody_leases_more(
    table: TableClient, key: str
) -> None:
    told, other = (
        _governor(table, key, lambda: T0, refuse_to_wait, lease_fraction=0.5) for _ in range(2)
    )
    for _ in range(4):  # leases of 1, 2 and 4 slots: three are still held
        window = told.acquire()
    told.observe({"X-RateLimit-Remaining": "1"}, window)
    assert len(_drain([told], threads_each=2)) + len(_drain([other], threads_each=2)) == 1


def test_no_slot_is_handed_out_in_the_guard_slice(table: TableClient, key: str) -> None:
    clock = FakeClock(int(T0) + 0.95)
    governor = _governor(table, key, clock.time, clock.sleep, guard_seconds=0.1)
    assert governor.acquire() == int(T0) + 1
    assert clock.now >= int(T0) + 1


def test_a_worker_whose_clock_is_behind_waits_for_the_newer_window(
    table: TableClient, key: str
) -> None:
    ahead = _governor(table, key, lambda: T0 + 1, refuse_to_wait)
    ahead.acquire()
    clock = FakeClock(T0)
    behind = _governor(table, key, clock.time, clock.sleep)
    assert behind.acquire() == int(T0) + 1
    assert clock.now == int(T0) + 1


def test_a_clock_far_ahead_does_not_stall_the_others(table: TableClient, key: str) -> None:
    _governor(table, key, lambda: T0 + 600, refuse_to_wait).acquire()
    assert _governor(table, key, lambda: T0, refuse_to_wait).acquire() == int(T0)


def test_a_guard_as_long_as_the_window_is_refused(table: TableClient) -> None:
    with pytest.raises(ValueError, match="guard_seconds"):
        RateGovernor(table, "c", requests_per_window=1, window_seconds=1, guard_seconds=1)
