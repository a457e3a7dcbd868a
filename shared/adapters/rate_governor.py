"""One Braze rate budget shared by every thread, worker process and instance of the app.

Braze counts /users/track requests per fixed window aligned to epoch multiples of its length.
Flex Consumption runs dozens of instances with many threads each, so no in-process limiter can
keep their sum within a window; they coordinate through one Table entity per connection:

- the entity holds the current window, how many requests have been granted in it, the window's
  cap, and a shared block time; every change is ETag-guarded (optimistic concurrency), so two
  workers can never both spend the same slot, and a lease cannot slip past a block written
  between its read and its write;
- a worker leases slots in blocks (at most `lease_fraction` of the budget) and hands them to its
  threads locally, so the table sees a few operations per window instead of one per request;
- slots are valid only inside their window and are never handed out in its last `guard_seconds`,
  so a request granted in window w reaches Braze in w unless it is delayed longer than that; a
  thread held up between its grant and its send (a busy machine, a long GIL hold) checks
  `still_usable` first and takes a new slot rather than land in the next window's budget;
- one entity per connection (and window length) rolls over in place, so nothing piles up.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.adapters.storage import forget_traceback

EPOCH_THRESHOLD = 1_000_000_000
MAX_RESET_WAIT_SECONDS = 3600.0
REMAINING_HEADER = "X-RateLimit-Remaining"
RESET_HEADER = "X-RateLimit-Reset"
RETRY_AFTER_HEADER = "X-Ratelimit-Retry-After"


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name in any case: HTTP/2 lowercases names and plain dicts don't fold them."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def reset_wait_seconds(value: str | None, now: float) -> float | None:
    """Seconds until a rate-limit window resets, from either form Braze sends.

    `X-RateLimit-Reset` is UTC epoch seconds on most plans and seconds remaining on MAU plans;
    an epoch-sized number can only be the former. The wait is capped at an hour so a garbled
    far-future value cannot stop every worker for days.
    """
    number = _finite_number(value)
    if number is None:
        return None
    wait = number - now if number >= EPOCH_THRESHOLD else number
    return min(MAX_RESET_WAIT_SECONDS, max(0.0, wait))


def throttle_wait_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """How long a 429 says to wait: Braze sends Retry-After on a 429, Reset on other answers."""
    wait = reset_wait_seconds(header(headers, RETRY_AFTER_HEADER), now)
    if wait is None:
        wait = reset_wait_seconds(header(headers, RESET_HEADER), now)
    return wait


def remaining_requests(headers: Mapping[str, str]) -> int | None:
    """`X-RateLimit-Remaining` as a count, or None when absent or not a count."""
    number = _finite_number(header(headers, REMAINING_HEADER))
    return None if number is None or number < 0 else int(number)


def _finite_number(value: str | None) -> float | None:
    """A header's value as a finite number; None when absent, garbled, infinite or NaN."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class _Shared:
    """The connection's entity as read, with the ETag that guards the next write."""

    window: int
    granted: int
    cap: int
    blocked_until: float
    etag: str | None  # None: the entity does not exist yet


@dataclass(frozen=True)
class _Lease:
    """What one lease attempt learned: slots for `window` (maybe none) and when to look again."""

    window: int
    slots: int
    full: bool
    shared_block: float
    not_before: float


