"""Delivering one chunk: batch its profiles into /users/track requests and account for each row.

Several batches are in flight at once; their answers are accounted for in batch order, and the
progress (a prefix of the chunk's batches) is saved about once a second and whenever an attempt
fails, so a redelivered chunk resumes at the first batch whose answer was not saved. A worker
killed outright may therefore re-send what was in flight and what was answered in its last
second (attribute updates are idempotent; Braze bills their data points again).

The saved progress is also the chunk's lease. An attempt takes it with a conditional save and
keeps saving (a heartbeat while no answer comes), so a second attempt of the same chunk (a
duplicate message) waits while the holder is alive instead of sending the chunk again, and
takes over once the holder has been silent for `LEASE_SECONDS` (a killed worker). A holder that
finds its lease taken (it was silent that long, but alive) stops sending, and its message comes
back later. Reporting a poisoned chunk's rows as failed holds the lease too.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import fields, replace
from typing import Any

from shared.adapters.braze_client import BrazeClient, TrackOutcome
from shared.adapters.run_store import SavedProgress
from shared.adapters.services import Services
from shared.core.messages import ChunkJob
from shared.core.report import row_position
from shared.core.resource_names import RUNS_CONTAINER
from shared.core.runs import ChunkProgress, ChunkResult, DeliveryCounts, utcnow
from shared.pipeline.finalize import maybe_finalize
from shared.pipeline.run_files import batches, partition_files_loader, read_chunk, rejected_prefix

log = logging.getLogger(__name__)

STOP_CHECK_SECONDS = 10.0


# Progress is saved at most this often per chunk (and when an attempt fails): a Table write per
# batch cost more than the batch's POST, and a crash may then re-send what was answered since.
PROGRESS_SAVE_SECONDS = 1.0
# The lease: a holder saves at least this often, even while no answer comes (429 waits, slow
# answers); another attempt takes the chunk once its holder has saved nothing for LEASE_SECONDS,
# and gives up waiting (the queue retries its message) after HOLD_WAIT_SECONDS.
HEARTBEAT_SECONDS = 2.0
LEASE_SECONDS = 15.0
LEASE_CHECK_SECONDS = 1.0
HOLD_WAIT_SECONDS = 300.0
FAILED_ROWS_PER_WRITE = 5_000  # a poisoned chunk's unsent rows are listed this many at a time


def deliver_chunk(job: ChunkJob, services: Services, *, wait_for_holder: bool = True) -> None:
    """Send one chunk to Braze, many batches in flight, and record its outcome once. Another
    attempt holding the chunk is waited for (`_take_lease`), unless `wait_for_holder` is
    False: then this attempt leaves the chunk to it."""
    run = services.runs.get(job.run_id)
    if run is None or run.is_final:
        log.warning("run %s is missing or finished; dropping chunk %d", job.run_id, job.chunk_index)
        return
    if services.runs.chunk_done(job.run_id, job.chunk_index):
        log.info("run %s chunk %d was already delivered", job.run_id, job.chunk_index)
        maybe_finalize(job.run_id, services)
        return
    connection = services.definitions().connection(run.connection)
    client = services.braze(connection)
    # Both at once: while a worker sets up a chunk, it has no request in flight.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-setup") as pool:
        saved = pool.submit(services.runs.saved_progress, job.run_id, job.chunk_index)
        items = read_chunk(services, job.blob_names)
        found = saved.result()
    if len(items) != job.rows:
        raise ValueError(
            f"chunk {job.chunk_index} ({', '.join(job.blob_names)}) holds {len(items)} profiles "
            f"but was planned with {job.rows}"
        )
    lease = _take_lease(job, services, found, wait_for_holder)
    if lease is None:
        # Recorded meanwhile, perhaps by the attempt waited for, and maybe the last; or held
        # by an attempt this one did not wait for, and then finalizing finds it unrecorded.
        maybe_finalize(job.run_id, services)
        return
    progress = lease.progress
    progress.batch_size = progress.batch_size or connection.objects_per_request
    if progress.batches_done:
        log.info(
            "run %s chunk %d resumes after batch %d",
            job.run_id,
            job.chunk_index,
            progress.batches_done,
        )
    ledger = _Ledger(job, services, lease)
    todo = batches(items, progress.batch_size)[progress.batches_done :]
    started = time.monotonic()
    if not _send_in_order(job, services, client, todo, ledger):
        return
    _log_pace(job, len(todo), time.monotonic() - started, client)
    _record(job, progress, len(items), run.replay_round, services)


def deliver_at_once(job: ChunkJob, services: Services) -> None:
    """Deliver a chunk job in the invocation whose release queued it, without waiting for it to
    come off the queue: the run's only job (a delta's few changes, a small segment) then goes
    to Braze now, not once a listener next polls the chunks queue (up to `maxPollingInterval`
    while idle) or, in Azure, once the delivery function has scaled out, possibly from zero.

    The queued message stays the fallback, with the dequeue count and poison handling of any
    chunk: this attempt leaves the chunk to an attempt already holding it, and a failure is
    logged, not raised (an attempt that fails lets go of the chunk, so the message's attempt
    resumes after what was answered)."""
    try:
        deliver_chunk(job, services, wait_for_holder=False)
    except Exception as error:
        log.warning(
            "run %s chunk %d: delivering it at once failed (%s: %s); its queued message "
            "delivers it",
            job.run_id,
            job.chunk_index,
            type(error).__name__,
            error,
        )


class ChunkHeld(Exception):
    """Another attempt kept delivering the chunk while this one waited: its message is retried
    later."""


def _take_lease(
    job: ChunkJob, services: Services, found: SavedProgress, wait: bool
) -> SavedProgress | None:
    """Hold the chunk for this attempt (its progress saved with this attempt as holder and the
    ETag that save returned), or None when the chunk was recorded or the run ended meanwhile,
    or another attempt holds it and this one is not to `wait`.

    A holder that saved within `LEASE_SECONDS` is alive, so this attempt waits for it: when it
    records the chunk there is nothing left to do; when it lets go (an attempt that fails saves
    its progress without holder) or falls silent (a killed worker) this one takes over and
    resumes after the batches it saved. Silence is measured both on this worker's clock, from
    ETag to ETag, and from the store's timestamp (quicker after a crash, if the clocks agree).
    """
    started = changed_at = time.monotonic()
    waiting = False
    while True:
        if not found.progress.holder or _silent(found, changed_at):
            found.progress.holder = uuid.uuid4().hex[:12]  # this attempt
            etag = _save_held(job, services, found.progress, found.etag)
            if etag is not None:
                if _chunk_over(job, services):
                    return None  # recorded just before: by a silent holder, or as failed
                return SavedProgress(found.progress, etag, None)
        # Another attempt holds the chunk: alive, or it took the chunk before this save.
        if not wait:
            log.info(
                "run %s chunk %d is being delivered by another attempt; leaving it to that one",
                job.run_id,
                job.chunk_index,
            )
            return None
        if not waiting:
            waiting = True
            log.info(
                "run %s chunk %d is being delivered by another attempt; waiting for it",
                job.run_id,
                job.chunk_index,
            )
        if time.monotonic() - started > HOLD_WAIT_SECONDS:
            raise ChunkHeld(
                f"chunk {job.chunk_index} was still being delivered by another attempt after "
                f"{HOLD_WAIT_SECONDS:.0f} s; this message is retried later"
            )
        time.sleep(LEASE_CHECK_SECONDS)
        if _chunk_over(job, services):
            log.info(
                "run %s chunk %d was recorded by the attempt it waited for (or its run ended)",
                job.run_id,
                job.chunk_index,
            )
            return None
        latest = services.runs.saved_progress(job.run_id, job.chunk_index)
        if latest.etag != found.etag:
            changed_at = time.monotonic()
        found = latest


def _save_held(
    job: ChunkJob, services: Services, progress: ChunkProgress, etag: str | None
) -> str | None:
    """Save the progress of the attempt named in it, over the save `etag` names: the new ETag,
    or None when another attempt saved meanwhile. A refusal of our own save (a request the
    client sent again after its answer was lost) is recognised by reading the entry back."""
    saved = services.runs.save_progress(job.run_id, job.chunk_index, progress, etag)
    if saved is None:
        latest = services.runs.saved_progress(job.run_id, job.chunk_index)
        if latest.progress.holder == progress.holder:
            return latest.etag
    return saved


def _chunk_over(job: ChunkJob, services: Services) -> bool:
    """Whether the chunk was recorded (by another attempt, or as failed) or its run ended
    (the stalled-run sweep does both after a long silence): then nothing more is sent."""
    run = services.runs.get(job.run_id)
    return run is None or run.is_final or services.runs.chunk_done(job.run_id, job.chunk_index)


def _silent(found: SavedProgress, changed_at: float | None = None) -> bool:
    """Whether the holder saved nothing for `LEASE_SECONDS`: watched from `changed_at` (when
    this worker last saw the entry change) and by the store's timestamp of the save."""
    if changed_at is not None and time.monotonic() - changed_at >= LEASE_SECONDS:
        return True
    return found.saved_at is not None and (utcnow() - found.saved_at).total_seconds() >= (
        LEASE_SECONDS
    )


