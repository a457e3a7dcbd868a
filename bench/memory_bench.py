"""Planner memory as the segment grows: peak RSS of the plan, split and diff stages.

For each size, writes a CSV of N profiles to Azurite, then runs each planning stage in a fresh
process (so its peak resident memory is its own) and prints time and peak RSS: the plan step
(check the source, cut it into byte ranges), the split jobs one after another in one process
(each streams its range into hash partitions, so memory should stay flat from 1M to 5M), and
one partition's diff (it holds one partition, whose size the partition count keeps near 4 MiB;
this is a first export's job: a delta's takes four partitions, whose pieces are mostly small
matched records, and holds two snapshot partitions at once).

    .venv/bin/python bench/memory_bench.py --profiles 1000000 5000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.processes import ROOT, start_azurite
from devtools.sample import demo_definitions
from shared.adapters.services import Services
from shared.adapters.settings import load_settings
from shared.core.resource_names import JOBS_QUEUE
from shared.pipeline.start import start_run

HEADER = "CustomerId,Email,FirstName,LoyaltyPoints,IsVip,BirthDate,Note\n"


def write_segment(path: Path, profiles: int) -> int:
    """A plain CSV of `profiles` distinct, valid rows; returns its size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        out.write(HEADER)
        for n in range(profiles):
            out.write(
                f'cust-{n:08d},user.{n}@example.com,"Zoë {n % 97}",{n % 50000},'
                f"{'true' if n % 3 else 'false'},19{50 + n % 50}-0{1 + n % 9}-1{n % 10},"
                f'"note, with comma {n % 13}"\n'
            )
    return path.stat().st_size


def child(stage: str, run_id: str) -> None:
    """Run one stage in this process and print its wall time and peak RSS as JSON."""
    from shared.core.messages import ExportJob, PartitionJob, SplitJob
    from shared.pipeline.diff_partition import diff_partition
    from shared.pipeline.plan_export import plan_run
    from shared.pipeline.split_source import split_source

    services = Services(load_settings())
    started = time.perf_counter()
    if stage == "plan":
        plan_run(ExportJob(run_id, "bench"), services)
        partitions = services.runs.get(run_id).splits  # type: ignore[union-attr]
    elif stage == "split":
        queue = services.storage.queue(JOBS_QUEUE)  # the splits, then the diffs they queue
        while messages := list(queue.receive_messages(messages_per_page=32, max_messages=32)):
            for message in messages:  # a diff's message stays, invisible, until cleared below
                if json.loads(message.content)["kind"] == SplitJob.kind:
                    split_source(SplitJob.from_json(message.content), services)
                    queue.delete_message(message)
        partitions = services.runs.get(run_id).partitions  # type: ignore[union-attr]
    else:
        partitions = services.runs.get(run_id).partitions  # type: ignore[union-attr]
        diff_partition(PartitionJob(run_id, "bench", 0, partitions), services)
    seconds = time.perf_counter() - started
    if stage == "split":
        services.storage.queue(JOBS_QUEUE).clear_messages()  # the diffs run one by one below
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "partitions": partitions}))


def measure(profiles: int, workdir: Path) -> dict[str, object]:
    azurite = start_azurite(workdir)
    try:
        definitions = workdir / "exports.json"
        document = demo_definitions("http://127.0.0.1:9", "segments", "bench/memory.csv", "Bench")
        document["exports"][0]["name"] = "bench"
        definitions.write_text(json.dumps(document))
        env = {
            "MALLOC_ARENA_MAX": "2",  # as infra/app/api.bicep sets it in Azure
            **os.environ,
            "AzureWebJobsStorage": azurite.connection_string,
            "EXPORT_DEFINITIONS_PATH": str(definitions),
            "BRAZE_SECRET_BRAZE_SANDBOX_KEY": "unused",
        }
        services = Services(load_settings(env))
        services.ensure_resources()
        source = workdir / "memory.csv"
        size = write_segment(source, profiles)
        services.storage.blobs.create_container("segments")
        with source.open("rb") as data:
            services.storage.blobs.get_blob_client("segments", "bench/memory.csv").upload_blob(
                data, overwrite=True, max_concurrency=4
            )
        source.unlink()
        run_id = start_run(services, "bench", "bench").run.run_id
        services.storage.queue(JOBS_QUEUE).clear_messages()
        results: dict[str, object] = {"profiles": profiles, "source_mib": size / 2**20}
        for stage in ("plan", "split", "diff"):
            output = subprocess.run(
                [sys.executable, __file__, "--child", stage, run_id],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[stage] = json.loads(output.strip().splitlines()[-1])
        return results
    finally:
        azurite.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "RUN_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    columns = [("profiles", 10), ("source MiB", 10), ("ranges", 7), ("partitions", 10),
               ("plan s", 7), ("plan MiB", 8), ("split s", 8), ("split MiB", 9), ("diff s", 7),
               ("diff MiB", 8)]  # fmt: skip
    print(" ".join(f"{name:>{width}}" for name, width in columns))
    for profiles in args.profiles:
        with tempfile.TemporaryDirectory() as workdir:
            result = measure(profiles, Path(workdir))
        plan, split, diff = result["plan"], result["split"], result["diff"]
        assert isinstance(plan, dict) and isinstance(split, dict) and isinstance(diff, dict)
        print(
            f"{profiles:>10} {result['source_mib']:>10.0f} {plan['partitions']:>7} "
            f"{split['partitions']:>10} {plan['seconds']:>7.1f} {plan['peak_mib']:>8.0f} "
            f"{split['seconds']:>8.1f} {split['peak_mib']:>9.0f} {diff['seconds']:>7.2f} "
            f"{diff['peak_mib']:>8.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