class RateGovernor:
    """Grants request slots for one Braze connection within its share of each window.

    Thread-safe: a process shares one governor per connection among all its threads.
    """

    def __init__(
        self,
        table: TableClient,
        key: str,
        *,
        requests_per_window: int,
        window_seconds: float,
        share: float = 1.0,
        lease_fraction: float = 0.05,
        guard_seconds: float = 0.1,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 <= guard_seconds < window_seconds:
            raise ValueError("guard_seconds must be at least 0 and shorter than the window")
        self._table = table
        self._key = key
        # A row per window length: workers still on an edited length keep to their own windows.
        self._row = f"window-{window_seconds:g}s"
        self._window_seconds = window_seconds
        self._guard = guard_seconds
        self._clock = clock
        self._sleep = sleep
        # The epsilon keeps e.g. 100 * 0.29 = 28.999... from losing a request to rounding.
        self.budget = max(1, math.floor(requests_per_window * share + 1e-9))
        self._max_lease = max(1, math.floor(self.budget * lease_fraction))
        self._cond = threading.Condition()
        self._window = -1  # window of the current local lease
        self._slots = 0  # slots of that lease not yet handed out
        self._lease_slots = 0  # size of that lease, to size the next one by demand
        self._full_window = -1  # a window known to have no slots left
        self._blocked_until = 0.0  # local: nothing is granted before this epoch time
        self._shared_block = 0.0  # the latest block known to be in the table
        self._spare_hint: tuple[int, int] | None = None  # (window, least spare Remaining seen)
        self._leasing = False
        self._waiters = 0

    def acquire(self) -> int:
        """Block until a slot is granted; return the window it belongs to (for `observe`)."""
        with self._cond:
            self._waiters += 1
        try:
            while True:
                with self._cond:
                    now = self._clock()
                    delay = self._delay(now)
                    if delay <= 0:
                        window = self._window_of(now)
                        if self._window == window and self._slots > 0:
                            self._slots -= 1
                            return window
                        if self._leasing:
                            self._cond.wait()  # the leasing thread notifies when it is done
                            continue
                        self._leasing = True
                        size = self._next_lease_size(window)
                        hint = self._spare_hint
                if delay > 0:
                    self._sleep(delay)
                else:
                    self._lease(size, hint)
        finally:
            with self._cond:
                self._waiters -= 1

    def still_usable(self, window: int) -> bool:
        """Whether a slot of `window` may still be sent: not in the window's last half guard,
        which leaves the request that long to reach Braze within the window."""
        return self._clock() < (window + 1) * self._window_seconds - self._guard / 2

    def observe(self, headers: Mapping[str, str], window: int) -> None:
        """Adapt to what Braze reported for a request granted in `window`.

        Braze's Remaining covers every slot still unsent, so without other traffic on the key
        it is never below the slots we hold, nor below the window's cap minus what was granted.
        Less means other traffic: hold no more slots than Remaining, and at the next lease cap
        the window at what was granted plus what Remaining leaves beyond our held slots.
        Remaining 0 blocks everyone until Reset.
        """
        remaining = remaining_requests(headers)
        if remaining is None:
            return
        now = self._clock()
        with self._cond:
            spare = remaining
            if window == self._window:
                self._slots = min(self._slots, remaining)
                spare -= self._slots
            hint = self._spare_hint
            if window == self._window_of(now) and (
                hint is None or hint[0] != window or spare < hint[1]
            ):
                self._spare_hint = (window, spare)
        if remaining == 0:
            wait = reset_wait_seconds(header(headers, RESET_HEADER), now)
            if wait:
                self.block_until(now + wait)

    def block_until(self, epoch_seconds: float) -> None:
        """Stop this process's threads at once and every other worker at its next lease."""
        if epoch_seconds <= self._clock():
            return
        with self._cond:
            if epoch_seconds > self._blocked_until:
                self._blocked_until = epoch_seconds
                self._slots = 0
            if epoch_seconds <= self._shared_block:
                return
        while True:
            shared = self._read()
            if shared.blocked_until >= epoch_seconds:
                break
            if self._write(shared, shared.window, shared.granted, shared.cap, epoch_seconds):
                break
        with self._cond:
            self._shared_block = max(self._shared_block, shared.blocked_until, epoch_seconds)

    def _window_of(self, now: float) -> int:
        return math.floor(now / self._window_seconds)

    def _delay(self, now: float) -> float:
        """Seconds to wait before a slot may be handed out; call with the lock held."""
        if now < self._blocked_until:
            return self._blocked_until - now
        window = self._window_of(now)
        end = (window + 1) * self._window_seconds
        if now >= end - self._guard:
            return end - now
        holding = self._window == window and self._slots > 0
        if self._full_window == window and not holding:
            return end - now
        return 0.0

    def _next_lease_size(self, window: int) -> int:
        """Follow demand: double after a lease ran out within its window, else take what the
        last window used; at least one slot per waiting thread, at most the lease limit."""
        same_window = self._window == window
        size = 2 * self._lease_slots if same_window else self._lease_slots - self._slots
        return max(1, min(self._max_lease, max(size, self._waiters)))

    def _lease(self, size: int, hint: tuple[int, int] | None) -> None:
        """Lease slots from the table (outside the lock) and publish them to local threads."""
        lease: _Lease | None = None
        try:
            lease = self._claim(size, hint)
        finally:
            with self._cond:
                self._leasing = False
                if lease is not None:
                    self._apply(lease)
                self._cond.notify_all()

    def _apply(self, lease: _Lease) -> None:
        self._shared_block = max(self._shared_block, lease.shared_block)
        self._blocked_until = max(self._blocked_until, lease.shared_block, lease.not_before)
        if lease.slots:
            self._window = lease.window
            self._slots = lease.slots
            self._lease_slots = lease.slots
        if lease.full:
            self._full_window = lease.window

    def _claim(self, size: int, hint: tuple[int, int] | None) -> _Lease:
        """Take up to `size` slots of the current window, retrying when another worker wrote
        the entity between our read and our write."""
        while True:
            shared = self._read()
            now = self._clock()
            window = self._window_of(now)
            end = (window + 1) * self._window_seconds
            if shared.blocked_until > now:
                return _Lease(window, 0, False, shared.blocked_until, 0.0)
            if shared.window == window + 1:  # a worker whose clock is a little ahead rolled over
                return _Lease(window, 0, False, 0.0, shared.window * self._window_seconds)
            if now >= end - self._guard:
                return _Lease(window, 0, False, 0.0, end)
            # Older windows roll over; so do windows far ahead: one wrong clock must not stall all.
            rolled = shared.window != window
            granted = 0 if rolled else shared.granted
            cap = self.budget if rolled else min(self.budget, shared.cap)
            if hint is not None and hint[0] == window:
                cap = min(cap, granted + hint[1])
            slots = max(0, min(size, cap - granted))
            if slots == 0 and not rolled and cap == shared.cap:
                return _Lease(window, 0, True, shared.blocked_until, 0.0)
            if self._write(shared, window, granted + slots, cap, shared.blocked_until):
                return _Lease(window, slots, granted + slots >= cap, shared.blocked_until, 0.0)

    def _read(self) -> _Shared:
        try:
            entity = self._table.get_entity(self._key, self._row)
        except ResourceNotFoundError as missing:
            forget_traceback(missing)
            return _Shared(-1, 0, self.budget, 0.0, None)
        return _Shared(
            window=int(entity["Window"]),
            granted=int(entity["Granted"]),
            cap=int(entity["Cap"]),
            blocked_until=float(entity["BlockedUntil"]),
            etag=entity.metadata["etag"],
        )

    def _write(
        self, read: _Shared, window: int, granted: int, cap: int, blocked_until: float
    ) -> bool:
        """Replace the entity only if nobody changed it since `read`; False means read again."""
        entity = {
            "PartitionKey": self._key,
            "RowKey": self._row,
            "Window": float(window),  # a Double: window numbers outgrow Int32 for short windows
            "Granted": granted,
            "Cap": cap,
            "BlockedUntil": float(blocked_until),
        }
        try:
            if read.etag is None:
                self._table.create_entity(entity)
            else:
                self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=read.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError) as lost:
            forget_traceback(lost)  # another worker wrote first: an answer, not a failure
            return False
        return True