def _log_pace(job: ChunkJob, requests: int, seconds: float, client: BrazeClient) -> None:
    """How fast the chunk went and why: the requests in flight and Braze's round trip set it."""
    latency = client.latency_seconds
    log.info(
        "run %s chunk %d: %d requests in %.2f s (%.0f/s), %d in flight, round trip %s",
        job.run_id,
        job.chunk_index,
        requests,
        seconds,
        requests / seconds if seconds else 0.0,
        client.max_in_flight,
        "fixed" if latency is None else f"{latency * 1000:.0f} ms",
    )


def _send_in_order(
    job: ChunkJob,
    services: Services,
    client: BrazeClient,
    todo: list[list[tuple[int, int, bytes]]],
    ledger: _Ledger,
) -> bool:
    """Keep up to the client's `max_in_flight` batches of this chunk on their way, and account
    for the answers in batch order, so the recorded progress is always a prefix of the chunk.

    False when the run was ended meanwhile (nothing more is sent). When a batch fails for good,
    what was answered before it is saved and the error goes up for the queue to retry; when
    another attempt took the chunk over, ChunkHeld goes up (the retry finds the chunk recorded,
    or waits for that attempt).
    """
    in_flight: deque[Future[TrackOutcome]] = deque()
    pending = iter(todo)
    last_check = time.monotonic()
    finished = False
    try:
        while True:
            while len(in_flight) < client.max_in_flight:
                batch = next(pending, None)
                if batch is None:
                    break
                if time.monotonic() - last_check > STOP_CHECK_SECONDS:
                    last_check = time.monotonic()
                    if _chunk_over(job, services):
                        log.warning(
                            "run %s chunk %d was ended while it waited; not sending the rest",
                            job.run_id,
                            job.chunk_index,
                        )
                        return False
                in_flight.append(client.submit([obj for _, _, obj in batch]))
                ledger.sending.append(batch)
            if not in_flight:
                finished = True
                return True
            answered, _ = wait([in_flight[0]], timeout=HEARTBEAT_SECONDS)
            if answered:
                ledger.answered(in_flight.popleft().result())
            else:
                ledger.heartbeat()
            if ledger.lost:
                raise ChunkHeld(
                    f"chunk {job.chunk_index} was taken over by another attempt (this one saved "
                    f"nothing for {LEASE_SECONDS:.0f} s); this message is retried later"
                )
    finally:
        for future in in_flight:
            future.cancel()
        ledger.close(save=not finished)


