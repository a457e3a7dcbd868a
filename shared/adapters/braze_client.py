"""Braze `/users/track` client: batching-friendly, retrying, and honest about per-object errors.

Requests go out through libcurl on a keep-alive connection per sending thread
(`http_post`), with the headers built once: at Braze's 1,000 requests/s the client's CPU per
request is a core's worth of work in Python HTTP libraries (`session.post` costs about twice
what urllib3's `urlopen` does; this client on libcurl less than half of it on urllib3). Like
`trust_env=False`, no proxy is taken from the environment; certificates are checked against
the CA store Python's ssl module finds (`SSL_CERT_FILE` and `SSL_CERT_DIR` included), else
certifi's bundle (`http_post.ca_store`).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.adapters.http_post import Answer, KeepAlivePoster, TransportError
from shared.adapters.rate_governor import (
    RESET_HEADER,
    RateGovernor,
    header,
    remaining_requests,
    reset_wait_seconds,
    throttle_wait_seconds,
)
from shared.adapters.settings import ConfigurationError
from shared.adapters.telemetry import metrics

log = logging.getLogger(__name__)

KEY_REREAD_SECONDS = 60.0
# Answers that say the connection itself is wrong (the endpoint, the key, its permissions),
# whatever the batch holds; a redirect (3xx) is one too.
CONNECTION_REFUSALS = frozenset({401, 403, 404})

# pyproject.toml's version: that file is not deployed, so a unit test keeps the two equal.
VERSION = "0.1.0"


class BrazeUnavailable(Exception):
    """Braze kept failing (5xx, timeouts, dropped connections); retry the chunk later."""


@dataclass(frozen=True)
class TrackOutcome:
    """What Braze did with one request.

    `failure` is set when the whole request was refused (every object rejected for that
    reason); otherwise `object_errors` maps an index in `attributes` to Braze's error type.
    `sent` is False for a batch held back because Braze had just refused the connection.
    """

    status: int
    object_errors: dict[int, str] = field(default_factory=dict)
    failure: str | None = None
    sent: bool = True


def user_agent(environ: Mapping[str, str]) -> str:
    """Names this worker process (Azure's instance id, else the host, and the pid) so that
    Braze's logs and the sandbox can tell the app's many workers apart."""
    instance = f"{environ.get('WEBSITE_INSTANCE_ID') or socket.gethostname()}-{os.getpid()}"
    return f"braze-segment-exporter/{VERSION} ({instance})"


def authorization_header(key: str) -> str:
    """The header carrying the key, as stored less surrounding white space (a key saved from a
    file often ends with a line break). A key holding a line break or another control
    character inside would break the request's head: ConfigurationError."""
    key = key.strip()
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        raise ConfigurationError(
            "the Braze API key holds a line break or another control character: store the key "
            "alone in its secret"
        )
    return f"Authorization: Bearer {key}"


def tracking_body(objects_json: Sequence[bytes]) -> bytes:
    """A /users/track body from already-serialized attribute objects (UTF-8 JSON)."""
    return b'{"attributes":[' + b",".join(objects_json) + b"]}"


class InFlightSizer:
    """How many requests to keep in flight: enough to spend the budget at the latency Braze
    shows (Little's law: budget/s x latency, with headroom).

    It starts from the connection's expected latency and follows a moving average of answered
    requests' round trips, between `low` and `high`: a slower Braze, a longer network path or
    a busy machine gets more requests in flight instead of leaving the budget unspent, and the
    rate governor still holds the sum to the budget.
    """

    SMOOTHING = 0.05  # weight of each new round trip: about the last 20 count

    def __init__(
        self,
        per_second: float,
        latency_seconds: float,
        *,
        low: int,
        high: int,
        headroom: float,
    ) -> None:
        self._per_second = per_second
        self._headroom = headroom
        self.low, self.high = low, high
        self.latency_seconds = latency_seconds

    def observe(self, seconds: float) -> None:
        """One answered request's round trip (a float update: safe enough across threads)."""
        self.latency_seconds += self.SMOOTHING * (seconds - self.latency_seconds)

    @property
    def target(self) -> int:
        wanted = math.ceil(self._per_second * self.latency_seconds * self._headroom)
        return max(self.low, min(self.high, wanted))


class BrazeClient:
    """Sends attribute batches to one Braze workspace.

    With a `governor`, every send (retries too) waits for a slot of the budget shared by all
    instances; without one, only this client's threads hold back when Braze says to wait.
    `submit` sends on a pool of threads, each with its own keep-alive connection: at Braze's
    latency, requests in flight are what spends the budget. `in_flight` is a fixed number or an
    `InFlightSizer` that follows the latency measured.

    Once Braze refuses the connection itself (a redirect, or 401, 403 or 404 after the key was
    read again), batches not yet sent are not sent for a minute but given the same answer: a
    wrong key or endpoint costs a request a minute, not one per batch of a million profiles.
    Requests cross in flight, so the answer to the request sent last decides: a refusal of a
    request sent before one Braze accepted (say with the key since rotated) starts no hold.
    When the minute ends, one batch tries again while the others wait for its answer.
    """

    def __init__(
        self,
        rest_endpoint: str,
        api_key: Callable[[bool], str],
        *,
        governor: RateGovernor | None = None,
        in_flight: int | InFlightSizer = 1,
        max_attempts: int = 6,
        max_rate_limit_waits: int = 30,
        timeout: tuple[float, float] = (3.05, 30.0),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url = rest_endpoint.rstrip("/") + "/users/track"
        self._api_key = api_key
        self._limiter: RateGovernor | LocalLimiter = governor or LocalLimiter(sleep)
        self._max_attempts = max_attempts
        self._max_rate_limit_waits = max_rate_limit_waits
        self._sleep = sleep
        self._clock = clock
        self._key_lock = threading.Lock()
        self._key_reread_at: float | None = None
        self._sends = itertools.count()  # numbers requests in the order they are sent
        self._verdict_lock = threading.Lock()
        self._verdict_send = -1  # the latest-sent request whose answer said if the connection works
        self._hold: _Hold | None = None
        self._user_agent = user_agent(os.environ)
        self._headers = self._headers_for(api_key(False))
        self._in_flight = in_flight
        self._poster = KeepAlivePoster(url, connect_timeout=timeout[0], read_timeout=timeout[1])
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _headers_for(self, key: str) -> tuple[str, ...]:
        return (
            authorization_header(key),
            "Content-Type: application/json",
            f"User-Agent: {self._user_agent}",
            "Expect:",  # no 100-continue round trip before the body
        )

    @property
    def max_in_flight(self) -> int:
        """How many batches a caller should keep on their way now."""
        sizer = self._in_flight
        return sizer if isinstance(sizer, int) else sizer.target

    @property
    def latency_seconds(self) -> float | None:
        """The moving average of answered round trips, when the client follows latency."""
        sizer = self._in_flight
        return None if isinstance(sizer, int) else sizer.latency_seconds

    def submit(self, objects_json: Sequence[bytes]) -> Future[TrackOutcome]:
        """Send one batch on the client's pool; the future holds what `track` returns or raises."""
        with self._pool_lock:
            if self._pool is None:
                sizer = self._in_flight
                threads = sizer if isinstance(sizer, int) else sizer.high
                self._pool = ThreadPoolExecutor(threads, thread_name_prefix="braze")
        # The caller's log context (run, export, chunk) goes with the batch to the pool thread.
        return self._pool.submit(contextvars.copy_context().run, self.track, objects_json)

    def track(self, objects_json: Sequence[bytes]) -> TrackOutcome:
        """Send one batch of attribute objects; retry what is worth retrying."""
        body = tracking_body(objects_json)
        failures = rate_limit_waits = 0
        refreshed_key = tried = False
        while True:
            # Only before its first request: a batch Braze has seen is counted as sent, and its
            # retry gets its own answer.
            if not tried and (held_back := self._held_back()) is not None:
                return held_back
            window = self._limiter.acquire()
            if not self._limiter.still_usable(window):
                continue  # held up since the grant: sent now, it would count in the next window
            tried = True
            headers = self._headers
            send = next(self._sends)
            sent_at = time.perf_counter()
            try:
                response = self._poster.post(body, headers)
            except TransportError as error:  # refused, reset, dropped, timed out, TLS failed
                failures += 1
                self._backoff(failures, f"{type(error).__name__}: {error}")
                continue
            self._limiter.observe(response.headers, window)
            status = response.status
            if (recorder := metrics()) is not None:
                recorder.braze_response(status, time.perf_counter() - sent_at)
            if 200 <= status < 300:
                if not isinstance(self._in_flight, int):
                    self._in_flight.observe(time.perf_counter() - sent_at)
                self._connection_works(send)
                return TrackOutcome(status, _object_errors(response))
            if status == 429:
                rate_limit_waits += 1
                if rate_limit_waits > self._max_rate_limit_waits:
                    raise BrazeUnavailable(f"still rate limited after {rate_limit_waits} waits")
                self._wait_after_429(response.headers, rate_limit_waits)
                continue
            if 300 <= status < 400:  # not followed: the API key goes nowhere but the endpoint
                return self._refusal(TrackOutcome(status, {}, _describe_redirect(response)), send)
            if status == 401 and headers is not self._headers:
                continue  # sent with a key another batch has read again since: try the new one
            if status == 401 and not refreshed_key and self._may_reread_key():
                refreshed_key = True
                self._headers = self._headers_for(self._api_key(True))
                continue
            if 400 <= status < 500:  # 400, 401, 403, 404, 413, 415: the request itself is wrong
                outcome = TrackOutcome(
                    status, _object_errors(response), _describe_failure(response)
                )
                return self._refusal(outcome, send) if status in CONNECTION_REFUSALS else outcome
            failures += 1
            self._backoff(failures, f"HTTP {status}")

    def _connection_works(self, send: int) -> None:
        """Braze accepted request `send`: a hold started by a request sent before it ends."""
        with self._verdict_lock:
            if send > self._verdict_send:
                self._verdict_send = send
                self._hold = None

    def _refusal(self, outcome: TrackOutcome, send: int) -> TrackOutcome:
        """Braze refused the connection: batches sent within the minute would get the same,
        unless a request sent after this one was accepted."""
        with self._verdict_lock:
            if send > self._verdict_send:
                self._verdict_send = send
                self._hold = _Hold(self._clock() + KEY_REREAD_SECONDS, outcome)
        return outcome

    def _held_back(self) -> TrackOutcome | None:
        """The answer for a batch not sent because Braze refused the connection less than a
        minute ago; None when the batch goes. When the minute is up, the first batch to ask
        goes and the hold starts again for the others until Braze answers it."""
        hold = self._hold
        if hold is None:
            return None
        now = self._clock()
        if now >= hold.until:
            with self._verdict_lock:
                if self._hold is hold:
                    self._hold = _Hold(now + KEY_REREAD_SECONDS, hold.answer)
                    return None
                hold = self._hold  # another batch is trying again, or Braze has answered it
            if hold is None:
                return None
        answer = hold.answer
        failure = (
            f"not sent: Braze refused this connection less than a minute before: {answer.failure}"
        )
        return TrackOutcome(answer.status, {}, failure, sent=False)

    def _may_reread_key(self) -> bool:
        """A 401 re-reads the key (it may have been rotated), at most once a minute per client:
        a key that stays wrong is not fetched again for every batch, yet a fixed one is picked
        up without a restart."""
        with self._key_lock:
            now = self._clock()
            if self._key_reread_at is not None and now - self._key_reread_at < KEY_REREAD_SECONDS:
                return False
            self._key_reread_at = now
            return True

    def _backoff(self, failures: int, what: str) -> None:
        if failures >= self._max_attempts:
            raise BrazeUnavailable(f"Braze failed {failures} times in a row; last: {what}")
        delay = random.uniform(0, min(8.0, 0.25 * 2**failures))
        log.warning("Braze request failed (%s); retry %d in %.2fs", what, failures, delay)
        self._sleep(delay)

    def _wait_after_429(self, headers: Mapping[str, str], attempt: int) -> None:
        now = time.time()
        wait = throttle_wait_seconds(headers, now)
        if wait is None:
            wait = min(8.0, 0.5 * 2**attempt)
        self._limiter.block_until(now + wait)


@dataclass(frozen=True)
class _Hold:
    """Batches are not sent until `until` (the client's clock): Braze refused the connection."""

    until: float
    answer: TrackOutcome


class LocalLimiter:
    """The client's limiter when there is no governor: it holds this client's threads while
    Braze says the window is used up, and knows nothing of other processes."""

    def __init__(self, sleep: Callable[[float], None]) -> None:
        self._sleep = sleep
        self._lock = threading.Lock()
        self._blocked_until = 0.0

    def acquire(self) -> int:
        """Wait out a block; the window number is irrelevant here, so always 0."""
        with self._lock:
            wait = self._blocked_until - time.time()
        if wait > 0:
            self._sleep(wait)
        return 0

    def still_usable(self, window: int) -> bool:
        """Without a governor nothing is counted per window here: always."""
        return True

    def observe(self, headers: Mapping[str, str], window: int) -> None:
        """When Braze says the window is used up, hold every thread until it resets."""
        if remaining_requests(headers) != 0:
            return
        now = time.time()
        wait = reset_wait_seconds(header(headers, RESET_HEADER), now)
        if wait:
            self.block_until(now + wait)

    def block_until(self, epoch_seconds: float) -> None:
        with self._lock:
            self._blocked_until = max(self._blocked_until, epoch_seconds)


def _payload(response: Answer) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return orjson.loads(response.data)
    except orjson.JSONDecodeError:
        return None


def _object_errors(response: Answer) -> dict[int, str]:
    payload = _payload(response)
    errors: dict[int, str] = {}
    for item in payload.get("errors", []) if isinstance(payload, dict) else []:
        if isinstance(item, dict) and item.get("input_array", "attributes") == "attributes":
            index = item.get("index")
            if isinstance(index, int):
                errors[index] = str(item.get("type", "unknown error"))
    return errors


def _describe_redirect(response: Answer) -> str:
    """A redirect means the endpoint is not the workspace's REST endpoint: no retry would help."""
    location = (header(response.headers, "Location") or "nowhere given")[:200]
    return (
        f"Braze redirected the request (HTTP {response.status}) to {location}: redirects are not "
        "followed; set the connection's rest_endpoint to your Braze instance's REST endpoint"
    )


def _describe_failure(response: Answer) -> str:
    payload = _payload(response)
    message = payload.get("message") if isinstance(payload, dict) else None
    text = response.data[:200].decode("utf-8", "replace")
    detail = message or text or response.reason
    return f"Braze refused the request (HTTP {response.status}): {detail}"
