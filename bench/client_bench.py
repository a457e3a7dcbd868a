"""CPU per request of the exporter's Braze client (`BrazeClient.submit`, as a delivery job uses
it), against a local sandbox that answers after a set latency and does not rate limit.

At Braze's 1,000 requests/s the client's CPU per request decides how much of a core delivery
takes beside the diffs; this measures it alone, without the rate governor's table calls or the
delivery job's accounting. The sandbox runs on the same machine (pinned to CPU 0 when there
are two or more, this process to the others), so compare versions by runs in turn.

    .venv/bin/python bench/client_bench.py [--requests 6000] [--in-flight 64] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sandbox_bench import user_object  # noqa: E402

from devtools.processes import start_sandbox  # noqa: E402
from shared.adapters.braze_client import BrazeClient, TrackOutcome  # noqa: E402

API_KEY = "client-bench-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    sandbox_cpu = 0 if cores > 1 else None
    sandbox = start_sandbox(
        API_KEY,
        "--rate-limit",
        "100000000",
        "--latency-ms",
        str(args.latency_ms),
        cpu=sandbox_cpu,
    )
    if sandbox_cpu is not None:
        os.sched_setaffinity(0, set(range(1, cores)))
    try:
        client = BrazeClient(sandbox.url, lambda refresh: API_KEY, in_flight=args.in_flight)
        _send(client, _batches(args.in_flight, 0), args.in_flight)  # connections and threads
        print(
            f"Braze client, 75-object bodies, {args.in_flight} in flight, sandbox latency "
            f"{args.latency_ms} ms, {args.requests:,} requests a round:"
        )
        for round_number in range(1, args.rounds + 1):
            batches = _batches(args.requests, round_number * args.requests)
            cpu, wall = time.process_time(), time.perf_counter()
            statuses = _send(client, batches, args.in_flight)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"- round {round_number}: {cpu / args.requests * 1e6:.0f} µs of CPU a request "
                f"({cpu:.2f} CPU-seconds), {args.requests / wall:,.0f} requests/s, "
                f"statuses {dict(sorted(statuses.items()))}"
            )
    finally:
        sandbox.stop()


def _batches(count: int, first: int) -> list[list[bytes]]:
    """`count` bodies' objects, every user new (numbered from batch `first`): each request
    creates 75 profiles, as a first export's do."""
    return [[user_object((first + n) * 75 + i).encode() for i in range(75)] for n in range(count)]


def _send(client: BrazeClient, batches: list[list[bytes]], in_flight: int) -> dict[int, int]:
    """Every batch, `in_flight` at a time as a delivery job keeps them; the statuses seen."""
    waiting: deque[Future[TrackOutcome]] = deque()
    statuses: dict[int, int] = {}
    for batch in batches:
        if len(waiting) >= in_flight:
            status = waiting.popleft().result().status
            statuses[status] = statuses.get(status, 0) + 1
        waiting.append(client.submit(batch))
    for future in waiting:
        status = future.result().status
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


if __name__ == "__main__":
    main()
