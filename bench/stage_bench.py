"""CPU per planning job, measured in one process: each split job and the first partitions' diffs
are run again, in rounds, against one planned run on a private Azurite.

End to end (`export_bench.py`) a stage's CPU is mixed with delivery, the sandbox and a second
host on the same cores. Here one job runs at a time and nothing else of the benchmark does; the
CPU counted is this process's (its storage I/O threads included, Azurite's not), and the
storage requests the jobs made are counted too. By default the run measured is a first export;
with `--delta` it is the end-to-end benchmark's 1% delta: the first export is then run to the
end in this process, against a Braze sandbox (stopped before the rounds), so that its snapshot
is committed, and the jobs measured are those of the run after it (the split's index lookups
and the diff's bulk path; the index is loaded once per process, as a host loads it once for
all the splits of a run it takes, so the rounds do not count that load). A diff job is measured
as it runs (`diff_partition.diffed_partitions`: its query of which partitions are recorded, its
pieces' reads, each partition's diff), without recording its results or the release; a delta's
jobs take four partitions each, so `--diffs` counts whole jobs' partitions.
Runs of one version still vary by 10-20% on this shared machine, so compare several runs of
each checkout in turn. The segment is the end-to-end benchmark's (0.8% invalid rows, quotes,
line breaks and emoji in values); diffs run with the cyclic collector paused, as the trigger
runs them. Nothing is sent to Braze by the rounds.

    .venv/bin/python bench/stage_bench.py --profiles 1000000 --diffs 8 --rounds 3 [--delta] [--wide]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_bench import API_KEY, SOURCE, write_segment

from devtools.processes import Sandbox, start_azurite, start_sandbox
from devtools.sample import demo_definitions
from functions.planning import cyclic_gc_paused
from shared.adapters.services import Services
from shared.adapters.settings import load_settings
from shared.core.messages import ChunkJob, ExportJob, PartitionJob, SplitJob, planning_job
from shared.core.resource_names import CHUNKS_QUEUE, JOBS_QUEUE
from shared.core.runs import PartitionResult, Run, Status
from shared.pipeline import split_source as split_step
from shared.pipeline.deliver_chunk import deliver_chunk
from shared.pipeline.diff_partition import diff_partition, diffed_partitions
from shared.pipeline.plan_export import plan_run
from shared.pipeline.run_files import matched_records, partition_pieces, piece_sections
from shared.pipeline.start import start_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument(
        "--diffs",
        type=int,
        default=8,
        help="partitions diffed each round, in whole jobs (a delta's take four partitions each)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--split-mib", type=float, default=8, help="EXPORT_SPLIT_MIB: the byte ranges' size"
    )
    parser.add_argument(
        "--delta",
        action="store_true",
        help="measure the jobs of a 1%% delta (after a first export run to the end here)",
    )
    parser.add_argument(
        "--wide",
        action="store_true",
        help="ten more columns of a Customer Insights profile, not mapped (as export_bench's)",
    )
    parser.add_argument("--out", type=Path, help="also write the figures here, as JSON")
    args = parser.parse_args()
    if args.diffs < 1 or args.rounds < 1:
        parser.error("--diffs and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="stage-bench-") as work:
        figures = measure(
            args.profiles,
            args.diffs,
            args.rounds,
            args.split_mib,
            args.delta,
            args.wide,
            Path(work),
        )
    print(summary(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


def measure(
    profiles: int,
    diffs: int,
    rounds: int,
    split_mib: float,
    delta: bool,
    wide: bool,
    work: Path,
) -> dict[str, Any]:
    azurite = start_azurite(work)
    sandbox: Sandbox | None = None
    try:
        sandbox = start_sandbox(API_KEY) if delta else None
        endpoint = sandbox.url if sandbox else "http://127.0.0.1:9"
        document = demo_definitions(endpoint, "segments", SOURCE, "Bench")
        document["exports"][0]["name"] = "bench"
        document["exports"][0]["max_data_points"] = 10 * profiles
        (work / "exports.json").write_text(json.dumps(document))
        services = Services(
            load_settings(
                {
                    "AzureWebJobsStorage": azurite.connection_string,
                    "EXPORT_DEFINITIONS_PATH": str(work / "exports.json"),
                    "BRAZE_SECRET_BRAZE_SANDBOX_KEY": API_KEY,
                    "EXPORT_SPLIT_MIB": str(split_mib),
                    "EXPORT_ALLOW_LOOPBACK_ENDPOINTS": "true",  # the sandbox is on this machine
                }
            )
        )
        services.ensure_resources()
        services.storage.blobs.create_container("segments")
        source = work / "segment.csv"
        if sandbox:  # the first export, to the end: its snapshot is what the delta reads
            _upload(services, source, profiles, 0, wide)
            first_run_id, _ = _plan_and_split(services)
            _finish(first_run_id, _take(services, PartitionJob), services)
            sandbox.stop()  # its million profiles need not share the cores with the rounds
        _upload(services, source, profiles, 100 if delta else 0, wide)
        run_id, splits = _plan_and_split(services)
        run = services.runs.get(run_id)
        if run is None or not run.partitions or not splits:
            raise RuntimeError(
                "the source was not cut into ranges and split (too few profiles for the range "
                f"size, or planning failed: {run and run.message})"
            )
        # The jobs of the first `diffs` partitions (a delta's jobs diff several each).
        jobs = sorted(_take(services, PartitionJob), key=lambda j: j.partition)
        partitions = [job for job in jobs if job.partition < diffs]
        export = services.definitions().export("bench")
        results = services.runs.split_results(run_id)
        split_rows = [result.rows_read for result in results]
        rows = [sum(filed) for filed in zip(*(r.partition_rows for r in results), strict=True)]

        def split_again(job: SplitJob) -> None:
            if not split_step._split_raw(run, export, job, services):
                raise RuntimeError(f"split {job.split} was not read as raw records")

        found: dict[int, PartitionResult] = {}  # each partition's, from the last round

        def diff(job: PartitionJob) -> None:
            with cyclic_gc_paused():
                for partition, result in diffed_partitions(run, job, services):
                    assert result is not None  # the rounds record nothing
                    found[partition] = result

        with _RequestCount() as split_requests:
            split_cpu = _rounds(splits, split_again, rounds)
        with _RequestCount() as diff_requests:
            diff_cpu = _rounds(partitions, diff, rounds)
        after = services.runs.get(run_id)
        if after is None or after.status != Status.PLANNING:  # a split failed: not a measure
            raise RuntimeError(f"the run did not stay in planning: {after and after.message}")
        matched = _matched_rows(after, services)
        if delta and matched < sum(split_rows) / 2:  # a full refresh, or no index taken
            raise RuntimeError(
                f"the delta's splits filed only {matched:,} of {sum(split_rows):,} rows by "
                "the snapshot's index: its bulk path was not measured"
            )
        return {
            "profiles": profiles,
            "wide": wide,
            "run": "delta (1% changed)" if delta else "first export",
            "rounds": rounds,
            "split": {
                **_stage(
                    split_cpu, [split_rows[job.split] for job in splits], split_requests.count
                ),
                "rows_matched": matched,
            },
            "diff": {
                **_stage(
                    diff_cpu,
                    [sum(rows[p] for p in job.numbers) for job in partitions],
                    diff_requests.count,
                ),
                "partitions": sum(job.count for job in partitions),
                "profiles": {
                    kind: sum(getattr(result, kind) for result in found.values())
                    for kind in ("new", "changed", "unchanged")
                },
            },
        }
    finally:
        azurite.stop()
        if sandbox:
            sandbox.stop()  # a second stop of a stopped process does nothing


def _upload(
    services: Services, source: Path, profiles: int, changed_every: int, wide: bool
) -> None:
    write_segment(source, profiles, changed_every, wide=wide)
    with source.open("rb") as data:
        services.storage.write_bytes("segments", SOURCE, data, "text/csv")


def _plan_and_split(services: Services) -> tuple[str, list[SplitJob]]:
    """A run started, planned and split (each split recorded once: the rounds split again
    and lose the record)."""
    run_id = start_run(services, "bench", "bench").run.run_id
    _take(services, ExportJob)
    plan_run(ExportJob(run_id, "bench"), services)
    splits = _take(services, SplitJob)
    for job in splits:
        split_step.split_source(job, services)
    return run_id, splits


def _matched_rows(run: Run, services: Services) -> int:
    """Rows the splits filed by the snapshot's index (matched records), in every piece."""
    return sum(
        len(matched_records(piece_sections(piece)[1]))
        for partition in range(run.partitions)  # one at a time: a 5M run's pieces are large
        for piece in partition_pieces(services, run, [partition])[partition]
    )


