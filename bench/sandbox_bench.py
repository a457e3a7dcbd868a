"""Load benchmark for the Braze sandbox: realistic 75-object /users/track bodies, bounded in
count and time, then requests/s, latency percentiles and the server's CPU cost per request.

By default it starts its own sandbox pinned to CPU 0 and runs the load generator on CPU 1, so
the result measures the server on one core. The client is a minimal keep-alive HTTP/1.1 loop
over raw asyncio streams, because a full HTTP client would saturate its core before the server.

Two scenarios, since creating a profile costs more than updating one:
  --mode update  (default) a re-export: every user already exists (created in the warm-up)
  --mode create  a first export: every measured request carries 75 users never seen before

    .venv/bin/python bench/sandbox_bench.py
    .venv/bin/python bench/sandbox_bench.py --mode create --requests 15000
    .venv/bin/python bench/sandbox_bench.py --url http://127.0.0.1:8080 --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import statistics
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.processes import Sandbox, start_sandbox  # noqa: E402

FIRST_NAMES = ("Zoë", "José", "Amélie", "Øystein", "Łukasz", "Siobhán", "Renée", "Nguyễn")
TIERS = ("bronze", "silver", "gold")
SEGMENTS = ("spring_sale", "vip ⭐", "churn-risk", 'says "hi"', "ümlaut")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


@dataclass
class PhaseResult:
    """Latency of every request answered in one phase, and the statuses seen."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def user_object(user: int) -> str:
    """One attributes object as JSON text; formatted directly because a create run needs
    over a million of them and json.dumps would take longer than the run."""
    return (
        f'{{"external_id":"cust-{user:08d}","email":"user.{user}@example.com",'
        f'"first_name":{json.dumps(FIRST_NAMES[user % len(FIRST_NAMES)], ensure_ascii=False)},'
        f'"loyalty_tier":"{TIERS[user % len(TIERS)]}",'
        f'"lifetime_value":{user * 1.37 % 5000:.2f},'
        f'"segments":{{"add":[{json.dumps(SEGMENTS[user % len(SEGMENTS)], ensure_ascii=False)}]}}}}'
    )


def build_requests(
    host: str, port: int, api_key: str, body_count: int, objects_per_body: int
) -> list[bytes]:
    """Complete HTTP/1.1 requests with distinct users in every object, built up front so the
    client spends its core on sending."""
    head = (
        f"POST /users/track HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
    ).encode()
    requests = []
    for body_index in range(body_count):
        first_user = body_index * objects_per_body
        objects = ",".join(user_object(u) for u in range(first_user, first_user + objects_per_body))
        body = f'{{"attributes":[{objects}]}}'.encode()
        requests.append(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return requests


async def run_phase(
    host: str, port: int, requests: list[bytes], concurrency: int, max_seconds: float
) -> PhaseResult:
    """Send each of `requests` once, in order, over `concurrency` keep-alive connections,
    stopping early when `max_seconds` have passed."""
    result = PhaseResult()
    started = time.perf_counter()
    deadline = started + max_seconds
    pending: Iterator[bytes] = iter(requests)  # shared: each request is taken by one connection

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for request in pending:
                sent_at = time.perf_counter()
                if sent_at >= deadline:
                    break
                writer.write(request)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                    match = _CONTENT_LENGTH.search(head)
                    await reader.readexactly(int(match.group(1)) if match else 0)
                except (asyncio.IncompleteReadError, ConnectionError):
                    result.statuses["connection closed"] += 1  # e.g. a --fault-drop sandbox
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                result.latencies.append(time.perf_counter() - sent_at)
                result.statuses[head[9:12].decode()] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def fetch_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_sandbox/stats") as response:
        return json.load(response)


def start_server(args: argparse.Namespace) -> Sandbox:
    """A sandbox pinned to --server-cpu, with rate limiting effectively off by default."""
    options = ["--rate-limit", str(args.rate_limit), "--request-log-size", "100"]
    return start_sandbox(args.api_key, *options, cpu=args.server_cpu)


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def report(
    args: argparse.Namespace,
    url: str,
    result: PhaseResult,
    first: dict[str, Any],
    last: dict[str, Any],
) -> None:
    answered = len(result.latencies)
    seconds = result.seconds
    print(f"server: {url}  mode: {args.mode}  concurrency: {args.concurrency}")
    print(f"measured: {answered:,} requests of {args.objects} objects in {seconds:.2f}s")
    print(
        f"throughput: {answered / seconds:,.0f} requests/s = "
        f"{answered * args.objects / seconds:,.0f} objects/s"
    )
    if result.latencies:
        latencies_ms = sorted(value * 1000 for value in result.latencies)
        print(
            "latency ms: "
            f"p50 {percentile(latencies_ms, 0.50):.2f}  p90 {percentile(latencies_ms, 0.90):.2f}  "
            f"p99 {percentile(latencies_ms, 0.99):.2f}  max {latencies_ms[-1]:.2f}  "
            f"mean {statistics.fmean(latencies_ms):.2f}"
        )
    print(f"statuses: {dict(result.statuses)}")
    served = last["requests_total"] - first["requests_total"]
    cpu = last["process_cpu_seconds"] - first["process_cpu_seconds"]
    if served and cpu:
        # Wall-clock throughput drops when other work shares the machine; CPU per request
        # hardly does, and gives what one fully available core can serve.
        print(
            f"server CPU: {cpu / served * 1e6:,.0f} us/request, busy {cpu / seconds:.0%} of "
            f"one core -> capacity {served / cpu:,.0f} requests/s per core"
        )
    print(
        f"sandbox: users {last['users']:,}  objects applied {last['objects_applied']:,}  "
        f"data points {last['data_points']:,}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="benchmark this running sandbox instead of starting one")
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--mode", choices=("update", "create"), default="update")
    parser.add_argument("--requests", type=int, default=15_000, help="measured requests (max)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (max)")
    parser.add_argument(
        "--bodies",
        type=int,
        default=2000,
        help="update mode: distinct bodies (of distinct users) created in the warm-up, then cycled",
    )
    parser.add_argument(
        "--warmup-requests", type=int, default=500, help="create mode: unmeasured requests first"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--objects", type=int, default=75, help="attribute objects per body")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=10**9,
        help="rate limit of the started sandbox (default: effectively none)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    server = None
    url = args.url
    if url is None:
        server = start_server(args)
        url = server.url
    os.sched_setaffinity(0, {args.client_cpu})
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        if args.mode == "update":
            warmup = build_requests(host, port, args.api_key, args.bodies, args.objects)
            measured = list(itertools.islice(itertools.cycle(warmup), args.requests))
        else:
            fresh = build_requests(
                host, port, args.api_key, args.warmup_requests + args.requests, args.objects
            )
            warmup, measured = fresh[: args.warmup_requests], fresh[args.warmup_requests :]
        asyncio.run(run_phase(host, port, warmup, args.concurrency, max_seconds=600))
        first = fetch_stats(url)
        result = asyncio.run(run_phase(host, port, measured, args.concurrency, args.duration))
        report(args, url, result, first, fetch_stats(url))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