class _Ledger:
    """Accounts for a chunk's answered batches in order and saves the progress now and then
    (while the next batches are on their way), not after every batch."""

    def __init__(self, job: ChunkJob, services: Services, lease: SavedProgress) -> None:
        self._job = job
        self._services = services
        self.progress = lease.progress
        self._etag = lease.etag
        self.lost = False  # another attempt took the chunk: stop sending
        self.sending: deque[list[tuple[int, int, bytes]]] = deque()
        self._attempt = _Attempt(job, services)
        self._files = partition_files_loader(services, job.run_id)
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress")
        self._saving: Future[None] | None = None
        self._saved_at = time.monotonic()

    def answered(self, outcome: TrackOutcome) -> None:
        """Braze answered the oldest batch still in flight."""
        batch, progress = self.sending.popleft(), self.progress
        number = progress.batches_done
        rejections = rejected_rows(batch, outcome, self._files)
        for rejection in rejections:
            rejection["batch"] = number
        # Written before it is counted: if the write fails, the progress still adds up.
        self._attempt.write(progress, rejections)
        _add_batch(progress, batch, rejections, sent=outcome.sent)
        progress.batches_done = number + 1
        self._attempt.recorded(progress)
        if time.monotonic() - self._saved_at >= PROGRESS_SAVE_SECONDS:
            self._save_in_background()

    def heartbeat(self) -> None:
        """No answer came for a while: save anyway, so the lease stays ours."""
        if time.monotonic() - self._saved_at >= HEARTBEAT_SECONDS:
            self._save_in_background()

    def _save_in_background(self) -> None:
        if self._saving is not None:
            if not self._saving.done():
                return  # the next answer saves instead
            self._log_failed_save()
        self._saved_at = time.monotonic()
        self._saving = self._saver.submit(self._save, _copy(self.progress))

    def _save(self, progress: ChunkProgress) -> None:
        """Save only over our own last save: otherwise another attempt holds the chunk now."""
        if self.lost:
            return
        etag = _save_held(self._job, self._services, progress, self._etag)
        if etag is None:
            self.lost = True
        else:
            self._etag = etag

    def _log_failed_save(self) -> None:
        """A save that failed is not fatal (the next one saves the same and more), but a lease
        that is not renewed may be taken over: say so."""
        assert self._saving is not None
        if error := self._saving.exception():
            log.warning(
                "run %s chunk %d: saving its progress failed (%s: %s); the next save tries again",
                self._job.run_id,
                self._job.chunk_index,
                type(error).__name__,
                error,
            )

    def close(self, *, save: bool) -> None:
        """Wait for the background save; an attempt that fails or stops saves what it got
        answered and lets go of the chunk, so the queue's retry resumes after it at once. A
        failed save is logged, not raised: this may run while another error goes up."""
        self._saver.shutdown(wait=True)
        if self._saving is not None:
            self._log_failed_save()
        if save:
            self.progress.holder = ""
            try:
                self._save(_copy(self.progress))
            except Exception as error:  # the retry resumes from the last save that worked
                log.warning(
                    "run %s chunk %d: its last progress could not be saved (%s: %s)",
                    self._job.run_id,
                    self._job.chunk_index,
                    type(error).__name__,
                    error,
                )


