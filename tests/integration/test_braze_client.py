"""The Braze client against the sandbox over HTTP: limits, errors, retries, key refresh, and
the shared rate governor on the test Azurite."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

import pytest
import requests
from azure.data.tables import TableClient

from devtools.processes import Sandbox, start_sandbox
from shared.adapters.braze_client import (
    VERSION,
    BrazeClient,
    BrazeUnavailable,
    InFlightSizer,
    TrackOutcome,
)
from shared.adapters.rate_governor import RateGovernor
from shared.core.jsonlines import dumpb
from tests.local_server import serving

KEY = "client-test-key"
WINDOW_THAT_NEVER_ENDS = 10**9  # from 2001 to 2033, so no test sees a window roll over


class WouldWait(Exception):
    """A governor's sleep in these tests: a client told to wait stops instead, so how many
    requests got through is exact whatever the timing."""


def _refuse_to_wait(seconds: float) -> None:
    raise WouldWait(seconds)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    running = start_sandbox(KEY, "--seed", "11", "--blocklist", "bad-id")
    yield running
    running.stop()


@pytest.fixture
def braze(sandbox: Sandbox) -> Iterator[Sandbox]:
    requests.post(f"{sandbox.url}/_sandbox/reset", timeout=10).raise_for_status()
    yield sandbox
    _configure(sandbox, "faults", fault_5xx=0, fault_drop=0, fault_429_burst=0)
    _configure(sandbox, "limits", rate_limit=3000, rate_window_seconds=3)


def _governor(
    table: TableClient, key: str, budget: int, lease_fraction: float = 0.05
) -> RateGovernor:
    return RateGovernor(
        table,
        key,
        requests_per_window=budget,
        window_seconds=WINDOW_THAT_NEVER_ENDS,
        lease_fraction=lease_fraction,
        sleep=_refuse_to_wait,
    )


def _configure(sandbox: Sandbox, what: str, **values: object) -> None:
    requests.put(f"{sandbox.url}/_sandbox/{what}", json=values, timeout=10).raise_for_status()


def _stats(sandbox: Sandbox) -> dict:
    return requests.get(f"{sandbox.url}/_sandbox/stats", timeout=10).json()


def _objects(count: int, prefix: str = "u") -> list[bytes]:
    return [dumpb({"external_id": f"{prefix}-{n}", "tier": "gold"}) for n in range(count)]


def _client(sandbox: Sandbox, keys: list[str] | None = None) -> BrazeClient:
    served = iter(keys or [KEY] * 10)
    return BrazeClient(sandbox.url, lambda refresh: next(served), sleep=lambda s: None)


def test_object_errors_come_back_by_index(braze: Sandbox) -> None:
    objects = _objects(3)
    objects[1] = dumpb({"external_id": "bad-id"})
    outcome = _client(braze).track(objects)
    assert outcome.status == 201 and outcome.failure is None
    assert outcome.object_errors == {1: "BLACKLISTED_EXTERNAL_USER_ID"}


def test_over_the_object_limit_is_a_non_retryable_failure(braze: Sandbox) -> None:
    outcome = _client(braze).track(_objects(76))
    assert outcome.status == 400
    assert "Max Input Length Exceeded" in (outcome.failure or "")
    assert _stats(braze)["requests_total"] == 1


class Clock:
    """The client's clock in these tests: it moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def _answering(
    status: int | list[int] | Callable[[int, str | None], int], headers: dict[str, str]
) -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A local endpoint that gives every POST the same answer (`status`, or a list's first
    item, which the test may change meanwhile), or what `status(n, authorization)` returns for
    the n-th request (it may wait there): its URL, and the (path, Authorization) of each
    request it received."""
    received: list[tuple[str, str | None]] = []
    lock = threading.Lock()
    if callable(status):
        answer = status
    else:
        answers = status if isinstance(status, list) else [status]

        def answer(n: int, authorization: str | None) -> int:
            return answers[0]

    class Answering(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            authorization = self.headers.get("Authorization")
            with lock:
                n = len(received)
                received.append((self.path, authorization))
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"message":"refused here"}'
            self.send_response(answer(n, authorization))
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Answering)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}", received


def test_a_redirect_is_reported_at_once_not_retried_or_followed() -> None:
    """An endpoint that redirects (a plain-HTTP or retired URL) is the wrong endpoint: the
    batch fails with the place it was sent to, after one request, and the key stays here."""
    elsewhere = "http://127.0.0.1:9/elsewhere/users/track"
    with _answering(301, {"Location": elsewhere}) as (endpoint, received):
        client = BrazeClient(endpoint, lambda refresh: KEY, sleep=_refuse_to_wait)
        outcome = client.track(_objects(2))
        held_back = client.track(_objects(2))
    assert outcome.status == 301 and outcome.object_errors == {}
    assert outcome.failure == (
        f"Braze redirected the request (HTTP 301) to {elsewhere}: "
        "redirects are not followed; set the connection's rest_endpoint to your Braze "
        "instance's REST endpoint"
    )
    # One request, to the endpoint (the place it was redirected to is closed: nothing was
    # followed), and the next batch was not sent within the minute.
    assert received == [("/users/track", f"Bearer {KEY}")]
    assert (held_back.status, held_back.sent) == (301, False)
    assert held_back.failure == (
        f"not sent: Braze refused this connection less than a minute before: {outcome.failure}"
    )


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_connection_holds_back_the_next_batches_for_a_minute(status: int) -> None:
    """A wrong key, a key without the permission, a wrong endpoint: every batch would get the
    same answer, so a minute of batches costs one request (two with the key read again), not
    one each; after the minute, a request tries again."""
    clock = Clock()
    with _answering(status, {}) as (endpoint, received):
        client = BrazeClient(endpoint, lambda refresh: KEY, sleep=_refuse_to_wait, clock=clock)
        first = client.track(_objects(2))
        clock.now += 59.9
        held = [client.track(_objects(2, f"b{n}")) for n in range(5)]
        sent_then = len(received)
        clock.now += 0.1
        again = client.track(_objects(2))
        sent_in_all = len(received)
    assert (first.status, first.sent) == (status, True)
    assert first.failure == f"Braze refused the request (HTTP {status}): refused here"
    assert sent_then == (2 if status == 401 else 1)  # a 401 reads the key again, once
    reason = f"not sent: Braze refused this connection less than a minute before: {first.failure}"
    assert [(o.status, o.sent, o.object_errors, o.failure) for o in held] == [
        (status, False, {}, reason)
    ] * 5
    assert (again.status, again.sent) == (status, True)
    assert sent_in_all > sent_then


def test_an_accepted_batch_ends_the_hold() -> None:
    """Braze accepting a batch (after the minute, or another thread's) shows the connection
    works again: the next batches go at once, however recent the refusal."""
    answers = [401]
    clock = Clock()
    with _answering(answers, {}) as (endpoint, received):
        client = BrazeClient(endpoint, lambda refresh: KEY, sleep=_refuse_to_wait, clock=clock)
        assert client.track(_objects(1)).status == 401
        answers[0] = 201  # fixed, say, in Braze's dashboard
        clock.now += 60
        assert client.track(_objects(1)).status == 201
        after = [client.track(_objects(1)) for _ in range(3)]
    assert [(o.status, o.sent) for o in after] == [(201, True)] * 3
    assert len(received) == 2 + 1 + 3


class Held:
    """An endpoint's answer that holds request number `n` (from 0) until `released` is set,
    and otherwise answers as `answer(n, authorization)` does."""

    def __init__(self, n: int, answer: Callable[[int, str | None], int]) -> None:
        self.n, self.answer = n, answer
        self.arrived, self.released = threading.Event(), threading.Event()

    def __call__(self, n: int, authorization: str | None) -> int:
        if n == self.n:
            self.arrived.set()
            self.released.wait()
        return self.answer(n, authorization)


T = TypeVar("T")


def _crossing(
    client: BrazeClient, held: Held, meanwhile: Callable[[], T]
) -> tuple[TrackOutcome, T]:
    """Batch A tracked on a thread of its own; while the endpoint holds its request,
    `meanwhile` runs. A's outcome, and what `meanwhile` returned."""
    a = ThreadPoolExecutor(1).submit(client.track, _objects(1, "other"))
    held.arrived.wait()
    result = meanwhile()
    held.released.set()
    return a.result(), result


def test_a_batch_sent_with_a_key_read_again_meanwhile_tries_the_new_key() -> None:
    """Key rotation with requests in flight: batch A goes with the old key; batch B gets a 401,
    reads the new key and is accepted; A's 401 then arrives. A is sent again with the new key
    (not reported refused), and no hold starts: the next batch goes."""
    keys = iter(["old-key", "new-key"])
    held = Held(0, lambda n, authorization: 201 if authorization == "Bearer new-key" else 401)
    with _answering(held, {}) as (endpoint, received):
        client = BrazeClient(endpoint, lambda refresh: next(keys), sleep=_refuse_to_wait)
        a, b = _crossing(client, held, lambda: client.track(_objects(1)))
        after = client.track(_objects(1))
    assert (b.status, a.status, after.status, after.sent) == (201, 201, 201, True)
    assert [auth for _, auth in received] == [
        "Bearer old-key",  # A
        "Bearer old-key",  # B
        "Bearer new-key",  # B, after reading the key again
        "Bearer new-key",  # A again
        "Bearer new-key",  # the next batch
    ]


def test_a_refusal_of_a_request_sent_before_an_accepted_one_starts_no_hold() -> None:
    """Answers cross: A is sent, then B; B is accepted, then A's 403 arrives. What Braze said
    of the later request stands: A keeps its 403, and the next batch is sent."""
    held = Held(0, lambda n, authorization: 403 if n == 0 else 201)
    with _answering(held, {}) as (endpoint, received):
        client = BrazeClient(endpoint, lambda refresh: KEY, sleep=_refuse_to_wait)
        a, b = _crossing(client, held, lambda: client.track(_objects(1)))
        after = client.track(_objects(1))
    assert (b.status, a.status, a.sent) == (201, 403, True)
    assert (after.status, after.sent) == (201, True)
    assert len(received) == 3


def test_a_batch_braze_has_seen_is_retried_not_held_back() -> None:
    """A gets a 500 while B's 403 starts a hold: A's retry is sent and gets its own answer, so
    A is reported as sent (counted as a request), not as held back."""
    held = Held(0, lambda n, authorization: 500 if n == 0 else 403)
    with _answering(held, {}) as (endpoint, received):
        client = BrazeClient(endpoint, lambda refresh: KEY, sleep=lambda s: None)
        a, b = _crossing(client, held, lambda: client.track(_objects(1)))
    assert (b.status, b.sent) == (403, True)
    assert (a.status, a.sent) == (403, True)
    assert a.failure == "Braze refused the request (HTTP 403): refused here"
    assert len(received) == 3


def test_when_the_minute_is_up_one_batch_tries_again_and_the_others_wait_for_it() -> None:
    """After a minute's hold the first batch is sent; while Braze has not answered it, the
    other batches stay held back, so a key that stays wrong costs a request a minute, not one
    per thread."""
    clock = Clock()
    held = Held(1, lambda n, authorization: 403)
    with _answering(held, {}) as (endpoint, received):
        client = BrazeClient(endpoint, lambda refresh: KEY, sleep=_refuse_to_wait, clock=clock)
        assert client.track(_objects(1)).status == 403
        clock.now += 60
        retry, meanwhile = _crossing(
            client, held, lambda: [client.track(_objects(1)) for _ in range(3)]
        )
        clock.now += 59
        still_held = client.track(_objects(1))
    assert (retry.status, retry.sent) == (403, True)
    assert [(o.status, o.sent) for o in meanwhile] == [(403, False)] * 3
    assert (still_held.status, still_held.sent) == (403, False)  # the retry's refusal: a new minute
    assert len(received) == 2


def test_a_bad_request_does_not_hold_back_the_next_batches() -> None:
    """A 400 may be this batch's own fault: the next batch is sent."""
    with _answering(400, {}) as (endpoint, received):
        client = BrazeClient(endpoint, lambda refresh: KEY, sleep=_refuse_to_wait)
        outcomes = [client.track(_objects(2)) for _ in range(3)]
    assert [(o.status, o.sent) for o in outcomes] == [(400, True)] * 3
    assert len(received) == 3


def test_a_rejected_key_is_refreshed_once(braze: Sandbox) -> None:
    refreshed = _client(braze, ["stale-key", KEY]).track(_objects(2))
    assert refreshed.status == 201
    still_bad = _client(braze, ["stale-key", "also-wrong"]).track(_objects(2))
    assert still_bad.status == 401 and "HTTP 401" in (still_bad.failure or "")


def test_a_key_fixed_after_a_rejection_is_picked_up_without_a_restart(braze: Sandbox) -> None:
    """Rotated in Braze before Key Vault: the worker keeps failing without hammering Key Vault,
    and once the vault holds the new key, a later batch re-reads it (no process restart)."""
    vault = {"key": "rotated-away"}
    reads: list[bool] = []

    def read(refresh: bool) -> str:
        reads.append(refresh)
        return vault["key"]

    clock = Clock()
    client = BrazeClient(braze.url, read, sleep=lambda s: None, clock=clock)
    assert client.track(_objects(1)).status == 401
    assert client.track(_objects(1)).status == 401
    assert reads == [False, True]  # one re-read, not one per batch
    vault["key"] = KEY
    clock.now += 60  # the minute has passed
    assert client.track(_objects(1)).status == 201
    assert reads == [False, True, True]


def test_server_errors_and_dropped_connections_are_retried(braze: Sandbox) -> None:
    _configure(braze, "faults", fault_5xx=0.3, fault_drop=0.1, seed=5)
    client = BrazeClient(braze.url, lambda refresh: KEY, max_attempts=20, sleep=lambda s: None)
    for batch in range(20):
        assert client.track(_objects(75, f"b{batch}")).status == 201
    stats = _stats(braze)
    assert sum(stats["faults_injected"].values()) > 0
    assert stats["users"] == 20 * 75


def test_persistent_failure_gives_up_with_a_reason(braze: Sandbox) -> None:
    _configure(braze, "faults", fault_5xx=1.0)
    client = BrazeClient(braze.url, lambda refresh: KEY, max_attempts=3, sleep=lambda s: None)
    with pytest.raises(BrazeUnavailable, match="failed 3 times in a row; last: HTTP 5"):
        client.track(_objects(1))


def test_rate_limit_headers_keep_the_client_within_budget(braze: Sandbox) -> None:
    """The client waits for the window to reset when Braze says nothing remains."""
    _configure(braze, "limits", rate_limit=4, rate_window_seconds=1)
    client = BrazeClient(braze.url, lambda refresh: KEY)
    for batch in range(10):
        assert client.track(_objects(1, f"r{batch}")).status == 201
    limits = _stats(braze)["rate_limit"]
    assert limits["windows_over_budget"] == 0
    assert limits["requests_while_blocked"] == 0
    assert _stats(braze)["throttled_total"] == 0


def test_429_bursts_are_waited_out_never_retried_early(braze: Sandbox) -> None:
    _configure(braze, "faults", fault_429_burst=0.3, fault_429_burst_seconds=1, seed=3)
    client = BrazeClient(braze.url, lambda refresh: KEY)  # real sleeps: it must really wait
    for batch in range(8):
        assert client.track(_objects(5, f"t{batch}")).status == 201
    stats = _stats(braze)
    assert stats["throttled_total"] > 0
    assert stats["rate_limit"]["requests_while_blocked"] == 0
    assert stats["users"] == 40


def test_a_governed_client_takes_a_slot_for_every_send_retries_included(
    braze: Sandbox, rate_table: TableClient
) -> None:
    _configure(braze, "faults", fault_5xx=0.3, fault_drop=0.1, seed=5)
    key = f"c-{uuid.uuid4().hex[:12]}"
    governor = _governor(rate_table, key, budget=1000, lease_fraction=0.001)  # 1-slot leases
    client = BrazeClient(
        braze.url, lambda refresh: KEY, governor=governor, max_attempts=20, sleep=lambda s: None
    )
    for batch in range(10):
        assert client.track(_objects(5, f"g{batch}")).status == 201
    sent = _stats(braze)["requests_total"]
    assert sent > 10  # some were retried
    (state,) = rate_table.query_entities(f"PartitionKey eq '{key}'")
    assert state["Granted"] == sent


def test_a_slot_held_up_past_its_window_is_not_sent_late_but_taken_again(
    braze: Sandbox, rate_table: TableClient
) -> None:
    """A thread that got its slot and then lost the CPU until its window's last moments would
    land in the next window, over that window's budget: it takes a slot of the next one."""
    clock = {"now": 1000.0}  # window 100 of 10 s: [1000, 1010)
    granted: list[int] = []

    class HeldUpAfterItsFirstGrant(RateGovernor):
        def acquire(self) -> int:
            window = super().acquire()
            granted.append(window)
            if len(granted) == 1:
                clock["now"] = 1009.96  # past the window's end minus half its 0.1 s guard
            return window

    def sleep(seconds: float) -> None:
        clock["now"] += seconds

    key = f"c-{uuid.uuid4().hex[:12]}"
    governor = HeldUpAfterItsFirstGrant(
        rate_table,
        key,
        requests_per_window=100,
        window_seconds=10,
        lease_fraction=0.01,  # one slot per lease
        clock=lambda: clock["now"],
        sleep=sleep,
    )
    client = BrazeClient(braze.url, lambda refresh: KEY, governor=governor, sleep=sleep)
    assert client.track(_objects(1)).status == 201
    assert granted == [100, 101]  # the held-up slot was dropped; the send took one of 101
    assert _stats(braze)["requests_total"] == 1
    (state,) = rate_table.query_entities(f"PartitionKey eq '{key}'")
    assert (state["Window"], state["Granted"]) == (101, 1)


def test_governed_instances_together_stay_within_the_budget(
    braze: Sandbox, rate_table: TableClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances of three threads each keep sending; only the shared budget gets through."""
    _configure(braze, "limits", rate_limit=12, rate_window_seconds=WINDOW_THAT_NEVER_ENDS)
    key = f"c-{uuid.uuid4().hex[:12]}"
    clients = []
    for instance in ("instance-a", "instance-b"):
        monkeypatch.setenv("WEBSITE_INSTANCE_ID", instance)
        governor = _governor(rate_table, key, budget=12)
        clients.append(BrazeClient(braze.url, lambda refresh: KEY, governor=governor))
    statuses: list[int] = []
    lock = threading.Lock()

    def send(client: BrazeClient, thread: int) -> None:
        for batch in range(100):
            try:
                outcome = client.track(_objects(1, f"i{id(client)}-{thread}-{batch}"))
            except WouldWait:
                return
            with lock:
                statuses.append(outcome.status)

    threads = [
        threading.Thread(target=send, args=(client, n)) for client in clients for n in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 12
    stats = _stats(braze)
    assert stats["requests_total"] == 12
    assert stats["throttled_total"] == 0
    assert stats["rate_limit"]["windows_over_budget"] == 0
    # Each instance names itself; which of them got the slots is up to the scheduler (on a
    # loaded machine one instance's threads may take all twelve).
    assert set(stats["rate_limit"]["per_client"]) <= {
        f"braze-segment-exporter/{VERSION} (instance-a-{os.getpid()})",
        f"braze-segment-exporter/{VERSION} (instance-b-{os.getpid()})",
    }


def test_a_429_to_one_instance_stops_the_others(braze: Sandbox, rate_table: TableClient) -> None:
    _configure(braze, "faults", fault_429_burst=1.0, fault_429_burst_seconds=30)
    key = f"c-{uuid.uuid4().hex[:12]}"
    told = BrazeClient(braze.url, lambda refresh: KEY, governor=_governor(rate_table, key, 100))
    with pytest.raises(WouldWait):
        told.track(_objects(1))
    other = _governor(rate_table, key, 100)
    with pytest.raises(WouldWait) as waited:
        other.acquire()
    assert waited.value.args[0] > 25
    assert _stats(braze)["requests_total"] == 1


def test_requests_in_flight_follow_the_latency_braze_shows(braze: Sandbox) -> None:
    """A client told Braze answers in 1 ms, facing 200 ms: it measures at least 200 ms per
    round trip, so Little's law asks for at least 1,000/s x 0.2 s = 200 in flight, which the
    upper bound holds to 64 (the sandbox's latency is a floor, so no timing can fail this)."""
    _configure(braze, "faults", latency_ms=200)
    try:
        sizer = InFlightSizer(1000, 0.001, low=2, high=64, headroom=1.0)
        client = BrazeClient(braze.url, lambda refresh: KEY, in_flight=sizer)
        assert client.max_in_flight == 2  # 1,000/s x 1 ms = 1, raised to the lower bound
        futures = [client.submit(_objects(75, f"lat{n}")) for n in range(64)]
        assert all(f.result().status == 201 for f in futures)
        assert sizer.latency_seconds > 0.19  # 64 round trips of 200 ms or more, from 1 ms
        assert client.max_in_flight == 64
    finally:
        _configure(braze, "faults", latency_ms=0)
