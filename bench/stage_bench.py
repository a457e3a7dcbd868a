"""CPU per planning job of a first export, measured in one process: each split job and the first
partitions' diffs are run again, in rounds, against one planned run on a private Azurite.

End to end (`export_bench.py`) a stage's CPU is mixed with delivery, the sandbox and a second
host on the same cores. Here one job runs at a time and nothing else of the benchmark does; the
CPU counted is this process's (its storage I/O threads included, Azurite's not). It covers a
first export's jobs only: with no snapshot yet, a delta's bulk path does not run. Runs of one
version still vary by 10-20% on this shared machine, so compare several runs of each checkout
in turn. The segment is the end-to-end benchmark's (0.8% invalid rows, quotes, line breaks and
emoji in values); diffs run with the cyclic collector paused, as the trigger runs them. Nothing
is sent to Braze.

    .venv/bin/python bench/stage_bench.py --profiles 1000000 --diffs 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_bench import SOURCE, write_segment

from devtools.processes import start_azurite
from devtools.sample import demo_definitions
from functions.planning import cyclic_gc_paused
from shared.adapters.services import Services
from shared.adapters.settings import load_settings
from shared.core.messages import ExportJob, PartitionJob, SplitJob, planning_job
from shared.core.resource_names import JOBS_QUEUE
from shared.core.runs import Status
from shared.pipeline import split_source as split_step
from shared.pipeline.diff_partition import _diff
from shared.pipeline.plan_export import plan_run
from shared.pipeline.start import start_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--diffs", type=int, default=8, help="partitions diffed each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--split-mib", type=float, default=8, help="EXPORT_SPLIT_MIB: the byte ranges' size"
    )
    parser.add_argument("--out", type=Path, help="also write the figures here, as JSON")
    args = parser.parse_args()
    if args.diffs < 1 or args.rounds < 1:
        parser.error("--diffs and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="stage-bench-") as work:
        figures = measure(args.profiles, args.diffs, args.rounds, args.split_mib, Path(work))
    print(summary(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


def measure(profiles: int, diffs: int, rounds: int, split_mib: float, work: Path) -> dict[str, Any]:
    azurite = start_azurite(work)
    try:
        document = demo_definitions("http://127.0.0.1:9", "segments", SOURCE, "Bench")
        document["exports"][0]["name"] = "bench"
        document["exports"][0]["max_data_points"] = 10 * profiles
        (work / "exports.json").write_text(json.dumps(document))
        services = Services(
            load_settings(
                {
                    "AzureWebJobsStorage": azurite.connection_string,
                    "EXPORT_DEFINITIONS_PATH": str(work / "exports.json"),
                    "BRAZE_SECRET_BRAZE_SANDBOX_KEY": "unused",
                    "EXPORT_SPLIT_MIB": str(split_mib),
                }
            )
        )
        services.ensure_resources()
        services.storage.blobs.create_container("segments")
        source = work / "segment.csv"
        write_segment(source, profiles)
        with source.open("rb") as data:
            services.storage.write_bytes("segments", SOURCE, data, "text/csv")
        run_id = start_run(services, "bench", "bench").run.run_id
        _take(services, ExportJob)
        plan_run(ExportJob(run_id, "bench"), services)
        splits = _take(services, SplitJob)
        for job in splits:  # recorded once; the rounds below split again, and lose the record
            split_step.split_source(job, services)
        run = services.runs.get(run_id)
        if run is None or not run.partitions or not splits:
            raise RuntimeError(
                "the source was not cut into ranges and split (too few profiles for the range "
                f"size, or planning failed: {run and run.message})"
            )
        partitions = sorted(_take(services, PartitionJob), key=lambda j: j.partition)[:diffs]
        definitions = services.definitions()
        export = definitions.export("bench")
        results = services.runs.split_results(run_id)
        split_rows = [result.rows_read for result in results]
        rows = [sum(filed) for filed in zip(*(r.partition_rows for r in results), strict=True)]

        def split_again(job: SplitJob) -> None:
            if not split_step._split_raw(run, export, job, services):
                raise RuntimeError(f"split {job.split} was not read as raw records")

        def diff(job: PartitionJob) -> None:
            with cyclic_gc_paused():
                _diff(run, definitions, job, services)

        split_cpu = _rounds(splits, split_again, rounds)
        diff_cpu = _rounds(partitions, diff, rounds)
        after = services.runs.get(run_id)
        if after is None or after.status != Status.PLANNING:  # a split failed: not a measure
            raise RuntimeError(f"the run did not stay in planning: {after and after.message}")
        return {
            "profiles": profiles,
            "rounds": rounds,
            "split": _stage(split_cpu, [split_rows[job.split] for job in splits]),
            "diff": _stage(diff_cpu, [rows[job.partition] for job in partitions]),
        }
    finally:
        azurite.stop()


def _take(services: Services, kind: type[Any]) -> list[Any]:
    queue = services.storage.queue(JOBS_QUEUE)
    jobs = []
    while messages := list(queue.receive_messages(messages_per_page=32, max_messages=32)):
        for message in messages:
            job = planning_job(message.content)
            if isinstance(job, kind):
                jobs.append(job)
            queue.delete_message(message)
    return jobs


def _rounds(jobs: list[Any], step: Callable[[Any], None], rounds: int) -> list[list[float]]:
    """CPU-seconds of each job in each round, all jobs of a round before the next round."""
    seconds: list[list[float]] = [[] for _ in jobs]
    for _ in range(rounds):
        for at, job in enumerate(jobs):
            started = time.process_time()
            step(job)
            seconds[at].append(time.process_time() - started)
    return seconds


def _stage(seconds: list[list[float]], rows: list[int]) -> dict[str, Any]:
    per_round = [sum(job[r] for job in seconds) for r in range(len(seconds[0]))]
    return {
        "jobs": len(seconds),
        "rows": sum(rows),
        "cpu_seconds_per_round": per_round,
        "median_cpu_seconds": statistics.median(per_round),
        "us_per_row": statistics.median(per_round) / max(sum(rows), 1) * 1e6,
    }


def summary(figures: dict[str, Any]) -> str:
    lines = [
        f"Stage CPU, {figures['profiles']:,} profiles, {figures['rounds']} rounds "
        "(CPU-seconds of the jobs measured, each round):",
    ]
    for stage in ("split", "diff"):
        f = figures[stage]
        rounds = ", ".join(f"{s:.2f}" for s in f["cpu_seconds_per_round"])
        lines.append(
            f"- {stage}: {f['jobs']} jobs, {f['rows']:,} rows: {rounds} "
            f"(median {f['median_cpu_seconds']:.2f}, {f['us_per_row']:.2f} µs per row)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