def _finish(run_id: str, partitions: list[PartitionJob], services: Services) -> None:
    """Diff every partition and deliver every chunk, as the triggers would, until the run
    commits its snapshot."""
    for job in partitions:
        with cyclic_gc_paused():
            diff_partition(job, services)
    for content in _messages(services, CHUNKS_QUEUE):
        deliver_chunk(ChunkJob.from_json(content), services)
    run = services.runs.get(run_id)
    if run is None or run.status not in (Status.SUCCEEDED, Status.PARTIALLY_SUCCEEDED):
        raise RuntimeError(f"the first export did not finish: {run and run.message}")


class _RequestCount:
    """Storage requests made while in the block (all HTTP sent through azure-core's requests
    transport: the storage clients', and nothing else in this process uses it)."""

    def __enter__(self) -> _RequestCount:
        from azure.core.pipeline.transport import RequestsTransport

        self.count = 0
        self._send = send = RequestsTransport.send

        def counted(transport: Any, request: Any, **kwargs: Any) -> Any:
            self.count += 1
            return send(transport, request, **kwargs)

        RequestsTransport.send = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        from azure.core.pipeline.transport import RequestsTransport

        RequestsTransport.send = self._send  # type: ignore[method-assign]


def _take(services: Services, kind: type[Any]) -> list[Any]:
    """The planning jobs of one kind waiting on the queue; the queue is emptied."""
    jobs = (planning_job(content) for content in _messages(services, JOBS_QUEUE))
    return [job for job in jobs if isinstance(job, kind)]