class _Attempt:
    """This attempt's rejected rows: an append blob, created at its first rejection."""

    def __init__(self, job: ChunkJob, services: Services) -> None:
        self._services = services
        self._name = (
            f"{rejected_prefix(job.run_id)}chunk-{job.chunk_index:06d}-{uuid.uuid4().hex[:8]}.jsonl"
        )
        self._created = False
        self._length = 0  # the blob's length as this attempt, its only writer, left it

    def write(self, progress: ChunkProgress, rejections: list[dict[str, Any]]) -> None:
        if not rejections:
            return
        if not self._created:
            self._services.storage.create_append_blob(RUNS_CONTAINER, self._name)
            progress.rejected_blobs.append(self._name)
            progress.rejected_until.append(progress.batches_done)
            self._created = True
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejections)
        self._length = self._services.storage.append_block(
            RUNS_CONTAINER, self._name, text, at=self._length
        )

    def recorded(self, progress: ChunkProgress) -> None:
        """The batches up to `batches_done` are recorded, rejected rows included."""
        if self._created:
            progress.rejected_until[-1] = progress.batches_done


def _copy(progress: ChunkProgress) -> ChunkProgress:
    """A copy to save while the next batch updates the original."""
    return replace(
        progress,
        rejections=dict(progress.rejections),
        rejected_blobs=list(progress.rejected_blobs),
        rejected_until=list(progress.rejected_until),
    )


def _add_batch(
    progress: ChunkProgress,
    batch: list[tuple[int, int, bytes]],
    rejections: list[dict[str, Any]],
    *,
    sent: bool,
) -> None:
    """Count a batch Braze answered (or that was held back with Braze's last answer)."""
    rejected_orders = {r["order"] for r in rejections}
    progress.requests += sent
    progress.accepted += len(batch) - len(rejections)
    progress.rejected += len(rejections)
    progress.data_points += sum(p for order, p, _ in batch if order not in rejected_orders)
    if rejections:
        tally = Counter(progress.rejections)
        tally.update(r["codes"][0] for r in rejections)
        progress.rejections = dict(tally)


def _record(
    job: ChunkJob, progress: ChunkProgress, rows: int, round_: int, services: Services
) -> None:
    counts = {item.name: getattr(progress, item.name) for item in fields(DeliveryCounts)}
    result = ChunkResult(
        **counts, chunk_index=job.chunk_index, rows=rows, partitions=job.partitions, round=round_
    )
    services.runs.record_chunk(job.run_id, result)
    maybe_finalize(job.run_id, services)