def _messages(services: Services, queue_name: str) -> Iterator[str]:
    """Each message's content until the queue is empty, deleted once the caller took it."""
    queue = services.storage.queue(queue_name)
    while messages := list(queue.receive_messages(messages_per_page=32, max_messages=32)):
        for message in messages:
            yield message.content
            queue.delete_message(message)


def _rounds(jobs: list[Any], step: Callable[[Any], None], rounds: int) -> list[list[float]]:
    """CPU-seconds of each job in each round, all jobs of a round before the next round."""
    seconds: list[list[float]] = [[] for _ in jobs]
    for _ in range(rounds):
        for at, job in enumerate(jobs):
            started = time.process_time()
            step(job)
            seconds[at].append(time.process_time() - started)
    return seconds


def _stage(seconds: list[list[float]], rows: list[int], requests: int) -> dict[str, Any]:
    per_round = [sum(job[r] for job in seconds) for r in range(len(seconds[0]))]
    return {
        "jobs": len(seconds),
        "rows": sum(rows),
        "storage_requests_per_round": requests / len(per_round),
        "cpu_seconds_per_round": per_round,
        "median_cpu_seconds": statistics.median(per_round),
        "us_per_row": statistics.median(per_round) / max(sum(rows), 1) * 1e6,
    }


def summary(figures: dict[str, Any]) -> str:
    lines = [
        f"Stage CPU, {figures['run']} of {figures['profiles']:,} profiles"
        f"{' (ten unmapped columns more)' if figures['wide'] else ''}, "
        f"{figures['rounds']} rounds (CPU-seconds of the jobs measured, each round):",
    ]
    for stage in ("split", "diff"):
        f = figures[stage]
        rounds = ", ".join(f"{s:.2f}" for s in f["cpu_seconds_per_round"])
        jobs = f"{f['jobs']} jobs" + (
            f" ({f['partitions']} partitions)" if "partitions" in f else ""
        )
        lines.append(
            f"- {stage}: {jobs}, {f['rows']:,} rows: {rounds} "
            f"(median {f['median_cpu_seconds']:.2f}, {f['us_per_row']:.2f} µs per row; "
            f"{f['storage_requests_per_round']:,.0f} storage requests a round)"
        )
    kinds = ", ".join(f"{n:,} {kind}" for kind, n in figures["diff"]["profiles"].items())
    lines.append(f"- the splits filed {figures['split']['rows_matched']:,} rows by the index")
    lines.append(f"- the diffs found: {kinds}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