def fail_chunk(job: ChunkJob, error: BaseException, services: Services) -> None:
    """The chunk is being poisoned (or its work stalled): batches Braze answered keep their
    outcome, and every row of the rest is reported as delivery_failed, so none goes
    unaccounted for. Not when this message only waited for another attempt that still holds
    the chunk: that one records it."""
    if isinstance(error, ChunkHeld):
        log.warning(
            "run %s chunk %d: %s; that attempt records it", job.run_id, job.chunk_index, error
        )
        return
    run = services.runs.get(job.run_id)
    if run is None or run.is_final or services.runs.chunk_done(job.run_id, job.chunk_index):
        return
    progress = _lease_to_fail(job, services)
    if progress is None:
        return
    reason = f"delivery failed after every retry: {type(error).__name__}: {error}"[:1000]
    progress.failure = reason
    try:
        items: list[tuple[int, int, bytes]] | None = read_chunk(services, job.blob_names)
    except Exception:
        log.exception("run %s chunk %d: its blob is unreadable too", job.run_id, job.chunk_index)
        items = None
    if items is None:
        undelivered = max(job.rows - progress.accepted - progress.rejected, 0)
        progress.unlisted = undelivered  # counted, but which rows is unknown
        rows = job.rows
    else:
        connection = services.definitions().connection(run.connection)
        size = progress.batch_size or connection.objects_per_request
        rest = items[progress.batches_done * size :]
        undelivered, rows = len(rest), len(items)
        files = partition_files_loader(services, job.run_id)
        attempt = _Attempt(job, services)
        # In slices: every row of a 100,000-profile job parsed and written at once held about
        # 330 MB of entries and text.
        for start in range(0, len(rest), FAILED_ROWS_PER_WRITE):
            entries = [
                {
                    **row_position(order, files),
                    "customer_id": (parsed := json.loads(obj)).get("external_id"),
                    "stage": "delivery",
                    "codes": ["delivery_failed"],
                    "reasons": [reason],
                    "object": parsed,
                    "batch": progress.batches_done + index // size,
                }
                for index, (order, _, obj) in enumerate(
                    rest[start : start + FAILED_ROWS_PER_WRITE], start
                )
            ]
            attempt.write(progress, entries)
        progress.batches_done = -(-len(items) // size)
        attempt.recorded(progress)
    progress.rejected += undelivered
    tally = Counter(progress.rejections)
    tally["delivery_failed"] += undelivered
    progress.rejections = dict(tally)
    _record(job, progress, rows, run.replay_round, services)


def _lease_to_fail(job: ChunkJob, services: Services) -> ChunkProgress | None:
    """The chunk's progress, held while its rows are reported as failed, so that a duplicate
    waiting for the chunk keeps waiting; None when another attempt holds it and is alive (it
    records the chunk) or took it meanwhile."""
    found = services.runs.saved_progress(job.run_id, job.chunk_index)
    if found.progress.holder and not _silent(found):
        log.warning(
            "run %s chunk %d: another attempt is delivering it; its rows are not reported as "
            "failed",
            job.run_id,
            job.chunk_index,
        )
        return None
    found.progress.holder = f"failing-{uuid.uuid4().hex[:8]}"
    if _save_held(job, services, found.progress, found.etag) is None:
        log.warning(
            "run %s chunk %d: another attempt took it; its rows are not reported as failed",
            job.run_id,
            job.chunk_index,
        )
        return None
    return found.progress


def rejected_rows(
    batch: list[tuple[int, int, bytes]], outcome: TrackOutcome, files: Callable[[], list[str]]
) -> list[dict[str, Any]]:
    """Map Braze's answer back to source rows: `errors[].index` is the position in the batch."""
    if outcome.failure is None and not outcome.object_errors:  # the common answer: all taken
        return []
    rejected = []
    for index, (order, _, obj_json) in enumerate(batch):
        error = outcome.object_errors.get(index)
        if error is None and outcome.failure is None:
            continue
        obj = json.loads(obj_json)
        rejected.append(
            {
                **row_position(order, files),
                "customer_id": obj.get("external_id"),
                "stage": "braze",
                "codes": [error or f"http_{outcome.status}"],
                "reasons": [
                    f"Braze rejected the profile: {error}" if error else str(outcome.failure)
                ],
                "object": obj,
            }
        )
    return rejected
